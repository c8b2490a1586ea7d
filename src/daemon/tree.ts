// The processes of an app: every process of its PID namespace but the namespace's init. They are
// found from the init's host pid through /proc/<pid>/task/<tid>/children (orphans are re-parented
// to that init), with what a restore needs to rebuild the tree: parent, process group and session
// as the app sees them, whether the agent is inside (a statically linked program, or one started
// without LD_PRELOAD, has none), and a zombie's wait status.
import { readFileSync, readdirSync } from "node:fs";
import { TgError } from "../errors.js";

export interface TreeProcess {
  /** The pid as the app sees it (in its PID namespace). */
  pid: number;
  hostPid: number;
  /** Parent, process group and session as the app sees them (1: the namespace's init). */
  ppid: number;
  pgid: number;
  sid: number;
  /** Command line, or the process name when it has none (zombies, kernel-started). */
  command: string;
  comm: string;
  zombie: boolean;
  /** A zombie's wait status (as wait() would return it). */
  waitStatus?: number;
  /** A zombie's credentials (its /proc status: uids and gids real, effective, saved, fs; groups): it ends as that user again on restore. */
  creds?: ZombieCreds;
  /** The agent library is mapped (the process can be captured). */
  agent: boolean;
  /** No agent yet, but one is coming: a program just exec'd whose dynamic loader runs with the agent in its LD_PRELOAD. */
  starting?: boolean;
  threads: number;
}

export interface ZombieCreds {
  uid: number[];
  gid: number[];
  groups: number[];
}

/** Uid, Gid and Groups of a /proc/PID/status, or undefined if a line is missing. */
function credsOf(status: string): ZombieCreds | undefined {
  const ids = (key: string): number[] | undefined => {
    const m = new RegExp(`^${key}:[ \\t]*([\\d \\t]*)$`, "m").exec(status);
    return m ? m[1]!.trim().split(/\s+/).filter((w) => w !== "").map(Number) : undefined;
  };
  const uid = ids("Uid");
  const gid = ids("Gid");
  const groups = ids("Groups");
  if (uid?.length !== 4 || gid?.length !== 4 || !groups) return undefined;
  return { uid, gid, groups };
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

const lastNumber = (status: string, key: string): number | null => {
  const l = new RegExp(`^${key}:\\s*([\\d\\s]+)$`, "m").exec(status)?.[1]?.trim().split(/\s+/) ?? [];
  return l.length ? Number(l[l.length - 1]) : null;
};

const AGENT_MAPPED = /\/libtardigrade-agent[-.]/;

/**
 * A process without the agent mapped that will have it in a moment: its dynamic loader is mapped
 * (not a static program) and the environment it was exec'd with preloads the agent. (A program
 * exec'd by a vfork or clone child under load can stay there for tens of ms.)
 */
function agentComing(hostPid: number, maps: string): boolean {
  if (!/\/ld-linux[^/\n]*\.so/.test(maps)) return false;
  const env = read(`/proc/${hostPid}/environ`) ?? "";
  return env.split("\0").some((v) => v.startsWith("LD_PRELOAD=") && /libtardigrade-agent[-.]/.test(v));
}

/** The snapshot writer of a checkpoint in flight (native/agent: never part of the app). */
const SNAPSHOT_COMM = "tg-snapshot";

function describe(hostPid: number, nsOf: Map<number, number>): TreeProcess | null {
  const status = read(`/proc/${hostPid}/status`);
  const stat = read(`/proc/${hostPid}/stat`);
  if (status === null || stat === null) return null;
  const pid = lastNumber(status, "NSpid") ?? hostPid;
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" "); // fields[0] is field 3 (state)
  const state = fields[0] ?? "?";
  const zombie = state === "Z" || state === "X";
  const hostPpid = Number(fields[1]);
  const comm = /^Name:\s*(.*)$/m.exec(status)?.[1] ?? "?";
  const cmdline = (read(`/proc/${hostPid}/cmdline`) ?? "").replace(/\0+$/, "").split("\0").join(" ");
  const exitCode = Number(fields[52 - 3]);
  const creds = zombie ? credsOf(status) : undefined;
  const maps = zombie ? "" : (read(`/proc/${hostPid}/maps`) ?? "");
  const agent = !zombie && AGENT_MAPPED.test(maps);
  return {
    pid,
    hostPid,
    ppid: nsOf.get(hostPpid) ?? 0,
    pgid: lastNumber(status, "NSpgid") ?? 0,
    sid: lastNumber(status, "NSsid") ?? 0,
    command: cmdline || comm,
    comm,
    zombie,
    ...(zombie && Number.isInteger(exitCode) ? { waitStatus: exitCode } : {}),
    ...(zombie && creds ? { creds } : {}),
    agent,
    ...(!zombie && !agent && agentComing(hostPid, maps) ? { starting: true } : {}),
    threads: lastNumber(status, "Threads") ?? 1,
  };
}

/** Every process of the namespace under the init (host pid), in pid order; the snapshot writers of a checkpoint in flight left out. */
export function appProcesses(initHostPid: number): TreeProcess[] {
  const nsOf = new Map<number, number>([[initHostPid, 1]]);
  const queue = [initHostPid];
  const hosts: number[] = [];
  while (queue.length) {
    const p = queue.shift()!;
    for (const c of childrenOf(p)) {
      if (nsOf.has(c)) continue;
      const st = read(`/proc/${c}/status`);
      if (st === null) continue;
      nsOf.set(c, lastNumber(st, "NSpid") ?? c);
      queue.push(c);
      hosts.push(c);
    }
  }
  const out: TreeProcess[] = [];
  for (const h of hosts) {
    const d = describe(h, nsOf);
    if (d && d.comm !== SNAPSHOT_COMM) out.push(d);
  }
  return out.sort((a, b) => a.pid - b.pid);
}

/** Every descendant of the namespace's init except the app process itself (its own descendants included). */
export function otherProcesses(initHostPid: number, appHostPid: number): TreeProcess[] {
  return appProcesses(initHostPid).filter((p) => p.hostPid !== appHostPid);
}

const LISTED = 16;

/** "pid 12 (sh -c sleep 6; exit 3), pid 13 (sleep, a zombie not yet reaped)". */
export function describeProcesses(list: TreeProcess[]): string {
  const shown = list.slice(0, LISTED).map((p) => `pid ${p.pid} (${p.command.length > 100 ? p.command.slice(0, 100) + "..." : p.command}${p.zombie ? ", a zombie not yet reaped" : ""})`);
  return shown.join(", ") + (list.length > LISTED ? `, and ${list.length - LISTED} more` : "");
}

/**
 * Why tardigrade-restore could not rebuild this tree's sessions and process groups, or null.
 * The restorer (native/restore/restore.c) makes each process from its parent (the main process
 * and orphans from the init, whose session and group are 1), in pid order, depth first; orphans of
 * a session whose leader is gone from a helper that takes the leader's pid. A process then calls
 * setsid() if it leads its session, else keeps its parent's; it leads its group, keeps its
 * parent's, or joins a group whose leader was made before it.
 */
export function layoutProblem(list: TreeProcess[], mainPid: number): string | null {
  const byPid = new Map(list.map((p) => [p.pid, p]));
  const creatorOf = (p: TreeProcess): { sid: number; pgid: number } => {
    const parent = p.pid === mainPid ? undefined : byPid.get(p.ppid);
    if (parent) return parent;
    if (p.sid !== 1 && p.sid !== p.pid && !byPid.has(p.sid)) return { sid: p.sid, pgid: p.sid }; // the session helper
    return { sid: 1, pgid: 1 };
  };
  // creation order, as the restorer goes
  const order: TreeProcess[] = [];
  const visit = (p: TreeProcess): void => {
    order.push(p);
    for (const c of list) if (c.pid !== mainPid && c.ppid === p.pid) visit(c);
  };
  const top = list.filter((p) => p.pid === mainPid || !byPid.has(p.ppid));
  for (const p of top.filter((q) => !(q.sid !== 1 && q.sid !== q.pid && !byPid.has(q.sid)))) visit(p);
  for (const p of top.filter((q) => q.sid !== 1 && q.sid !== q.pid && !byPid.has(q.sid))) visit(p);
  const made = new Set<number>();
  for (const p of order) {
    const c = creatorOf(p);
    if (p.sid !== p.pid && p.sid !== c.sid)
      return `pid ${p.pid} (${p.comm}) is in session ${p.sid}, which its parent pid ${p.ppid} is not in`;
    const groupNow = p.sid === p.pid ? p.pid : c.pgid;
    if (p.pgid !== p.pid && p.pgid !== groupNow && !made.has(p.pgid))
      return `pid ${p.pid} (${p.comm}) is in process group ${p.pgid}, whose leader is gone or would be made after it`;
    made.add(p.pid);
  }
  return null;
}

/** A checkpoint refused for the tree's sake (nothing was committed). */
export function treeRefusal(app: string, why: string, fix: string): TgError {
  return new TgError(`cannot checkpoint ${app}`, why, `${fix}. Nothing was committed; the app keeps running and earlier checkpoints are intact`, "unsupported");
}

/** The agent's own refusal (children found while every thread was parked: a fork since the daemon looked). */
export function isAgentTreeRefusal(why: string): boolean {
  return /^the app has \d+ other process(es)?: /.test(why);
}
