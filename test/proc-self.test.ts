// An app holding its own /proc files open (/proc/self/maps, /proc/self/status: a monitoring thread,
// a JVM, a python profiler): the fd's link names the pid the host sees, which changes at a
// restore, so the restore failed ("cannot reopen /proc/13829/maps") after a checkpoint that had
// committed. They are recorded as /proc/self/... and reopened as the restored process's own; a
// /proc file of another process is refused by name at the checkpoint. Every wait is on a condition.
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { fixtureScript } from "./helpers/native.js";
import { logLines, logSize, runApp, status, waitLines } from "./helpers/scenario.js";
import { checkpointOk, crashAndRestore, ids, setup } from "./helpers/tree.js";

const TICK = /^tick (\d+) maps (\d+) status (ok|missing)$/;

describe("the app's own /proc files", { timeout: 600_000 }, () => {
  test("held open across a checkpoint, kill -9 and restore: reopened as the restored process's own", async (t) => {
    const { h } = setup(t);
    await runApp(h, "ps", ["python3", fixtureScript("procself.py")]);
    await waitLines(h, "ps", (l) => l.filter((x) => TICK.test(x)).length >= 5, "ticks");
    const id = await checkpointOk(h, "ps");
    const shown = (await h.cli(["inspect", id])).stdout;
    assert.match(shown, /\/proc\/self\/maps/, "recorded as its own maps");
    const from = logSize(h, "ps");
    await crashAndRestore(h, "ps");
    const after = (await waitLines(h, "ps", (l) => l.filter((x) => TICK.test(x)).length >= 5, "ticks after the restore", 180_000, from)).filter((x) => TICK.test(x));
    for (const l of after) {
      const m = TICK.exec(l)!;
      assert.ok(Number(m[2]) > 5, `it reads its own maps: ${l}`);
      assert.equal(m[3], "ok", `it reads its own status: ${l}`);
    }
    assert.equal((await status(h, "ps")).state, "running");
  });

  test("a /proc file of another process: the checkpoint refuses naming it, nothing committed, the app runs on", async (t) => {
    const { h } = setup(t);
    await runApp(h, "po", ["python3", fixtureScript("procself.py"), "other"]);
    await waitLines(h, "po", (l) => l.filter((x) => TICK.test(x)).length >= 3, "ticks");
    const r = await h.cli(["checkpoint", "po"]);
    assert.equal(r.code, 1, r.stdout);
    assert.match(r.stderr, /\/proc\/1\/status is a \/proc file of another process or thread: not supported yet/);
    assert.deepEqual(await ids(h, "po"), []);
    const n = logLines(h, "po").length;
    await waitLines(h, "po", (l) => l.length > n + 3, "ticks on after the refusal");
  });
});
