// A pipe end whose other end is closed everywhere is the process's alone: a shell holds one for
// an instant after a command substitution's child exited, before it reads the end and closes it
// (gitloop.sh under --files none was refused there: "the other end of this pipe is outside the
// process", 1 run in the suite). The agent asks the kernel (poll: POLLHUP on a read end without a
// writer, POLLERR on a write end without a reader) and captures such a pipe; the restore makes it
// with that end closed: what was buffered is read, then end of file; a write gets EPIPE.
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, test } from "node:test";
import { makeHome } from "./helpers/home.js";
import { fixtureScript, requireNative } from "./helpers/native.js";
import { killApp, logLines, logSize, runApp, waitExited, waitLines } from "./helpers/scenario.js";

describe("widowed pipes", { timeout: 300_000 }, () => {
  test("a read end without a writer (data buffered) and a write end without a reader: checkpointed alone, restored as they were", async (t) => {
    requireNative();
    const h = makeHome("tg-");
    const dir = mkdtempSync(join(tmpdir(), "tg-wid-"));
    t.after(async () => {
      await h.cleanup();
      rmSync(dir, { recursive: true, force: true });
    });
    await runApp(h, "wid", ["python3", fixtureScript("widowed.py"), dir]);
    await waitLines(h, "wid", (l) => l.includes("tick 3"), "it ticks", 120_000);
    const cp = await h.cli(["checkpoint", "wid", "--json"]);
    assert.equal(cp.code, 0, `checkpoint: ${cp.stderr}`);
    const tree = (JSON.parse(cp.stdout) as { stats: { extra?: { tree?: unknown[] } } }).stats.extra?.tree;
    assert.ok(!tree || tree.length <= 1, "one process");
    await killApp(h, "wid");
    const from = logSize(h, "wid");
    const r = await h.cli(["restore", "wid", "--json"]);
    assert.equal(r.code, 0, `restore: ${r.stderr}`);
    await waitLines(h, "wid", (l) => l.some((x) => x.startsWith("tick ")), "the restored app ticks", 120_000, from);
    writeFileSync(join(dir, "read"), "");
    await waitExited(h, "wid", 120_000);
    const out = logLines(h, "wid", from);
    assert.ok(out.includes("read 'hello' then end of file"), out.slice(-5).join("\n"));
    assert.ok(out.includes("write: broken pipe"), out.slice(-5).join("\n"));
  });
});
