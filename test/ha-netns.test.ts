// Failover between hosts (issue 16; docs/ha.md): three network namespaces as hosts, a
// primary, a mirror and a standby, joined by veth links. The primary runs a counter that
// checkpoints every second to the mirror and beats to the standby; the standby watches.
// Cut the primary (its links down; or kill -9 its daemon and app): the standby restores the
// app, losing at most about one checkpoint interval. Partition primary<->standby only: no
// failover. Partition primary<->mirror only: the primary stops its app, the standby takes
// over. Every 10 ms the test checks that at most one copy of the app runs.
import assert from "node:assert/strict";
import { randomInt } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, test } from "node:test";
import { tempDir, writeTokens } from "../src/mirror/testing.js";
import { CLI, ROOT, isAlive, makeHome, waitFor, type TestHome } from "./helpers/home.js";
import { fixture, requireNative } from "./helpers/native.js";
import { makeNet, netnsUnavailable, type Host, type Net } from "./helpers/ha-net.js";
import { killHost, watched, type Proc } from "./helpers/procs.js";

const TOKEN = "calc-token-0001";
const FAILOVER = "1s";
const INTERVAL_MS = 1000; // checkpoint interval
const TICK_MS = 50; // the counter's

const countOf = (log: string): number => {
  const m = [...log.matchAll(/^count (\d+)$/gm)];
  return m.length ? Number(m[m.length - 1]![1]) : 0;
};
const firstCount = (log: string): number => Number(/^count (\d+)$/m.exec(log)?.[1] ?? 0);

function start(net: Net, host: Host, cmd: string[], env: NodeJS.ProcessEnv): Proc {
  return watched(net.spawn(host, cmd, env));
}

async function cli(net: Net, host: Host, home: TestHome, args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const p = start(net, host, [process.execPath, CLI, ...args], home.env);
  const code = await p.exited;
  return { code, stdout: p.out.join(""), stderr: p.err.join("") };
}

interface Outcome {
  net: Net;
  P: TestHome;
  S: TestHome;
  standby: Proc;
  /** Most copies of the app seen running at once (checked every 10 ms). */
  maxCopies: () => number;
  cutAt: number;
  countAtCut: number;
}

/** Sets up the three hosts, runs the app on P and the standby on S, cuts with `cut`, then hands over to `check`. */
async function scenario(cut: (net: Net, P: TestHome) => void, check: (o: Outcome) => Promise<void>, extra: { run?: (net: Net) => string[]; standby?: (net: Net) => string[]; ready?: (net: Net) => boolean } = {}): Promise<void> {
  requireNative();
  const net = makeNet();
  const tmp = tempDir("tg-ha-net-");
  const P = makeHome("tg-ha-P-", { TARDIGRADE_HOST_ID: "primary" });
  const S = makeHome("tg-ha-S-", { TARDIGRADE_HOST_ID: "standby" });
  const tokenFile = join(tmp.dir, "calc.token");
  writeFileSync(tokenFile, TOKEN + "\n");
  const tokens = writeTokens(tmp.dir, { calc: TOKEN });
  let mirror: Proc | undefined;
  let standby: Proc | undefined;
  let poll: NodeJS.Timeout | undefined;
  try {
    mirror = start(net, "M", [process.execPath, join(ROOT, "dist/src/mirror/server-main.js"), "--listen", "0.0.0.0:7070", "--store", join(tmp.dir, "mirror"), "--tokens", tokens, "--max-delay", "100ms"], process.env);
    await waitFor("the mirror listening", () => mirror!.out.join("").includes('"port":7070'), 60_000);
    const run = await cli(net, "P", P, ["run", "--name", "calc", "--every", `${INTERVAL_MS}ms`, "--mirror", `tg://${net.addr("pm", "M")}:7070`, "--token-file", tokenFile, "--standby", `${net.addr("ps", "S")}:7071`, "--failover-after", FAILOVER, ...(extra.run?.(net) ?? []), "--", fixture("counter"), "1000000", String(TICK_MS)]);
    assert.equal(run.code, 0, run.stderr);
    standby = start(net, "S", [process.execPath, CLI, "standby", "--mirror", `tg://${net.addr("sm", "M")}:7070`, "--app", "calc", "--token-file", tokenFile, "--failover-after", FAILOVER, "--listen", `${net.addr("ps", "S")}:7071`, "--every", `${INTERVAL_MS}ms`, "--json", ...(extra.standby?.(net) ?? [])], S.env);
    await waitFor("the standby sees the primary's lease", () => standby!.err.join("").includes("held by primary"), 60_000);
    await waitFor("two checkpoints durable on the mirror", () => {
      try {
        const st = JSON.parse(readFileSync(join(P.home, "apps", "calc", "mirror-state.json"), "utf8")) as { checkpoints: { state: string }[] };
        return st.checkpoints.filter((c) => c.state === "durable").length >= 2;
      } catch {
        return false;
      }
    }, 60_000);
    if (extra.ready) await waitFor("the primary ready", () => extra.ready!(net), 60_000);
    // Cut at a random phase of the checkpoint interval (the condition: the counter's own output).
    const phase = randomInt(0, INTERVAL_MS / TICK_MS);
    const from = countOf(P.log("calc"));
    await waitFor(`the counter ${phase} ticks on`, () => countOf(P.log("calc")) >= from + phase, 60_000, 5);
    const pApp = P.pids("calc")!;
    let max = 0;
    poll = setInterval(() => {
      const s = S.pids("calc");
      const n = (isAlive(pApp.app) ? 1 : 0) + (s && isAlive(s.app) ? 1 : 0);
      max = Math.max(max, n);
    }, 10);
    const countAtCut = countOf(P.log("calc"));
    const cutAt = performance.now();
    cut(net, P);
    await check({ net, P, S, standby, maxCopies: () => max, cutAt, countAtCut });
  } finally {
    clearInterval(poll);
    for (const p of [standby, mirror]) if (p?.child.pid && p.child.exitCode === null) p.child.kill("SIGKILL");
    await Promise.all([standby?.exited, mirror?.exited]);
    await P.cleanup();
    await S.cleanup();
    net.destroy();
    tmp.cleanup();
  }
}

/** The standby took over: its report, the app running on S from a recent checkpoint, one copy at most. */
async function tookOver(o: Outcome, what: string): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const code = await Promise.race([o.standby.exited, new Promise<string>((r) => (timer = setTimeout(() => r("no takeover within 90 s"), 90_000)))]);
  clearTimeout(timer);
  assert.equal(code, 0, `standby: ${o.standby.err.join("")}`);
  const report = JSON.parse(o.standby.out.join("")) as { epoch: number; previousHolder: string; checkpoint: string; mirrorId: string; restoreMs: number; silentMs: { udp: number; mirror: number }; status: { state: string } };
  assert.equal(report.epoch, 2);
  assert.equal(report.previousHolder, "primary");
  assert.equal(report.status.state, "running");
  // The newest checkpoint: none the primary knew durable is newer than the one restored.
  const shipped = (JSON.parse(readFileSync(join(o.P.home, "apps", "calc", "mirror-state.json"), "utf8")) as { checkpoints: { mirrorId: string; seq: number; state: string }[] }).checkpoints;
  const newestDurable = Math.max(...shipped.filter((c) => c.state === "durable").map((c) => c.seq));
  const restoredSeq = shipped.find((c) => c.mirrorId === report.mirrorId)?.seq ?? -1;
  assert.ok(restoredSeq >= newestDurable, `${what}: restored ${report.mirrorId} (seq ${restoredSeq}), the primary had seq ${newestDurable} durable on the mirror`);
  await waitFor("the app counting on the standby", () => countOf(o.S.log("calc")) > 0, 60_000, 5);
  const rtoMs = performance.now() - o.cutAt;
  const restored = firstCount(o.S.log("calc")) - 1;
  const lostTicks = o.countAtCut - restored;
  // RPO: at most one checkpoint interval of the counter's ticks lost (plus the checkpoint's own time: 0.5 s).
  assert.ok(lostTicks <= (INTERVAL_MS + 500) / TICK_MS, `${what}: restored at count ${restored}, the primary was at ${o.countAtCut} when cut: ${lostTicks} ticks (${lostTicks * TICK_MS} ms) lost`);
  assert.equal(o.maxCopies(), 1, `${what}: two copies of the app ran at once`);
  process.stderr.write(`# ${what}: failure to running on the standby ${Math.round(rtoMs)} ms (failover-after ${FAILOVER}; lease granted to running ${report.restoreMs} ms); lost ${lostTicks * TICK_MS} ms of counting; silent udp ${report.silentMs.udp} ms, mirror ${report.silentMs.mirror} ms\n`);
  // The restored app's own checkpoints go to the mirror under the new epoch.
  await waitFor("a checkpoint of the restored app durable on the mirror", () => {
    try {
      const st = JSON.parse(readFileSync(join(o.S.home, "apps", "calc", "mirror-state.json"), "utf8")) as { checkpoints: { state: string }[] };
      return st.checkpoints.some((c) => c.state === "durable");
    } catch {
      return false;
    }
  }, 60_000);
}

const skip = netnsUnavailable();

describe("failover between namespaces", { skip: skip ?? false }, () => {
  test("the primary's links cut: the standby takes over; the primary fenced itself and stays stopped when the links come back", { timeout: 300_000 }, async () => {
    await scenario(
      (net) => {
        net.down("pm");
        net.down("ps");
      },
      async (o) => {
        await tookOver(o, "links cut");
        o.net.up("pm");
        o.net.up("ps");
        const st = JSON.parse((await cli(o.net, "P", o.P, ["status", "calc", "--json"])).stdout) as { state: string; fenced?: { epoch: number } };
        assert.equal(st.state, "exited");
        assert.equal(st.fenced?.epoch, 1);
        const rs = await cli(o.net, "P", o.P, ["restore", "calc"]);
        assert.notEqual(rs.code, 0, "the old primary must not run the app again");
        assert.match(rs.stderr, /fenced/);
      },
    );
  });

  test("kill -9 of the primary's daemon and app: the standby takes over", { timeout: 300_000 }, async () => {
    await scenario(
      (_net, P) => killHost(P, "calc"),
      (o) => tookOver(o, "kill -9"),
    );
  });

  test("primary<->standby partitioned: no failover (the mirror still hears the primary)", { timeout: 300_000 }, async () => {
    await scenario(
      (net) => net.down("ps"),
      async (o) => {
        // Six failover timeouts of the app counting on the primary (condition: its own output).
        await waitFor("the primary counting on", () => countOf(o.P.log("calc")) >= o.countAtCut + (6 * 1000) / TICK_MS, 120_000);
        assert.equal(o.standby.child.exitCode, null, `the standby must not take over: ${o.standby.err.join("")}`);
        assert.equal(o.S.pids("calc"), null);
        assert.equal(o.maxCopies(), 1);
      },
    );
  });

  test("primary<->mirror partitioned: the primary stops its app, the standby takes over", { timeout: 300_000 }, async () => {
    await scenario(
      (net) => net.down("pm"),
      async (o) => {
        await tookOver(o, "primary<->mirror cut");
        const st = JSON.parse((await cli(o.net, "P", o.P, ["status", "calc", "--json"])).stdout) as { state: string; fenced?: { epoch: number } };
        assert.equal(st.state, "exited");
        assert.ok(st.fenced, "the primary's daemon fenced its app");
      },
    );
  });

  test("--address: the primary holds the service address with the lease, drops it when fenced; the standby adds it on takeover", { timeout: 300_000 }, async () => {
    const ADDR = "10.77.2.100/24";
    await scenario(
      (net) => net.down("pm"),
      async (o) => {
        await tookOver(o, "primary<->mirror cut, --address");
        await waitFor("the service address on the standby", () => o.net.addrs("ps", "S").includes(ADDR), 60_000);
        await waitFor("the service address gone from the fenced primary", () => !o.net.addrs("ps", "P").includes(ADDR), 60_000);
      },
      {
        run: (net) => ["--address", ADDR, "--dev", net.dev("ps", "P")],
        standby: (net) => ["--address", ADDR, "--dev", net.dev("ps", "S")],
        ready: (net) => net.addrs("ps", "P").includes(ADDR) && !net.addrs("ps", "S").includes(ADDR),
      },
    );
  });
});
