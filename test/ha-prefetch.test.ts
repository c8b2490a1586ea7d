// The standby's warm copy (issue 16; docs/ha.md): while the primary runs, the standby pulls the
// app's newest durable checkpoint from the mirror into its own store (at most once per
// --prefetch-every), so a takeover's restore fetches only what is newer. One host, loopback, two
// homes (two daemons), a mirror server process, a counter checkpointing every second.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createSocket } from "node:dgram";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, test } from "node:test";
import { startServerProcess, tempDir, writeTokens } from "../src/mirror/testing.js";
import { CLI, ROOT, isAlive, makeHome, waitFor } from "./helpers/home.js";
import { fixture, requireNative } from "./helpers/native.js";

const TOKEN = "calc-token-0001";

function freeUdpPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createSocket("udp4");
    s.once("error", reject);
    s.bind(0, "127.0.0.1", () => {
      const p = s.address().port;
      s.close(() => resolve(p));
    });
  });
}

const lastCount = (log: string): number => {
  const m = [...log.matchAll(/^count (\d+)$/gm)];
  return m.length ? Number(m[m.length - 1]![1]) : 0;
};

describe("standby: warm copy", () => {
  test("the standby's store holds the primary's checkpoints before a failure; the takeover restores from there", { timeout: 300_000 }, async () => {
    requireNative();
    const tmp = tempDir("tg-ha-warm-");
    const P = makeHome("tg-ha-wP-", { TARDIGRADE_HOST_ID: "hostP" });
    const S = makeHome("tg-ha-wS-", { TARDIGRADE_HOST_ID: "hostS" });
    const tokenFile = join(tmp.dir, "calc.token");
    writeFileSync(tokenFile, TOKEN + "\n");
    const server = await startServerProcess(["--listen", "127.0.0.1:0", "--store", join(tmp.dir, "mirror"), "--tokens", writeTokens(tmp.dir, { calc: TOKEN }), "--max-delay", "100ms"]);
    const port = await freeUdpPort();
    let standby: ReturnType<typeof spawn> | undefined;
    try {
      const run = await P.cli(["run", "--name", "calc", "--every", "1s", "--mirror", server.url, "--token-file", tokenFile, "--standby", `127.0.0.1:${port}`, "--failover-after", "1s", "--", fixture("counter"), "1000000", "50"]);
      assert.equal(run.code, 0, run.stderr);
      standby = spawn(process.execPath, [CLI, "standby", "--mirror", server.url, "--app", "calc", "--token-file", tokenFile, "--failover-after", "1s", "--listen", `127.0.0.1:${port}`, "--prefetch-every", "500ms", "--json"], { env: S.env, cwd: ROOT, stdio: ["ignore", "pipe", "pipe"] });
      let out = "";
      let err = "";
      standby.stdout!.setEncoding("utf8").on("data", (d: string) => (out += d));
      standby.stderr!.setEncoding("utf8").on("data", (d: string) => (err += d));
      const exited = new Promise<number | null>((r) => standby!.on("exit", (c) => r(c)));
      // the standby pulls checkpoints while the primary runs: they are in its own store
      const stored = async (): Promise<{ id: string }[]> => {
        const r = await S.cli(["ls", "calc", "--json"]);
        return r.code === 0 ? (JSON.parse(r.stdout) as { id: string }[]) : [];
      };
      await waitFor("the warm copy pulling a checkpoint", () => /warm copy: calc@\d+ pulled/.test(err), 120_000).catch((e: Error) => assert.fail(`${e.message}; the standby's log: ${err}`));
      await waitFor("a second warm pull (an incremental on the first)", () => [...err.matchAll(/warm copy: calc@\d+ pulled/g)].length >= 2, 120_000);
      const before = await stored();
      assert.ok(before.length >= 2, `the standby's store holds the primary's checkpoints: ${JSON.stringify(before)}; standby log: ${err}`);
      assert.ok(isAlive(P.pids("calc")!.app), "the app still runs on the primary");
      assert.equal(S.pids("calc"), null, "nothing runs on the standby");
      // the primary fails (daemon and app killed)
      const p = P.pids("calc")!;
      const countAtKill = lastCount(P.log("calc"));
      for (const pid of [P.daemonPid(), p.init, p.app]) if (pid) process.kill(pid, "SIGKILL");
      assert.equal(await exited, 0, err);
      const report = JSON.parse(out) as { checkpoint: string; prefetched?: string; restoreMs: number };
      assert.ok(report.prefetched, `the takeover report names the warm copy: ${out}`);
      const seq = (id: string): number => Number(id.split("@")[1]);
      assert.ok(seq(report.prefetched!) <= seq(report.checkpoint), `${report.prefetched} is not newer than the checkpoint restored, ${report.checkpoint}`);
      await waitFor("the app counting on the standby", () => lastCount(S.log("calc")) > 0, 60_000);
      const first = Number(/^count (\d+)$/m.exec(S.log("calc"))![1]);
      assert.ok(first > 1 && first <= countAtKill + 1, `the restored counter goes on from a checkpoint of the primary (first count ${first} on the standby, ${countAtKill} at the kill)`);
    } finally {
      if (standby && standby.exitCode === null && standby.pid) process.kill(standby.pid, "SIGKILL");
      server.kill("SIGKILL");
      await P.cleanup();
      await S.cleanup();
      tmp.cleanup();
    }
  });
});
