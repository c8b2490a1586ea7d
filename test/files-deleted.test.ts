// Issue 14: a file the app unlinked but still holds open is given back to the process as deleted:
// its contents from the checkpoint, the fd's offset, no name. A python3 app writes random records
// into a deleted scratch file and reads a deleted table through their fds, and checks both
// against its own memory at every step (test/fixtures/deletedopen.py): after more writes, kill -9
// and restore, it must find the checkpoint's contents and offsets (a restore that gave back the
// file as it was at the kill, or empty, or with a name, makes it print MISMATCH). With
// `--files none` the checkpoint refuses, naming the file.
import assert from "node:assert/strict";
import { mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, test, type TestContext } from "node:test";
import { isAlive, makeHome, type TestHome } from "./helpers/home.js";
import { fixtureScript, requireNative } from "./helpers/native.js";
import { killApp, logLines, logSize, waitLines } from "./helpers/scenario.js";

const TIMEOUT = 300_000;
const WAIT = 90_000;

function setup(t: TestContext): { h: TestHome; dir: string } {
  requireNative();
  const h = makeHome("tg-");
  const dir = mkdtempSync(join(tmpdir(), "tg-fd-"));
  t.after(async () => {
    await h.cleanup();
    rmSync(dir, { recursive: true, force: true });
  });
  return { h, dir };
}

const stepOf = (ls: string[]): number => {
  for (let i = ls.length - 1; i >= 0; i--) {
    const m = /^step (\d+) /.exec(ls[i]!);
    if (m) return Number(m[1]);
  }
  return 0;
};

describe("files: deleted-but-open files", { timeout: TIMEOUT }, () => {
  test("a deleted file held open comes back deleted, with the checkpoint's contents and the fd's offset", async (t) => {
    const { h, dir } = setup(t);
    const r0 = await h.cli(["run", "--name", "del", "--json", "--", "python3", fixtureScript("deletedopen.py"), dir, "0.05"]);
    assert.equal(r0.code, 0, r0.stderr);
    await waitLines(h, "del", (ls) => stepOf(ls) >= 5, "first steps", WAIT);
    const cp = await h.cli(["checkpoint", "del", "--json"]);
    assert.equal(cp.code, 0, cp.stderr);
    const at = stepOf(logLines(h, "del"));
    const ins = await h.cli(["inspect", (JSON.parse(cp.stdout) as { id: string }).id]);
    assert.equal(ins.code, 0, ins.stderr);
    assert.match(ins.stdout, /scratch\.bin \(deleted; contents at .*\.tardigrade-deleted\./, ins.stdout);
    // the app writes on (the deleted file grows past the checkpoint's contents), then dies
    await waitLines(h, "del", (ls) => stepOf(ls) >= at + 10, "more steps", WAIT);
    await killApp(h, "del");
    const from = logSize(h, "del");
    const rr = await h.cli(["restore", "del", "--json"]);
    assert.equal(rr.code, 0, rr.stderr);
    await waitLines(h, "del", (ls) => ls.filter((l) => /^step \d+ /.test(l)).length >= 5, "steps after the restore", WAIT, from).catch((e: unknown) => {
      throw new Error(`${String(e)}\n${h.log("del").slice(-1500)}`);
    });
    const after = logLines(h, "del", from);
    assert.deepEqual(after.filter((l) => l.startsWith("MISMATCH")), [], `the deleted files are the checkpoint's: ${after.join("\n").slice(0, 2000)}`);
    const first = after.find((l) => /^step \d+ /.test(l))!;
    assert.ok(Number(/^step (\d+) /.exec(first)![1]) <= at + 1, `the app went on from the checkpoint (step ${at}): ${first}`);
    assert.deepEqual(readdirSync(dir), [], "no name is left in the directory (no staging name either)");
    assert.ok(isAlive(h.pids("del")!.app));
  });

  test("with --files none a deleted file held open refuses the checkpoint by name", async (t) => {
    const { h, dir } = setup(t);
    const r0 = await h.cli(["run", "--name", "deln", "--files", "none", "--json", "--", "python3", fixtureScript("deletedopen.py"), dir, "0.05"]);
    assert.equal(r0.code, 0, r0.stderr);
    await waitLines(h, "deln", (ls) => stepOf(ls) >= 3, "first steps", WAIT);
    const cp = await h.cli(["checkpoint", "deln", "--json"]);
    assert.notEqual(cp.code, 0, "refused");
    assert.match(cp.stderr, /(scratch|table)\.bin \(deleted\).*--files none/, cp.stderr);
    await killApp(h, "deln");
  });
});
