// Files in /dev/shm are data (POSIX shared memory, python's multiprocessing heap): in the files
// set, rolled back, and a deleted one held open comes back to every process of the tree. python3
// multiprocessing with a shared Value and a Pool(2) (test/fixtures/poolvalue.py): its heap arena is
// a file in /dev/shm, unlinked at once, held open and mapped shared by the parent and each worker.
// Before, /dev was left out of the set while the agents recorded the arena's fds by staging name:
// every checkpoint committed, and every restore failed ("cannot open its contents"). And a
// deleted file held open that the set leaves out (--files-exclude) refuses the checkpoint by name
// instead of committing one no restore can use.
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, test, type TestContext } from "node:test";
import { makeHome, type TestHome } from "./helpers/home.js";
import { fixtureScript, requireNative } from "./helpers/native.js";
import { killApp, logLines, logSize, runApp, waitLines } from "./helpers/scenario.js";

function setup(t: TestContext): { h: TestHome; dir: string } {
  requireNative();
  const h = makeHome("tg-shm-");
  const dir = mkdtempSync(join(tmpdir(), "tg-shm-"));
  t.after(async () => {
    await h.cleanup();
    rmSync(dir, { recursive: true, force: true });
  });
  return { h, dir };
}

const N = 3000;

describe("files in /dev/shm", { timeout: 600_000 }, () => {
  test("python multiprocessing with a shared Value and a Pool(2): checkpointed twice, killed, restored; every result once, the Value counts them all, no staging name left", async (t) => {
    const { h, dir } = setup(t);
    const out = join(dir, "results.txt");
    await runApp(h, "pv", ["python3", fixtureScript("poolvalue.py"), out, String(N)]);
    const at = (ls: string[]): number => Math.max(0, ...ls.map((l) => /^at (\d+) /.exec(l)).filter((m) => m).map((m) => Number(m![1])));
    await waitLines(h, "pv", (ls) => at(ls) >= 100, "100 results", 180_000);
    let r = await h.cli(["checkpoint", "pv", "--json"]);
    assert.equal(r.code, 0, r.stderr);
    const first = at(logLines(h, "pv"));
    await waitLines(h, "pv", (ls) => at(ls) >= first + 100, "100 more results", 180_000);
    r = await h.cli(["checkpoint", "pv", "--json"]);
    assert.equal(r.code, 0, r.stderr);
    await killApp(h, "pv");
    // (the killed run's workers may print a BrokenPipeError as their parent dies before them: only
    // what the restored app prints counts)
    const from = logSize(h, "pv");
    r = await h.cli(["restore", "pv", "--json"]);
    assert.equal(r.code, 0, r.stderr);
    const files = (JSON.parse(r.stdout) as { files?: { recreated: string[]; rewritten: string[] } }).files;
    const staged = [...(files?.recreated ?? []), ...(files?.rewritten ?? [])].filter((p) => p.includes("/.tardigrade-deleted."));
    assert.ok(staged.some((p) => p.startsWith("/dev/shm/")), `the arena in /dev/shm was rolled back under its staging names: ${JSON.stringify(files)}`);
    for (const p of staged) assert.ok(!existsSync(p), `${p} is left after the restore`);
    const ls = await waitLines(h, "pv", (l) => l.some((x) => x.startsWith("done ")), "the pool finished", 300_000, from);
    assert.ok(!ls.some((x) => /Traceback|Error/.test(x)), ls.filter((x) => /Traceback|Error/.test(x)).join("\n"));
    assert.deepEqual(ls.filter((x) => x.startsWith("done ")), [`done ${N}`], "the shared Value counted every result");
    const rows = readFileSync(out, "utf8").trim().split("\n").map((l) => l.split(" ").map(Number));
    assert.equal(rows.length, N, "every result once in the file (rolled back to the checkpoint, then appended)");
    assert.deepEqual(rows.map((x) => x[0]), Array.from({ length: N }, (_, i) => i));
    assert.ok(rows.every(([i, sq]) => sq === i! * i!));
  });

  test("python multiprocessing, spawn start method: a process started after the restore maps the Value's arena from the fd it is passed and opens its lock's semaphore by name, and both are the restored parent's; the app checkpoints and restores again after a restore", async (t) => {
    const { h } = setup(t);
    // with spawn, python unlinks its semaphores (/dev/shm/sem.mp-*) only at exit, through its
    // resource tracker, which the kills take down with the app: the ones this test made are removed
    // (the app's own: the /dev/shm names of the inodes its main process maps, not another run's)
    const made = new Set<string>();
    const mine = (): string[] => {
      const pid = h.pids("sp")!.app;
      const inodes = new Set<number>();
      for (const l of readFileSync(`/proc/${pid}/maps`, "utf8").split("\n"))
        if (/ rw-s .*\/dev\/shm\/sem\./.test(l)) inodes.add(statSync(`/proc/${pid}/map_files/${l.split(" ")[0]!}`).ino);
      const names = readdirSync("/dev/shm").filter((n) => n.startsWith("sem.mp-") && inodes.has(statSync(join("/dev/shm", n)).ino));
      for (const n of names) made.add(n);
      return names;
    };
    t.after(() => {
      for (const n of made) rmSync(join("/dev/shm", n), { force: true });
    });
    await runApp(h, "sp", ["python3", fixtureScript("shmspawn.py")]);
    const stepOf = (ls: string[]): number => Math.max(0, ...ls.map((l) => /^step (\d+) /.exec(l)).filter((m) => m).map((m) => Number(m![1])));
    await waitLines(h, "sp", (ls) => stepOf(ls) >= 25, "two spawned workers' additions", 180_000);
    for (const round of [1, 2]) {
      const r0 = await h.cli(["checkpoint", "sp", "--json"]);
      assert.equal(r0.code, 0, `checkpoint ${round}: ${r0.stderr}`);
      const sems = mine();
      await killApp(h, "sp");
      // The Value's lock is a named semaphore: glibc's sem_open makes it under a temporary name,
      // maps it, links it to its name and removes the temporary one (the maps say "(deleted)").
      // It is a file of the set: removed now (python's resource tracker does it when it outlives
      // the parent killed alone, as here, until the namespace's init ends it), the restore makes it again, and the parent maps that file, the one
      // a worker opens by name (before: restored as memory of its own, not shared with the workers,
      // and a worker started after a restore found no semaphore when it had been removed).
      assert.ok(sems.length >= 1, "the app's semaphore in /dev/shm");
      for (const n of sems) rmSync(join("/dev/shm", n), { force: true });
      const from = logSize(h, "sp");
      const r = await h.cli(["restore", "sp", "--json"]);
      assert.equal(r.code, 0, `restore ${round}: ${r.stderr}`);
      const maps = readFileSync(`/proc/${h.pids("sp")!.app}/maps`, "utf8");
      for (const n of sems) {
        const line = maps.split("\n").find((l) => l.endsWith(`/dev/shm/${n}`));
        assert.ok(line, `the restored parent maps /dev/shm/${n} (its maps: ${maps.split("\n").filter((l) => l.includes(" rw-s ")).join("; ")})`);
        assert.equal(Number(line.split(/\s+/)[4]), statSync(join("/dev/shm", n)).ino, `the mapping of ${n} is the file at that name`);
      }
      // the restored parent spawns a worker every 10 steps and checks the Value after each (MISMATCH
      // and exit 3 when the worker's 1000 went to a copy of the arena)
      const ls = await waitLines(h, "sp", (l) => l.filter((x) => x.startsWith("step ")).length >= 25, `25 steps (two spawned workers) after restore ${round}`, 180_000, from);
      const last = ls.filter((x) => x.startsWith("step ")).pop()!;
      const [, step, value] = /^step (\d+) (\d+)$/.exec(last)!;
      assert.equal(Number(value), Number(step) + 1000 * Math.floor(Number(step) / 10), last);
    }
  });

  test("a deleted file held open that --files-exclude leaves out: the checkpoint is refused naming it; nothing committed, the app runs on", async (t) => {
    const { h, dir } = setup(t);
    const scratch = join(dir, "scratch");
    writeFileSync(join(dir, "hold.py"), `import os, sys, time\nf = open(sys.argv[1], "w+")\nos.unlink(sys.argv[1])\nf.write("secret")\nf.flush()\ni = 0\nwhile True:\n    print("tick", i, flush=True)\n    i += 1\n    time.sleep(0.05)\n`);
    const run = await h.cli(["run", "--name", "hx", "--files-exclude", `${dir}/**`, "--json", "--", "python3", join(dir, "hold.py"), scratch]);
    assert.equal(run.code, 0, run.stderr);
    await waitLines(h, "hx", (ls) => ls.some((l) => l.startsWith("tick")), "ticking", 120_000);
    const r = await h.cli(["checkpoint", "hx"]);
    assert.notEqual(r.code, 0, r.stdout);
    assert.match(r.stderr, new RegExp(`deleted file ${scratch} \\(deleted\\), which the app's file set leaves out.*Nothing was committed; the app keeps running`, "s"));
    const ls = await h.cli(["ls", "hx", "--json"]);
    assert.deepEqual(ls.code === 0 ? JSON.parse(ls.stdout) : [], [], "nothing committed");
    const n = logLines(h, "hx").length;
    await waitLines(h, "hx", (l) => l.length >= n + 5, "the app runs on", 120_000);
  });
});
