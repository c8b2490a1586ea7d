// Host process helpers for processes the daemon did not necessarily spawn
// (a restarted daemon must still see and kill apps started by its predecessor).
import { readFileSync } from "node:fs";

/** Field 22 (starttime, clock ticks since boot) of /proc/PID/stat, or null if gone. */
export function procStartTime(pid: number): string | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return fields[19] ?? null; // fields[0] is field 3 (state)
  } catch {
    return null;
  }
}

/** True if PID exists and is not a zombie (and, if given, started at `startTime`). */
export function isAlive(pid: number, startTime?: string | null): boolean {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    if (fields[0] === "Z" || fields[0] === "X") return false;
    return startTime ? fields[19] === startTime : true;
  } catch {
    return false;
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Waits until PID is gone (or a zombie); false on timeout. */
export async function waitGone(pid: number, timeoutMs: number, startTime?: string | null): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (isAlive(pid, startTime)) {
    if (Date.now() > deadline) return false;
    await sleep(10);
  }
  return true;
}

export function trySignal(pid: number, sig: NodeJS.Signals): boolean {
  try {
    process.kill(pid, sig);
    return true;
  } catch {
    return false;
  }
}
