// The engine bench's second part (issue 15): what a checkpoint and a restore cost a busy
// app and the host, for a quiet machine and beside a CPU hog on one core.
//
// The app is test/fixtures/busy MIB 1: MIB MiB of random data and one thread looping for
// ever, writing 1% of its pages (a hot set spread over the whole area) and printing
// "tick <iterations> <CLOCK_MONOTONIC ns>" every 100 ms and "gap <ns> <at>" after any
// pause over 5 ms. Per case:
//   - the app's rate (iterations/s) over the 1.5 s before each checkpoint;
//   - a full checkpoint (--full) and then an incremental one, each: time to durable (the
//     manifest's commitNs: request to the committed, fsynced checkpoint), CPU seconds of
//     the daemon (all its threads) and of the agent (its thread tg-agent and the snapshot
//     child it reaps: the app's cutime/cstime), the app's lost time over the window from
//     the request to 1 s after the commit (window - iterations done / rate before), and the
//     longest loop gap in it;
//   - the app killed with SIGKILL, then `tardigrade restore` (no --replace: nothing to kill)
//     until the restored app's first tick (restore to running), and the daemon's CPU.
// Every figure is also given against a plain write + fsync of the same number of bytes in
// the same run, and the load average (1 min) at the time is recorded.
import { spawn } from "node:child_process";
import { existsSync, readFileSync, readdirSync, statSync } from "node:fs";
import { loadavg } from "node:os";
import { type RestoreJson, type RunJson, cliJson, daemonPid, killTracked, nowNs, sleep, track, trackApp, trackDaemon, waitForLine } from "./bench-procs.js";
import { type CriuRound, criuRound, tickSeen } from "./criu-peer.js";

const MiB = 1 << 20;

export interface BusyCheckpoint {
  kind: "full" | "incremental";
  id: string;
  /** Pages the adaptive tracker copied whole (manifest stats.hotPages; 0 or absent: none). */
  hotPages: number;
  bytes: number;
  pages: number;
  downtimeNs: number;
  /** Request to committed and fsynced (manifest commitNs, else the CLI's wall time). */
  durableNs: number;
  daemonCpuS: number;
  agentCpuS: number;
  /** Iterations/s over the 1.5 s before the request. */
  rateBefore: number;
  windowNs: number;
  lostNs: number;
  maxGapNs: number;
  load1: number;
}

export interface BusyRestore {
  id: string;
  restoreNs: number;
  /** `restore` request to the restored app's first tick. */
  toRunningNs: number;
  daemonCpuS: number;
  load1: number;
}

export interface BusyCase {
  mib: number;
  /** The busy app's hot set, % of its pages (BENCH_BUSY_PERCENT; 1 unless set). */
  percent: number;
  hog: boolean;
  writeFsyncNs: number;
  checkpoints: BusyCheckpoint[];
  restores: BusyRestore[];
  /** CRIU's rounds on the same fixture, interleaved with ours (CRIU=path set). */
  criu: CriuRound[];
}

const clkTck = 100; // USER_HZ on Linux

export function procCpuS(pid: number, withChildren = false): number {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, "utf8");
    const f = s.slice(s.lastIndexOf(")") + 2).split(" ");
    // fields 14-17 of stat: utime, stime, cutime, cstime (f[0] is field 3)
    const own = Number(f[11]) + Number(f[12]);
    return (withChildren ? own + Number(f[13]) + Number(f[14]) : own) / clkTck;
  } catch {
    return NaN;
  }
}

/** CPU of the agent inside app `pid`: its thread tg-agent, and the snapshot children it reaped. */
function agentCpuS(pid: number): number {
  let t = 0;
  try {
    for (const tid of readdirSync(`/proc/${pid}/task`)) {
      if (readFileSync(`/proc/${pid}/task/${tid}/comm`, "utf8").trim() !== "tg-agent") continue;
      const s = readFileSync(`/proc/${pid}/task/${tid}/stat`, "utf8");
      const f = s.slice(s.lastIndexOf(")") + 2).split(" ");
      t += (Number(f[11]) + Number(f[12])) / clkTck;
    }
    const s = readFileSync(`/proc/${pid}/stat`, "utf8");
    const f = s.slice(s.lastIndexOf(")") + 2).split(" ");
    t += (Number(f[13]) + Number(f[14])) / clkTck;
  } catch {
    return NaN;
  }
  return t;
}

interface Tick {
  iters: number;
  t: number;
}

/** `offset`: the app's CLOCK_MONOTONIC minus this process's (a restored app's clock goes on from its checkpoint: time namespace); times are returned in this process's clock. */
export function readTicks(log: string, offset = 0): { ticks: Tick[]; gaps: { ns: number; at: number }[] } {
  const ticks: Tick[] = [];
  const gaps: { ns: number; at: number }[] = [];
  if (!existsSync(log)) return { ticks, gaps };
  for (const line of readFileSync(log, "utf8").split("\n")) {
    const w = line.split(" ");
    if (w[0] === "tick" && w.length === 3) ticks.push({ iters: Number(w[1]), t: Number(w[2]) - offset });
    else if (w[0] === "gap" && w.length === 3) gaps.push({ ns: Number(w[1]), at: Number(w[2]) - offset });
  }
  return { ticks, gaps };
}

/** Iterations done at time t (ns), interpolated between the ticks around it (one app run: iterations grow). */
export function itersAt(ticks: Tick[], t: number): number {
  const i = ticks.findIndex((k) => k.t >= t);
  if (i < 0) return NaN;
  if (i === 0) return ticks[0]!.t - t < 200e6 ? ticks[0]!.iters : NaN;
  const a = ticks[i - 1]!;
  const b = ticks[i]!;
  return a.iters + ((b.iters - a.iters) * (t - a.t)) / (b.t - a.t);
}

/** The ticks of the current process only: a restored app starts again from its checkpoint's count. */
export function lastRun(ticks: Tick[]): Tick[] {
  let from = 0;
  for (let i = 1; i < ticks.length; i++) if (ticks[i]!.iters < ticks[i - 1]!.iters || ticks[i]!.t < ticks[i - 1]!.t) from = i;
  return ticks.slice(from);
}

export async function waitTickAfter(log: string, t: number, timeoutMs: number, offset = 0): Promise<Tick> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const hit = readTicks(log, offset).ticks.find((k) => k.t > t);
    if (hit) return hit;
    await sleep(10);
  }
  throw new Error(`no tick after ${t} in ${log} within ${timeoutMs} ms`);
}

export async function rateOver(log: string, ms: number, offset = 0): Promise<number> {
  const t0 = Number(nowNs());
  await sleep(ms);
  const t1 = Number(nowNs());
  await waitTickAfter(log, t1, 10_000, offset);
  const ticks = lastRun(readTicks(log, offset).ticks);
  return ((itersAt(ticks, t1) - itersAt(ticks, t0)) / (t1 - t0)) * 1e9;
}

interface ManifestJson {
  id: string;
  bytes: number;
  pages: number;
  downtimeNs: number;
  commitNs?: number;
}

/** One case: the busy app of `mib` MiB, quiet or beside a hog. */
export async function busyCase(home: string, busyBin: string, mib: number, hog: boolean, reps: number, writeFsyncNs: number, criu?: string, percent = 1, incs = 1): Promise<BusyCase> {
  const env: NodeJS.ProcessEnv = { ...process.env, TARDIGRADE_HOME: home };
  const cli = (args: string[], timeoutMs = 600_000) => cliJson(env, args, timeoutMs);
  const name = `bench-busy-${mib}-${hog ? "hog" : "quiet"}`;
  let hogPid = 0;
  if (hog) {
    const h = spawn(process.execPath, ["-e", "for(;;){}"], { stdio: "ignore" });
    hogPid = h.pid ?? 0;
    track(hogPid, "hog");
  }
  const out: BusyCase = { mib, percent, hog, writeFsyncNs, checkpoints: [], restores: [], criu: [] };
  try {
    const run = (await cli(["run", "--name", name, "--json", "--", busyBin, String(mib), String(percent)], 300_000)).json as RunJson;
    trackDaemon(home);
    track(run.initHostPid, "init");
    track(run.appHostPid, "app");
    let st = await trackApp(env, name);
    const log = st.log;
    await waitForLine(log, ["ready "], 300_000);
    let app = run.appHostPid;
    let offset = 0; // the app's clock minus ours: 0 for the app `run` started, another after a restore
    const dpid = daemonPid(home) ?? 0;
    for (let r = 0; r < reps; r++) {
      const kinds: ("full" | "incremental")[] = ["full", ...Array.from({ length: Math.max(1, incs) }, () => "incremental" as const)];
      for (const kind of kinds) {
        const rateBefore = await rateOver(log, 1500, offset);
        const load1 = loadavg()[0]!;
        const d0 = procCpuS(dpid);
        const a0 = agentCpuS(app);
        const t0 = Number(nowNs());
        const ck = await cli(["checkpoint", name, "--json", ...(kind === "full" ? ["--full"] : [])]);
        const t1 = Number(nowNs());
        const d1 = procCpuS(dpid);
        const a1 = agentCpuS(app);
        const m = ck.json as ManifestJson & { stats?: { hotPages?: number } };
        const end = t1 + 1e9;
        await sleep(1000);
        await waitTickAfter(log, end, 10_000, offset);
        const { ticks, gaps } = readTicks(log, offset);
        const run1 = lastRun(ticks);
        const done = itersAt(run1, end) - itersAt(run1, t0);
        const windowNs = end - t0;
        out.checkpoints.push({
          kind,
          id: m.id,
          hotPages: m.stats?.hotPages ?? 0,
          bytes: m.bytes,
          pages: m.pages,
          downtimeNs: m.downtimeNs,
          durableNs: m.commitNs ?? ck.wallNs,
          daemonCpuS: d1 - d0,
          agentCpuS: a1 - a0,
          rateBefore,
          windowNs,
          lostNs: Math.max(0, windowNs - (done / rateBefore) * 1e9),
          maxGapNs: Math.max(0, ...gaps.filter((g) => g.at >= t0 && g.at <= end).map((g) => g.ns)),
          load1,
        });
      }
      // restore after kill -9
      process.kill(app, "SIGKILL");
      const gone = Date.now() + 60_000;
      while ((await trackApp(env, name)).state !== "exited") {
        if (Date.now() > gone) throw new Error(`${name} still not exited 60 s after SIGKILL`);
        await sleep(50);
      }
      const load1 = loadavg()[0]!;
      const d0 = procCpuS(dpid);
      // by this process's clock, as CRIU's (criu-peer.ts): the restored app's clock goes on from
      // its checkpoint (time namespace, docs/engine.md), so its tick times are not this clock's
      const from = statSync(log).size;
      const t0 = Number(nowNs());
      const seen = tickSeen(log, from, 120_000);
      seen.catch(() => undefined); // (awaited below; a failed restore throws first)
      const rs = (await cli(["restore", name, "--json"], 300_000)).json as RestoreJson;
      track(rs.initHostPid, "init");
      track(rs.appHostPid, "app");
      const first = await seen;
      // the restored app's clock against this one, from its first tick line (seen within ~5 ms)
      const line = readFileSync(log, "utf8").slice(from).split("\n").find((l) => l.startsWith("tick "));
      offset = line ? Number(line.split(" ")[2]) - first : 0;
      const d1 = procCpuS(dpid);
      out.restores.push({ id: rs.checkpoint, restoreNs: rs.restoreNs, toRunningNs: first - t0, daemonCpuS: d1 - d0, load1 });
      app = rs.appHostPid;
      st = await trackApp(env, name);
      if (st.state !== "running") throw new Error(`${name} is ${st.state} after its restore`);
      // CRIU's round, interleaved: our app is stopped meanwhile (SIGSTOP) so that both see the same host
      if (criu) {
        process.kill(app, "SIGSTOP");
        try {
          out.criu.push(await criuRound(criu, busyBin, mib, home, r));
        } finally {
          process.kill(app, "SIGCONT");
        }
      }
    }
    process.kill(app, "SIGKILL");
  } finally {
    if (hogPid) killTracked("SIGKILL", (t) => t.pid === hogPid);
  }
  return out;
}

const f2 = (x: number): string => (Number.isFinite(x) ? x.toFixed(2) : "-");
const f3 = (x: number): string => (Number.isFinite(x) ? x.toFixed(3) : "-");
const med = (xs: number[]): number => {
  const s = xs.filter(Number.isFinite).sort((a, b) => a - b);
  return s.length === 0 ? NaN : s.length % 2 ? s[s.length >> 1]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

/** Issue 15's CRIU 4.2 figures on this VM, printed when CRIU=path is not given (then CRIU is measured in the run: criu-peer.ts). */
export const CRIU_ISSUE_1G = { cpuSPerGiB: 2.4, dumpFsyncS: [2.7, 3.2], restoreS: [3.3, 4.2] };

export function printBusy(cases: BusyCase[]): void {
  const header = ["case", "MiB", "hot %", "kind", "hot pages", "durable s", "x write+fsync", "daemon CPU s", "agent CPU s", "CPU s/GiB", "app lost s", "lost/window", "max gap s", "downtime s", "load1"];
  const rows: string[][] = [];
  for (const c of cases) {
    for (const kind of ["full", "incremental"] as const) {
      const k = c.checkpoints.filter((x) => x.kind === kind);
      if (k.length === 0) continue;
      const cpu = med(k.map((x) => x.daemonCpuS + x.agentCpuS));
      const gib = med(k.map((x) => x.bytes)) / (1024 * MiB);
      rows.push([
        c.hog ? "hog" : "quiet",
        String(c.mib),
        String(c.percent),
        kind,
        String(med(k.map((x) => x.hotPages))),
        f3(med(k.map((x) => x.durableNs)) / 1e9),
        f2(med(k.map((x) => x.durableNs)) / c.writeFsyncNs),
        f2(med(k.map((x) => x.daemonCpuS))),
        f2(med(k.map((x) => x.agentCpuS))),
        f2(cpu / gib),
        f3(med(k.map((x) => x.lostNs)) / 1e9),
        f2(med(k.map((x) => x.lostNs / x.windowNs))),
        f3(med(k.map((x) => x.maxGapNs)) / 1e9),
        f3(med(k.map((x) => x.downtimeNs)) / 1e9),
        f2(med(k.map((x) => x.load1))),
      ]);
    }
    if (c.restores.length) {
      rows.push([
        c.hog ? "hog" : "quiet",
        String(c.mib),
        String(c.percent),
        "restore",
        "-",
        f3(med(c.restores.map((x) => x.toRunningNs)) / 1e9),
        f2(med(c.restores.map((x) => x.toRunningNs)) / c.writeFsyncNs),
        f2(med(c.restores.map((x) => x.daemonCpuS))),
        "-",
        "-",
        "-",
        "-",
        "-",
        "-",
        f2(med(c.restores.map((x) => x.load1))),
      ]);
    }
    if (c.criu.length) {
      const k = c.criu;
      const gib = med(k.map((x) => x.imageBytes)) / (1024 * MiB);
      const cpu = med(k.map((x) => x.dumpCpuS));
      const tag = c.hog ? "hog" : "quiet";
      rows.push([tag, String(c.mib), String(c.percent), "criu dump", "-", f3(med(k.map((x) => x.durableNs)) / 1e9), f2(med(k.map((x) => x.durableNs)) / c.writeFsyncNs), f2(cpu), "-", f2(cpu / gib), f3(med(k.map((x) => x.lostNs)) / 1e9), f2(med(k.map((x) => x.lostNs / x.windowNs))), f3(med(k.map((x) => x.maxGapNs)) / 1e9), "-", f2(med(k.map((x) => x.load1)))]);
      rows.push([tag, String(c.mib), String(c.percent), "criu restore", "-", f3(med(k.map((x) => x.restoreToRunningNs)) / 1e9), f2(med(k.map((x) => x.restoreToRunningNs)) / c.writeFsyncNs), f2(med(k.map((x) => x.restoreCpuS))), "-", "-", "-", "-", "-", "-", f2(med(k.map((x) => x.load1)))]);
    }
  }
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]): string => cells.map((x, i) => x.padStart(widths[i]!)).join("  ");
  console.log(line(header));
  for (const r of rows) console.log(line(r));
  console.log(
    "\nbusy app = test/fixtures/busy MIB PERCENT (one thread writing PERCENT % of its pages, one word each, in a loop); medians over the rounds; hot pages = pages the adaptive tracker copied whole." +
      "\ndurable = checkpoint request to committed and fsynced (manifest commitNs); for restore rows: `restore` request (app killed -9 before) to the restored app's first tick." +
      "\nx write+fsync = against a plain write + fsync of the app's bytes in the same run; CPU = daemon (all threads) + agent (tg-agent thread + reaped snapshot child); CPU s/GiB = per GiB of image (for an incremental: of its small image)." +
      "\napp lost = window (request to 1 s after the commit) minus iterations done / the rate over the 1.5 s before; load1 = 1-min load average at the request." +
      "\ncriu dump = `criu dump --leave-running` + fsync of the image files (durable), CPU = criu's user + system; criu restore = `criu restore -d` request (app killed -9 before) to the restored app's first tick; a fresh app per round (every dump is full)." +
      (cases.some((c) => c.criu.length)
        ? ""
        : `\nCRIU 4.2 on this VM per issue 15 (not measured in this run; set CRIU=path): ${CRIU_ISSUE_1G.cpuSPerGiB} CPU-s/GiB, dump+fsync ${CRIU_ISSUE_1G.dumpFsyncS.join("/")} s and restore ${CRIU_ISSUE_1G.restoreS.join("/")} s (min/median) at 1 GiB.`),
  );
  const verdicts = targets(cases);
  if (verdicts.length) console.log("\nissue 15 targets, against CRIU in the same run:\n" + verdicts.join("\n"));
}

export interface Verdict {
  case: string;
  mib: number;
  what: string;
  ours: number;
  criu: number;
  ratio: number;
  target: number;
  met: boolean;
}

/** Issue 15's targets 1-3 per case, where CRIU ran: CPU/GiB of a full checkpoint, time to durable, restore to running. */
export function verdicts(cases: BusyCase[]): Verdict[] {
  const out: Verdict[] = [];
  for (const c of cases) {
    const full = c.checkpoints.filter((x) => x.kind === "full");
    if (c.criu.length === 0 || full.length === 0) continue;
    const tag = c.hog ? "hog" : "quiet";
    const add = (what: string, ours: number, criu: number, target: number) => out.push({ case: tag, mib: c.mib, what, ours, criu, ratio: ours / criu, target, met: ours / criu <= target });
    add("CPU s/GiB, full checkpoint (target 1)", med(full.map((x) => (x.daemonCpuS + x.agentCpuS) / (x.bytes / (1024 * MiB)))), med(c.criu.map((x) => x.dumpCpuS / (x.imageBytes / (1024 * MiB)))), 1);
    add("time to durable, full (target 2)", med(full.map((x) => x.durableNs)) / 1e9, med(c.criu.map((x) => x.durableNs)) / 1e9, c.mib <= 64 ? 2 : 1);
    if (c.restores.length) add("restore to running (target 3)", med(c.restores.map((x) => x.toRunningNs)) / 1e9, med(c.criu.map((x) => x.restoreToRunningNs)) / 1e9, 0.5);
  }
  return out;
}

function targets(cases: BusyCase[]): string[] {
  return verdicts(cases).map((v) => `  ${v.case} ${v.mib} MiB, ${v.what}: ours ${f3(v.ours)}, CRIU ${f3(v.criu)}: ${f2(v.ratio)}x (target <= ${v.target}x: ${v.met ? "met" : "NOT met"})`);
}

// ---------------------------------------------------------------------------
// The first write pass after a checkpoint (issue 15 item 4): test/fixtures/dirtier MIB 100
// rewrites every word of every page on each SIGUSR1 and prints how long the pass took. A pass
// with no checkpoint since the previous one is the plain pass; a pass right after a checkpoint
// (committed: the snapshot child has exited) pays what the checkpoint left behind (write-protect
// and copy-on-write faults on each first write to a page).

export interface PassRound {
  kind: string;
  plainNs: number;
  afterNs: number;
  downtimeNs: number;
  hotPages: number;
  load1: number;
}

export interface PassCase {
  mib: number;
  rounds: PassRound[];
}

export async function firstPassCase(home: string, dirtierBin: string, mib: number, rounds: number): Promise<PassCase> {
  const env: NodeJS.ProcessEnv = { ...process.env, TARDIGRADE_HOME: home };
  const cli = (args: string[], timeoutMs = 600_000) => cliJson(env, args, timeoutMs);
  const name = `bench-pass-${mib}`;
  const run = (await cli(["run", "--name", name, "--json", "--", dirtierBin, String(mib), "100"], 300_000)).json as RunJson;
  trackDaemon(home);
  track(run.initHostPid, "init");
  track(run.appHostPid, "app");
  const st = await trackApp(env, name);
  const log = st.log;
  await waitForLine(log, ["ready "], 300_000);
  const app = run.appHostPid;
  let from = 0;
  const pass = async (): Promise<number> => {
    from = existsSync(log) ? readFileSync(log).length : 0;
    process.kill(app, "SIGUSR1");
    const l = await waitForLine(log, ["dirtied "], 300_000, from);
    return Number(l.split(" ")[2]);
  };
  const out: PassCase = { mib, rounds: [] };
  try {
    await pass(); // warm
    for (let r = 0; r < rounds; r++) {
      const plainNs = await pass();
      const load1 = loadavg()[0]!;
      const ck = (await cli(["checkpoint", name, "--json", ...(r === 0 ? ["--full"] : [])])).json as ManifestJson & { kind?: string; stats?: { hotPages?: number } };
      const afterNs = await pass();
      out.rounds.push({ kind: ck.kind ?? "?", plainNs, afterNs, downtimeNs: ck.downtimeNs, hotPages: ck.stats?.hotPages ?? 0, load1 });
    }
  } finally {
    killTracked("SIGKILL", (t) => t.pid === app);
  }
  return out;
}

export function printFirstPass(cases: PassCase[]): void {
  const header = ["MiB", "round", "kind", "hot pages", "plain pass s", "pass after s", "after/plain", "downtime s", "lost s", "load1"];
  const rows: string[][] = [];
  for (const c of cases)
    c.rounds.forEach((x, i) =>
      rows.push([String(c.mib), String(i + 1), x.kind, String(x.hotPages), f3(x.plainNs / 1e9), f3(x.afterNs / 1e9), f2(x.afterNs / x.plainNs), f3(x.downtimeNs / 1e9), f3((x.afterNs - x.plainNs + x.downtimeNs) / 1e9), f2(x.load1)]),
    );
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]): string => cells.map((x, i) => x.padStart(widths[i]!)).join("  ");
  console.log(line(header));
  for (const r of rows) console.log(line(r));
  console.log(
    "\nfirst pass = test/fixtures/dirtier MIB 100: every page rewritten on SIGUSR1 (its own timing); plain = a pass with no checkpoint since the last," +
      "\npass after = the first pass after the checkpoint committed (round 1: --full); lost = pass after - plain + downtime: the app's time lost to the checkpoint.",
  );
}
