// Issue 12, item 4: timerfds come back with their clock, the time they had left, their interval,
// their unread expirations, their flags and an absolute wall-clock deadline, in a tree whose two
// processes share them through fork. A C fixture (test/fixtures/timerfds.c) prints what its
// timers say; every process started is killed by PID (helpers/tree.ts, helpers/home.ts).
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, test } from "node:test";
import { isAlive, waitFor } from "./helpers/home.js";
import { fixture } from "./helpers/native.js";
import { logSize, runApp, status, waitLines } from "./helpers/scenario.js";
import { checkpointOk, crashAndRestore, others, setup } from "./helpers/tree.js";

interface Tick { n: number; left2: number; abs4: number; t5: string }
function ticks(ls: string[]): Tick[] {
  return ls.flatMap((l) => {
    const m = /^tick (\d+) left2 (\d+) abs4 (\d+) t5 (\S+)$/.exec(l);
    return m ? [{ n: Number(m[1]), left2: Number(m[2]), abs4: Number(m[3]), t5: m[4]! }] : [];
  });
}

describe("timerfd", { timeout: 900_000 }, () => {
  test("five timerfds shared by a parent and its child: clock, time left, interval, unread expirations, wall-clock deadline and flags come back", async (t) => {
    const { h, dir, release } = setup(t);
    await runApp(h, "tfd", [fixture("timerfds"), dir]);
    // t3 (every 10 ms, unread) piles up expirations for at least 4 s
    const before = ticks(await waitLines(h, "tfd", (ls) => ticks(ls).length >= 40, "40 ticks (4 s)", 120_000));
    assert.equal(others(h, "tfd").length, 1, "the child runs beside the main process");
    const id = await checkpointOk(h, "tfd");
    const seen = JSON.parse((await h.cli(["inspect", id, "--json"])).stdout) as unknown;
    const texts = JSON.stringify(seen).match(/timerfd on [^"]*/g) ?? [];
    assert.ok(texts.length >= 5, `inspect lists the timerfds: ${texts.join(" | ")}`);
    const unread = texts.map((x) => /, (\d+) expirations? unread/.exec(x)).filter((m) => m).map((m) => Number(m![1]));
    const pile = Math.max(0, ...unread);
    assert.ok(pile >= 200, `t3's unread expirations are counted at the cut (the kernel forwards interval timers lazily): ${texts.join(" | ")}`);
    assert.ok(texts.some((x) => x.startsWith("timerfd on CLOCK_REALTIME, at ")), `the absolute wall-clock timer: ${texts.join(" | ")}`);
    const boot = texts.map((x) => /^timerfd on CLOCK_BOOTTIME, next in ([\d.]+) s$/.exec(x)).find((m) => m);
    assert.ok(boot, `the one-shot boottime timer: ${texts.join(" | ")}`);
    const left2AtCut = Number(boot[1]) * 1000;
    // The tick of the cut: t2 (one-shot, counting down) had left2AtCut left at the cut, so the last
    // tick printed before it is the last with at least that much left. (Not the last tick in the log
    // when the checkpoint returned: on a loaded machine the daemon's log lags the app's output; at
    // load 15-30 the log said 55 where the cut was at 64.) Wait until the log shows a later tick.
    const seenTicks = ticks(await waitLines(h, "tfd", (ls) => ticks(ls).some((k) => k.left2 < left2AtCut - 2), "a tick after the cut in the log", 120_000));
    const last = seenTicks.filter((k) => k.left2 >= left2AtCut - 2).pop() ?? seenTicks[0]!;

    const from = logSize(h, "tfd");
    await crashAndRestore(h, "tfd");
    writeFileSync(join(dir, "go"), "");
    const after = await waitLines(h, "tfd", (ls) => ls.some((l) => l.startsWith("pending ")) && ticks(ls).length >= 5, "t3 read and five ticks after the restore", 120_000, from);
    const pending = Number(/^pending (\d+)$/.exec(after.find((l) => l.startsWith("pending "))!)![1]);
    assert.ok(pending >= pile, `t3's expirations unread at the checkpoint are read after the restore: ${pending} (${pile} at the cut)`);
    const back = ticks(after);
    assert.ok(back[0]!.n <= last.n + 1 && back[0]!.n > before[0]!.n, `t1 ticks on from the checkpoint: ${back[0]!.n} after ${last.n}`);
    for (const k of back) {
      assert.ok(k.left2 > 0 && k.left2 <= left2AtCut + 1, `t2 still armed, with no more than it had left: ${k.left2} ms (${left2AtCut} at the cut)`);
      assert.ok(Math.abs(k.abs4 - last.abs4) <= 1, `t4 keeps its wall-clock deadline: ${k.abs4} (${last.abs4})`);
      assert.equal(k.t5, "eagain", "t5: disarmed and non-blocking");
    }
    // the time between checkpoint and restore does not count (docs): t2 lost only the ticks' time since
    assert.ok(back[back.length - 1]!.left2 >= left2AtCut - 120_000, `t2: ${back[back.length - 1]!.left2} ms left (${left2AtCut} at the cut)`);
    const kids = others(h, "tfd");
    assert.equal(kids.length, 1, "the child is back");
    assert.equal((await status(h, "tfd")).state, "running");
    release();
    await waitFor("the child ends once released", () => !isAlive(kids[0]!.hostPid));
  });
});
