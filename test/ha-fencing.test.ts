// Fencing with real daemons (docs/ha.md, decision 2): `run --mirror` takes the app's lease
// on the mirror as it starts shipping; a daemon that finds the lease held elsewhere, or
// whose lease runs out unrenewed (the mirror unreachable), kills the app at once and keeps
// it stopped; `status` and `ls` say why; a restore there is refused.
import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, test } from "node:test";
import { MirrorClient } from "../src/mirror/client.js";
import { startServerProcess, tempDir, writeTokens } from "../src/mirror/testing.js";
import { isAlive, makeHome, waitFor } from "./helpers/home.js";
import { fixture, requireNative } from "./helpers/native.js";

const TOKEN = "calc-token-0001";

function leaseOf(home: string): { epoch?: number; ttlMs: number } | null {
  try {
    return JSON.parse(readFileSync(join(home, "apps", "calc", "lease.json"), "utf8")) as { epoch?: number; ttlMs: number };
  } catch {
    return null;
  }
}

describe("fencing on the primary's daemon", () => {
  test("a lease held by another host: the app is killed at once, stays stopped, status and ls say fenced", { timeout: 300_000 }, async () => {
    requireNative();
    const tmp = tempDir("tg-ha-fence-");
    const tokens = writeTokens(tmp.dir, { calc: TOKEN });
    const tokenFile = join(tmp.dir, "calc.token");
    writeFileSync(tokenFile, TOKEN + "\n");
    const server = await startServerProcess(["--listen", "127.0.0.1:0", "--store", join(tmp.dir, "mirror"), "--tokens", tokens, "--max-delay", "200ms"]);
    const other = new MirrorClient({ url: server.url, source: "calc", token: TOKEN, lease: { host: "hostB", ttlMs: 60_000 } });
    const a = makeHome("tg-ha-a-", { TARDIGRADE_HOST_ID: "hostA" });
    try {
      const granted = new Promise<number>((r) => other.once("lease", (l: { epoch: number }) => r(l.epoch)));
      other.start();
      assert.equal(await granted, 1);
      const run = await a.cli(["run", "--name", "calc", "--mirror", server.url, "--token-file", tokenFile, "--failover-after", "1s", "--", fixture("counter"), "100000", "50"]);
      assert.equal(run.code, 0, run.stderr);
      const pids = a.pids("calc")!;
      await waitFor("the app killed for the held lease", () => !isAlive(pids.app) && !isAlive(pids.init), 30_000);
      const st = JSON.parse((await a.cli(["status", "calc", "--json"])).stdout) as { state: string; fenced?: { epoch: number; holder: string } };
      assert.equal(st.state, "exited");
      assert.deepEqual({ epoch: st.fenced?.epoch, holder: st.fenced?.holder }, { epoch: 1, holder: "hostB" });
      assert.match((await a.cli(["status", "calc"])).stdout, /fenced \(epoch 1 held by hostB\)/);
      assert.match((await a.cli(["ls", "calc"])).stderr, /calc: fenced \(epoch 1 held by hostB\)/);
      const rs = await a.cli(["restore", "calc"]);
      assert.equal(rs.code, 1);
      assert.match(rs.stderr, /cannot restore calc: it is fenced \(epoch 1 held by hostB\)/);
    } finally {
      await other.close();
      server.kill("SIGKILL");
      await a.cleanup();
      tmp.cleanup();
    }
  });

  test("the mirror unreachable: the lease runs out unrenewed, the app is stopped before the mirror could grant it again, and stays stopped", { timeout: 300_000 }, async () => {
    requireNative();
    const tmp = tempDir("tg-ha-expire-");
    const tokens = writeTokens(tmp.dir, { calc: TOKEN });
    const tokenFile = join(tmp.dir, "calc.token");
    writeFileSync(tokenFile, TOKEN + "\n");
    const server = await startServerProcess(["--listen", "127.0.0.1:0", "--store", join(tmp.dir, "mirror"), "--tokens", tokens, "--max-delay", "200ms"]);
    const a = makeHome("tg-ha-a-", { TARDIGRADE_HOST_ID: "hostA" });
    let stopped = false;
    try {
      const run = await a.cli(["run", "--name", "calc", "--mirror", server.url, "--token-file", tokenFile, "--failover-after", "2s", "--", fixture("counter"), "100000", "50"]);
      assert.equal(run.code, 0, run.stderr);
      await waitFor("the lease taken", () => leaseOf(a.home)?.epoch === 1, 30_000);
      const cp = await a.cli(["checkpoint", "calc", "--json"]);
      assert.equal(cp.code, 0, cp.stderr);
      assert.equal((JSON.parse(cp.stdout) as { mirror?: { state: string } }).mirror?.state, "durable");
      const pids = a.pids("calc")!;
      // The mirror stops answering (its process frozen: connections stay open, nothing is read).
      process.kill(server.pid, "SIGSTOP");
      stopped = true;
      const t0 = performance.now();
      await waitFor("the app killed when its lease ran out", () => !isAlive(pids.app), 30_000, 10);
      const ms = performance.now() - t0;
      assert.ok(ms < 2_000, `the app must stop before its 2 s lease can expire on the mirror (stopped after ${Math.round(ms)} ms)`);
      process.kill(server.pid, "SIGCONT");
      stopped = false;
      const st = JSON.parse((await a.cli(["status", "calc", "--json"])).stdout) as { state: string; fenced?: { epoch: number; holder: string; reason: string } };
      assert.equal(st.state, "exited");
      assert.equal(st.fenced?.epoch, 1);
      assert.match(st.fenced?.reason ?? "", /expired/);
      assert.match((await a.cli(["status", "calc"])).stdout, /fenced \(lease epoch 1 expired unrenewed\)/);
      // The mirror back: the app stays stopped, and no checkpoint of it goes anywhere.
      const cp2 = await a.cli(["checkpoint", "calc"]);
      assert.notEqual(cp2.code, 0);
      assert.equal((JSON.parse((await a.cli(["status", "calc", "--json"])).stdout) as { state: string }).state, "exited");
    } finally {
      if (stopped) process.kill(server.pid, "SIGCONT");
      server.kill("SIGKILL");
      await a.cleanup();
      tmp.cleanup();
    }
  });
});
