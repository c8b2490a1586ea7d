// Helpers shared by the benchmarks: the processes a benchmark started (killed by PID,
// with their start time so a recycled PID is never hit), medians, and waiting for a
// line in an app's log.
import { execFile } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import type { AppState } from "../src/daemon/appdir.js";

// ---------------------------------------------------------------------------
// Processes we started, by PID, with their start time so a recycled PID is
// never killed.

export interface Tracked {
  pid: number;
  start: string;
  what: string;
}

export const tracked: Tracked[] = [];

export function startTime(pid: number): string | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return fields[19] ?? null; // field 22 of stat: starttime
  } catch {
    return null;
  }
}

export function track(pid: number | null | undefined, what: string): void {
  if (!pid || pid <= 1) return;
  const start = startTime(pid);
  if (start === null) return;
  if (tracked.some((t) => t.pid === pid && t.start === start)) return;
  tracked.push({ pid, start, what });
}

export function aliveSame(t: Tracked): boolean {
  return startTime(t.pid) === t.start;
}

export function killTracked(sig: NodeJS.Signals, filter: (t: Tracked) => boolean = () => true): void {
  for (const t of tracked) {
    if (!filter(t) || !aliveSame(t)) continue;
    try {
      process.kill(t.pid, sig);
    } catch {
      /* already gone */
    }
  }
}

export async function waitGone(filter: (t: Tracked) => boolean, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (!tracked.some((t) => filter(t) && aliveSame(t))) return true;
    await sleep(50);
  }
  return false;
}

/** Kills the apps (SIGKILL) and then the daemons (SIGTERM, SIGKILL after 5 s) we started. */
export async function cleanup(): Promise<void> {
  killTracked("SIGKILL", (t) => t.what !== "daemon");
  await waitGone((t) => t.what !== "daemon", 3000);
  killTracked("SIGTERM", (t) => t.what === "daemon");
  if (!(await waitGone(() => true, 5000))) killTracked("SIGKILL");
}

// ---------------------------------------------------------------------------
// Helpers.

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
export const nowNs = (): bigint => process.hrtime.bigint();

export function median(xs: number[]): number {
  const s = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

export async function waitForLine(file: string, prefixes: string[], timeoutMs: number, from = 0): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (existsSync(file)) {
      const text = readFileSync(file).subarray(from).toString("utf8");
      const lines = text.split("\n").slice(0, -1); // complete lines only
      const bad = lines.find((l) => l.startsWith("ERROR") || l.startsWith("CORRUPT"));
      if (bad !== undefined) throw new Error(`${file}: ${bad}`);
      const hit = lines.find((l) => prefixes.some((p) => l.startsWith(p)));
      if (hit !== undefined) return hit;
    }
    await sleep(10);
  }
  throw new Error(`no line starting with ${prefixes.map((p) => JSON.stringify(p)).join(" or ")} in ${file} after ${timeoutMs} ms`);
}

// ---------------------------------------------------------------------------
// The CLI, with --json, under a given TARDIGRADE_HOME.

/** bin/tardigrade.js of this checkout (bench/ compiles to dist/bench/), or TG_BENCH_CLI (another build, to compare two in one run). */
export const CLI = process.env.TG_BENCH_CLI || join(resolve(dirname(fileURLToPath(import.meta.url)), "..", ".."), "bin", "tardigrade.js");

export interface CliResult {
  json: unknown;
  wallNs: number;
}

/** The daemon's pid in `home` (its daemon.pid), or null before it started. */
export function daemonPid(home: string): number | null {
  try {
    const pid = Number(readFileSync(join(home, "daemon.pid"), "utf8").trim());
    return Number.isInteger(pid) && pid > 1 ? pid : null;
  } catch {
    return null;
  }
}

/** Runs `tardigrade ARGS` (which must print JSON) with `env` (the CLI `cli`, default CLI); tracks the daemon of `env.TARDIGRADE_HOME` for cleanup. */
export function cliJson(env: NodeJS.ProcessEnv, args: string[], timeoutMs = 600_000, cli = CLI): Promise<CliResult> {
  const t0 = nowNs();
  return new Promise((resolvePromise, reject) => {
    execFile(process.execPath, [cli, ...args], { env, timeout: timeoutMs, maxBuffer: 64 << 20 }, (err, stdout, stderr) => {
      const wallNs = Number(nowNs() - t0);
      if (env.TARDIGRADE_HOME) track(daemonPid(env.TARDIGRADE_HOME), "daemon");
      if (err) {
        reject(new Error(`tardigrade ${args.join(" ")} failed: ${stderr.trim() || err.message}`));
        return;
      }
      try {
        resolvePromise({ json: JSON.parse(stdout) as unknown, wallNs });
      } catch {
        reject(new Error(`tardigrade ${args.join(" ")} printed no JSON: ${stdout.slice(0, 300)}`));
      }
    });
  });
}

/** Tracks the daemon of TARDIGRADE_HOME `home` for cleanup (once it wrote its pid file). */
export function trackDaemon(home: string): void {
  track(daemonPid(home), "daemon");
}

/** `tardigrade status NAME` under `env`; tracks the app's launcher, init host and app host for cleanup. */
export async function trackApp(env: NodeJS.ProcessEnv, name: string, cli = CLI): Promise<AppState> {
  const st = (await cliJson(env, ["status", name, "--json"], 600_000, cli)).json as AppState;
  track(st.launcherPid, "launcher");
  track(st.initHostPid, "init");
  track(st.appHostPid, "app");
  return st;
}

// ---------------------------------------------------------------------------
// What the CLI prints with --json: the daemon's own result types.

export type { RunResult as RunJson, RestoreResult as RestoreJson } from "../src/daemon/apps.js";
export type { AppState as StatusJson } from "../src/daemon/appdir.js";
