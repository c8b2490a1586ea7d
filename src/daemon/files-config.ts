// `run --files none|DIR` and `--files-exclude GLOB` (issue 14): checked once at run, kept in the app's record.
import { statSync } from "node:fs";
import { resolve } from "node:path";
import { TgError } from "../errors.js";
import { DEFAULT_FILES, type FilesConfig } from "./files-set.js";

export function runFilesConfig(req: { enabled?: unknown; dirs?: unknown; exclude?: unknown } | undefined, cwd: string): FilesConfig {
  if (req === undefined || req === null) return { ...DEFAULT_FILES };
  const strings = (v: unknown, what: string): string[] => {
    if (v === undefined) return [];
    if (!Array.isArray(v) || v.some((x) => typeof x !== "string" || x === ""))
      throw new TgError("cannot run the app", `${what} must be a list of non-empty strings`, "Pass e.g. --files /srv/data --files-exclude '*.tmp'", "bad-request");
    return v as string[];
  };
  const dirs = strings(req.dirs, "files.dirs").map((d) => resolve(cwd, d));
  for (const d of dirs) {
    let ok = false;
    try {
      ok = statSync(d).isDirectory();
    } catch {
      ok = false;
    }
    if (!ok) throw new TgError("cannot run the app", `--files ${d} is not a directory`, "Pass an existing directory (or --files none to keep files out of checkpoints)", "bad-request");
  }
  if (req.enabled === false && dirs.length) throw new TgError("cannot run the app", "--files none and --files DIR together", "Pick one", "bad-request");
  return { enabled: req.enabled !== false, dirs, exclude: strings(req.exclude, "files.exclude") };
}
