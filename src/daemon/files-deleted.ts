// Deleted-but-open files (issue 14, docs/files.md "Deleted-but-open files"): a regular file a
// process of the app unlinked but still holds open is part of the files image under a staging
// name beside the one it had, `DIR/.tardigrade-deleted.INO.PID.FD` (PID as the app sees it, in its
// PID namespace), read at the cut through /proc/PID/fd/N. The rollback writes it back under that
// name; the restorer opens it there and removes the name (native/agent/files-deleted.c, which
// makes the same name for the FD record).
import { readFileSync } from "node:fs";
import { basename, dirname, join } from "node:path";
import { scanProcesses, type ProcScan } from "./files-procscan.js";

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
export function deletedOpenFiles(hostPids: number[], scan: ProcScan = scanProcesses(hostPids)): Map<string, string> {
  const out = new Map<string, string>();
  const ns = new Map<number, number>();
  for (const f of scan.fds) {
    if (!f.target.endsWith(SUFFIX) || f.ino === null || f.nlink !== 0n) continue;
    try {
      if (!ns.has(f.hostPid)) ns.set(f.hostPid, nsPid(f.hostPid));
    } catch {
      continue; // gone
    }
    out.set(stagingName(f.target.slice(0, -SUFFIX.length), f.ino, ns.get(f.hostPid)!, f.fd), `/proc/${f.hostPid}/fd/${f.fd}`);
  }
  return out;
}
