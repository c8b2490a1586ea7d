// The processes of an app's PID namespace other than the app itself. Process trees are not
// captured yet: a checkpoint refuses while there is any (a zombie waiting to be reaped, a
// pipeline's members, a daemon that double-forked inside the namespace). Every process of the
// namespace but its init is the app's; they are found from the init's host pid through
// /proc/<pid>/task/<tid>/children (orphans are re-parented to that init).
import { readFileSync, readdirSync } from "node:fs";
import { TgError } from "../errors.js";

export interface OtherProcess {
  /** The pid as the app sees it (in its PID namespace). */
  pid: number;
  hostPid: number;
  /** Command line, or the process name when it has none (zombies, kernel-started). */
  command: string;
  zombie: boolean;
}

function read(path: string): string | null {
  try {
    return readFileSync(path, "utf8");
  } catch {
    return null;
  }
}

/** Host pids of the children of every thread of host process `pid` (none if it is gone). */
export function childrenOf(pid: number): number[] {
  let tids: string[];
  try {
    tids = readdirSync(`/proc/${pid}/task`);
  } catch {
    return [];
  }
  const out: number[] = [];
  for (const t of tids) {
    const list = read(`/proc/${pid}/task/${t}/children`) ?? "";
    for (const w of list.split(/\s+/)) if (/^\d+$/.test(w)) out.push(Number(w));
  }
  return out;
}

function describe(hostPid: number): OtherProcess | null {
  const status = read(`/proc/${hostPid}/status`);
  if (status === null) return null;
  const ns = /^NSpid:\s*([\d\s]+)$/m.exec(status)?.[1]?.trim().split(/\s+/) ?? [];
  const pid = Number(ns[ns.length - 1] ?? hostPid);
  const state = /^State:\s*(\S)/m.exec(status)?.[1] ?? "?";
  const zombie = state === "Z" || state === "X";
  const name = /^Name:\s*(.*)$/m.exec(status)?.[1] ?? "?";
  const cmdline = (read(`/proc/${hostPid}/cmdline`) ?? "").replace(/\0+$/, "").split("\0").join(" ");
  return { pid, hostPid, command: cmdline || name, zombie };
}

/** Every descendant of the namespace's init except the app process itself (its own descendants included). */
export function otherProcesses(initHostPid: number, appHostPid: number): OtherProcess[] {
  const seen = new Set<number>([initHostPid]);
  const queue = [initHostPid];
  const out: OtherProcess[] = [];
  while (queue.length) {
    const p = queue.shift()!;
    for (const c of childrenOf(p)) {
      if (seen.has(c)) continue;
      seen.add(c);
      queue.push(c);
      if (c === appHostPid) continue;
      const d = describe(c);
      if (d) out.push(d);
    }
  }
  return out.sort((a, b) => a.pid - b.pid);
}

const LISTED = 16;

/** "pid 12 (sh -c sleep 6; exit 3), pid 13 (sleep, a zombie not yet reaped)". */
export function describeProcesses(list: OtherProcess[]): string {
  const shown = list.slice(0, LISTED).map((p) => `pid ${p.pid} (${p.command.length > 100 ? p.command.slice(0, 100) + "..." : p.command}${p.zombie ? ", a zombie not yet reaped" : ""})`);
  return shown.join(", ") + (list.length > LISTED ? `, and ${list.length - LISTED} more` : "");
}

/** The fix of a refusal for child processes. */
export const TREE_FIX =
  "Process trees are not supported yet: checkpoint once the app's child processes have ended and been waited for. Nothing was committed; the app keeps running and earlier checkpoints are intact";

export function treeRefusal(app: string, list: OtherProcess[]): TgError {
  const n = list.length;
  return new TgError(`cannot checkpoint ${app}`, `the app has ${n} other process${n === 1 ? "" : "es"}: ${describeProcesses(list)}`, TREE_FIX, "unsupported");
}

/** The agent's own refusal (children found while every thread was parked), with the same fix. */
export function isAgentTreeRefusal(why: string): boolean {
  return /^the app has \d+ other process(es)?: /.test(why);
}
