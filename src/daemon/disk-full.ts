// A full disk, said as such: which directory is on the full filesystem and how much is
// left there, instead of the "Broken pipe" the agent sees when the store stops reading.
import { statfsSync } from "node:fs";
import { TgError, errMessage } from "../errors.js";

/** True for ENOSPC/EDQUOT from node and SQLITE_FULL ("database or disk is full"). */
export function isNoSpace(e: unknown): boolean {
  const err = e as { code?: unknown; message?: unknown } | null;
  const code = typeof err?.code === "string" ? err.code : "";
  if (code === "ENOSPC" || code === "EDQUOT" || code === "SQLITE_FULL") return true;
  return /ENOSPC|no space left on device|database or disk is full|disk quota exceeded/i.test(errMessage(e));
}

function free(dir: string): string {
  try {
    const s = statfsSync(dir);
    const kib = Math.floor((Number(s.bavail) * Number(s.bsize)) / 1024);
    return `${kib} KiB free`;
  } catch {
    return "free space unknown";
  }
}

/** A TgError naming the directory whose filesystem is full, or null when `e` is not about space. */
export function noSpaceError(e: unknown, what: string, dirs: string[]): TgError | null {
  if (!isNoSpace(e)) return null;
  const where = dirs.map((d) => `${d} (${free(d)})`).join(", ");
  return new TgError(
    what,
    `no space left on the filesystem of ${where}`,
    "Nothing was committed and the app keeps running; free space there (e.g. `tardigrade gc --keep N`) or set TARDIGRADE_HOME to a bigger disk",
    "no-space",
  );
}
