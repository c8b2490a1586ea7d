// Deleted-but-open files (issue 14, docs/files.md "Deleted-but-open files"): a regular file a
// process of the app unlinked but still holds open is part of the files image under a staging
// name beside the one it had, `DIR/.tardigrade-deleted.INO.PID.FD` (PID as the app sees it, in its
// PID namespace), read at the cut through /proc/PID/fd/N. The rollback writes it back under that
// name; the restorer opens it there and removes the name (native/agent/files-deleted.c, which
// makes the same name for the FD record).
import { readFileSync, readlinkSync, rmSync, statSync } from "node:fs";
import { basename, dirname, join } from "node:path";
import { TgError } from "../errors.js";
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

function onItsDirectory(path: string, dev: bigint | null): boolean {
  try {
    return dev !== null && statSync(dirname(path), { bigint: true }).dev === dev;
  } catch {
    return false; // its directory is gone: the agent refuses such a file by name
  }
}

/** The deleted regular files the processes hold open: staging name -> where to read it now (/proc/PID/fd/N). */
export function deletedOpenFiles(hostPids: number[], scan: ProcScan = scanProcesses(hostPids)): Map<string, string> {
  const out = new Map<string, string>();
  const ns = new Map<number, number>();
  for (const f of scan.fds) {
    if (!f.target.endsWith(SUFFIX) || f.ino === null || f.nlink !== 0n) continue;
    // a file of the file system its path names, as the agent decides (native/agent/files-deleted.c):
    // not a memfd ("/memfd:NAME (deleted)": the agent's own copy buffers too), a message queue or
    // another object of an internal mount, whose directory is on another device
    if (!onItsDirectory(f.target.slice(0, -SUFFIX.length), f.dev)) continue;
    try {
      if (!ns.has(f.hostPid)) ns.set(f.hostPid, nsPid(f.hostPid));
    } catch {
      continue; // gone
    }
    out.set(stagingName(f.target.slice(0, -SUFFIX.length), f.ino, ns.get(f.hostPid)!, f.fd), `/proc/${f.hostPid}/fd/${f.fd}`);
  }
  return out;
}

/**
 * A deleted file held open that the set leaves out (a `--files-exclude` glob, a pseudo file
 * system): its agent records the fd by its staging name all the same, and no rollback would write
 * it there, so such a checkpoint could never be restored. Refused instead, naming the file.
 */
export function refuseExcludedDeleted(app: string, deleted: ReadonlyMap<string, string>, keep: (p: string) => boolean): void {
  for (const [staging, src] of deleted) {
    if (keep(staging)) continue;
    let target = "?";
    try {
      target = readlinkSync(src);
    } catch {
      /* closed meanwhile */
    }
    const [, pid, fd] = /^\/proc\/(\d+)\/fd\/(\d+)$/.exec(src) ?? [];
    throw new TgError(
      `cannot checkpoint ${app}`,
      `host pid ${pid ?? "?"} holds fd ${fd ?? "?"} open on the deleted file ${target}, which the app's file set leaves out (a --files-exclude glob or a pseudo file system): a restore could not give the process its contents back`,
      "Leave that directory out of --files-exclude (or have the app close the file). Nothing was committed; the app keeps running and earlier checkpoints are intact",
      "unsupported",
    );
  }
}

/**
 * After a restore: the staging names the rollback wrote that no restorer removed. A restorer
 * opens and removes the name of each deleted file it opens; a description shared through fork in
 * a tree is opened once and passed on, so the other processes' names are left (python's
 * multiprocessing: the heap arena held by the parent and each worker). Removed here, whether
 * the restore started the app or failed (the next restore writes them again).
 */
export function removeStagingLeft(paths: readonly string[]): string[] {
  const removed: string[] = [];
  for (const p of paths) {
    if (!isStagingName(p)) continue;
    try {
      rmSync(p);
      removed.push(p);
    } catch {
      /* removed by its restorer */
    }
  }
  return removed;
}
