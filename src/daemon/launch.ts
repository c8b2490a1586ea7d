// Starts tardigrade-init or tardigrade-restore for an app (the same contract for
// both: --status/--sock/--pidfile) and waits until the agent answers PING, or
// the launcher ends first. Used symmetrically by run and restore.
import { spawn } from "node:child_process";
import type { Readable, Writable } from "node:stream";
import { closeSync, existsSync, openSync, readFileSync, rmSync, statSync } from "node:fs";
import { ping, type PingReply } from "./agent.js";
import type { AppDir, ExitStatus } from "./appdir.js";
import { procStartTime, sleep } from "./procs.js";

export interface Launched {
  ping: PingReply;
  launcherPid: number;
  initHostPid: number;
  appHostPid: number;
  initStart: string | null;
  /** Spawn to first PING answer. */
  elapsedNs: number;
}

export class LaunchFailure extends Error {
  constructor(
    readonly status: ExitStatus | null,
    readonly launcherCode: number | null,
    /** Lines the launcher (not the app) printed to the log, e.g. "tardigrade-restore: ...". */
    readonly messages: string[],
    reason: string,
  ) {
    super(reason);
  }
}

export interface LaunchOptions {
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  timeoutMs: number;
  /** Piped into the launcher's stdin (tardigrade-restore --image -). */
  stdin?: Readable;
  /** Piped into the launcher's fds 3, 4, ... (tardigrade-restore --image /dev/fd/3 ...: a process tree's other images). */
  images?: Readable[];
  /** Called right after spawn, so the launcher pid reaches disk before we wait. */
  onSpawn(pid: number, start: string | null): Promise<void>;
}

function logTail(file: string, from: number): string {
  try {
    const buf = readFileSync(file);
    return buf.subarray(Math.min(from, buf.length)).toString("utf8").slice(-8192);
  } catch {
    return "";
  }
}

export async function launch(dir: AppDir, bin: string, args: string[], opts: LaunchOptions): Promise<Launched> {
  for (const f of [dir.pidfile, dir.statusFile, dir.sock]) rmSync(f, { force: true });
  let logStart = 0;
  try {
    logStart = statSync(dir.logFile).size;
  } catch {
    /* new log */
  }
  const logFd = openSync(dir.logFile, "a", 0o644);
  const t0 = process.hrtime.bigint();
  let exited: number | null | undefined;
  let spawnError: Error | undefined;
  const extra = opts.images ?? [];
  const child = spawn(bin, args, { cwd: opts.cwd, env: opts.env, detached: true, stdio: [opts.stdin ? "pipe" : "ignore", logFd, logFd, ...extra.map(() => "pipe" as const)] });
  closeSync(logFd);
  // the restorer reads what it needs and may stop early (an error): never crash on EPIPE
  const feed = (src: Readable, to: Writable | null | undefined): void => {
    if (!to) return;
    to.on("error", () => {});
    src.pipe(to);
  };
  if (opts.stdin) feed(opts.stdin, child.stdin);
  extra.forEach((src, i) => feed(src, child.stdio[3 + i] as Writable | null));
  child.on("error", (e) => (spawnError = e));
  child.on("exit", (code, sig) => (exited = code ?? (sig ? 128 : null)));
  child.unref();
  const pid = child.pid;
  if (pid === undefined) {
    await sleep(0);
    throw new LaunchFailure(null, null, [], `cannot start ${bin}: ${spawnError?.message ?? "spawn failed"}`);
  }
  await opts.onSpawn(pid, procStartTime(pid));

  const readStatus = (): ExitStatus | null => {
    try {
      return JSON.parse(readFileSync(dir.statusFile, "utf8")) as ExitStatus;
    } catch {
      return null;
    }
  };
  const deadline = Date.now() + opts.timeoutMs;
  for (;;) {
    const status = readStatus();
    if (status || exited !== undefined || spawnError) {
      if (!status && exited === undefined) await sleep(50);
      // Give the launcher a moment to finish writing its status file.
      for (let i = 0; i < 50 && !readStatus() && exited === undefined; i++) await sleep(10);
      const tail = logTail(dir.logFile, logStart);
      const messages = tail.split("\n").filter((l) => /^tardigrade[-\w]*:/.test(l));
      throw new LaunchFailure(readStatus(), exited ?? null, messages, spawnError?.message ?? "the app ended before its agent answered");
    }
    if (existsSync(dir.sock)) {
      try {
        const reply = await ping(dir.sock, 1000);
        const elapsedNs = Number(process.hrtime.bigint() - t0);
        let pids: { init: number; app: number } | null = null;
        for (let i = 0; i < 200 && !(pids = dir.pids()); i++) await sleep(10);
        if (!pids) throw new LaunchFailure(null, null, [], `the agent answers but ${dir.pidfile} was never written`);
        return { ping: reply, launcherPid: pid, initHostPid: pids.init, appHostPid: pids.app, initStart: procStartTime(pids.init), elapsedNs };
      } catch (e) {
        if (e instanceof LaunchFailure) throw e;
        /* agent not listening yet */
      }
    }
    if (Date.now() > deadline) {
      const pids = dir.pids();
      for (const target of [-pid, pids?.init, pids?.app]) {
        try {
          if (target) process.kill(target, "SIGKILL");
        } catch {
          /* already gone */
        }
      }
      throw new LaunchFailure(readStatus(), null, [], `the agent did not answer on ${dir.sock} within ${opts.timeoutMs} ms (launcher killed)`);
    }
    await sleep(10);
  }
}
