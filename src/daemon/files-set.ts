// Which files belong to an app's file set (issue 14, docs/files.md): the paths the agents wrote
// into the app's file journal (opened for writing, created, truncated, renamed, linked, unlinked:
// native/agent/files-track.c), the regular files any process of the app holds open for writing or
// maps shared and writable at the cut, every regular file under the `run --files DIR` trees, and
// every path of the parent checkpoint's set; minus `--files-exclude` globs, the app's own log,
// tardigrade's home, and /dev (but /dev/shm), /proc, /sys.
import { lstatSync, readFileSync, readdirSync, statSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { isStagingName } from "./files-deleted.js";
import { scanProcesses, type ProcScan } from "./files-procscan.js";

/** The app's choice at `run` (kept in its record). */
export interface FilesConfig {
  /** false: `--files none` (files are neither captured nor rolled back). */
  enabled: boolean;
  /** Trees snapshotted whole (`--files DIR`), absolute. */
  dirs: string[];
  /** Globs of paths left out (`--files-exclude GLOB`): `*` within a name, `**` across directories, `?`. */
  exclude: string[];
}

export const DEFAULT_FILES: FilesConfig = { enabled: true, dirs: [], exclude: [] };

/** The journal the agents append to (beside the agent socket). */
export function journalPath(appDir: string): string {
  return join(appDir, "files.journal");
}

/** Every path the journal names (entries: one op letter, the absolute path, NUL). */
export function readJournal(appDir: string): string[] {
  let b: Buffer;
  try {
    b = readFileSync(journalPath(appDir));
  } catch {
    return [];
  }
  const out = new Set<string>();
  let start = 0;
  for (let i = 0; i < b.length; i++) {
    if (b[i] !== 0) continue;
    if (i > start + 1) {
      const p = b.subarray(start + 1, i).toString();
      if (p.startsWith("/")) out.add(resolve(p));
    }
    start = i + 1;
  }
  return [...out];
}

export function globToRegExp(glob: string): RegExp {
  let re = "";
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i]!;
    if (c === "*" && glob[i + 1] === "*") {
      re += ".*";
      i++;
      if (glob[i + 1] === "/") i++;
    } else if (c === "*") re += "[^/]*";
    else if (c === "?") re += "[^/]";
    else re += /[\\^$.+()|{}[\]]/.test(c) ? `\\${c}` : c;
  }
  return new RegExp(`^${re}$`);
}

/** A filter of paths: the kernel's pseudo files (/dev but /dev/shm, /proc, /sys), tardigrade's own files and the excluded globs are out. */
export function fileFilter(cfg: FilesConfig, never: string[]): (path: string) => boolean {
  const globs = cfg.exclude.map(globToRegExp);
  const base = (p: string): string => p.slice(p.lastIndexOf("/") + 1);
  return (p) => {
    // (regular files in /dev/shm are data: POSIX shared memory, python's multiprocessing heap)
    if (/^\/(dev|proc|sys)(\/|$)/.test(p) && !p.startsWith("/dev/shm/")) return false;
    if (never.some((n) => p === n || p.startsWith(n.endsWith("/") ? n : n + "/"))) return false;
    // a glob without a slash matches the file's name, one with a slash the whole path
    return !globs.some((g, i) => g.test(cfg.exclude[i]!.includes("/") ? p : base(p)));
  };
}

/** Regular files any of these host processes holds open for writing or maps shared and writable. */
export function writtenByProcesses(hostPids: number[], scan: ProcScan = scanProcesses(hostPids)): string[] {
  const out = new Set<string>();
  for (const f of scan.fds) {
    if (!f.target.startsWith("/") || f.target.endsWith(" (deleted)") || f.ino === null) continue;
    if ((f.flags & 3) === 0 && (f.flags & 0o2000) === 0) continue; // read only, not appending
    out.add(f.target);
  }
  for (const [pid, text] of scan.maps)
    for (const line of text.split("\n")) {
      const m = /^(\S+) (\S{4}) \S+ \S+ \d+\s+(\/.*)$/.exec(line);
      if (!m || m[2]![1] !== "w" || m[2]![3] !== "s") continue;
      if (!m[3]!.endsWith(" (deleted)")) out.add(m[3]!);
      else {
        const now = relinkedName(pid, m[1]!, m[3]!);
        if (now) out.add(now);
      }
    }
  return [...out];
}

/**
 * The name a shared mapping's file has now when its maps path reads "NAME (deleted)" but the file
 * still has a link in NAME's directory (glibc's sem_open: made under a temporary name, mapped, then
 * linked to its real name and the temporary one removed; native/agent/maps.c does the same), or
 * null (a deleted file: its contents are memory of the image).
 */
export function relinkedName(pid: number, range: string, path: string): string | null {
  const old = path.slice(0, -" (deleted)".length);
  if (/^\/(memfd:|SYSV|dev\/zero)/.test(old)) return null;
  try {
    const st = statSync(`/proc/${pid}/map_files/${range}`);
    if (!st.isFile() || st.nlink < 1) return null;
    const dir = dirname(old);
    const names = readdirSync(dir);
    for (const n of names.slice(0, 100_000)) {
      const p = join(dir, n);
      try {
        const s = lstatSync(p);
        if (s.isFile() && s.ino === st.ino && s.dev === st.dev) return p;
      } catch {
        /* gone */
      }
    }
  } catch {
    /* the mapping or the directory is gone, or not ours to see */
  }
  return null;
}

/** Every regular file under dir (symlinks are not followed); with `dirs`, every directory under it too. */
export function walkDir(dir: string, out: string[] = [], limit = 1_000_000, dirs = false): string[] {
  let names: string[] = [];
  try {
    names = readdirSync(dir);
  } catch {
    return out;
  }
  for (const n of names) {
    if (out.length >= limit) break;
    const p = join(dir, n);
    try {
      const st = lstatSync(p);
      if (st.isDirectory()) {
        if (dirs) out.push(p);
        walkDir(p, out, limit, dirs);
      } else if (st.isFile()) out.push(p);
    } catch {
      /* gone */
    }
  }
  return out;
}

/** Directories among these paths (the app made, removed or renamed them: the journal says so), and everything under them. */
function underDirs(paths: Iterable<string>, keep: (p: string) => boolean): string[] {
  const out: string[] = [];
  for (const p of paths) {
    if (!keep(p)) continue;
    try {
      if (lstatSync(p).isDirectory()) walkDir(p, out, 100_000, true);
    } catch {
      /* absent */
    }
  }
  return out;
}

/**
 * The app's file set at a cut, sorted. Regular files and the directories the app made, removed or renamed (or under
 * `--files DIR`), and what is under them. `deleted`: the staging names of the deleted files held open
 * now (files-deleted.ts); those of the parent's set that are not are left out (they were restored).
 */
export function fileSet(
  cfg: FilesConfig,
  appDir: string,
  hostPids: number[],
  previous: string[],
  keep: (p: string) => boolean,
  deleted: ReadonlyMap<string, string> = new Map(),
  scan: ProcScan = scanProcesses(hostPids),
): string[] {
  const journal = readJournal(appDir);
  const all = new Set<string>([...journal, ...writtenByProcesses(hostPids, scan), ...previous.filter((p) => !isStagingName(p)), ...deleted.keys()]);
  for (const d of cfg.dirs) for (const p of walkDir(d, [], 1_000_000, true)) all.add(p);
  // a directory the app made or renamed: what is in it is the app's too
  for (const p of underDirs(journal, keep)) all.add(p);
  return [...all].filter(keep).sort();
}
