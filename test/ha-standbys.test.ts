// Two standbys of one app (docs/ha.md): `run --standby` is repeatable and every standby gets the
// primary's signed UDP beats; each watches on its own, and the mirror's lease decides which one
// takes over (one grant per epoch). Here on loopback, three homes on one machine (primary and two
// standbys, each its own daemon and host id), a real mirror server process: both beat receivers
// get beats; after kill -9 of the primary's daemon and app, exactly one standby takes over (its
// report counts the beats it had), the app counts on there, and the other keeps watching and sees
// the new holder. Every process is killed by PID.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, test } from "node:test";
import { BeatReceiver } from "../src/ha/heartbeat.js";
import { startServerProcess, tempDir, writeTokens } from "../src/mirror/testing.js";
import { CLI, isAlive, makeHome, waitFor, type TestHome } from "./helpers/home.js";
import { fixture, requireNative } from "./helpers/native.js";
import { killHost, watched, type Proc } from "./helpers/procs.js";

const TOKEN = "calc-token-two-standbys";
const FAILOVER = "2s";

function start(cmd: string[], env: NodeJS.ProcessEnv): Proc {
  return watched(spawn(cmd[0]!, cmd.slice(1), { env, stdio: ["ignore", "pipe", "pipe"] }));
}

const countOf = (log: string): number => {
  const m = /(\d+)\s*$/.exec(log.trim());
  return m ? Number(m[1]) : 0;
};

describe("two standbys", () => {
  test("run --standby twice: both get the beats; kill -9 of the primary: one standby takes over, the other sees it hold the lease and keeps watching", { timeout: 300_000 }, async () => {
    requireNative();
    const tmp = tempDir("tg-ha-two-");
    const tokenFile = join(tmp.dir, "calc.token");
    writeFileSync(tokenFile, TOKEN + "\n");
    const tokens = writeTokens(tmp.dir, { calc: TOKEN });
    const server = await startServerProcess(["--listen", "127.0.0.1:0", "--store", join(tmp.dir, "mirror"), "--tokens", tokens, "--max-delay", "100ms"]);
    const P = makeHome("tg-ha-P-", { TARDIGRADE_HOST_ID: "primary" });
    const S: TestHome[] = [makeHome("tg-ha-S1-", { TARDIGRADE_HOST_ID: "standby1" }), makeHome("tg-ha-S2-", { TARDIGRADE_HOST_ID: "standby2" })];
    const receivers: BeatReceiver[] = [];
    const standbys: Proc[] = [];
    try {
      // the beats' ports: bound here first, to see both receive the primary's beats
      for (let i = 0; i < 2; i++) receivers.push(await BeatReceiver.listen({ host: "127.0.0.1", port: 0 }, TOKEN, "calc"));
      const ports = receivers.map((r) => r.port);
      const run = await P.cli(["run", "--name", "calc", "--every", "500ms", "--mirror", server.url, "--token-file", tokenFile, ...ports.flatMap((p) => ["--standby", `127.0.0.1:${p}`]), "--failover-after", FAILOVER, "--", fixture("counter"), "1000000", "20"]);
      assert.equal(run.code, 0, run.stderr);
      await waitFor("beats from the primary at both standbys' ports", () => receivers.every((r) => r.received >= 3 && r.last?.host === "primary"), 60_000);
      for (const r of receivers) r.close();
      receivers.length = 0;
      for (let i = 0; i < 2; i++)
        standbys.push(start([process.execPath, CLI, "standby", "--mirror", server.url, "--app", "calc", "--token-file", tokenFile, "--failover-after", FAILOVER, "--listen", `127.0.0.1:${ports[i]}`, "--every", "500ms", "--json"], S[i]!.env));
      await waitFor("both standbys see the primary's lease", () => standbys.every((s) => s.err.join("").includes("held by primary")), 60_000);
      await waitFor("a checkpoint durable on the mirror", async () => {
        const ls = await P.cli(["ls", "calc", "--json"]);
        return ls.code === 0 && (JSON.parse(ls.stdout) as { mirror?: { state: string } }[]).some((c) => c.mirror?.state === "durable");
      }, 60_000);
      killHost(P, "calc");
      // one of them takes over and exits with its report
      const first = await Promise.race(standbys.map((s, i) => s.exited.then((code) => ({ i, code }))));
      const winner = standbys[first.i]!;
      const loser = standbys[1 - first.i]!;
      assert.equal(first.code, 0, `standby ${first.i + 1}: ${winner.err.join("")}`);
      const report = JSON.parse(winner.out.join("")) as { epoch: number; previousHolder: string; beatsReceived: number };
      assert.equal(report.previousHolder, "primary");
      assert.ok(report.epoch >= 2, `a new epoch (${report.epoch})`);
      assert.ok(report.beatsReceived > 0, "the winner had the primary's beats");
      const home = S[first.i]!;
      await waitFor("the app counting on the new primary", () => countOf(home.log("calc")) > 0 && isAlive(home.pids("calc")?.app ?? 0), 60_000);
      // the other sees the new holder (its renewals) and does not take over
      await waitFor("the other standby sees the new holder", () => loser.err.join("").includes(`held by standby${first.i + 1}`), 60_000);
      assert.equal(loser.child.exitCode, null, `the other standby must keep watching: ${loser.err.join("")}`);
      assert.equal(S[1 - first.i]!.pids("calc"), null, "no copy of the app on the other standby");
    } finally {
      for (const r of receivers) r.close();
      for (const s of standbys) if (s.child.pid && s.child.exitCode === null) s.child.kill("SIGKILL");
      await Promise.all(standbys.map((s) => s.exited));
      server.kill("SIGKILL");
      await P.cleanup();
      for (const s of S) await s.cleanup();
      tmp.cleanup();
    }
  });
});
