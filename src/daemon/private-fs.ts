// The daemon's state is private to its owner (root, normally): process memory in packs holds
// secrets. The daemon runs under umask 077 whatever it was started with, so everything it or
// its launchers create is 0600 (files) / 0700 (directories) and its socket is unreachable
// for other users; homes created by earlier versions are locked down on start.
// The app itself gets back the umask of whoever ran `tardigrade run` (tardigrade-init --umask).
import { chmodSync, lstatSync, readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { lockDownAcl } from "./private-acl.js";

export const PRIVATE_UMASK = 0o077;

/** The calling process's umask, read from /proc (process.umask() with no argument is deprecated). */
export function currentUmask(): number {
  try {
    const m = /^Umask:\s*([0-7]+)$/m.exec(readFileSync("/proc/self/status", "utf8"));
    if (m) return parseInt(m[1]!, 8);
  } catch {
    /* no /proc: fall through */
  }
  return 0o022;
}

let startUmask = 0o022;

/** Switches this process to umask 077; returns (and remembers) the umask it had. */
export function goPrivate(): number {
  startUmask = process.umask(PRIVATE_UMASK);
  return startUmask;
}

/** The umask the daemon was started with: apps whose client did not say theirs get it. */
export function daemonStartUmask(): number {
  return startUmask;
}

/** A umask a client sent (0..0o777), or null. */
export function validUmask(v: unknown): number | null {
  return typeof v === "number" && Number.isInteger(v) && v >= 0 && v <= 0o777 ? v : null;
}

/**
 * Takes group and other permissions off `root` and everything under it (symlinks are not
 * followed). Returns how many entries it changed.
 */
export function lockDown(root: string, onError: (path: string, e: unknown) => void = () => {}): number {
  let changed = 0;
  const visit = (path: string, depth: number): void => {
    let st;
    try {
      st = lstatSync(path);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "ENOENT") onError(path, e);
      return;
    }
    if (st.isSymbolicLink()) return;
    // (a path with an ACL: the agent's grants to the app's users are kept, the rest taken away)
    let acl: boolean | null = null;
    try {
      acl = lockDownAcl(root, path);
      if (acl) changed++;
    } catch (e) {
      onError(path, e);
    }
    if (acl === null && (st.mode & 0o077) !== 0) {
      try {
        chmodSync(path, st.mode & 0o7700);
        changed++;
      } catch (e) {
        onError(path, e);
      }
    }
    if (!st.isDirectory() || depth > 8) return;
    let names: string[] = [];
    try {
      names = readdirSync(path);
    } catch (e) {
      onError(path, e);
    }
    for (const n of names) visit(join(path, n), depth + 1);
  };
  visit(root, 0);
  return changed;
}
