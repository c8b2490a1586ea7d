// Deleted-but-open files (issue 14, docs/files.md "Deleted-but-open files"): a regular file a
// process of the app unlinked but still holds open is part of the files image under a staging
// name beside the one it had, `DIR/.tardigrade-deleted.INO.PID.FD` (PID as the app sees it, in its
// PID namespace), read at the cut through /proc/PID/fd/N. The rollback writes it back under that
// name; the restorer opens it there and removes the name (native/agent/files-deleted.c, which
// makes the same name for the FD record).
import { readFileSync, readdirSync, readlinkSync, statSync } from "node:fs";
import { basename, dirname, join } from "node:path";

const SUFFIX = " (deleted)";
const PREFIX = ".tardigrade-deleted.";

/** Is this path a deleted file's staging name? */
export const isStagingName = (p: string): boolean => basename(p).startsWith(PREFIX);

/** The staging name of fd `fd` of process `nsPid` (as the app sees it) holding inode `ino`, deleted from `path`. */
export const stagingName = (path: string, ino: bigint | number, nsPid: number, fd: number): string => join(dirname(path), `${PREFIX}${ino}.${nsPid}.${fd}`);

/** The pid a host process has in the innermost PID namespace (the app's). */
function nsPid(hostPid: number): number {
  const m = /^NSpid:\s+(.*)$/m.exec(readFileSync(`/proc/${hostPid}/status`, "utf8"));
  const ids = (m?.[1] ?? String(hostPid)).trim().split(/\s+/);
  return Number(ids[ids.length - 1]);
}

/** The deleted regular files the processes hold open: staging name -> where to read it now (/proc/PID/fd/N). */
export function deletedOpenFiles(hostPids: number[]): Map<string, string> {
  const out = new Map<string, string>();
  for (const pid of hostPids) {
    let fds: string[];
    let ns: number;
    try {
      fds = readdirSync(`/proc/${pid}/fd`);
      ns = nsPid(pid);
    } catch {
      continue; // gone
    }
    for (const fd of fds) {
      const src = `/proc/${pid}/fd/${fd}`;
      try {
        const target = readlinkSync(src);
        if (!target.startsWith("/") || !target.endsWith(SUFFIX)) continue;
        const st = statSync(src, { bigint: true });
        if (!st.isFile() || st.nlink !== 0n) continue;
        out.set(stagingName(target.slice(0, -SUFFIX.length), st.ino, ns, Number(fd)), src);
      } catch {
        /* closed meanwhile */
      }
    }
  }
  return out;
}
