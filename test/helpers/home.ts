// A private TARDIGRADE_HOME per test, a CLI runner bound to it, and a cleanup
// that kills by PID everything started there (apps' host PIDs, launchers, daemon).
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, readFileSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { diagnose } from "./diagnose.js";

export const ROOT = fileURLToPath(new URL("../../../", import.meta.url));
export const CLI = join(ROOT, "bin", "tardigrade.js");

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

export interface TestHome {
  home: string;
  env: NodeJS.ProcessEnv;
  /** Runs the CLI to completion. */
  cli(args: string[], opts?: { timeoutMs?: number; cwd?: string; env?: NodeJS.ProcessEnv }): Promise<CliResult>;
  /** Starts the CLI and returns the child (for commands interrupted on purpose). */
  cliSpawn(args: string[]): { child: ChildProcess; done: Promise<CliResult> };
  /** Host pids of an app from its pidfile: init and app. */
  pids(app: string): { init: number; app: number } | null;
  daemonPid(): number | null;
  log(app: string): string;
  cleanup(): Promise<void>;
}

function readPid(file: string): number[] {
  try {
    return readFileSync(file, "utf8").trim().split(/\s+/).map(Number).filter((n) => Number.isInteger(n) && n > 0);
  } catch {
    return [];
  }
}

/** SIGKILL by pid; true if it was sent. */
function kill(pid: number): boolean {
  try {
    process.kill(pid, "SIGKILL");
    return true;
  } catch {
    return false;
  }
}

export function makeHome(prefix = "tg-", extraEnv: NodeJS.ProcessEnv = {}): TestHome {
  // Short path: the agent socket path must stay under 108 bytes.
  const home = mkdtempSync(join(tmpdir(), prefix));
  const env = { ...process.env, ...extraEnv, TARDIGRADE_HOME: home };
  const spawned: ChildProcess[] = [];
  const cliSpawn = (args: string[], cwd?: string, more?: NodeJS.ProcessEnv): { child: ChildProcess; done: Promise<CliResult> } => {
    const child = spawn(process.execPath, [CLI, ...args], { env: { ...env, ...more }, cwd: cwd ?? ROOT, stdio: ["ignore", "pipe", "pipe"] });
    spawned.push(child);
    let stdout = "";
    let stderr = "";
    child.stdout!.setEncoding("utf8").on("data", (d: string) => (stdout += d));
    child.stderr!.setEncoding("utf8").on("data", (d: string) => (stderr += d));
    const done = new Promise<CliResult>((resolve) => child.on("close", (code) => resolve({ code, stdout, stderr })));
    return { child, done };
  };
  return {
    home,
    env,
    cliSpawn: (args) => cliSpawn(args),
    async cli(args, opts = {}) {
      const { child, done } = cliSpawn(args, opts.cwd, opts.env);
      const timer = setTimeout(() => {
        // what everything was doing when the command did not return: printed before the kill
        const roots = [child.pid, readPid(join(home, "daemon.pid"))[0]].filter((p): p is number => !!p);
        console.error(`tardigrade ${args.join(" ")} did not return within ${opts.timeoutMs ?? 120_000} ms\n${diagnose(home, roots)}`);
        child.kill("SIGKILL");
      }, opts.timeoutMs ?? 120_000);
      try {
        return await done;
      } finally {
        clearTimeout(timer);
      }
    },
    pids(app) {
      const [init, a] = readPid(join(home, "apps", app, "pidfile"));
      return init && a ? { init, app: a } : null;
    },
    daemonPid() {
      return readPid(join(home, "daemon.pid"))[0] ?? null;
    },
    log(app) {
      try {
        return readFileSync(join(home, "apps", app, "log"), "utf8");
      } catch {
        return "";
      }
    },
    async cleanup() {
      // The watchdog first: it would restart the daemon killed below.
      for (const pid of readPid(join(home, "watchdog.pid")).slice(0, 1)) kill(pid);
      let apps: string[] = [];
      try {
        apps = readdirSync(join(home, "apps"));
      } catch {
        /* none */
      }
      const killed: number[] = [];
      const killPid = (pid: number): void => void (kill(pid) && killed.push(pid));
      for (const a of apps) {
        for (const pid of readPid(join(home, "apps", a, "pidfile"))) killPid(pid);
        try {
          const rec = JSON.parse(readFileSync(join(home, "apps", a, "app.json"), "utf8")) as { launcherPid?: number };
          if (rec.launcherPid) killPid(rec.launcherPid);
        } catch {
          /* no record */
        }
      }
      const d = readPid(join(home, "daemon.pid"))[0];
      if (d) killPid(d);
      for (const c of spawned) if (c.exitCode === null && c.pid) killPid(c.pid);
      // SIGKILL is not instant on a busy machine: wait (on the condition) until they are gone
      await waitFor("the killed processes to be gone", () => killed.every((p) => !isAlive(p)), 60_000, 20).catch(() => {});
      rmSync(home, { recursive: true, force: true });
    },
  };
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Polls `fn` until it returns a truthy value; throws `what` on timeout. */
export async function waitFor<T>(what: string, fn: () => T | Promise<T>, timeoutMs = 120_000, everyMs = 25): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v as NonNullable<T>;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(everyMs);
  }
}

export function isAlive(pid: number): boolean {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, "utf8");
    const state = s.slice(s.lastIndexOf(")") + 2).split(" ")[0];
    return state !== "Z" && state !== "X";
  } catch {
    return false;
  }
}
