// What the agents of an app's ended processes leave in the app's directory: the socket file of a
// process that ended without exit() (killed, _exit: a forked child usually), and its changed-ranges
// table `ranges.PID.NONCE` (files-ranges.ts). A tree that forks short-lived children left ~130
// files and ~4.5 MiB per second of them (by hand: 2646 files, 89 MiB after 20 s) until its next
// checkpoint. Swept every few seconds while the app runs, and at each tree checkpoint: a socket of a
// process that is not alive, a table no live process maps and in which nothing was noted (one with
// notes waits for the next cut, which reads it and removes it). Files younger than a few seconds
// are left alone: a process forked a moment ago may not be listed yet.
import { readdirSync, rmSync, statSync } from "node:fs";
import { basename, dirname, join } from "node:path";
import { tableIsEmpty, tablesOf } from "./files-ranges.js";
import type { TreeProcess } from "./tree.js";

const MIN_AGE_MS = 2000;

/** Removes the leftovers of the app's ended processes; `procs`: its processes now. How many files went. */
export function sweepLeftovers(sock: string, procs: TreeProcess[]): number {
  const dir = dirname(sock);
  const prefix = basename(sock) + ".";
  const live = procs.filter((p) => !p.zombie);
  const livePids = new Set(live.map((p) => String(p.pid)));
  const mapped = new Set(tablesOf(live.map((p) => p.hostPid)).values());
  const old = Date.now() - MIN_AGE_MS;
  let names: string[] = [];
  try {
    names = readdirSync(dir);
  } catch {
    return 0;
  }
  let removed = 0;
  for (const n of names) {
    const path = join(dir, n);
    const socket = n.startsWith(prefix) && /^\d+$/.test(n.slice(prefix.length)) && !livePids.has(n.slice(prefix.length));
    const table = /^ranges\.\d+\.[0-9a-f]{16}$/.test(n) && !mapped.has(path);
    if (!socket && !table) continue;
    try {
      if (statSync(path).ctimeMs >= old) continue;
      if (table && !tableIsEmpty(path)) continue;
      rmSync(path, { force: true });
      removed++;
    } catch {
      /* gone meanwhile */
    }
  }
  return removed;
}
