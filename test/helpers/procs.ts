// Child processes the HA tests start and watch (a standby, a mirror server in a namespace): their
// output kept as it comes, their exit as a promise; and the kill -9 of a "host" (its daemon and an
// app's processes) that the failover tests begin with.
import type { ChildProcess } from "node:child_process";
import type { TestHome } from "./home.js";

export interface Proc {
  child: ChildProcess;
  out: string[];
  err: string[];
  exited: Promise<number | null>;
}

/** Keeps `child`'s stdout and stderr (piped) and its exit code. */
export function watched(child: ChildProcess): Proc {
  const out: string[] = [];
  const err: string[] = [];
  child.stdout!.setEncoding("utf8").on("data", (d: string) => out.push(d));
  child.stderr!.setEncoding("utf8").on("data", (d: string) => err.push(d));
  const exited = new Promise<number | null>((r) => child.on("exit", (code) => r(code)));
  return { child, out, err, exited };
}

/** SIGKILL to the home's daemon and to `app`'s init and main process (a host that dies). */
export function killHost(h: TestHome, app: string): void {
  const p = h.pids(app);
  for (const pid of [h.daemonPid(), p?.init, p?.app]) {
    if (!pid) continue;
    try {
      process.kill(pid, "SIGKILL");
    } catch (e) {
      // the app goes with its namespace's init, and may be reaped before it is named
      if ((e as NodeJS.ErrnoException).code !== "ESRCH") throw e;
    }
  }
}
