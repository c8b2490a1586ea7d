// The watchdog process (see watchdog.ts): node watchdog-main.js HOME
import { existsSync, readFileSync } from "node:fs";
import { errMessage } from "../errors.js";
import { DaemonClient, daemonPaths } from "./client.js";
import { claimWatchdog, periodicAppsRunning, releaseWatchdog } from "./watchdog.js";
import { isAlive, procStartTime, sleep } from "./procs.js";

const EVERY_MS = Math.max(200, Number(process.env.TARDIGRADE_WATCHDOG_MS ?? 2000));

function say(msg: string, extra: Record<string, unknown> = {}): void {
  try {
    process.stdout.write(JSON.stringify({ level: 30, time: Date.now(), pid: process.pid, watchdog: true, ...extra, msg }) + "\n");
  } catch {
    /* logging never stops the watchdog */
  }
}

function daemonAlive(home: string): boolean {
  try {
    const pid = Number(readFileSync(daemonPaths(home).pidfile, "utf8").trim());
    return isAlive(pid);
  } catch {
    return false;
  }
}

async function main(home: string): Promise<void> {
  for (const s of [process.stdout, process.stderr]) s.on("error", () => {});
  if (!claimWatchdog(home)) return;
  let stopping = false;
  process.on("SIGTERM", () => (stopping = true));
  process.on("SIGINT", () => (stopping = true));
  say("watchdog started", { home, startTime: procStartTime(process.pid) });
  try {
    while (!stopping) {
      await sleep(EVERY_MS);
      if (stopping || !existsSync(home) || !periodicAppsRunning(home)) break;
      if (daemonAlive(home)) continue;
      say("the daemon is gone; starting a new one (apps with --every need it)");
      try {
        await new DaemonClient(home).ensure(60_000);
        say("daemon restarted");
      } catch (e) {
        say("cannot restart the daemon", { err: errMessage(e) });
      }
    }
  } finally {
    releaseWatchdog(home);
    say("watchdog stopping");
  }
}

const home = process.argv[2];
if (home) await main(home);
