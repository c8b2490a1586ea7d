// A process tree's checkpoint: one consistent cut over every process of the app. Each process's
// agent is asked with `hold`: it parks its threads and says "parked"; once every process is
// parked the daemon says CAPTURE (each takes its snapshot, pipe contents and all, with the whole
// tree stopped) and, once every process is captured, RESUME. Any failure before that sends ABORT
// to the others: nothing is captured, every process resumes. Each process's image is stored as a
// checkpoint of its own at the tree's seq (the main process under the app's name, the others
// under `<app>~<pid>`, committed first); the main process's checkpoint, committed last, lists the
// tree in stats.extra.tree, and is what `ls` shows and `restore` takes.
import { existsSync, readFileSync, readdirSync, readlinkSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { TgError, errMessage } from "../errors.js";
import type { CasStore } from "../store/cas/store.js";
import type { IngestInfo, MappedFile, VmaFile } from "../store/cas/types.js";
import { memberApp, parseMemberApp } from "../store/types.js";
import { ping, type CheckpointEvent, type ExternalUnixPolicy, type TrackingMode } from "./agent.js";
import { captureIntoCas, type CasCapture } from "./cas-flow.js";
import { sleep } from "./procs.js";
import { testDelay } from "./test-hooks.js";
import { sharedDescriptions } from "./shared-fds.js";
import { sweepLeftovers } from "./leftovers-sweep.js";
import type { TreeInfo } from "./tree-info.js";
import { describeProcesses, layoutProblem, treeRefusal, type TreeProcess } from "./tree.js";

/** Where process `pid`'s agent listens (docs/native-interface.md). */
export function agentSock(sock: string, pid: number, mainPid: number): string {
  return pid === mainPid ? sock : `${sock}.${pid}`;
}

/** Per process: the agent's seq of its last committed image and that checkpoint (incrementals). */
export type TreeLineage = Record<string, { agentSeq: number; id: string }>;

/** Every process parked before any is captured, every one captured before any resumes. */
class Cut {
  private parked = 0;
  private captured = 0;
  private failed: Error | null = null;
  private verifying = false;
  private verified = false;
  /** The files' cut (atCut) is done: RESUME waits for it, CAPTURE does not (both read the parked tree). */
  private filesCut = false;
  get failedWith(): Error | null {
    return this.failed;
  }
  private readonly waiters: { stage: "parked" | "captured"; resolve: (w: string) => void; reject: (e: Error) => void }[] = [];
  /** When (daemon's monotonic clock, ns) the first process parked, all had, the tree was verified, all had captured. */
  readonly at = { firstParked: 0n, allParked: 0n, verified: 0n, allCaptured: 0n };
  constructor(private readonly n: number) {}

  /** pid -> the Unix sockets its agent found without their peer in that process: [fd, inode, peer inode] */
  private readonly unixLone = new Map<number, [number, number, number][]>();

  hold(e: Extract<CheckpointEvent, { event: "parked" | "captured" }>, pid: number): Promise<string> {
    if (this.failed) return Promise.reject(this.failed);
    if (e.event === "captured" && e.unix !== undefined) {
      if (typeof e.unix === "string") {
        const why = new TreeRefused(`pid ${pid} has more Unix sockets connected to other processes than a checkpoint lists (${e.unix})`);
        this.fail(why);
        return Promise.reject(why);
      }
      this.unixLone.set(pid, e.unix);
    }
    return new Promise((resolve, reject) => {
      this.waiters.push({ stage: e.event, resolve, reject });
      const now = process.hrtime.bigint();
      if (e.event === "parked") {
        if (this.parked++ === 0) this.at.firstParked = now;
        if (this.parked === this.n) this.at.allParked = now;
      } else if (++this.captured === this.n) this.at.allCaptured = now;
      this.release();
    });
  }

  fail(why: Error): void {
    if (this.failed) return;
    this.failed = why;
    for (const w of this.waiters.splice(0)) w.reject(why);
  }

  /** Asked once every process is parked: a reason to call the cut off (the tree changed), or null. */
  verify: () => string | null = () => null;
  /** Run once verified, every process still parked (the files' cut), beside the processes' own captures. */
  atCut: () => Promise<void> = async () => {};

  /** Every Unix socket whose peer is in another process: is that peer in a process of the tree (and is its peer this one)? */
  private unixProblem(): string | null {
    const lone = [...this.unixLone.entries()].flatMap(([pid, l]) => l.map(([fd, ino, peer]) => ({ pid, fd, ino, peer })));
    for (const s of lone)
      if (!lone.some((o) => o.ino === s.peer && o.peer === s.ino && o.pid !== s.pid))
        return `fd ${s.fd} of pid ${s.pid} is a Unix socket (socket:[${s.ino}]) connected to a socket no process of the app holds (socket:[${s.peer}]: a process outside the app, or a connection not accepted yet)`;
    return null;
  }

  private release(): void {
    const stage = this.parked === this.n && this.captured === 0 ? "parked" : this.captured === this.n ? "captured" : null;
    if (!stage) return;
    if (stage === "captured") {
      if (!this.filesCut) return; // (release() again once it is)
      const problem = this.unixProblem();
      if (problem) {
        this.fail(new TreeRefused(problem));
        return;
      }
    }
    if (stage === "parked" && !this.verified) {
      if (this.verifying) return;
      this.verifying = true;
      // (a test pause with every process parked: TG_TEST_DELAY_AT=tree-parked:MS)
      void testDelay("tree-parked").then(() => {
        if (this.failed) return;
        try {
          const changed = this.verify();
          if (changed) {
            this.fail(new TreeChanged(changed));
            return;
          }
        } catch (e) {
          this.fail(e instanceof Error ? e : new Error(String(e)));
          return;
        }
        this.verified = true;
        this.at.verified = process.hrtime.bigint();
        // every process captures its own state now, and the app's files are read at the same
        // instant meanwhile (files-flow.ts): the tree stays parked until both are done. (The
        // CAPTURE words go out first: the files' cut is synchronous work on this thread.)
        this.release();
        setImmediate(() => {
          if (this.failed) return;
          void this.atCut().then(
            () => {
              this.filesCut = true;
              this.release();
            },
            (e: unknown) => this.fail(e instanceof Error ? e : new Error(String(e))),
          );
        });
      });
      return;
    }
    for (const w of this.waiters.filter((x) => x.stage === stage)) w.resolve(stage === "parked" ? "CAPTURE" : "RESUME");
    this.waiters.splice(0, this.waiters.length, ...this.waiters.filter((x) => x.stage !== stage));
  }
}

/** The tree changed between the daemon's look and the park: the checkpoint is tried again. */
class TreeChanged extends Error {}
/** Something of the parked tree cannot be captured: the checkpoint is refused. */
class TreeRefused extends Error {}

/**
 * Pipe ends no process of the tree has the other end of, held by a process outside the app:
 * "pipe:[N] (pid P, fd F; also held by host pid H, outside the app)". Only pipes the app holds
 * one end of are looked for outside (a walk of every process's fds, so only when there are such
 * pipes); a pipe with both ends in the app is the app's.
 */
function pipesToOutside(procs: TreeProcess[]): string[] {
  const ends = new Map<string, { pid: number; fd: string; dirs: Set<number> }>();
  for (const p of procs) {
    if (p.zombie) continue;
    let fds: string[] = [];
    try {
      fds = readdirSync(`/proc/${p.hostPid}/fd`);
    } catch {
      continue;
    }
    for (const fd of fds) {
      let t = "";
      let dir = 0;
      try {
        t = readlinkSync(`/proc/${p.hostPid}/fd/${fd}`);
        if (!t.startsWith("pipe:[")) continue;
        // O_RDONLY 0, O_WRONLY 1 (an O_RDWR end of a FIFO opened by path: both)
        dir = Number.parseInt(/^flags:\s*([0-7]+)/m.exec(readFileSync(`/proc/${p.hostPid}/fdinfo/${fd}`, "utf8"))?.[1] ?? "0", 8) & 3;
      } catch {
        continue;
      }
      const e = ends.get(t) ?? { pid: p.pid, fd, dirs: new Set<number>() };
      if (dir === 2) e.dirs.add(0).add(1);
      else e.dirs.add(dir);
      ends.set(t, e);
    }
  }
  const lone = new Map([...ends].filter(([, e]) => e.dirs.size < 2));
  if (!lone.size) return [];
  const inApp = new Set(procs.map((p) => p.hostPid));
  const out: string[] = [];
  for (const d of readdirSync("/proc")) {
    if (!/^\d+$/.test(d) || inApp.has(Number(d))) continue;
    let fds: string[] = [];
    try {
      fds = readdirSync(`/proc/${d}/fd`);
    } catch {
      continue;
    }
    for (const fd of fds) {
      try {
        const t = readlinkSync(`/proc/${d}/fd/${fd}`);
        const e = lone.get(t);
        if (e) {
          out.push(`${t} (pid ${e.pid}, fd ${e.fd}; also held by host pid ${d}, outside the app)`);
          lone.delete(t);
        }
      } catch {
        /* gone */
      }
    }
  }
  return out;
}

export interface TreeCapture {
  main: CasCapture;
  others: CasCapture[];
  info: TreeInfo;
  lineage: TreeLineage;
}

export interface TreeCheckpointArgs {
  cas: CasStore;
  app: string;
  sock: string;
  stagingRoot: string;
  /** The app's processes now (appProcesses of its init). */
  list: () => TreeProcess[];
  mainHostPid: number;
  /** The main process's base (null: full) and every other process's (from the app's record). */
  mainIncremental: { agentSeq: number; id: string } | null;
  lineage: TreeLineage;
  full: boolean;
  tracking?: TrackingMode;
  /** run --external-unix: passed to every process's agent. */
  externalUnix?: ExternalUnixPolicy;
  describeFiles: (v: VmaFile[]) => Promise<MappedFile[]>;
  onProgress: (done: number, total: number) => void;
  onEvent: (pid: number, e: CheckpointEvent) => void;
  /** The app's files (files-flow.ts), per attempt at its seq before any image is queued. */
  files?: (seq: number) => TreeFiles;
}

/** A tree checkpoint's file capture (files-flow.ts): queued in the store before the processes' images. */
export interface TreeFiles {
  /** With every process parked and the cut verified, while they capture (`hostPids`: the live processes of the cut). */
  atCut(hostPids: number[]): Promise<void>;
  /** Awaited before the main process's checkpoint commits; what it returns joins the tree listing in its stats.extra. */
  beforeMainCommit(): Promise<Record<string, unknown>>;
  /** The attempt failed. */
  abort(why: unknown): void;
}

/** Attempts before giving up on a tree that keeps changing (processes starting or ending) under the cut. */
const ATTEMPTS = 25;

/** Looks in a row a process must be seen without the agent before the checkpoint refuses it (one in the middle of an exec has none for a moment). */
const NO_AGENT_LOOKS = 3;

/**
 * The fork gate (native/agent/forkgate.c): while the file is there, fork() in the app's processes
 * waits, so the tree the daemon lists is the tree it parks. Shut before each look, opened once
 * every process is parked (none can fork then) or when the attempt ends; its mtime bounds an
 * agent's wait if the daemon dies meanwhile.
 */
export class ForkGate {
  readonly path: string;
  constructor(sock: string) {
    this.path = join(dirname(sock), "cut.gate");
  }
  shut(): void {
    try {
      writeFileSync(this.path, "", { mode: 0o600 });
    } catch {
      /* the app's directory is gone: the cut fails on its own */
    }
  }
  open(): void {
    rmSync(this.path, { force: true });
  }
}

export async function checkpointTree(a: TreeCheckpointArgs): Promise<TreeCapture> {
  const gate = new ForkGate(a.sock);
  try {
    return await checkpointTreeGated(a, gate);
  } finally {
    gate.open();
  }
}

async function checkpointTreeGated(a: TreeCheckpointArgs, gate: ForkGate): Promise<TreeCapture> {
  const noAgentSeen = new Map<number, number>(); // host pid -> looks in a row without the agent
  let waits = 0; // bounded: a tree that always has a process in the middle of an exec is looked at anyway
  for (let attempt = 1; ; attempt++) {
    gate.shut();
    const procs = a.list();
    const main = procs.find((p) => p.hostPid === a.mainHostPid);
    if (!main) throw new TgError(`cannot checkpoint ${a.app}`, "its main process has exited", "Nothing was committed", "not-running");
    const lacking = procs.filter((p) => !p.zombie && !p.agent);
    for (const h of [...noAgentSeen.keys()]) if (!lacking.some((p) => p.hostPid === h)) noAgentSeen.delete(h);
    // (one whose loader is still bringing the agent in is not counted: it is waited for)
    for (const p of lacking) if (!p.starting) noAgentSeen.set(p.hostPid, (noAgentSeen.get(p.hostPid) ?? 0) + 1);
    if (lacking.some((p) => p.starting || (noAgentSeen.get(p.hostPid) ?? 0) < NO_AGENT_LOOKS) && waits++ < 100) {
      await sleep(20 + Math.random() * 30);
      attempt--;
      continue;
    }
    try {
      return await checkpointOnce(a, procs, main.pid, gate);
    } catch (e) {
      if (e instanceof TreeChanged && attempt < ATTEMPTS) {
        await sleep(Math.random() * 30); // out of step with a loop that forks at a fixed period
        continue;
      }
      {
        if (e instanceof TreeChanged)
          throw new TgError(`cannot checkpoint ${a.app}`, `its processes kept changing during ${ATTEMPTS} attempts (last: ${e.message})`, "Nothing was committed; the app keeps running; try again", "checkpoint-failed");
        throw e;
      }
    }
  }
}

const pidSet = (l: TreeProcess[]): string =>
  l
    .filter((p) => !p.zombie)
    .map((p) => p.pid)
    .join(",");

async function checkpointOnce(a: TreeCheckpointArgs, procs: TreeProcess[], mainPid: number, gate: ForkGate): Promise<TreeCapture> {
  sweepLeftovers(a.sock, procs);
  const live = procs.filter((p) => !p.zombie);
  const noAgent = live.filter((p) => !p.agent);
  if (noAgent.length)
    throw treeRefusal(a.app, `${describeProcesses(noAgent)}: ${noAgent.length === 1 ? "has" : "have"} no tardigrade agent inside (a statically linked program, or one started without LD_PRELOAD)`, "Checkpoint once it has ended, or run it dynamically linked with LD_PRELOAD kept");
  const problem = layoutProblem(procs, mainPid);
  if (problem) throw treeRefusal(a.app, `the restorer could not rebuild its sessions and process groups: ${problem}`, "Checkpoint once that process has ended");
  const outside = pipesToOutside(procs);
  if (outside.length) throw treeRefusal(a.app, `pipes to processes outside the app: ${outside.join(", ")}`, "Checkpoint once those pipes are closed");
  // every agent answers (a process forked a moment ago starts its manager first)
  // (only where the socket is not there yet: the cut must follow the look quickly, a shell loop
  // forks every few ms)
  for (const p of live) {
    const sock = agentSock(a.sock, p.pid, mainPid);
    const deadline = Date.now() + 10_000;
    for (;;) {
      if (existsSync(sock)) break;
      try {
        await ping(sock, 2000);
        break;
      } catch (e) {
        const now = a.list().find((q) => q.pid === p.pid);
        if (!now || now.hostPid !== p.hostPid || now.zombie || now.command !== p.command) throw new TreeChanged(`pid ${p.pid} (${p.command}) ended or exec'd`);
        if (Date.now() > deadline)
          throw new TgError(`cannot checkpoint ${a.app}`, `the agent of pid ${p.pid} (${p.command}) does not answer on ${sock} (${errMessage(e)})`, "Nothing was committed; try again", "agent-unreachable");
        await sleep(20);
      }
    }
  }
  // one seq for the whole tree, above every earlier one of any of its processes (a failed tree
  // checkpoint may have left other processes' checkpoints at a seq its main one never got)
  const seqs = a.cas.list().filter((c) => c.app === a.app || parseMemberApp(c.app)?.app === a.app).map((c) => c.seq);
  const seq = (seqs.length ? Math.max(...seqs) : 0) + 1;
  const cut = new Cut(live.length);
  const info: TreeInfo = { tree: [], treeDowntimeNs: 0 };
  const before = pidSet(procs);
  let cutHostPids: number[] = [];
  cut.verify = () => {
    // every thread of every process is parked: none can fork or exit now (but a process that had
    // not been asked yet, and a process in exit)
    const list = a.list();
    const now = pidSet(list);
    if (now !== before) return `processes ${before} became ${now}`;
    // (listed before any snapshot writer is forked: a writer's first instant has the app's name)
    cutHostPids = list.filter((p) => !p.zombie).map((p) => p.hostPid);
    gate.open(); // every process is parked: none forks until it resumes
    const shared = sharedDescriptions(list);
    if (shared.problem) throw new TreeRefused(shared.problem);
    if (shared.groups.length) info.shared = shared.groups;
    else delete info.shared;
    return null;
  };
  const files = a.files?.(seq);
  if (files) cut.atCut = () => files.atCut(cutHostPids);
  // the tree's downtime: the first process stopped to the last resumed, on the agents' clock
  // (CLOCK_MONOTONIC, the same for every process of the host)
  let firstStop = Infinity;
  let lastResumed = 0;
  const downtimes = new Map<number, number>();
  // the other processes first: the store ingests one image at a time, in this order, and the main
  // process's checkpoint, committed last, waits for theirs
  const order = [...live.filter((p) => p.pid !== mainPid), ...live.filter((p) => p.pid === mainPid)];
  const captures: Promise<CasCapture>[] = [];
  const queued: Promise<void>[] = [];
  // every agent is asked at once, when every process's FIFO and ingest are ready (the first to
  // park would otherwise wait, stopped, while the daemon sets up the others)
  let go!: () => void;
  const allReady = new Promise<void>((r) => (go = r));
  for (const p of order) {
    const isMain = p.pid === mainPid;
    const storeApp = isMain ? a.app : memberApp(a.app, p.pid);
    const base = a.full ? null : isMain ? a.mainIncremental : (a.lineage[String(p.pid)] ?? null);
    let baseOk = base !== null && a.tracking !== "none";
    if (base && baseOk) {
      try {
        a.cas.get(base.id);
      } catch {
        baseOk = false; // collected: this one is full
      }
    }
    const others = captures.slice();
    let tell: () => void = () => {};
    if (!isMain) queued.push(new Promise<void>((r) => (tell = r)));
    const ingestInfo: Omit<IngestInfo, "downtimeNs" | "totalNs"> = {
      ...(baseOk && base ? { parent: base.id } : {}),
      onProgress: a.onProgress,
      describeFiles: a.describeFiles,
      ...(isMain
        ? {
            extra: info,
            beforeCommit: async () => {
              const done = await Promise.allSettled(others);
              const bad = done.find((d) => d.status === "rejected");
              if (bad) throw (bad as PromiseRejectedResult).reason;
              if (files) Object.assign(info, await files.beforeMainCommit());
              // the listing goes into this checkpoint's stats (the same object), before it commits
              const ids = new Map<number, string>([[mainPid, `${a.app}@${seq}`]]);
              done.forEach((d, i) => ids.set(order[i]!.pid, (d as PromiseFulfilledResult<CasCapture>).value.checkpoint.id));
              info.treeDowntimeNs = lastResumed > firstStop ? lastResumed - firstStop : Math.max(0, ...downtimes.values());
              // where the tree's downtime went (the agents' CLOCK_MONOTONIC is node's hrtime clock)
              const at = cut.at;
              if (lastResumed > firstStop && at.allCaptured > 0n)
                info.cut = {
                  parkNs: Number(at.allParked) - firstStop,
                  verifyNs: Number(at.verified - at.allParked),
                  captureNs: Number(at.allCaptured - at.verified),
                  resumeNs: lastResumed - Number(at.allCaptured),
                };
              info.tree = procs.map((q) => ({
                pid: q.pid,
                ppid: q.pid === mainPid ? 1 : q.ppid,
                pgid: q.pgid,
                sid: q.sid,
                comm: q.comm,
                threads: q.threads,
                ...(ids.has(q.pid) ? { id: ids.get(q.pid)!, downtimeNs: downtimes.get(q.pid) ?? 0 } : {}),
                ...(q.zombie ? { zombie: true, waitStatus: q.waitStatus ?? 0, ...(q.creds ? { creds: q.creds } : {}) } : {}),
              }));
            },
          }
        : {}),
    };
    const c = captureIntoCas(
      a.cas,
      a.app,
      agentSock(a.sock, p.pid, mainPid),
      p.pid,
      a.stagingRoot,
      { ...(baseOk && base ? { incrementalOn: base.agentSeq } : {}), ...(a.tracking ? { tracking: a.tracking } : {}), ...(a.externalUnix ? { externalUnix: a.externalUnix } : {}), hold: (e) => cut.hold(e, p.pid), tree: true },
      ingestInfo,
      (e) => {
        if (e.event === "resumed") {
          downtimes.set(p.pid, e.downtime_ns);
          if (typeof e.stop_ns === "number" && typeof e.resumed_ns === "number") {
            firstStop = Math.min(firstStop, e.stop_ns);
            lastResumed = Math.max(lastResumed, e.resumed_ns);
          }
        }
        if (e.ok === false) {
          cut.fail(new Error(`pid ${p.pid} (${p.comm}): ${e.error}`));
          files?.abort(e.error); // (the store is held for the files image, queued first: end it now)
        }
        a.onEvent(p.pid, e);
      },
      isMain ? { storeApp, seq, after: Promise.all(queued), queued: () => go(), go: allReady } : { storeApp, seq, queued: tell, go: allReady },
    );
    void c.then(tell, tell); // a capture that failed before it was queued does not hold the main one back
    if (isMain) void c.then(go, go); // nor does a main one that failed before it was (the others then learn it from the cut)
    c.catch((e: unknown) => {
      cut.fail(new Error(`pid ${p.pid} (${p.comm}): ${errMessage(e)}`));
      files?.abort(e);
    });
    captures.push(c);
  }
  const settled = await Promise.allSettled(captures);
  const bad = settled.find((st) => st.status === "rejected");
  if (bad) files?.abort((bad as PromiseRejectedResult).reason);
  if (cut.failedWith instanceof TreeChanged) throw cut.failedWith;
  if (cut.failedWith instanceof TreeRefused) throw treeRefusal(a.app, cut.failedWith.message, "Checkpoint once one of them has closed it");
  const nowLive = new Map(a.list().filter((q) => !q.zombie).map((q) => [q.pid, q]));
  for (const [i, st] of settled.entries()) {
    if (st.status !== "rejected") continue;
    const was = order[i]!;
    const now = nowLive.get(was.pid);
    if (!now || now.hostPid !== was.hostPid) throw new TreeChanged(`pid ${was.pid} (${was.command}) ended during the cut`);
    // (an exec between the look and the request: the old program's socket file was still there)
    if (now.command !== was.command) throw new TreeChanged(`pid ${was.pid} (${was.command}) exec'd ${now.command} during the cut`);
    // (a program just exec'd: its preloaded agent is mapped, the socket file of the process's
    // earlier program is there, the new agent's constructor has not listened yet)
    if (/ECONNREFUSED/.test(errMessage(st.reason))) throw new TreeChanged(`pid ${was.pid} (${was.command}): its agent did not listen yet (a program starting after exec)`);
  }
  const failures = settled.flatMap((s, i) => (s.status === "rejected" ? [{ p: order[i]!, e: s.reason as unknown }] : []));
  if (failures.length) {
    // the process that failed first says why; the others only saw the cut called off
    const first = failures.find((f) => !/cut was (called off|abandoned)|pid \d+ \(.*\): /.test(errMessage(f.e))) ?? failures[0]!;
    const e = first.e;
    if (e instanceof TgError && !e.why.startsWith("pid ")) throw new TgError(e.what, `pid ${first.p.pid} (${first.p.comm}): ${e.why}`, e.fix, e.code);
    throw e;
  }
  const caps = settled.map((s) => (s as PromiseFulfilledResult<CasCapture>).value);
  const lineage: TreeLineage = {};
  order.forEach((p, i) => {
    const c = caps[i]!;
    if (p.pid !== mainPid && typeof c.done.seq === "number") lineage[String(p.pid)] = { agentSeq: c.done.seq, id: c.checkpoint.id };
  });
  return { main: caps[caps.length - 1]!, others: caps.slice(0, -1), info, lineage };
}
