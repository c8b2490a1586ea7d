// Supervision of the daemon for apps with periodic checkpoints (run --every): without a
// daemon their timers stop until someone runs a command (issue 11, defect 15).
//
// One small watchdog process per home (`watchdog.pid`), started by the daemon while an
// app with --every runs. Every few seconds it checks that the daemon's process is alive;
// when it is gone (crash, kill -9) it starts a new one exactly as the CLI would (the new
// daemon re-arms the timers of running apps). It never restarts a daemon that is alive
// (hung or busy: a second one could not take the store anyway), exits when no app with
// --every runs any more, and is stopped by a daemon that stops on purpose (SIGTERM).
// The daemon in turn restarts a watchdog that is gone. Under systemd (docs/tardigrade.service)
// set TARDIGRADE_WATCHDOG=0 and let Restart=always do this job.
import { spawn } from "node:child_process";
import { closeSync, openSync, readFileSync, rmSync, writeFileSync, linkSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { AppDir, listAppNames } from "./appdir.js";
import { isAlive, procStartTime, trySignal } from "./procs.js";

export function watchdogEnabled(env: NodeJS.ProcessEnv = process.env): boolean {
  return env.TARDIGRADE_WATCHDOG !== "0";
}

function pidFile(home: string): string {
  return join(home, "watchdog.pid");
}

/** The live watchdog of `home`: its pid, or null. */
export function watchdogPid(home: string): number | null {
  try {
    const [pid, start] = readFileSync(pidFile(home), "utf8").trim().split(" ");
    const n = Number(pid);
    return isAlive(n, start || null) ? n : null;
  } catch {
    return null;
  }
}

/** Whether some app of `home` runs with periodic checkpoints. */
export function periodicAppsRunning(home: string): boolean {
  return listAppNames(home).some((n) => {
    const d = new AppDir(home, n);
    return !!d.record()?.everyMs && d.state()?.state === "running";
  });
}

/** Starts the watchdog of `home` unless one lives (called by the daemon). */
export function ensureWatchdog(home: string, logFile: string): void {
  if (!watchdogEnabled() || watchdogPid(home) !== null || !periodicAppsRunning(home)) return;
  const main = fileURLToPath(new URL("./watchdog-main.js", import.meta.url));
  const fd = openSync(logFile, "a", 0o600);
  try {
    const child = spawn(process.execPath, [main, home], { detached: true, stdio: ["ignore", fd, fd], env: process.env });
    child.on("error", () => {});
    child.unref();
  } finally {
    closeSync(fd);
  }
}

/** Stops the watchdog (a daemon that stops on purpose must not be restarted). */
export function stopWatchdog(home: string): void {
  const pid = watchdogPid(home);
  if (pid) trySignal(pid, "SIGTERM");
}

/** Takes watchdog.pid for this process; false if another live watchdog has it. */
export function claimWatchdog(home: string): boolean {
  const file = pidFile(home);
  const tmp = `${file}.${process.pid}`;
  writeFileSync(tmp, `${process.pid} ${procStartTime(process.pid) ?? ""}\n`, { mode: 0o600 });
  try {
    for (let attempt = 0; attempt < 3; attempt++) {
      try {
        linkSync(tmp, file); // atomic: at most one watchdog per home
        return true;
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e;
        if (watchdogPid(home) !== null) return false;
        rmSync(file, { force: true }); // left by a dead watchdog
      }
    }
    return false;
  } finally {
    rmSync(tmp, { force: true });
  }
}

export function releaseWatchdog(home: string): void {
  try {
    if (readFileSync(pidFile(home), "utf8").split(" ")[0] === String(process.pid)) rmSync(pidFile(home), { force: true });
  } catch {
    /* gone */
  }
}
