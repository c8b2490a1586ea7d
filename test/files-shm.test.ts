// Issue 14 / README Limits: shared writable memory (MAP_SHARED|MAP_ANONYMOUS, memfd, a deleted
// file, System V) is copied while the app is parked, up to 64 MiB per object. A larger one would be
// read by the snapshot child after the app resumed (a write in that window landing in the
// checkpoint), so the checkpoint refuses it by name, nothing committed; one under the limit is
// checkpointed and restored (python3 mmap.mmap(-1, n): test/fixtures/shmbig.py).
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { makeHome } from "./helpers/home.js";
import { fixtureScript, requireNative } from "./helpers/native.js";
import { killApp, logLines, logSize, waitLines } from "./helpers/scenario.js";

const WAIT = 90_000;

describe("files: shared writable memory over 64 MiB", { timeout: 300_000 }, () => {
  test("80 MiB of shared anonymous memory refuses the checkpoint by name; 16 MiB is checkpointed and restored", async (t) => {
    requireNative();
    const h = makeHome("tg-");
    t.after(() => h.cleanup());
    const big = await h.cli(["run", "--name", "big", "--json", "--", "python3", fixtureScript("shmbig.py"), "80"]);
    assert.equal(big.code, 0, big.stderr);
    await waitLines(h, "big", (ls) => ls.some((l) => l.startsWith("tick 3 ")), "ticks", WAIT);
    const cb = await h.cli(["checkpoint", "big", "--json"]);
    assert.notEqual(cb.code, 0, `refused: ${cb.stdout}`);
    assert.match(cb.stderr, /shared writable mapping [0-9a-f]+-[0-9a-f]+ of \/dev\/zero \(deleted\).*80 MiB.*64 MiB/s, cb.stderr);
    const ls = await h.cli(["ls", "big", "--json"]);
    assert.equal(ls.code, 0, ls.stderr);
    assert.deepEqual(JSON.parse(ls.stdout), [], "nothing committed");
    await killApp(h, "big");

    const small = await h.cli(["run", "--name", "small", "--json", "--", "python3", fixtureScript("shmbig.py"), "16"]);
    assert.equal(small.code, 0, small.stderr);
    await waitLines(h, "small", (ls) => ls.some((l) => l.startsWith("tick 3 ")), "ticks", WAIT);
    const cs = await h.cli(["checkpoint", "small", "--json"]);
    assert.equal(cs.code, 0, cs.stderr);
    await killApp(h, "small");
    const from = logSize(h, "small");
    const rr = await h.cli(["restore", "small", "--json"]);
    assert.equal(rr.code, 0, rr.stderr);
    await waitLines(h, "small", (ls) => ls.filter((l) => / ok$/.test(l)).length >= 5, "ticks after the restore", WAIT, from);
    assert.deepEqual(logLines(h, "small", from).filter((l) => l.startsWith("MISMATCH")), []);
    await killApp(h, "small");
  });
});
