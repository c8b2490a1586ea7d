// A primary and a standby on one host (two homes, two daemons) with a mirror server process on
// loopback: the set-up of test/ha-prefetch.test.ts and bench/ha.bench.ts. The primary runs the
// counter fixture checkpointing every second with --mirror and --standby; the standby is the
// `tardigrade standby` CLI, its output collected. stop() kills by PID what was started.
import { spawn, type ChildProcess } from "node:child_process";
import { createSocket } from "node:dgram";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { startServerProcess, tempDir, writeTokens } from "../../src/mirror/testing.js";
import { CLI, ROOT, makeHome, waitFor, type TestHome } from "./home.js";
import { fixture } from "./native.js";

export const HA_TOKEN = "calc-token-0001";

/** A UDP port nobody uses on loopback right now. */
export function freeUdpPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createSocket("udp4");
    s.once("error", reject);
    s.bind(0, "127.0.0.1", () => {
      const p = s.address().port;
      s.close(() => resolve(p));
    });
  });
}

export interface LoopbackHa {
  P: TestHome;
  S: TestHome;
  standby: ChildProcess;
  /** What the standby printed so far (stdout: its report; stderr: its log). */
  out(): string;
  err(): string;
  exited: Promise<number | null>;
  /** kill -9 of the primary's daemon, init and app. */
  killPrimary(): void;
  stop(): Promise<void>;
}

/** Starts the mirror, the primary's app and the standby (standbyArgs added to its command), and waits until the standby sees the primary's lease. */
export async function startLoopbackHa(o: { prefix: string; failoverAfter: string; standbyArgs: string[] }): Promise<LoopbackHa> {
  const tmp = tempDir(`${o.prefix}-`);
  const P = makeHome(`${o.prefix}-P-`, { TARDIGRADE_HOST_ID: "hostP" });
  const S = makeHome(`${o.prefix}-S-`, { TARDIGRADE_HOST_ID: "hostS" });
  const tokenFile = join(tmp.dir, "calc.token");
  writeFileSync(tokenFile, HA_TOKEN + "\n");
  let server: Awaited<ReturnType<typeof startServerProcess>> | undefined;
  let standby: ChildProcess | undefined;
  const stop = async (): Promise<void> => {
    if (standby && standby.exitCode === null && standby.signalCode === null && standby.pid) process.kill(standby.pid, "SIGKILL");
    if (server) {
      server.kill("SIGKILL");
      await server.exited;
    }
    await P.cleanup();
    await S.cleanup();
    tmp.cleanup();
  };
  try {
    server = await startServerProcess(["--listen", "127.0.0.1:0", "--store", join(tmp.dir, "mirror"), "--tokens", writeTokens(tmp.dir, { calc: HA_TOKEN }), "--max-delay", "100ms"]);
    const port = await freeUdpPort();
    // The primary first: a standby started before any lease was granted would take the lease itself.
    const run = await P.cli(["run", "--name", "calc", "--every", "1s", "--mirror", server.url, "--token-file", tokenFile, "--standby", `127.0.0.1:${port}`, "--failover-after", o.failoverAfter, "--", fixture("counter"), "1000000", "50"]);
    if (run.code !== 0) throw new Error(`run failed: ${run.stderr}`);
    const child = spawn(process.execPath, [CLI, "standby", "--mirror", server.url, "--app", "calc", "--token-file", tokenFile, "--failover-after", o.failoverAfter, "--listen", `127.0.0.1:${port}`, ...o.standbyArgs, "--json"], { env: S.env, cwd: ROOT, stdio: ["ignore", "pipe", "pipe"] });
    standby = child;
    let out = "";
    let err = "";
    child.stdout!.setEncoding("utf8").on("data", (d: string) => (out += d));
    child.stderr!.setEncoding("utf8").on("data", (d: string) => (err += d));
    const exited = new Promise<number | null>((r) => child.on("exit", (c) => r(c)));
    await waitFor("the standby seeing the primary's lease", () => err.includes("held by hostP"), 60_000);
    return {
      P,
      S,
      standby: child,
      out: () => out,
      err: () => err,
      exited,
      killPrimary() {
        const p = P.pids("calc");
        for (const pid of [P.daemonPid(), p?.init, p?.app]) {
          try {
            if (pid) process.kill(pid, "SIGKILL");
          } catch (e) {
            // the init's death takes the app down with it: gone already is what this wants
            if ((e as NodeJS.ErrnoException).code !== "ESRCH") throw e;
          }
        }
      },
      stop,
    };
  } catch (e) {
    await stop();
    throw e;
  }
}
