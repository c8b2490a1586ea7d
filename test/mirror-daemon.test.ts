// The daemon and the mirror together, with the real C core: `run --mirror` streams every
// committed checkpoint to a mirror destination (a real server process on 127.0.0.1), `ls`
// shows each checkpoint's mirror state, and `restore --from` on another "host" (another
// TARDIGRADE_HOME with its own daemon and store) fetches the newest checkpoint and the
// app continues from it there.
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, test } from "node:test";
import { startServerProcess, tempDir, writeTokens } from "../src/mirror/testing.js";
import { makeHome, waitFor } from "./helpers/home.js";
import { fixture, requireNative } from "./helpers/native.js";

const countOf = (log: string): number => {
  const m = [...log.matchAll(/^count (\d+)$/gm)];
  return m.length ? Number(m[m.length - 1]![1]) : 0;
};

describe("daemon with a mirror destination", () => {
  test("run --mirror ships checkpoints (durable in ls); restore --from on another host continues the app", { timeout: 900_000 }, async () => {
    requireNative();
    const tmp = tempDir("tg-mirror-daemon-");
    const tokens = writeTokens(tmp.dir, { calc: "calc-token-0001" });
    const tokenFile = join(tmp.dir, "calc.token");
    writeFileSync(tokenFile, "calc-token-0001\n");
    const server = await startServerProcess(["--listen", "127.0.0.1:0", "--store", join(tmp.dir, "mirror"), "--tokens", tokens, "--max-delay", "200ms"]);
    const a = makeHome("tg-host-a-");
    const b = makeHome("tg-host-b-");
    try {
      const run = await a.cli(["run", "--name", "calc", "--mirror", server.url, "--token-file", tokenFile, "--", fixture("counter"), "100000", "50"]);
      assert.equal(run.code, 0, run.stderr);
      await waitFor("calc counts", () => countOf(a.log("calc")) >= 3);
      let atCheckpoint = 0;
      for (let i = 0; i < 3; i++) {
        const cp = await a.cli(["checkpoint", "calc", "--json"]);
        assert.equal(cp.code, 0, cp.stderr);
        const m = JSON.parse(cp.stdout) as { id: string; kind: string; mirror?: { state: string } };
        assert.equal(m.mirror?.state, "durable", `${m.id} acknowledged durable by the mirror`);
        atCheckpoint = countOf(a.log("calc"));
        await waitFor("more output", () => countOf(a.log("calc")) >= atCheckpoint + 3);
      }
      const ls = JSON.parse((await a.cli(["ls", "calc", "--json"])).stdout) as { id: string; kind: string; mirror?: { state: string } }[];
      assert.deepEqual(ls.map((m) => m.mirror?.state), ["durable", "durable", "durable"]);
      assert.deepEqual(ls.map((m) => m.kind), ["full", "incremental", "incremental"]);
      const text = (await a.cli(["ls", "calc"])).stdout;
      assert.match(text, /MIRROR/);
      // host A dies
      process.kill(a.pids("calc")!.init, "SIGKILL");
      const lastA = countOf(a.log("calc"));
      // host B: nothing local; restore --from the mirror
      const rs = await b.cli(["restore", "calc", "--from", server.url, "--token-file", tokenFile, "--json"]);
      assert.equal(rs.code, 0, rs.stderr);
      const r = JSON.parse(rs.stdout) as { checkpoint: string };
      assert.equal(r.checkpoint, ls[2]!.id, "the newest checkpoint");
      await waitFor("calc continues on host B", () => countOf(b.log("calc")) > 0);
      const first = Number(/^count (\d+)$/m.exec(b.log("calc"))![1]);
      assert.ok(first > 1 && first <= lastA + 1, `continues from the checkpoint (first line on B: ${first}, last on A: ${lastA})`);
      await waitFor("calc keeps counting on B", () => countOf(b.log("calc")) >= first + 5);
      // B's store now has the chain
      const lsB = JSON.parse((await b.cli(["ls", "calc", "--json"])).stdout) as { id: string }[];
      assert.deepEqual(lsB.map((m) => m.id), ls.map((m) => m.id));
      // a wrong token is refused clearly
      writeFileSync(tokenFile, "not-the-token\n");
      const bad = await b.cli(["restore", "calc", "--from", server.url, "--token-file", tokenFile, "--replace"]);
      assert.equal(bad.code, 1);
      assert.match(bad.stderr, /^tardigrade: cannot restore calc from tg:\/\/.*token/i);
    } finally {
      server.kill("SIGKILL");
      await a.cleanup();
      await b.cleanup();
      tmp.cleanup();
    }
  });

  test("a process tree's checkpoint is not shipped (not supported yet) and says so in its result", { timeout: 600_000 }, async () => {
    requireNative();
    const tmp = tempDir("tg-mirror-tree-");
    const tokens = writeTokens(tmp.dir, { tree: "tree-token-0001" });
    const tokenFile = join(tmp.dir, "tree.token");
    writeFileSync(tokenFile, "tree-token-0001\n");
    const server = await startServerProcess(["--listen", "127.0.0.1:0", "--store", join(tmp.dir, "mirror"), "--tokens", tokens, "--max-delay", "200ms"]);
    const a = makeHome("tg-host-t-");
    try {
      const run = await a.cli(["run", "--name", "tree", "--mirror", server.url, "--token-file", tokenFile, "--", "bash", "-c", `${fixture("counter")} 100000 50 & wait`]);
      assert.equal(run.code, 0, run.stderr);
      await waitFor("the child counts", () => countOf(a.log("tree")) >= 3);
      const cp = await a.cli(["checkpoint", "tree"]);
      assert.equal(cp.code, 0, cp.stderr);
      assert.match(cp.stdout, /mirror tg:\/\/[^ ]+: failed \(process-tree checkpoints are not shipped to the mirror yet: this one is on this host only\)/);
    } finally {
      server.kill("SIGKILL");
      await a.cleanup();
      tmp.cleanup();
    }
  });
});
