// redis benchmark (issue 13): redis-server holding BENCH_REDIS_MIB of values, GET/SET load from a
// client in this process (BENCH_REDIS_CONNS connections, each one request at a time, every
// request's latency recorded), for BENCH_REDIS_SECS seconds: once without tardigrade (the
// baseline, same run, same machine) and once under tardigrade with a checkpoint every
// BENCH_REDIS_EVERY_S seconds. Figures: throughput against the baseline (target >= 0.95), the
// worst request latency while a checkpoint ran (target <= 100 ms at 1 GiB) against the worst of the
// baseline, the checkpoints' downtime. CRIU's dump --leave-running is not run by this bench yet.
//
// Environment: BENCH_REDIS_MIB=256, BENCH_REDIS_SECS=30, BENCH_REDIS_EVERY_S=10, BENCH_REDIS_CONNS=8,
// BENCH_REDIS_TRACKING=uffd|hash|none (tardigrade run --tracking; default: tardigrade's default).
// Prints a table, writes bench/results/redis.json. Everything started is killed by PID.
import { execFile, spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { connect, type Socket } from "node:net";
import { cpus, loadavg, tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { cleanup, cliJson, nowNs, sleep, track, trackApp, trackDaemon } from "./bench-procs.js";
import { freePort } from "../test/helpers/net.js";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");
const RESULTS = join(ROOT, "bench", "results", "redis.json");

const envInt = (name: string, def: number): number => {
  const v = Number(process.env[name]);
  return Number.isFinite(v) && v > 0 ? Math.floor(v) : def;
};

function redisCli(port: number, args: string[]): Promise<string> {
  return new Promise((res, rej) =>
    execFile("redis-cli", ["-h", "127.0.0.1", "-p", String(port), ...args], { timeout: 600_000 }, (e, out, err) => (e ? rej(new Error(`redis-cli ${args[0]}: ${err || e.message}`)) : res(out.trim()))),
  );
}

async function waitRedis(port: number): Promise<void> {
  for (let i = 0; i < 1200; i++) {
    if (await redisCli(port, ["PING"]).then((o) => o === "PONG", () => false)) return;
    await sleep(100);
  }
  throw new Error(`redis on port ${port} never answered`);
}

const redisArgs = (port: number): string[] => ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--daemonize", "no", "--enable-debug-command", "yes"];

interface Load {
  ops: number;
  /** [end time ns relative to the start, latency ms] per request */
  samples: [number, number][];
  errors: number;
}

/** `conns` connections, each sending GET or SET (alternately, random keys of the populated set) one at a time, for `secs`. */
async function load(port: number, conns: number, secs: number, keys: number, t0: bigint): Promise<Load> {
  const out: Load = { ops: 0, samples: [], errors: 0 };
  const until = nowNs() + BigInt(secs) * 1_000_000_000n;
  const one = async (k: number): Promise<void> => {
    const s: Socket = connect(port, "127.0.0.1");
    await new Promise<void>((res, rej) => s.once("connect", res).once("error", rej));
    s.setNoDelay(true);
    let pending: (() => void) | null = null;
    let buf = "";
    s.setEncoding("utf8").on("data", (d: string) => {
      buf += d;
      // one reply: "+OK\r\n" or "$N\r\n<N bytes>\r\n" (values are short here) or "$-1\r\n"
      if (pending && (/^[+\-:]/.test(buf) ? buf.endsWith("\r\n") : buf.split("\r\n").length >= 3 || buf.startsWith("$-1\r\n"))) {
        const p = pending;
        pending = null;
        buf = "";
        p();
      }
    });
    s.on("error", () => out.errors++);
    for (let i = 0; nowNs() < until; i++) {
      const key = `key:${(k * 7919 + i * 104729) % keys}`;
      const cmd = i % 2 ? `SET ${key} v${i}\r\n` : `GET ${key}\r\n`;
      const a = nowNs();
      await new Promise<void>((res) => {
        pending = res;
        s.write(cmd);
      });
      const b = nowNs();
      out.ops++;
      out.samples.push([Number(b - t0), Number(b - a) / 1e6]);
    }
    s.destroy();
  };
  await Promise.all(Array.from({ length: conns }, (_, k) => one(k)));
  return out;
}

const max = (xs: number[]): number => xs.reduce((m, x) => (x > m ? x : m), 0);
const pct = (xs: number[], p: number): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]! : 0;
};

export async function main(): Promise<void> {
  const mib = envInt("BENCH_REDIS_MIB", 256);
  const secs = envInt("BENCH_REDIS_SECS", 30);
  const every = envInt("BENCH_REDIS_EVERY_S", 10);
  const conns = envInt("BENCH_REDIS_CONNS", 8);
  const keys = mib * 1024; // values of 1 KiB
  const home = mkdtempSync(join(tmpdir(), "tg-bench-redis-"));
  const env = { ...process.env, TARDIGRADE_HOME: home };
  const load0 = loadavg();
  let base: Load;
  let tracked: Load;
  const windows: { startMs: number; endMs: number; downtimeMs: number; kind: string }[] = [];
  try {
    // 1. without tardigrade
    const p1 = await freePort();
    const plain = spawn("redis-server", redisArgs(p1), { stdio: "ignore" });
    track(plain.pid, "redis (untracked)");
    await waitRedis(p1);
    await redisCli(p1, ["DEBUG", "POPULATE", String(keys), "key", "1024"]);
    base = await load(p1, conns, secs, keys, nowNs());
    plain.kill("SIGKILL");
    // 2. under tardigrade, a checkpoint every `every` seconds
    const p2 = await freePort();
    const tracking = process.env.BENCH_REDIS_TRACKING ? ["--tracking", process.env.BENCH_REDIS_TRACKING] : [];
    await cliJson(env, ["run", "--name", "redis", ...tracking, "--json", "--", "redis-server", ...redisArgs(p2)]);
    trackDaemon(home);
    await trackApp(env, "redis");
    await waitRedis(p2);
    await redisCli(p2, ["DEBUG", "POPULATE", String(keys), "key", "1024"]);
    const t0 = nowNs();
    let done = false;
    const checkpoints = (async () => {
      while (!done) {
        await sleep(every * 1000);
        if (done) break;
        const a = Number(nowNs() - t0) / 1e6;
        const r = (await cliJson(env, ["checkpoint", "redis", "--json"])).json as { downtimeNs: number; kind: string };
        windows.push({ startMs: a, endMs: Number(nowNs() - t0) / 1e6, downtimeMs: r.downtimeNs / 1e6, kind: r.kind });
      }
    })();
    tracked = await load(p2, conns, secs, keys, t0);
    done = true;
    await checkpoints;
    await cliJson(env, ["stop", "redis", "--json"]).catch(() => undefined);
  } finally {
    await cleanup();
    rmSync(home, { recursive: true, force: true });
  }
  const lat = (l: Load): number[] => l.samples.map((s) => s[1]);
  const during = tracked.samples.filter(([end, ms]) => windows.some((w) => end / 1e6 >= w.startMs && end / 1e6 - ms <= w.endMs)).map((s) => s[1]);
  const worstDuring = during.length ? max(during) : 0;
  const ratio = tracked.ops / base.ops;
  // steady state: requests that ended outside every checkpoint window, per second outside them
  const inWindow = (endMs: number): boolean => windows.some((w) => endMs >= w.startMs && endMs <= w.endMs);
  const windowMs = windows.reduce((n, w) => n + Math.min(w.endMs, secs * 1000) - w.startMs, 0);
  const outsideRate = tracked.samples.filter(([end]) => !inWindow(end / 1e6)).length / Math.max(0.001, secs - windowMs / 1000);
  const insideRate = windowMs > 0 ? tracked.samples.filter(([end]) => inWindow(end / 1e6)).length / (windowMs / 1000) : 0;
  console.log(`redis-server with ${mib} MiB of values, ${conns} connections of GET/SET for ${secs} s, a checkpoint every ${every} s, tracking ${process.env.BENCH_REDIS_TRACKING ?? "default"}; ${cpus().length} CPUs, load ${load0.map((x) => x.toFixed(2)).join(" ")} -> ${loadavg().map((x) => x.toFixed(2)).join(" ")}`);
  console.log("figure".padEnd(28) + "untracked".padStart(12) + "tardigrade".padStart(12));
  const row = (k: string, a: number, b: number, d = 1): void => console.log(k.padEnd(28) + a.toFixed(d).padStart(12) + b.toFixed(d).padStart(12));
  row("requests/s", base.ops / secs, tracked.ops / secs, 0);
  row("latency p50 (ms)", pct(lat(base), 50), pct(lat(tracked), 50), 2);
  row("latency p99 (ms)", pct(lat(base), 99), pct(lat(tracked), 99), 2);
  row("latency max (ms)", max(lat(base)), max(lat(tracked)), 1);
  console.log(`throughput: ${ratio.toFixed(3)}x untracked (target >= 0.95: ${ratio >= 0.95 ? "met" : "NOT met"}); outside checkpoints ${(outsideRate / (base.ops / secs)).toFixed(3)}x, while a checkpoint ran ${(insideRate / (base.ops / secs)).toFixed(3)}x`);
  console.log(`checkpoints: ${windows.map((w) => `${w.kind} downtime ${w.downtimeMs.toFixed(1)} ms, ${(w.endMs - w.startMs).toFixed(0)} ms wall`).join("; ") || "none"}`);
  console.log(`worst request latency while a checkpoint ran: ${worstDuring.toFixed(1)} ms (${during.length} requests; target <= 100 ms at 1 GiB: ${mib >= 1024 ? (worstDuring <= 100 ? "met" : "NOT met") : `not judged at ${mib} MiB`}); CRIU comparison: not run (CRIU=path is not used by this bench yet)`);
  mkdirSync(dirname(RESULTS), { recursive: true });
  writeFileSync(
    RESULTS,
    JSON.stringify({ mib, secs, every, conns, tracking: process.env.BENCH_REDIS_TRACKING ?? "default", load: { before: load0, after: loadavg() }, untracked: { ops: base.ops, errors: base.errors, p50: pct(lat(base), 50), p99: pct(lat(base), 99), max: max(lat(base)) }, tardigrade: { ops: tracked.ops, outsideRate, insideRate, errors: tracked.errors, p50: pct(lat(tracked), 50), p99: pct(lat(tracked), 99), max: max(lat(tracked)), worstDuringCheckpoint: worstDuring, checkpoints: windows } }, null, 2),
  );
}
