// A tree that never stops forking (two threads fork a child every few ms, each child lives 30 ms):
// the daemon's look at the tree and the park of its processes used to disagree every time (a child
// forked or ended in between) and the checkpoint was refused after 25 tries. With the fork gate
// (native/agent/forkgate.c) forks wait while a cut is taken: every checkpoint commits, incremental
// on the one before, and a restore of the last gives the app back at that instant with its
// children (those that had exited unreaped come back as zombies with their status: the app counts
// any other status as bad); the socket files and tables its ended children leave are swept while it
// runs. Every wait is on a condition; every process is killed by PID.
import assert from "node:assert/strict";
import { existsSync, readdirSync, statSync } from "node:fs";
import { join } from "node:path";
import { describe, test } from "node:test";
import { appProcesses } from "../src/daemon/tree.js";
import { waitFor } from "./helpers/home.js";
import { fixture } from "./helpers/native.js";
import { logLines, logSize, runApp, waitExited, waitLines } from "./helpers/scenario.js";
import { crashAndRestore, setup } from "./helpers/tree.js";

const TICK = /^tick (\d+) sum (\d+) forks (\d+) bad (\d+)$/;
const ticks = (ls: string[]): { n: number; sum: number; forks: number; bad: number }[] =>
  ls.flatMap((l) => {
    const m = TICK.exec(l);
    return m ? [{ n: Number(m[1]), sum: Number(m[2]), forks: Number(m[3]), bad: Number(m[4]) }] : [];
  });

describe("a tree that forks all the time", { timeout: 900_000 }, () => {
  test("five checkpoints in a row commit (incremental after the first), and the last restores with its children", async (t) => {
    const { h, dir, release } = setup(t);
    await runApp(h, "fs", [fixture("forkstorm"), dir]);
    await waitLines(h, "fs", (l) => ticks(l).some((x) => x.forks >= 20), "it forks", 120_000);
    const kinds: string[] = [];
    const seen: string[] = []; // (what each said, for the message: a full one's reason, a merged one)
    for (let i = 0; i < 5; i++) {
      const r = await h.cli(["checkpoint", "fs", "--json"]);
      assert.equal(r.code, 0, `checkpoint ${i + 1}: ${r.stderr}`);
      const m = JSON.parse(r.stdout) as { id?: string; kind?: string; parent?: string | null; synthetic?: boolean; fullReason?: string };
      kinds.push(m.kind ?? (m.parent ? "incremental" : "full"));
      seen.push(JSON.stringify({ id: m.id, kind: m.kind, parent: m.parent, synthetic: m.synthetic, fullReason: m.fullReason }));
    }
    assert.equal(kinds[0], "full");
    assert.ok(kinds.slice(1).every((k) => k === "incremental"), `incremental after the first: ${kinds.join(", ")} (${seen.join(" ")})`);
    assert.ok(!existsSync(join(h.home, "apps", "fs", "cut.gate")), "the fork gate is open once the checkpoints are done");
    // the last checkpoint was taken before this tick was printed
    const atCheckpoint = ticks(logLines(h, "fs")).pop()!.n;
    const from = logSize(h, "fs");
    await waitLines(h, "fs", (l) => ticks(l).some((x) => x.n >= atCheckpoint + 5), "it runs on after the checkpoints", 120_000, from);
    await crashAndRestore(h, "fs");
    // the lines since `from`: the first run's last ones, then the restored app's, which start over
    // from the checkpoint's tick
    const since = ticks(await waitLines(h, "fs", (l) => {
      const x = ticks(l);
      const back = x.findIndex((y, i) => i > 0 && y.n <= x[i - 1]!.n);
      return back > 0 && x.length - back >= 20;
    }, "20 ticks after the restore", 180_000, from));
    const back = since.findIndex((y, i) => i > 0 && y.n <= since[i - 1]!.n);
    const after = since.slice(back);
    assert.ok(after[0]!.n <= atCheckpoint + 1, `the app went back to the checkpoint (its first tick ${after[0]!.n}; tick ${atCheckpoint} was printed after the checkpoint)`);
    for (const x of after) assert.equal(x.sum, (x.n * (x.n + 1)) / 2, `tick ${x.n}: its memory is the checkpoint's`);
    assert.ok(after[after.length - 1]!.forks > after[0]!.forks, "it forks after the restore");
    assert.equal(after[after.length - 1]!.bad, 0, "every child (restored running or as a zombie) was reaped with status 7");
    // what the agents of ended children leave beside the app's socket is swept while it runs
    // (leftovers-sweep.ts; it used to pile up, ~130 files a second, until the next checkpoint)
    const restoredAt = Date.now();
    const appDir = join(h.home, "apps", "fs");
    const oldLeftovers = (): string[] => {
      const live = new Set(appProcesses(h.pids("fs")!.init).filter((p) => !p.zombie).map((p) => p.pid));
      return readdirSync(appDir).filter((n) => {
        const m = /^agent\.sock\.(\d+)$|^ranges\.(\d+)\.[0-9a-f]{16}$/.exec(n);
        if (!m || live.has(Number(m[1] ?? m[2]))) return false;
        try {
          return Date.now() - statSync(join(appDir, n)).ctimeMs > 8000;
        } catch {
          return false;
        }
      });
    };
    await waitFor("no leftovers of ended children older than 8 s, 10 s after the restore", () => Date.now() - restoredAt > 10_000 && oldLeftovers().length === 0, 120_000);
    assert.ok(ticks(logLines(h, "fs", from)).pop()!.forks > after[after.length - 1]!.forks, "it forked on meanwhile");
    release();
    await waitExited(h, "fs", 120_000);
  });

  // glibc's vfork() and clone() run no fork handlers: the agent wraps them to wait at the gate too
  // (without, the children made between the daemon's look and the park made every attempt fail)
  for (const mode of ["vfork", "clone"] as const)
    test(`children made by ${mode}() and exec'd: three checkpoints in a row commit, the last restores`, async (t) => {
      const { h, dir, release } = setup(t);
      const app = `fs-${mode}`;
      await runApp(h, app, [fixture("forkstorm"), dir, mode]);
      await waitLines(h, app, (l) => ticks(l).some((x) => x.forks >= 20), "it forks", 120_000);
      for (let i = 0; i < 3; i++) {
        const r = await h.cli(["checkpoint", app, "--json"]);
        assert.equal(r.code, 0, `checkpoint ${i + 1}: ${r.stderr}`);
      }
      const atCheckpoint = ticks(logLines(h, app)).pop()!.n;
      const from = logSize(h, app);
      await waitLines(h, app, (l) => ticks(l).some((x) => x.n >= atCheckpoint + 5), "it runs on after the checkpoints", 120_000, from);
      await crashAndRestore(h, app);
      const since = ticks(await waitLines(h, app, (l) => {
        const x = ticks(l);
        const back = x.findIndex((y, i) => i > 0 && y.n <= x[i - 1]!.n);
        return back > 0 && x.length - back >= 10;
      }, "10 ticks after the restore", 180_000, from));
      const after = since.slice(since.findIndex((y, i) => i > 0 && y.n <= since[i - 1]!.n));
      assert.ok(after[0]!.n <= atCheckpoint + 1, `the app went back to the checkpoint (first tick ${after[0]!.n}, checkpoint before tick ${atCheckpoint})`);
      for (const x of after) assert.equal(x.sum, (x.n * (x.n + 1)) / 2, `tick ${x.n}: its memory is the checkpoint's`);
      assert.ok(after[after.length - 1]!.forks > after[0]!.forks, "it makes children after the restore");
      assert.equal(after[after.length - 1]!.bad, 0, "every child was reaped with status 7");
      release();
      await waitExited(h, app, 120_000);
    });
});
