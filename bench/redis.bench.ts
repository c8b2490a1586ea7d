// redis benchmark (issue 13): redis-server holding BENCH_REDIS_MIB of 1 KiB values, loaded by
// redis-benchmark (GET and SET, random keys of the populated set, from processes of their own),
// for BENCH_REDIS_SECS seconds, in one run:
//   - untracked: the server alone (the baseline of the round);
//   - tardigrade: the server under `tardigrade run`, a checkpoint every BENCH_REDIS_EVERY_S s
//     (one variant per CLI in BENCH_REDIS_CLIS, alternated, so two builds compare in one run);
//   - criu (when CRIU=path is set): the server alone, `criu dump --leave-running --tcp-established`
//     every BENCH_REDIS_EVERY_S s (each a full dump: CRIU freezes the server for all of it).
// BENCH_REDIS_ROUNDS rounds of that sequence. Figures per run: requests/s from the server's own
// counters (INFO commandstats: GET + SET calls), against the untracked run of the same round; the
// rate outside and while a checkpoint ran; a probe connection (PING, one at a time, ~1 ms apart)
// whose worst latency overlapping a checkpoint is the "spike" (target <= 100 ms at 1 GiB); the CPU
// of the server (with its snapshot children, reaped by it), of the daemon and of the load; the
// server's minor faults (write-protect and copy-on-write faults land there).
//
// Environment: BENCH_REDIS_MIB=1024, BENCH_REDIS_SECS=60, BENCH_REDIS_EVERY_S=10,
// BENCH_REDIS_CONNS=8 (half GET, half SET), BENCH_REDIS_ROUNDS=1,
// BENCH_REDIS_TRACKING=uffd|hash|none (tardigrade run --tracking; default: tardigrade's default),
// BENCH_REDIS_CLIS=label=/path/bin/tardigrade.js,... (default: this checkout), CRIU=/path/criu,
// BENCH_REDIS_CRIU_DIR (where CRIU writes its images; default: under the tardigrade home's file system, /tmp).
// Prints a table, writes bench/results/redis.json. Everything started is killed by PID.
import { execFile, spawn, type ChildProcess } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { connect, type Socket } from "node:net";
import { cpus, loadavg, tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { cleanup, cliJson, CLI, killTracked, nowNs, sleep, track, trackApp, trackDaemon, daemonPid } from "./bench-procs.js";
import { criuFrozenUs } from "./criu-peer.js";
import { freePort } from "../test/helpers/net.js";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");
const RESULTS = join(ROOT, "bench", "results", "redis.json");

const envInt = (name: string, def: number): number => {
  const v = Number(process.env[name]);
  return Number.isFinite(v) && v > 0 ? Math.floor(v) : def;
};

function redisCli(port: number, args: string[]): Promise<string> {
  return new Promise((res, rej) =>
    execFile("redis-cli", ["-h", "127.0.0.1", "-p", String(port), ...args], { timeout: 600_000, maxBuffer: 16 << 20 }, (e, out, err) => (e ? rej(new Error(`redis-cli ${args[0]}: ${err || e.message}`)) : res(out.trim()))),
  );
}

async function waitRedis(port: number): Promise<void> {
  for (let i = 0; i < 1200; i++) {
    if (await redisCli(port, ["PING"]).then((o) => o === "PONG", () => false)) return;
    await sleep(100);
  }
  throw new Error(`redis on port ${port} never answered`);
}

const redisArgs = (port: number): string[] => ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--daemonize", "no"];

/** `keys` keys key:%012d (redis-benchmark's __rand_int__ form) with 1 KiB values, each its own (the key's digits repeated), pipelined. */
async function populate(port: number, keys: number): Promise<void> {
  const s = connect(port, "127.0.0.1");
  await new Promise<void>((res, rej) => s.once("connect", res).once("error", rej));
  let got = 0;
  let waiter: { bytes: number; res: () => void } | null = null;
  s.on("data", (d: Buffer) => {
    got += d.length; // every reply is "+OK\r\n"
    if (waiter && got >= waiter.bytes) {
      const w = waiter;
      waiter = null;
      w.res();
    }
  });
  const until = (bytes: number): Promise<void> => (got >= bytes ? Promise.resolve() : new Promise((res) => (waiter = { bytes, res })));
  const batch = 2048;
  for (let at = 0; at < keys; at += batch) {
    const parts: string[] = [];
    for (let i = at; i < Math.min(keys, at + batch); i++) {
      const d = String(i).padStart(12, "0");
      parts.push(`*3\r\n$3\r\nSET\r\n$16\r\nkey:${d}\r\n$1024\r\n${d.repeat(85)}xxxx\r\n`);
    }
    s.write(parts.join(""));
    await until(Math.max(0, at - batch) * 5); // at most two batches in flight
  }
  await until(keys * 5);
  s.destroy();
  if (got !== keys * 5) throw new Error(`populate: ${got} reply bytes for ${keys} SETs (expected +OK for each)`);
}

// ---------------------------------------------------------------------------
// A connection of the bench's own: the probe (PING one at a time) and the counter reader (INFO).

class Resp {
  private buf = "";
  private waiting: ((reply: string) => void) | null = null;
  constructor(private readonly s: Socket) {
    s.setEncoding("utf8").on("data", (d: string) => {
      this.buf += d;
      this.pump();
    });
  }
  static async open(port: number): Promise<Resp> {
    const s = connect(port, "127.0.0.1");
    await new Promise<void>((res, rej) => s.once("connect", res).once("error", rej));
    s.setNoDelay(true);
    s.on("error", () => undefined);
    return new Resp(s);
  }
  private pump(): void {
    if (!this.waiting) return;
    const nl = this.buf.indexOf("\r\n");
    if (nl < 0) return;
    let end: number;
    if (this.buf[0] === "$") {
      const n = Number(this.buf.slice(1, nl));
      end = n < 0 ? nl + 2 : nl + 2 + n + 2;
      if (this.buf.length < end) return; // (INFO is ASCII: characters are bytes)
    } else end = nl + 2;
    const reply = this.buf.slice(0, end);
    this.buf = this.buf.slice(end);
    const w = this.waiting;
    this.waiting = null;
    w(reply);
  }
  private queue: Promise<unknown> = Promise.resolve();
  /** One command at a time (callers may overlap: they are queued). */
  ask(cmd: string): Promise<string> {
    const p = this.queue.then(
      () =>
        new Promise<string>((res) => {
          this.waiting = res;
          this.s.write(cmd);
          this.pump();
        }),
    );
    this.queue = p;
    return p;
  }
  close(): void {
    this.s.destroy();
  }
}

/** GET + SET calls the server counted so far. */
async function calls(c: Resp): Promise<number> {
  const info = await c.ask("INFO commandstats\r\n");
  let n = 0;
  for (const m of info.matchAll(/cmdstat_(get|set):calls=(\d+)/g)) n += Number(m[2]);
  return n;
}

interface Sample {
  /** ns since the run's t0 when the reply came */
  endNs: number;
  ms: number;
}

// ---------------------------------------------------------------------------
// CPU and faults from /proc.

const CLK_TCK = 100;
interface ProcStat {
  cpuS: number;
  childCpuS: number;
  minflt: number;
}
function procStat(pid: number | null | undefined): ProcStat | null {
  if (!pid) return null;
  try {
    const s = readFileSync(`/proc/${pid}/stat`, "utf8");
    const f = s.slice(s.lastIndexOf(")") + 2).split(" ");
    // fields from 3 (state): minflt 10, utime 14, stime 15, cutime 16, cstime 17
    return { minflt: Number(f[7]), cpuS: (Number(f[11]) + Number(f[12])) / CLK_TCK, childCpuS: (Number(f[13]) + Number(f[14])) / CLK_TCK };
  } catch {
    return null;
  }
}
const statDiff = (a: ProcStat | null, b: ProcStat | null): ProcStat | null =>
  a && b ? { cpuS: b.cpuS - a.cpuS, childCpuS: b.childCpuS - a.childCpuS, minflt: b.minflt - a.minflt } : null;

/** The pid (host's view) of the process running `comm` among pid's descendants (the app under tardigrade's init). */
function findDescendant(pid: number, comm: string): number | null {
  const kids = (p: number): number[] => {
    try {
      return readFileSync(`/proc/${p}/task/${p}/children`, "utf8").trim().split(/\s+/).filter(Boolean).map(Number);
    } catch {
      return [];
    }
  };
  const todo = [pid];
  while (todo.length) {
    const p = todo.shift()!;
    try {
      if (readFileSync(`/proc/${p}/comm`, "utf8").trim() === comm) return p;
    } catch {
      /* gone */
    }
    todo.push(...kids(p));
  }
  return null;
}

// ---------------------------------------------------------------------------
// One run: the server on `port` (pid `serverPid`), populated; load for `secs`, `checkpoint()` every `every` s.

interface Window {
  startMs: number;
  endMs: number;
  downtimeMs: number;
  kind: string;
}

interface RunResult {
  label: string;
  ops: number;
  rate: number;
  outsideRate: number;
  insideRate: number;
  probe: { n: number; p50: number; p99: number; max: number; worstDuring: number; during: number };
  windows: Window[];
  server: ProcStat | null;
  daemon: ProcStat | null;
  load: ProcStat | null;
  load1: [number, number];
  note?: string;
}

const max = (xs: number[]): number => xs.reduce((m, x) => (x > m ? x : m), 0);
const pct = (xs: number[], p: number): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]! : 0;
};

function startLoad(port: number, conns: number, keys: number): ChildProcess[] {
  const value = "__rand_int__".repeat(85) + "xxxx"; // 1024 bytes, every placeholder a random number
  const common = ["-h", "127.0.0.1", "-p", String(port), "-n", "2000000000", "-r", String(keys), "-q"];
  const get = spawn("redis-benchmark", [...common, "-c", String(Math.max(1, conns >> 1)), "GET", "key:__rand_int__"], { stdio: "ignore" });
  const set = spawn("redis-benchmark", [...common, "-c", String(Math.max(1, conns - (conns >> 1))), "SET", "key:__rand_int__", value], { stdio: "ignore" });
  track(get.pid, "load");
  track(set.pid, "load");
  return [get, set];
}

async function oneRun(label: string, port: number, serverPid: number | null, daemon: number | null, conns: number, secs: number, every: number, keys: number, checkpoint: (() => Promise<{ downtimeMs: number; kind: string }>) | null): Promise<RunResult> {
  const loaders = startLoad(port, conns, keys);
  const stats = await Resp.open(port);
  const probe = await Resp.open(port);
  // warm-up: the load connected and running
  const c00 = await calls(stats);
  for (let i = 0; i < 100 && (await calls(stats)) - c00 < 1000; i++) await sleep(50);
  const load1a = loadavg()[0]!;
  const t0 = nowNs();
  const s0 = procStat(serverPid);
  const d0 = procStat(daemon);
  const l0 = loaders.map((l) => procStat(l.pid));
  const c0 = await calls(stats);
  const until = t0 + BigInt(secs) * 1_000_000_000n;
  const windows: Window[] = [];
  const samples: Sample[] = [];
  const counts: [number, number][] = [[0, c0]];
  let done = false;
  const probing = (async () => {
    while (!done) {
      const a = nowNs();
      await probe.ask("PING\r\n");
      const b = nowNs();
      samples.push({ endNs: Number(b - t0), ms: Number(b - a) / 1e6 });
      await sleep(1);
    }
  })();
  const counting = (async () => {
    while (!done) {
      await sleep(250);
      counts.push([Number(nowNs() - t0), await calls(stats)]);
    }
  })();
  const checkpoints = (async () => {
    if (!checkpoint) return;
    for (let k = 1; ; k++) {
      const at = t0 + BigInt(k * every) * 1_000_000_000n;
      if (at >= until) break;
      while (nowNs() < at) await sleep(Math.max(1, Math.min(200, Number(at - nowNs()) / 1e6)));
      // the next one waits for this one: a checkpoint longer than `every` delays the others
      const a = Number(nowNs() - t0) / 1e6;
      const r = await checkpoint();
      windows.push({ startMs: a, endMs: Number(nowNs() - t0) / 1e6, ...r });
    }
  })();
  while (nowNs() < until) await sleep(100);
  const c1 = await calls(stats);
  const tEnd = Number(nowNs() - t0);
  const s1 = procStat(serverPid);
  const d1 = procStat(daemon);
  const l1 = loaders.map((l) => procStat(l.pid));
  done = true;
  await Promise.all([probing, counting]);
  for (const l of loaders) l.kill("SIGKILL");
  await checkpoints;
  stats.close();
  probe.close();
  counts.push([tEnd, c1]);
  const ops = c1 - c0;
  const inWindow = (ns: number): boolean => windows.some((w) => ns / 1e6 >= w.startMs && ns / 1e6 <= w.endMs);
  // rates inside/outside checkpoints from the 250 ms counter samples (an interval counts where its middle is)
  let inOps = 0,
    inNs = 0,
    outOps = 0,
    outNs = 0;
  for (let i = 1; i < counts.length; i++) {
    const [ta, ca] = counts[i - 1]!;
    const [tb, cb] = counts[i]!;
    if (tb > tEnd) break;
    if (inWindow((ta + tb) / 2)) {
      inOps += cb - ca;
      inNs += tb - ta;
    } else {
      outOps += cb - ca;
      outNs += tb - ta;
    }
  }
  const during = samples.filter((s) => windows.some((w) => s.endNs / 1e6 >= w.startMs && s.endNs / 1e6 - s.ms <= w.endMs)).map((s) => s.ms);
  const lat = samples.map((s) => s.ms);
  const sumStat = (xs: (ProcStat | null)[]): ProcStat | null => (xs.every((x) => x) ? xs.reduce<ProcStat>((a, x) => ({ cpuS: a.cpuS + x!.cpuS, childCpuS: a.childCpuS + x!.childCpuS, minflt: a.minflt + x!.minflt }), { cpuS: 0, childCpuS: 0, minflt: 0 }) : null);
  return {
    label,
    ops,
    rate: ops / (tEnd / 1e9),
    outsideRate: outNs ? outOps / (outNs / 1e9) : 0,
    insideRate: inNs ? inOps / (inNs / 1e9) : 0,
    probe: { n: lat.length, p50: pct(lat, 50), p99: pct(lat, 99), max: max(lat), worstDuring: max(during), during: during.length },
    windows,
    server: statDiff(s0, s1),
    daemon: statDiff(d0, d1),
    load: statDiff(sumStat(l0), sumStat(l1)),
    load1: [load1a, loadavg()[0]!],
  };
}

// ---------------------------------------------------------------------------
// The three kinds of run.

async function untrackedRun(label: string, mib: number, conns: number, secs: number, every: number, keys: number): Promise<RunResult> {
  const port = await freePort();
  const srv = spawn("redis-server", redisArgs(port), { stdio: "ignore" });
  track(srv.pid, "redis");
  try {
    await waitRedis(port);
    await populate(port, keys);
    return await oneRun(label, port, srv.pid ?? null, null, conns, secs, every, keys, null);
  } finally {
    srv.kill("SIGKILL");
  }
}

async function tardigradeRun(label: string, cli: string, conns: number, secs: number, every: number, keys: number): Promise<RunResult> {
  const home = mkdtempSync(join(tmpdir(), "tg-bench-redis-"));
  const env = { ...process.env, TARDIGRADE_HOME: home };
  const port = await freePort();
  try {
    const tracking = process.env.BENCH_REDIS_TRACKING ? ["--tracking", process.env.BENCH_REDIS_TRACKING] : [];
    await cliJson(env, ["run", "--name", "redis", ...tracking, "--json", "--", "redis-server", ...redisArgs(port)], 600_000, cli);
    trackDaemon(home);
    const st = await trackApp(env, "redis", cli);
    await waitRedis(port);
    await populate(port, keys);
    const serverPid = st.initHostPid ? findDescendant(st.initHostPid, "redis-server") : null;
    const r = await oneRun(label, port, serverPid, daemonPid(home), conns, secs, every, keys, async () => {
      const j = (await cliJson(env, ["checkpoint", "redis", "--json"], 600_000, cli)).json as { downtimeNs: number; kind: string };
      return { downtimeMs: j.downtimeNs / 1e6, kind: j.kind };
    });
    await cliJson(env, ["stop", "redis", "--json"], 600_000, cli).catch(() => undefined);
    return r;
  } finally {
    await cleanup();
    rmSync(home, { recursive: true, force: true });
  }
}

async function criuRun(label: string, criu: string, conns: number, secs: number, every: number, keys: number): Promise<RunResult> {
  const port = await freePort();
  const work = mkdtempSync(join(process.env.BENCH_REDIS_CRIU_DIR || tmpdir(), "tg-bench-redis-criu-"));
  const srv = spawn("redis-server", redisArgs(port), { stdio: "ignore", detached: true });
  track(srv.pid, "redis");
  const frozen: number[] = [];
  let failure = "";
  try {
    await waitRedis(port);
    await populate(port, keys);
    let n = 0;
    const r = await oneRun(label, port, srv.pid ?? null, null, conns, secs, every, keys, async () => {
      const img = join(work, `img${n++}`);
      mkdirSync(img);
      const args = ["dump", "-t", String(srv.pid), "-D", img, "-o", "dump.log", "--leave-running", "--tcp-established", "--network-lock", "nftables"];
      const code = await new Promise<number | string>((res) => {
        const c = spawn(criu, args, { stdio: "ignore" });
        track(c.pid, "criu");
        c.on("close", (k, sig) => res(k ?? sig ?? "?"));
        c.on("error", () => res("spawn failed"));
      });
      let us = NaN;
      if (code === 0) us = criuFrozenUs(img);
      else failure ||= `criu dump exited ${code}: ${readFileSync(join(img, "dump.log"), "utf8").split("\n").filter((l) => /Error|error/.test(l)).slice(-3).join(" | ")}`;
      frozen.push(us / 1000);
      rmSync(img, { recursive: true, force: true });
      return { downtimeMs: us / 1000, kind: code === 0 ? "criu-full" : "criu-failed" };
    });
    if (failure) r.note = failure;
    return r;
  } finally {
    srv.kill("SIGKILL");
    killTracked("SIGKILL", (t) => t.what === "criu");
    rmSync(work, { recursive: true, force: true });
  }
}

export async function main(): Promise<void> {
  const mib = envInt("BENCH_REDIS_MIB", 1024);
  const secs = envInt("BENCH_REDIS_SECS", 60);
  const every = envInt("BENCH_REDIS_EVERY_S", 10);
  const conns = envInt("BENCH_REDIS_CONNS", 8);
  const rounds = envInt("BENCH_REDIS_ROUNDS", 1);
  const keys = mib * 1024; // values of 1 KiB
  const clis = (process.env.BENCH_REDIS_CLIS ?? "").split(",").filter(Boolean).map((s) => {
    const i = s.indexOf("=");
    return i > 0 ? { label: s.slice(0, i), cli: s.slice(i + 1) } : { label: s, cli: s };
  });
  if (!clis.length) clis.push({ label: "tardigrade", cli: CLI });
  const criu = process.env.CRIU;
  const loadBefore = loadavg();
  const results: { round: number; runs: RunResult[] }[] = [];
  try {
    for (let round = 1; round <= rounds; round++) {
      const runs: RunResult[] = [];
      runs.push(await untrackedRun("untracked", mib, conns, secs, every, keys));
      for (const c of clis) runs.push(await tardigradeRun(c.label, c.cli, conns, secs, every, keys));
      if (criu) runs.push(await criuRun("criu", criu, conns, secs, every, keys));
      results.push({ round, runs });
      report(round, runs, mib);
    }
  } finally {
    await cleanup();
  }
  console.log(`redis-server with ${mib} MiB of 1 KiB values, redis-benchmark GET (${conns >> 1} conns) + SET (${conns - (conns >> 1)} conns) for ${secs} s per run, a checkpoint every ${every} s, tracking ${process.env.BENCH_REDIS_TRACKING ?? "default"}; ${cpus().length} CPUs, load ${loadBefore.map((x) => x.toFixed(2)).join(" ")} -> ${loadavg().map((x) => x.toFixed(2)).join(" ")}`);
  mkdirSync(dirname(RESULTS), { recursive: true });
  writeFileSync(RESULTS, JSON.stringify({ mib, secs, every, conns, tracking: process.env.BENCH_REDIS_TRACKING ?? "default", load: { before: loadBefore, after: loadavg() }, results }, null, 2));
}

function report(round: number, runs: RunResult[], mib: number): void {
  const base = runs[0]!;
  console.log(`\nround ${round}`);
  console.log(["run".padEnd(12), "req/s".padStart(8), "ratio".padStart(6), "out".padStart(6), "in".padStart(6), "p50ms".padStart(6), "p99ms".padStart(6), "maxms".padStart(7), "spike".padStart(7), "srvCPU".padStart(7), "snapCPU".padStart(8), "dmnCPU".padStart(7), "ldCPU".padStart(6), "minflt".padStart(9), "load".padStart(10)].join(" "));
  for (const r of runs) {
    const f = (x: number, d = 0, w = 6): string => (Number.isFinite(x) ? x.toFixed(d) : "-").padStart(w);
    console.log(
      [
        r.label.padEnd(12),
        f(r.rate, 0, 8),
        f(r.rate / base.rate, 3),
        f(r.outsideRate / base.rate, 3),
        r.windows.length ? f(r.insideRate / base.rate, 3) : "-".padStart(6),
        f(r.probe.p50, 2),
        f(r.probe.p99, 2),
        f(r.probe.max, 1, 7),
        r.windows.length ? f(r.probe.worstDuring, 1, 7) : "-".padStart(7),
        f(r.server?.cpuS ?? NaN, 1, 7),
        f(r.server?.childCpuS ?? NaN, 1, 8),
        f(r.daemon?.cpuS ?? NaN, 1, 7),
        f(r.load?.cpuS ?? NaN, 1, 6),
        f(r.server?.minflt ?? NaN, 0, 9),
        `${r.load1[0].toFixed(1)}-${r.load1[1].toFixed(1)}`.padStart(10),
      ].join(" "),
    );
  }
  for (const r of runs.slice(1)) {
    console.log(`${r.label}: ${r.windows.map((w) => `${w.kind} ${w.downtimeMs.toFixed(0)} ms / ${(w.endMs - w.startMs).toFixed(0)} ms wall`).join("; ") || "no checkpoint"}${r.note ? ` (${r.note})` : ""}`);
    if (r.label !== "criu") {
      const ratio = r.rate / base.rate;
      console.log(`  throughput ${ratio.toFixed(3)}x untracked (target >= 0.95: ${ratio >= 0.95 ? "met" : "NOT met"}); worst probe latency during a checkpoint ${r.probe.worstDuring.toFixed(1)} ms (${mib >= 1024 ? (r.probe.worstDuring <= 100 ? "met" : "NOT met") : `not judged at ${mib} MiB`}; untracked worst ${base.probe.max.toFixed(1)} ms)`);
    }
  }
}
