// The daemon and the mirror together, with the real C core: `run --mirror` streams every
// committed checkpoint to a mirror destination (a real server process on 127.0.0.1), `ls`
// shows each checkpoint's mirror state, and `restore --from` on another "host" (another
// TARDIGRADE_HOME with its own daemon and store) fetches the newest checkpoint and the
// app continues from it there.
import assert from "node:assert/strict";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, test } from "node:test";
import { startServerProcess, tempDir, writeTokens } from "../src/mirror/testing.js";
import { ROOT, isAlive, makeHome, waitFor } from "./helpers/home.js";
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

  test("a process tree's checkpoint ships with every process and the app's files; restore --from on another host rolls the files back and continues the tree", { timeout: 900_000 }, async () => {
    requireNative();
    const tmp = tempDir("tg-mirror-tree-");
    const tokens = writeTokens(tmp.dir, { tree: "tree-token-0001" });
    const tokenFile = join(tmp.dir, "tree.token");
    writeFileSync(tokenFile, "tree-token-0001\n");
    const server = await startServerProcess(["--listen", "127.0.0.1:0", "--store", join(tmp.dir, "mirror"), "--tokens", tokens, "--max-delay", "200ms"]);
    const a = makeHome("tg-host-t-");
    const b = makeHome("tg-host-u-");
    const data = join(tmp.dir, "lines.txt");
    const lines = (): number[] => (existsSync(data) ? readFileSync(data, "utf8") : "").split("\n").filter((l) => l).map((l) => Number(/^line (\d+)$/.exec(l)?.[1] ?? NaN));
    const wrote = (log: string): number => {
      const m = [...log.matchAll(/^wrote (\d+)$/gm)];
      return m.length ? Number(m[m.length - 1]![1]) : 0;
    };
    try {
      // bash starts the counter, then becomes python appending numbered lines to a file: two processes, one data file
      const script = `${fixture("counter")} 100000 50 & exec python3 ${join(ROOT, "test", "fixtures", "appender.py")} ${data} 0.05`;
      const run = await a.cli(["run", "--name", "tree", "--mirror", server.url, "--token-file", tokenFile, "--", "bash", "-c", script]);
      assert.equal(run.code, 0, run.stderr);
      await waitFor("the child counts and the parent writes", () => countOf(a.log("tree")) >= 3 && wrote(a.log("tree")) >= 3);
      const ids: string[] = [];
      for (let i = 0; i < 2; i++) {
        const cp = await a.cli(["checkpoint", "tree", "--json"]);
        assert.equal(cp.code, 0, cp.stderr);
        const m = JSON.parse(cp.stdout) as { id: string; kind: string; fullReason?: string; mirror?: { state: string; error?: string }; files?: { id: string } };
        if (i === 0) assert.match(m.fullReason ?? "", /^first checkpoint since the app started/, "the first tree checkpoint says why it is full");
        else assert.equal(m.kind, "incremental", m.fullReason);
        assert.equal(m.mirror?.state, "durable", `${m.id} acknowledged durable by the mirror (${m.mirror?.error ?? ""})`);
        assert.ok(m.files, "the checkpoint has a files image");
        ids.push(m.id);
        const at = wrote(a.log("tree"));
        await waitFor("more lines", () => wrote(a.log("tree")) >= at + 5);
      }
      const inspectA = JSON.parse((await a.cli(["inspect", ids[1]!, "--json"])).stdout) as { manifest: { stats: { extra: { tree: { pid: number; id?: string }[] } } } };
      const live = inspectA.manifest.stats.extra.tree.filter((e) => e.id);
      assert.equal(live.length, 2, "two processes in the checkpoint");
      // host A dies; its file has lines written after the checkpoint
      process.kill(a.pids("tree")!.init, "SIGKILL");
      await waitFor("host A's app is gone", () => !isAlive(a.pids("tree")!.init));
      const afterCrash = lines();
      const lastCount = countOf(a.log("tree"));
      // host B: nothing local; restore --from the mirror
      const rs = await b.cli(["restore", "tree", "--from", server.url, "--token-file", tokenFile, "--json"]);
      assert.equal(rs.code, 0, rs.stderr);
      assert.equal((JSON.parse(rs.stdout) as { checkpoint: string }).checkpoint, ids[1]);
      // the file was rolled back to the checkpoint, and the app appends from there: no line twice
      await waitFor("the parent writes on host B", () => wrote(b.log("tree")) >= 5);
      await waitFor("the child counts on host B", () => countOf(b.log("tree")) >= 3);
      const firstB = Number(/^wrote (\d+)$/m.exec(b.log("tree"))![1]);
      assert.ok(firstB < afterCrash.length, `host B goes on from the checkpoint (first line ${firstB}), before host A's last (${afterCrash.length})`);
      await waitFor("more lines on host B", () => wrote(b.log("tree")) >= firstB + 5);
      const got = lines();
      assert.deepEqual(got, got.map((_, i) => i + 1), "lines 1..N, each once (the file was rolled back with the checkpoint)");
      const firstCount = Number(/^count (\d+)$/m.exec(b.log("tree"))![1]);
      assert.ok(firstCount > 1 && firstCount <= lastCount + 1, `the child continues from the checkpoint (first count on B: ${firstCount}, last on A: ${lastCount})`);
      // B's store holds every process's checkpoint and the files image
      const inspectB = JSON.parse((await b.cli(["inspect", ids[1]!, "--json"])).stdout) as { manifest: { stats: { extra: { tree: { id?: string }[] } } } };
      assert.deepEqual(inspectB.manifest.stats.extra.tree.map((e) => e.id), inspectA.manifest.stats.extra.tree.map((e) => e.id));
    } finally {
      server.kill("SIGKILL");
      await a.cleanup();
      await b.cleanup();
      tmp.cleanup();
    }
  });
});
