// What a failed checkpoint tells the user. Two failures look alike from the agent's socket but
// are not: the agent refused because the app has child processes (found while every thread
// was parked), and the app exited while it was being captured (its agent went with it). Both
// get their own message instead of "lost contact with the agent".
import { readFileSync } from "node:fs";
import { TgError } from "../errors.js";
import { describeExit, type AppDir, type AppState } from "./appdir.js";
import { isAlive, sleep } from "./procs.js";
import { isAgentTreeRefusal } from "./tree.js";

/** PF_EXITING in the flags field of /proc/PID/stat: the process is in exit (its fds may already be closed). */
const PF_EXITING = 0x4;

/** True when host process `pid` is gone, a zombie, or exiting. */
export function goneOrExiting(pid: number): boolean {
  if (!isAlive(pid)) return true;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const flags = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[6]); // field 9
    return (flags & PF_EXITING) !== 0;
  } catch {
    return true;
  }
}

/** Waits (on the condition, up to `limitMs`) for the app's exit to be recorded; its state, or null if it is not exiting. */
export async function exitOf(dir: AppDir, limitMs = 30_000): Promise<AppState | null> {
  const pids = dir.pids();
  if (!pids || !goneOrExiting(pids.app)) return null;
  const deadline = Date.now() + limitMs;
  // the exit status is written by the namespace's init once it has reaped the app
  while (!dir.exitStatus() && isAlive(pids.init) && Date.now() < deadline) await sleep(20);
  const st = dir.state();
  return st ? { ...st, state: "exited", exit: st.exit ?? dir.exitStatus() } : null;
}

/** The error to report for a checkpoint of `dir`'s app that failed with `e`. */
export async function checkpointFailure(dir: AppDir, e: unknown): Promise<unknown> {
  if (!(e instanceof TgError) || (e.code !== "checkpoint-failed" && e.code !== "agent-unreachable")) return e;
  if (isAgentTreeRefusal(e.why))
    return new TgError(`cannot checkpoint ${dir.name}`, e.why.replace(/; process trees are not supported yet$/, ""), "The app started processes during the checkpoint, twice in a row; try again. Nothing was committed; the app keeps running and earlier checkpoints are intact", "checkpoint-failed");
  const st = await exitOf(dir);
  if (st)
    return new TgError(
      `checkpoint of ${dir.name} failed`,
      `the app exited during the checkpoint (${describeExit(st.exit)})`,
      `Nothing was committed; earlier checkpoints are intact: see \`tardigrade logs ${dir.name}\`, and restore the last one with \`tardigrade restore ${dir.name}\``,
      "not-running",
    );
  return e;
}
