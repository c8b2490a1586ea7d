// Incremental checkpoint benchmark (issue 3), through the CLI exactly as a
// user runs it, with test/fixtures/dirtier:
//
// 1. Downtime and stored bytes, incremental vs full, in the same run: a 1 GiB
//    process (`dirtier 1024`) rewrites 1%, 10% and 100% of its pages at random
//    between checkpoints. After one first full checkpoint, each round is:
//    dirty, `checkpoint` (incremental); dirty, `checkpoint --full`. Medians
//    over the rounds; ratios incremental/full downtime and stored bytes /
//    dirty bytes (pagesWritten * 4096, before compression).
// 2. Tracking overhead: `dirtier --loop` (random 8-byte writes all over its
//    memory, prints its own rate every second) run plain (spawned by the bench,
//    no tardigrade), then under `tardigrade run --every 10s` with `--tracking
//    none` (untracked: the same checkpoints, all full), `uffd`, `hash`, none
//    again, plain again; same duration each. Overhead is 1 - tracked rate /
//    untracked rate (the issue's definition: tracked vs untracked run, both
//    checkpointed every 10 s), and also reported against plain.
// 3. Restore from a chain of 20 incrementals before and after merge: a 256 MiB
//    `dirtier` dirtying 5% per checkpoint, 1 full + 20 incrementals with the
//    daemon's background merge off (TARDIGRADE_MERGE_CHAIN=1000 in the env of
//    the first CLI command, which starts the daemon). Restore the newest, and
//    the base full for comparison; stop the app and the daemon, merge the
//    newest with CasStore.merge() on the store directly, restore again through
//    the CLI (merged, base full, and a full taken after the chain). Every
//    restore is checked: the restored process's checksum (SIGUSR2 -> "sum")
//    must equal the one the app printed before the checkpoint.
//
// Prints one table per part and writes bench/results/incremental.json.
//
// Environment: BENCH_INC_MIB=1024 (part 1 size), BENCH_INC_PCTS=1,10,100,
// BENCH_INC_ROUNDS=3,2,1 (rounds per percentage, or one number for all),
// BENCH_LOOP_MIB=128, BENCH_LOOP_SECONDS=40, BENCH_CHAIN_MIB=256,
// BENCH_CHAIN_LEN=20, BENCH_CHAIN_PCT=5, BENCH_RESTORE_REPS=3,
// BENCH_PARTS=1,2,3 (which parts to run), BENCH_KEEP_HOME=1 keeps the
// temporary TARDIGRADE_HOMEs. Everything the bench starts (daemons, apps,
// launchers, plain fixtures) is killed by PID at the end, also on
// SIGINT/SIGTERM.
import { execFileSync, spawn } from "node:child_process";
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { cpus, loadavg, release, tmpdir, totalmem } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import {
  type CliResult,
  type RestoreJson,
  type RunJson,
  type StatusJson,
  cleanup,
  cliJson,
  daemonPid,
  killTracked,
  median,
  nowNs,
  sleep,
  track,
  trackApp,
  trackDaemon,
  waitForLine,
  waitGone,
} from "./bench-procs.js";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");
const FIXTURES = join(ROOT, "test", "fixtures");
const DIRTIER = join(FIXTURES, "build", "dirtier");
const CAS_MODULE = join(ROOT, "dist", "src", "store", "cas", "index.js");
const RESULTS = join(ROOT, "bench", "results", "incremental.json");
const MiB = 1 << 20;
const PAGE = 4096;

// Targets from issue 3.
const TARGET_INC_DOWNTIME_1PCT_S = 0.06;
const TARGET_STORED_VS_DIRTY_1PCT = 1.2;
const TARGET_TRACKING_OVERHEAD = 0.05;

const envInt = (name: string, def: number): number => {
  const v = Number(process.env[name]);
  return Number.isFinite(v) && v > 0 ? Math.floor(v) : def;
};
const envNum = (name: string, def: number): number => {
  const v = Number(process.env[name]);
  return Number.isFinite(v) && v > 0 ? v : def;
};

// ---------------------------------------------------------------------------
// What the CLI prints with --json (src/daemon/apps.ts, src/store/cas/adapter.ts).

interface CkStats {
  imageBytes: number;
  pages: number;
  zeroPages: number;
  newPages: number;
  storedBytes: number;
  downtimeNs: number;
  totalNs: number;
  tracking: string | null;
  pagesScanned: number | null;
  pagesWritten: number | null;
  ingestNs: number;
  merged?: { chainLength: number; pages: number; mergedAt: string };
}

interface ManifestJson {
  id: string;
  kind: "full" | "incremental";
  parent: string | null;
  bytes: number;
  pages: number;
  downtimeNs: number;
  totalNs: number;
  commitNs?: number;
  synthetic?: boolean;
  fullReason?: string;
  stats: CkStats;
}

interface Home {
  dir: string;
  env: NodeJS.ProcessEnv;
}

function makeHome(tag: string, extraEnv: Record<string, string> = {}): Home {
  const dir = mkdtempSync(join(tmpdir(), `tardigrade-bench-inc-${tag}-`));
  return { dir, env: { ...process.env, ...extraEnv, TARDIGRADE_HOME: dir } };
}

const homes: Home[] = [];

function cli(home: Home, args: string[], timeoutMs = 600_000): Promise<CliResult> {
  return cliJson(home.env, args, timeoutMs);
}

const logSize = (file: string): number => (existsSync(file) ? statSync(file).size : 0);

/** SIGUSR1: the dirtier rewrites its share of pages; returns [pages dirtied, ns it took]. */
async function dirty(log: string, hostPid: number): Promise<[number, number]> {
  const from = logSize(log);
  process.kill(hostPid, "SIGUSR1");
  const line = await waitForLine(log, ["dirtied "], 120_000, from);
  const [, k, ns] = line.split(" ");
  return [Number(k), Number(ns)];
}

/** SIGUSR2: the dirtier prints the checksum of its whole area. */
async function checksum(log: string, hostPid: number): Promise<string> {
  const from = logSize(log);
  process.kill(hostPid, "SIGUSR2");
  const line = await waitForLine(log, ["sum "], 120_000, from);
  return line.split(" ")[1] ?? "";
}

async function startDirtier(home: Home, name: string, args: string[], extra: string[] = []): Promise<{ run: RunJson; st: StatusJson }> {
  const run = (await cli(home, ["run", "--name", name, ...extra, "--json", "--", DIRTIER, ...args], 300_000)).json as RunJson;
  track(run.initHostPid, "init");
  track(run.appHostPid, "app");
  const st = await trackApp(home.env, name);
  await waitForLine(st.log, ["ready "], 300_000);
  return { run, st };
}

async function checkpoint(home: Home, name: string, full: boolean): Promise<{ m: ManifestJson; wallNs: number }> {
  const r = await cli(home, ["checkpoint", name, ...(full ? ["--full"] : []), "--json"]);
  return { m: r.json as ManifestJson, wallNs: r.wallNs };
}

/** Stops the app's processes (SIGKILL by PID: `tardigrade stop` waits for a grace period). */
async function stopApps(): Promise<void> {
  killTracked("SIGKILL", (t) => t.what === "app" || t.what === "init" || t.what === "launcher" || t.what === "plain");
  await waitGone((t) => t.what !== "daemon", 5000);
}

async function stopDaemon(home: Home): Promise<void> {
  const pid = daemonPid(home.dir);
  if (pid === null) return;
  track(pid, "daemon");
  killTracked("SIGTERM", (t) => t.what === "daemon" && t.pid === pid);
  if (!(await waitGone((t) => t.pid === pid, 10_000))) {
    killTracked("SIGKILL", (t) => t.pid === pid);
    await waitGone((t) => t.pid === pid, 3000);
  }
}

function printTable(header: string[], rows: string[][]): void {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((row) => (row[i] ?? "").length)));
  const line = (cells: string[]): string => cells.map((c, i) => c.padStart(widths[i]!)).join("  ");
  console.log(line(header));
  for (const row of rows) console.log(line(row));
}

const ms = (ns: number): string => (Number.isFinite(ns) ? (ns / 1e6).toFixed(1) : "-");
const f2 = (x: number): string => (Number.isFinite(x) ? x.toFixed(2) : "-");
const mibs = (b: number): string => (Number.isFinite(b) ? (b / MiB).toFixed(1) : "-");
const metStr = (ok: boolean): string => (ok ? "met" : "NOT met");

// ---------------------------------------------------------------------------
// Part 1: downtime and stored bytes, incremental vs full.

interface CkRecord {
  id: string;
  kind: string;
  requested: "incremental" | "full";
  pct: number;
  round: number;
  dirtiedPages: number;
  dirtyNs: number;
  downtimeNs: number;
  totalNs: number;
  commitNs: number | null;
  cliNs: number;
  imageBytes: number;
  pages: number;
  newPages: number;
  storedBytes: number;
  pagesWritten: number | null;
  pagesScanned: number | null;
  tracking: string | null;
  fullReason: string | null;
}

function record(m: ManifestJson, wallNs: number, requested: "incremental" | "full", pct: number, round: number, dirtied: [number, number]): CkRecord {
  return {
    id: m.id,
    kind: m.kind,
    requested,
    pct,
    round,
    dirtiedPages: dirtied[0],
    dirtyNs: dirtied[1],
    downtimeNs: m.downtimeNs,
    totalNs: m.totalNs,
    commitNs: m.commitNs ?? null,
    cliNs: wallNs,
    imageBytes: m.stats.imageBytes,
    pages: m.stats.pages,
    newPages: m.stats.newPages,
    storedBytes: m.stats.storedBytes,
    pagesWritten: m.stats.pagesWritten,
    pagesScanned: m.stats.pagesScanned,
    tracking: m.stats.tracking,
    fullReason: m.fullReason ?? null,
  };
}

interface Part1Row {
  pct: number;
  rounds: number;
  tracking: string | null;
  incDowntimeNs: number;
  fullDowntimeNs: number;
  downtimeRatio: number;
  incTotalNs: number;
  fullTotalNs: number;
  incDirtyBytes: number;
  appDirtiedBytes: number;
  incStoredBytes: number;
  fullStoredBytes: number;
  incImageBytes: number;
  fullImageBytes: number;
  storedVsDirty: number;
  storedVsAppDirtied: number;
  fullStoredVsAppDirtied: number;
}

async function part1(home: Home, mib: number, pcts: number[], roundsOf: (pct: number) => number): Promise<{ first: CkRecord; checkpoints: CkRecord[]; rows: Part1Row[]; listed: number }> {
  const name = "inc-dirty";
  const ctl = join(home.dir, "dirtier.ctl");
  writeFileSync(ctl, String(pcts[0] ?? 1));
  const { run, st } = await startDirtier(home, name, [String(mib), "1", ctl]);
  const first = await checkpoint(home, name, false);
  const firstRec = record(first.m, first.wallNs, "full", 0, 0, [0, 0]);
  process.stdout.write(`  first full: downtime ${ms(first.m.downtimeNs)} ms, capture+store ${(first.m.totalNs / 1e9).toFixed(1)} s\n`);

  const checkpoints: CkRecord[] = [];
  for (const pct of pcts) {
    writeFileSync(ctl, String(pct));
    for (let r = 1; r <= roundsOf(pct); r++) {
      const d1 = await dirty(st.log, run.appHostPid);
      const inc = await checkpoint(home, name, false);
      if (inc.m.kind !== "incremental") throw new Error(`${inc.m.id}: expected an incremental checkpoint, got ${inc.m.kind} (${inc.m.fullReason ?? ""})`);
      checkpoints.push(record(inc.m, inc.wallNs, "incremental", pct, r, d1));
      const d2 = await dirty(st.log, run.appHostPid);
      const full = await checkpoint(home, name, true);
      if (full.m.kind !== "full") throw new Error(`${full.m.id}: --full gave ${full.m.kind}`);
      checkpoints.push(record(full.m, full.wallNs, "full", pct, r, d2));
      process.stdout.write(`  ${pct}% round ${r}: incremental downtime ${ms(inc.m.downtimeNs)} ms stored ${mibs(inc.m.stats.storedBytes)} MiB; full downtime ${ms(full.m.downtimeNs)} ms stored ${mibs(full.m.stats.storedBytes)} MiB\n`);
    }
  }

  const listed = (await cli(home, ["ls", name, "--json"])).json as ManifestJson[];
  for (const c of checkpoints) {
    const l = listed.find((x) => x.id === c.id);
    if (!l) throw new Error(`checkpoint ${c.id} is not in \`tardigrade ls ${name} --json\``);
    if (l.kind !== c.kind) throw new Error(`checkpoint ${c.id} is listed as ${l.kind}, was committed as ${c.kind}`);
  }
  await stopApps();

  const rows = pcts.map((pct): Part1Row => {
    const inc = checkpoints.filter((c) => c.pct === pct && c.requested === "incremental");
    const full = checkpoints.filter((c) => c.pct === pct && c.requested === "full");
    const incDowntimeNs = median(inc.map((c) => c.downtimeNs));
    const fullDowntimeNs = median(full.map((c) => c.downtimeNs));
    const incDirtyBytes = median(inc.map((c) => (c.pagesWritten ?? NaN) * PAGE));
    const incStoredBytes = median(inc.map((c) => c.storedBytes));
    const appDirtiedBytes = median(inc.map((c) => c.dirtiedPages * PAGE));
    return {
      pct,
      rounds: inc.length,
      tracking: inc[0]?.tracking ?? null,
      incDowntimeNs,
      fullDowntimeNs,
      downtimeRatio: median(inc.map((c, i) => c.downtimeNs / (full[i]?.downtimeNs ?? NaN))),
      incTotalNs: median(inc.map((c) => c.totalNs)),
      fullTotalNs: median(full.map((c) => c.totalNs)),
      incDirtyBytes,
      appDirtiedBytes,
      incStoredBytes,
      fullStoredBytes: median(full.map((c) => c.storedBytes)),
      incImageBytes: median(inc.map((c) => c.imageBytes)),
      fullImageBytes: median(full.map((c) => c.imageBytes)),
      storedVsDirty: median(inc.map((c) => c.storedBytes / ((c.pagesWritten ?? NaN) * PAGE))),
      storedVsAppDirtied: median(inc.map((c) => c.storedBytes / (c.dirtiedPages * PAGE))),
      fullStoredVsAppDirtied: median(full.map((c) => c.storedBytes / (c.dirtiedPages * PAGE))),
    };
  });
  return { first: firstRec, checkpoints, rows, listed: listed.length };
}

function printPart1(mib: number, rows: Part1Row[]): void {
  console.log(`\nPart 1: ${mib} MiB process, incremental vs full checkpoint (medians over the rounds, same run)`);
  printTable(
    ["dirty %", "rounds", "tracking", "inc downtime ms", "full downtime ms", "inc/full", "inc capture s", "full capture s", "dirty MiB (pagesWritten)", "inc stored MiB", "stored/dirty", "app dirtied MiB", "stored/app", "full stored MiB", "full image MiB"],
    rows.map((r) => [
      String(r.pct),
      String(r.rounds),
      r.tracking ?? "-",
      ms(r.incDowntimeNs),
      ms(r.fullDowntimeNs),
      f2(r.downtimeRatio),
      (r.incTotalNs / 1e9).toFixed(2),
      (r.fullTotalNs / 1e9).toFixed(2),
      mibs(r.incDirtyBytes),
      mibs(r.incStoredBytes),
      f2(r.storedVsDirty),
      mibs(r.appDirtiedBytes),
      f2(r.storedVsAppDirtied),
      mibs(r.fullStoredBytes),
      mibs(r.fullImageBytes),
    ]),
  );
  console.log(
    "downtime = manifest downtimeNs (app threads stopped); capture = manifest totalNs (capture start to image stored);" +
      "\ndirty = stats.pagesWritten * 4096 (pages the tracker reports written since the parent, before compression);" +
      "\nstored = stats.storedBytes (bytes appended to the store's packs: block headers + compressed data);" +
      "\napp dirtied = pages the fixture rewrote (its `dirtied K`) * 4096; inc/full and stored/dirty are medians of per-round ratios." +
      "\nA --full checkpoint stores only pages the store does not hold yet (content-addressed), so its stored bytes are also about the dirty bytes.",
  );
}

// ---------------------------------------------------------------------------
// Part 2: tracking overhead on a write-heavy loop.

interface LoopRun {
  label: string;
  /** plain: spawned without tardigrade; none: under tardigrade, checkpointed every 10 s, tracking off (every checkpoint full). */
  tracking: "plain" | "none" | "uffd" | "hash";
  rates: number[];
  totalOps: number;
  totalNs: number;
  /** CPU time of the writing thread over the run (CLOCK_THREAD_CPUTIME_ID). */
  cpuNs: number;
  meanRate: number;
  medianRate: number;
  minRate: number;
  /** Ops per second of the writing thread's CPU time: excludes time it was stopped, blocked or waiting for a CPU. */
  ratePerCpuS: number;
  /** cpuNs / totalNs: how much of the run the writing thread spent on a CPU. */
  cpuShare: number;
  checkpoints: { id: string; kind: string; downtimeNs: number; totalNs: number; tracking: string | null; pagesWritten: number | null; storedBytes: number }[];
}

function parseRates(text: string): { rates: number[]; ops: number; ns: number; cpuNs: number } {
  const rates: number[] = [];
  let ops = 0;
  let ns = 0;
  let cpuNs = 0;
  for (const l of text.split("\n")) {
    const [w, rate, o, n, c] = l.split(" ");
    if (w !== "rate" || n === undefined) continue;
    rates.push(Number(rate));
    ops += Number(o);
    ns += Number(n);
    cpuNs += Number(c ?? NaN);
  }
  return { rates, ops, ns, cpuNs };
}

function loopResult(label: string, tracking: LoopRun["tracking"], text: string, checkpoints: LoopRun["checkpoints"]): LoopRun {
  const { rates, ops, ns, cpuNs } = parseRates(text);
  if (rates.length === 0) throw new Error(`${label}: the loop printed no rate`);
  return { label, tracking, rates, totalOps: ops, totalNs: ns, cpuNs, meanRate: (ops * 1e9) / ns, medianRate: median(rates), minRate: Math.min(...rates), ratePerCpuS: (ops * 1e9) / cpuNs, cpuShare: cpuNs / ns, checkpoints };
}

async function loopPlain(dir: string, label: string, mib: number, seconds: number): Promise<LoopRun> {
  const log = join(dir, `${label}.log`);
  const fd = openSync(log, "w", 0o644);
  const child = spawn(DIRTIER, ["--loop", String(mib), String(seconds)], { stdio: ["ignore", fd, fd] });
  closeSync(fd);
  if (child.pid) track(child.pid, "plain");
  const exited = new Promise<number | null>((r) => child.once("exit", (code) => r(code)));
  await waitForLine(log, ["done "], (seconds + 120) * 1000);
  const code = await exited;
  if (code !== 0) throw new Error(`${label}: dirtier --loop exited ${code}`);
  return loopResult(label, "plain", readFileSync(log, "utf8"), []);
}

async function loopTracked(home: Home, label: string, tracking: "uffd" | "hash" | "none", mib: number, seconds: number): Promise<LoopRun> {
  const name = `loop-${tracking}-${++loopRuns}`;
  const run = (await cli(home, ["run", "--name", name, "--every", "10s", "--tracking", tracking, "--json", "--", DIRTIER, "--loop", String(mib), String(seconds)], 300_000)).json as RunJson;
  track(run.initHostPid, "init");
  track(run.appHostPid, "app");
  const st = await trackApp(home.env, name);
  await waitForLine(st.log, ["done "], (seconds + 120) * 1000);
  // A periodic checkpoint may still be committing when the app ends: let it finish.
  await sleep(500);
  let listed: ManifestJson[] = [];
  for (let i = 0; i < 60; i++) {
    listed = (await cli(home, ["ls", name, "--json"])).json as ManifestJson[];
    const s = (await cli(home, ["status", name, "--json"])).json as StatusJson;
    if (s.state !== "running") break;
    await sleep(500);
  }
  const cks = listed.map((m) => ({ id: m.id, kind: m.kind, downtimeNs: m.downtimeNs, totalNs: m.totalNs, tracking: m.stats?.tracking ?? null, pagesWritten: m.stats?.pagesWritten ?? null, storedBytes: m.stats?.storedBytes ?? NaN }));
  return loopResult(label, tracking, readFileSync(st.log, "utf8"), cks);
}

let loopRuns = 0;

interface Rates {
  meanRate: number;
  medianRate: number;
  ratePerCpuS: number;
}

interface Overhead {
  tracking: string;
  /** Against the untracked runs (`--tracking none`, same checkpoints every 10 s, all full): the cost of tracking itself, as the issue defines it. */
  vsUntracked: { byMean: number; byMedian: number; byCpu: number };
  /** Against the plain runs (no tardigrade at all): tracking plus storing the checkpoints. */
  vsPlain: { byMean: number; byMedian: number; byCpu: number };
  checkpoints: number;
  incrementals: number;
}

interface Part2 {
  mib: number;
  seconds: number;
  runs: LoopRun[];
  plain: Rates;
  untracked: Rates;
  overhead: Overhead[];
}

function meanRates(runs: LoopRun[]): Rates {
  const avg = (f: (r: LoopRun) => number): number => runs.reduce((a, r) => a + f(r), 0) / runs.length;
  return { meanRate: avg((r) => r.meanRate), medianRate: avg((r) => r.medianRate), ratePerCpuS: avg((r) => r.ratePerCpuS) };
}

function overheadOf(r: LoopRun, base: Rates): { byMean: number; byMedian: number; byCpu: number } {
  return { byMean: 1 - r.meanRate / base.meanRate, byMedian: 1 - r.medianRate / base.medianRate, byCpu: 1 - r.ratePerCpuS / base.ratePerCpuS };
}

async function part2(home: Home, mib: number, seconds: number, rounds: number): Promise<Part2> {
  const runs: LoopRun[] = [];
  const say = (r: LoopRun): void => void process.stdout.write(`  ${r.label}: mean ${(r.meanRate / 1e6).toFixed(1)} M ops/s, median ${(r.medianRate / 1e6).toFixed(1)}, min ${(r.minRate / 1e6).toFixed(1)}; ${r.checkpoints.length} checkpoint(s)\n`);
  // Rounds in alternating order (plain, untracked, uffd, hash, then hash, uffd,
  // untracked, plain, ...): drift over the minutes of the run (other load on the VM)
  // weighs on the baselines as much as on the tracked runs.
  const modes: LoopRun["tracking"][] = ["plain", "none", "uffd", "hash"];
  const names: Record<LoopRun["tracking"], string> = { plain: "plain", none: "untracked", uffd: "tardigrade uffd", hash: "tardigrade hash" };
  const order: [string, LoopRun["tracking"]][] = [];
  for (let r = 0; r < rounds; r++) for (const m of r % 2 === 0 ? modes : [...modes].reverse()) order.push([`${names[m]} #${r + 1}`, m]);
  for (const [label, mode] of order) {
    runs.push(mode === "plain" ? await loopPlain(home.dir, label, mib, seconds) : await loopTracked(home, label, mode, mib, seconds));
    say(runs[runs.length - 1]!);
  }
  await stopApps();
  const plain = meanRates(runs.filter((r) => r.tracking === "plain"));
  const untracked = meanRates(runs.filter((r) => r.tracking === "none"));
  const overhead = runs
    .filter((r, i, all) => (r.tracking === "uffd" || r.tracking === "hash") && all.findIndex((x) => x.tracking === r.tracking) === i)
    .map((first) => {
      const mine = runs.filter((r) => r.tracking === first.tracking);
      const m = meanRates(mine);
      const as = { ...first, meanRate: m.meanRate, medianRate: m.medianRate, ratePerCpuS: m.ratePerCpuS };
      const cks = mine.flatMap((r) => r.checkpoints);
      return { tracking: first.tracking, vsUntracked: overheadOf(as, untracked), vsPlain: overheadOf(as, plain), checkpoints: cks.length, incrementals: cks.filter((c) => c.kind === "incremental").length };
    });
  return { mib, seconds, runs, plain, untracked, overhead };
}

function printPart2(p: Part2): void {
  console.log(`\nPart 2: tracking overhead, \`dirtier --loop ${p.mib} ${p.seconds}\` (random 8-byte writes over ${p.mib} MiB): plain, and \`tardigrade run --every 10s --tracking none|uffd|hash\``);
  const pct = (x: number): string => `${(x * 100).toFixed(1)}%`;
  printTable(
    ["run", "checkpoints (inc)", "median ckpt downtime ms", "mean M ops/s", "median M ops/s", "min M ops/s", "vs untracked (mean)", "(median s)", "(per CPU-s)", "vs plain (mean)", "on-CPU share", "M ops/CPU-s"],
    p.runs.map((r) => {
      const o = r.tracking === "uffd" || r.tracking === "hash" ? { vsUntracked: overheadOf(r, p.untracked) } : undefined;
      return [
        r.label,
        r.tracking === "plain" ? "-" : `${r.checkpoints.length} (${r.checkpoints.filter((c) => c.kind === "incremental").length})`,
        r.checkpoints.length ? ms(median(r.checkpoints.map((c) => c.downtimeNs))) : "-",
        (r.meanRate / 1e6).toFixed(1),
        (r.medianRate / 1e6).toFixed(1),
        (r.minRate / 1e6).toFixed(1),
        o ? pct(o.vsUntracked.byMean) : r.tracking === "none" ? "(baseline)" : "-",
        o ? pct(o.vsUntracked.byMedian) : "-",
        o ? pct(o.vsUntracked.byCpu) : "-",
        pct(1 - r.meanRate / p.plain.meanRate),
        `${(r.cpuShare * 100).toFixed(0)}%`,
        (r.ratePerCpuS / 1e6).toFixed(1),
      ];
    }),
  );
  for (const o of p.overhead)
    console.log(`${o.tracking}: overhead vs untracked ${pct(o.vsUntracked.byMean)} (mean rate over its runs), ${pct(o.vsUntracked.byMedian)} (median seconds), ${pct(o.vsUntracked.byCpu)} (per CPU-s); vs plain ${pct(o.vsPlain.byMean)}; ${o.checkpoints} checkpoints (${o.incrementals} incremental)`);
  console.log(
    "untracked = the same program under tardigrade with the same checkpoints every 10 s, tracking off (--tracking none: every checkpoint full);" +
      "\n  the target (tracking overhead <= 5%) is judged on `vs untracked (mean)`, the cost of tracking itself; `vs plain` adds storing the checkpoints." +
      "\nmean = all ops / all time of the run (includes the seconds with a checkpoint); median s = median of the per-second rates (steady state)." +
      "\noverhead = 1 - rate / baseline rate (the average of the two baseline runs, one before and one after the tracked runs);" +
      "\non-CPU share = the writing thread's CPU time / wall time; per CPU-s = ops per second of that thread's CPU time: time the thread was" +
      "\n  stopped, blocked in a fault or waiting for a CPU (the daemon storing a checkpoint, other load on the VM) does not count there.",
  );
}

// ---------------------------------------------------------------------------
// Part 3: restore from a chain of incrementals, before and after merge.

interface RestoreSample {
  phase: "before-merge" | "after-merge";
  what: string;
  checkpoint: string;
  wallNs: number;
  restoreNs: number;
  cliNs: number;
  sumOk: boolean;
}

interface Part3 {
  mib: number;
  chainLen: number;
  pct: number;
  base: string;
  newest: string;
  newFull: string;
  chain: { id: string; kind: string; storedBytes: number; pagesWritten: number | null; downtimeNs: number }[];
  mergeNs: number;
  merged: { kind: string; synthetic: boolean; stats: CkStats } | null;
  samples: RestoreSample[];
  medians: Record<string, number>;
  mergedVsFull: number;
  mergedVsNewFull: number;
  unmergedVsFull: number;
}

async function restoreOnce(home: Home, name: string, id: string, want: string, phase: RestoreSample["phase"], what: string): Promise<RestoreSample> {
  const r = await cli(home, ["restore", name, "--replace", "--checkpoint", id, "--json"], 300_000);
  const res = r.json as RestoreJson;
  track(res.initHostPid, "init");
  track(res.appHostPid, "app");
  const st = await trackApp(home.env, name);
  const got = await checksum(st.log, res.appHostPid);
  if (got !== want) throw new Error(`restore of ${id} (${what}, ${phase}): the app's checksum is ${got}, expected ${want}`);
  return { phase, what, checkpoint: id, wallNs: res.wallNs, restoreNs: res.restoreNs, cliNs: r.wallNs, sumOk: true };
}

async function part3(home: Home, mib: number, chainLen: number, pct: number, reps: number): Promise<Part3> {
  const name = "inc-chain";
  const { run, st } = await startDirtier(home, name, [String(mib), String(pct)]);
  const baseCk = await checkpoint(home, name, false);
  const sums = new Map<string, string>();
  sums.set(baseCk.m.id, await checksum(st.log, run.appHostPid));
  const chain: Part3["chain"] = [{ id: baseCk.m.id, kind: baseCk.m.kind, storedBytes: baseCk.m.stats.storedBytes, pagesWritten: baseCk.m.stats.pagesWritten, downtimeNs: baseCk.m.downtimeNs }];
  let newest = baseCk.m.id;
  for (let i = 0; i < chainLen; i++) {
    await dirty(st.log, run.appHostPid);
    const c = await checkpoint(home, name, false);
    if (c.m.kind !== "incremental") throw new Error(`${c.m.id}: expected an incremental checkpoint, got ${c.m.kind} (${c.m.fullReason ?? ""})`);
    chain.push({ id: c.m.id, kind: c.m.kind, storedBytes: c.m.stats.storedBytes, pagesWritten: c.m.stats.pagesWritten, downtimeNs: c.m.downtimeNs });
    newest = c.m.id;
  }
  sums.set(newest, await checksum(st.log, run.appHostPid));
  // A full checkpoint of the same state after the chain: same size, its pages deduplicated
  // against the chain (they live in the same packs as the merged checkpoint's).
  const nf = await checkpoint(home, name, true);
  if (nf.m.kind !== "full") throw new Error(`${nf.m.id}: --full gave ${nf.m.kind}`);
  sums.set(nf.m.id, sums.get(newest)!);
  const listed = (await cli(home, ["ls", name, "--json"])).json as ManifestJson[];
  const lNewest = listed.find((m) => m.id === newest);
  if (!lNewest || lNewest.kind !== "incremental") throw new Error(`${newest} was merged in the background (listed as ${lNewest?.kind}): TARDIGRADE_MERGE_CHAIN did not reach the daemon`);
  process.stdout.write(`  chain ${baseCk.m.id} .. ${newest} (${chainLen} incrementals of ${pct}%), new full ${nf.m.id}\n`);

  const samples: RestoreSample[] = [];
  const targets = (phase: RestoreSample["phase"]): [string, string][] =>
    phase === "before-merge"
      ? [
          [`chain of ${chainLen} (unmerged)`, newest],
          ["full (chain base)", baseCk.m.id],
          ["full (after chain)", nf.m.id],
        ]
      : [
          ["merged", newest],
          ["full (chain base)", baseCk.m.id],
          ["full (after chain)", nf.m.id],
        ];
  // The order rotates every repetition, so no target is always first (e.g. right after a daemon start).
  const rotated = (xs: [string, string][], r: number): [string, string][] => xs.map((_, i) => xs[(i + r) % xs.length]!);
  for (let r = 0; r < reps; r++) {
    for (const [what, id] of rotated(targets("before-merge"), r)) samples.push(await restoreOnce(home, name, id, sums.get(id)!, "before-merge", what));
  }

  // Merge without the daemon: stop the app and the daemon, then open the store directly.
  await stopApps();
  await stopDaemon(home);
  const cas = (await import(pathToFileURL(CAS_MODULE).href)) as {
    CasStore: { open(root: string): Promise<{ merge(id: string): Promise<{ kind: string; synthetic: boolean; stats: CkStats }>; close(): Promise<void> }> };
  };
  const store = await cas.CasStore.open(join(home.dir, "store"));
  let merged: Part3["merged"] = null;
  let mergeNs = NaN;
  try {
    const t0 = nowNs();
    merged = await store.merge(newest);
    mergeNs = Number(nowNs() - t0);
  } finally {
    await store.close();
  }
  if (!merged || merged.kind !== "full" || !merged.synthetic) throw new Error(`merge(${newest}) did not make it a synthetic full checkpoint`);
  process.stdout.write(`  merged ${newest} in ${ms(mergeNs)} ms\n`);

  for (let r = 0; r < reps; r++) {
    for (const [what, id] of rotated(targets("after-merge"), r)) samples.push(await restoreOnce(home, name, id, sums.get(id)!, "after-merge", what));
  }
  await stopApps();

  const med = (phase: RestoreSample["phase"], what: string): number => median(samples.filter((s) => s.phase === phase && s.what === what).map((s) => s.wallNs));
  const medians: Record<string, number> = {};
  for (const phase of ["before-merge", "after-merge"] as const) for (const [what] of targets(phase)) medians[`${phase}: ${what}`] = med(phase, what);
  const mergedNs = med("after-merge", "merged");
  return {
    mib,
    chainLen,
    pct,
    base: baseCk.m.id,
    newest,
    newFull: nf.m.id,
    chain,
    mergeNs,
    merged,
    samples,
    medians,
    mergedVsFull: mergedNs / med("after-merge", "full (chain base)"),
    mergedVsNewFull: mergedNs / med("after-merge", "full (after chain)"),
    unmergedVsFull: med("before-merge", `chain of ${chainLen} (unmerged)`) / med("before-merge", "full (chain base)"),
  };
}

function printPart3(p: Part3): void {
  console.log(`\nPart 3: restore of a ${p.mib} MiB process, chain ${p.base}..${p.newest} (1 full + ${p.chainLen} incrementals of ${p.pct}% each), before and after merge`);
  const rows: string[][] = [];
  for (const phase of ["before-merge", "after-merge"] as const) {
    const whats = [...new Set(p.samples.filter((s) => s.phase === phase).map((s) => s.what))];
    const base = median(p.samples.filter((s) => s.phase === phase && s.what === "full (chain base)").map((s) => s.wallNs));
    for (const what of whats) {
      const ss = p.samples.filter((s) => s.phase === phase && s.what === what);
      const wall = median(ss.map((s) => s.wallNs));
      rows.push([phase, what, ss[0]!.checkpoint, String(ss.length), ms(wall), ms(median(ss.map((s) => s.restoreNs))), ms(median(ss.map((s) => s.cliNs))), f2(wall / base), ss.every((s) => s.sumOk) ? "ok" : "WRONG"]);
    }
  }
  printTable(["phase", "restore of", "id", "n", "wall ms", "tardigrade-restore ms", "CLI ms", "x base full", "checksum"], rows);
  console.log(
    `merge (CasStore.merge on the stopped store): ${ms(p.mergeNs)} ms. wall = restore JSON wallNs (daemon: request to restored app answering); medians; page cache warm.` +
      "\nfull (chain base) = the chain's first checkpoint; full (after chain) = `checkpoint --full` of the newest state, its pages deduplicated into the chain's packs." +
      "\nchecksum = the restored process's own checksum of its memory equals the one printed before the checkpoint.",
  );
}

// ---------------------------------------------------------------------------

export async function main(): Promise<void> {
  const parts = new Set((process.env.BENCH_PARTS ?? "1,2,3").split(",").map((s) => s.trim()));
  const incMib = envInt("BENCH_INC_MIB", 1024);
  const pcts = (process.env.BENCH_INC_PCTS ?? "1,10,100").split(",").map(Number).filter((x) => x > 0 && x <= 100);
  // Rounds per percentage (one number for all, or one per percentage): a 1 GiB full
  // checkpoint takes 13-25 s to store here, so the big cases get fewer rounds.
  const roundsList = (process.env.BENCH_INC_ROUNDS ?? "3,2,1").split(",").map((x) => Math.max(1, Math.floor(Number(x)) || 1));
  const roundsOf = (pct: number): number => roundsList[Math.min(pcts.indexOf(pct), roundsList.length - 1)] ?? 3;
  // 128 MiB all rewritten between checkpoints takes ~5 s to store here (256 MiB: 10-12 s,
  // so --every 10s skipped every other tick and a 30 s run saw only the first, full checkpoint).
  // 40 s gives checkpoints at ~10, 20 and 30 s: one full, then incrementals.
  const loopMib = envInt("BENCH_LOOP_MIB", 128);
  const loopSeconds = envInt("BENCH_LOOP_SECONDS", 40);
  const loopRounds = envInt("BENCH_LOOP_ROUNDS", 2);
  const chainMib = envInt("BENCH_CHAIN_MIB", 256);
  const chainLen = envInt("BENCH_CHAIN_LEN", 20);
  const chainPct = envNum("BENCH_CHAIN_PCT", 5);
  const reps = envInt("BENCH_RESTORE_REPS", 3);
  if (!existsSync(join(ROOT, "dist", "src", "cli", "main.js"))) throw new Error("the CLI is not built: run `npm run build` first");
  execFileSync("make", ["-s", "-C", FIXTURES, "build/dirtier"], { stdio: "inherit" });

  // No background merges anywhere: they would run during the measurements (and part 3 needs the chain unmerged).
  const noMerge = { TARDIGRADE_MERGE_CHAIN: "1000", TARDIGRADE_MERGE_BYTES_RATIO: "1000" };
  const removeHomes = (): void => {
    if (!process.env.BENCH_KEEP_HOME) for (const h of homes) rmSync(h.dir, { recursive: true, force: true });
  };
  const onSignal = (sig: NodeJS.Signals): void => {
    for (const h of homes) trackDaemon(h.dir);
    killTracked("SIGKILL");
    removeHomes();
    process.exit(sig === "SIGINT" ? 130 : 143);
  };
  process.once("SIGINT", onSignal);
  process.once("SIGTERM", onSignal);

  const t0 = Date.now();
  const load0 = loadavg();
  const out: Record<string, unknown> = {
    bench: "incremental",
    date: new Date().toISOString(),
    host: { kernel: release(), cpus: cpus().length, cpuModel: cpus()[0]?.model ?? "", memBytes: totalmem(), node: process.version, loadavgAtStart: load0 },
    targets: { incDowntime1PctS: TARGET_INC_DOWNTIME_1PCT_S, storedVsDirty1Pct: TARGET_STORED_VS_DIRTY_1PCT, trackingOverhead: TARGET_TRACKING_OVERHEAD, restoreAfterMerge: "no slower than from a full" },
  };
  let p1: Awaited<ReturnType<typeof part1>> | null = null;
  let p2: Part2 | null = null;
  let p3: Part3 | null = null;
  try {
    if (parts.has("1")) {
      const home = makeHome("dirty", noMerge);
      homes.push(home);
      console.log(`Part 1: TARDIGRADE_HOME=${home.dir}; dirtier ${incMib} MiB; ${pcts.map((p) => `${p}% x ${roundsOf(p)} round(s)`).join(", ")}`);
      p1 = await part1(home, incMib, pcts, roundsOf);
      await stopDaemon(home);
      printPart1(incMib, p1.rows);
    }
    if (parts.has("2")) {
      const home = makeHome("loop", noMerge);
      homes.push(home);
      console.log(`\nPart 2: TARDIGRADE_HOME=${home.dir}; dirtier --loop ${loopMib} MiB, ${loopSeconds} s per run, ${loopRounds} round(s)`);
      p2 = await part2(home, loopMib, loopSeconds, loopRounds);
      await stopDaemon(home);
      printPart2(p2);
    }
    if (parts.has("3")) {
      const home = makeHome("chain", noMerge);
      homes.push(home);
      console.log(`\nPart 3: TARDIGRADE_HOME=${home.dir}; dirtier ${chainMib} MiB, 1 full + ${chainLen} incrementals of ${chainPct}%; ${reps} restore(s) each`);
      p3 = await part3(home, chainMib, chainLen, chainPct, reps);
      await stopDaemon(home);
      printPart3(p3);
    }
  } finally {
    for (const h of homes) trackDaemon(h.dir);
    await cleanup();
    process.removeListener("SIGINT", onSignal);
    process.removeListener("SIGTERM", onSignal);
    removeHomes();
  }

  // Targets.
  const verdicts: Record<string, { value: number; target: string; met: boolean }> = {};
  const one = p1?.rows.find((r) => r.pct === 1);
  if (one) {
    verdicts.incDowntime1Pct = { value: one.incDowntimeNs / 1e9, target: `<= ${TARGET_INC_DOWNTIME_1PCT_S} s`, met: one.incDowntimeNs / 1e9 <= TARGET_INC_DOWNTIME_1PCT_S };
    verdicts.storedVsDirty1Pct = { value: one.storedVsDirty, target: `<= ${TARGET_STORED_VS_DIRTY_1PCT}`, met: one.storedVsDirty <= TARGET_STORED_VS_DIRTY_1PCT };
  }
  for (const o of p2?.overhead ?? []) verdicts[`trackingOverhead_${o.tracking}`] = { value: o.vsUntracked.byMean, target: `<= ${TARGET_TRACKING_OVERHEAD} vs untracked`, met: o.vsUntracked.byMean <= TARGET_TRACKING_OVERHEAD };
  if (p3) {
    verdicts.restoreMergedVsFull = { value: p3.mergedVsFull, target: "<= 1 (merged no slower than the chain's base full)", met: p3.mergedVsFull <= 1 };
    verdicts.restoreMergedVsFullAfterChain = { value: p3.mergedVsNewFull, target: "<= 1 (merged no slower than a --full of the same state, same pack layout)", met: p3.mergedVsNewFull <= 1 };
  }
  if (Object.keys(verdicts).length) {
    console.log("\nTargets (issue 3):");
    for (const [k, v] of Object.entries(verdicts)) console.log(`  ${k}: ${Number.isFinite(v.value) ? v.value.toFixed(3) : "-"} (target ${v.target}): ${metStr(v.met)}`);
  }
  const elapsedS = (Date.now() - t0) / 1000;
  console.log(`\nbench time ${elapsedS.toFixed(0)} s; load average at start ${load0.map((x) => x.toFixed(2)).join(" ")}, at end ${loadavg().map((x) => x.toFixed(2)).join(" ")}`);

  Object.assign(out, {
    elapsedS,
    loadavgAtEnd: loadavg(),
    method: {
      fixture: "test/fixtures/dirtier: MIB MiB of splitmix64 words (incompressible); SIGUSR1 rewrites a random PERCENT of its pages (distinct) with new random words; SIGUSR2 prints a checksum; --loop does random 8-byte writes and prints its rate every second",
      part1: "after a first full: per round, dirty, `checkpoint` (incremental), dirty, `checkpoint --full`; medians over rounds; dirty bytes = stats.pagesWritten*4096; stored = stats.storedBytes",
      part2: "plain (spawned without tardigrade), `run --every 10s --tracking none` (untracked: same checkpoints, all full), `--tracking uffd`, `--tracking hash`, untracked again, plain again, same duration each; rate from the fixture's own per-second lines; overhead = 1 - rate/baseline (mean over the runs of the baseline); BENCH_LOOP_ROUNDS rounds (default 2) in alternating order; the target is judged against untracked",
      part3: "daemon with TARDIGRADE_MERGE_CHAIN=1000; 1 full + N incrementals; `restore --replace --checkpoint ID --json` wallNs, alternating targets; then app and daemon stopped, CasStore.open(store).merge(newest), restores again (new daemon); every restore checked by the app's checksum",
    },
    part1: p1 ? { mib: incMib, pcts, rounds: pcts.map(roundsOf), first: p1.first, rows: p1.rows, checkpoints: p1.checkpoints } : null,
    part2: p2,
    part3: p3,
    verdicts,
  });
  mkdirSync(dirname(RESULTS), { recursive: true });
  writeFileSync(RESULTS, JSON.stringify(out, null, 2) + "\n");
  console.log(`wrote ${RESULTS}`);
}
