// Issue 10, items 2 and 3: kernel timers (POSIX timers, interval timers) and thread names
// survive a checkpoint, kill -9 and restore. Real programs: a C fixture with several
// timer_create timers and setitimer, python3 with signal.setitimer, ruby (its timer thread
// uses a POSIX timer). Every process started is killed by PID (helpers/home.ts).
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { readFileSync, readdirSync } from "node:fs";
import { describe, test, type TestContext } from "node:test";
import { makeHome, waitFor, type TestHome } from "./helpers/home.js";
import { fixture, requireNative } from "./helpers/native.js";
import { killApp, logLines, logSize, runApp, status, waitLines } from "./helpers/scenario.js";

const TIMEOUT = 1_800_000; // per describe block (all its tests): generous for a busy machine; every wait inside is on a condition
const WAIT = 60_000;

function setup(t: TestContext): TestHome {
  requireNative();
  const h = makeHome("tg-tm-");
  t.after(() => h.cleanup());
  return h;
}

/** /proc/PID/timers without the host pids/tids (they change across a restore), sorted by id. */
function procTimers(pid: number): string[] {
  const text = readFileSync(`/proc/${pid}/timers`, "utf8");
  return text
    .split(/(?=^ID: )/m)
    .filter((b) => b.trim())
    .map((b) => b.trim().replace(/\/(pid|tid)\.\d+/, "/$1").split("\n").join(" | "))
    .sort();
}

/** Thread names of a process, sorted, and the process name. */
function names(pid: number): { comm: string; threads: string[] } {
  const threads = readdirSync(`/proc/${pid}/task`).map((t) => readFileSync(`/proc/${pid}/task/${t}/comm`, "utf8").trim());
  return { comm: readFileSync(`/proc/${pid}/comm`, "utf8").trim(), threads: threads.sort() };
}

async function checkpoint(h: TestHome, name: string): Promise<string> {
  const cp = await h.cli(["checkpoint", name, "--json"]);
  assert.equal(cp.code, 0, `checkpoint failed: ${cp.stderr}`);
  return (JSON.parse(cp.stdout) as { id: string }).id;
}

async function restore(h: TestHome, name: string): Promise<number> {
  const from = logSize(h, name);
  const r = await h.cli(["restore", name, "--json"]);
  assert.equal(r.code, 0, `restore failed: ${r.stderr}\n--- log ---\n${h.log(name)}`);
  return from;
}

/** Numbers of `key=N` on each line that has it. */
function counts(ls: string[], key: string): number[] {
  const re = new RegExp(`\\b${key}=(\\d+)`);
  return ls.map((l) => re.exec(l)).filter((m) => m !== null).map((m) => Number(m[1]));
}

async function stopEndsWithSigterm(h: TestHome, name: string): Promise<void> {
  const stop = await h.cli(["stop", name, "--json"], { timeoutMs: WAIT });
  assert.equal(stop.code, 0, stop.stderr);
  const exit = (JSON.parse(stop.stdout) as { exit: { signal?: number } | null }).exit;
  assert.equal(exit?.signal, 15, `stop of ${name} ends with SIGTERM, got ${JSON.stringify(exit)}\n--- log ---\n${h.log(name)}`);
}

describe("kernel timers and thread names survive a restore", { timeout: TIMEOUT }, () => {
  test("C fixture: timer_create timers keep their ids, clocks, targets and ticks; setitimer ticks; thread names", async (t) => {
    const h = setup(t);
    await runApp(h, "tm", [fixture("timers"), "100000", "100"]);
    await waitLines(h, "tm", (ls) => ls.filter((l) => l.startsWith("tick ")).length >= 3, "three ticks", WAIT);
    const before = h.pids("tm")!;
    const timersBefore = procTimers(before.app);
    assert.equal(timersBefore.length, 4, timersBefore.join("\n"));
    assert.ok(timersBefore.some((l) => /notify: signal\/tid/.test(l)), "a SIGEV_THREAD_ID timer");
    assert.ok(timersBefore.some((l) => /notify: none\/pid/.test(l)), "a SIGEV_NONE timer");
    const namesBefore = names(before.app);
    assert.equal(namesBefore.comm, "tmain");
    assert.ok(namesBefore.threads.includes("tworker"), JSON.stringify(namesBefore));

    const id = await checkpoint(h, "tm");
    await waitLines(h, "tm", (ls) => ls.filter((l) => l.startsWith("tick ")).length >= 5, "ticks after the checkpoint", WAIT);
    await killApp(h, "tm");
    const from = await restore(h, "tm");
    // timer_gettime on every old timer id each tick (the fixture prints ERROR and exits otherwise)
    const restored = await waitLines(h, "tm", (ls) => ls.filter((l) => l.startsWith("tick ")).length >= 6, "ticks of the restored process", WAIT, from);
    const ticks = restored.filter((l) => l.startsWith("tick "));
    for (const key of ["a", "b", "alrm"]) {
      const c = counts(ticks, key);
      assert.ok(c[c.length - 1]! > c[0]!, `${key} keeps counting after the restore: ${ticks.join(" / ")}`);
    }
    const after = h.pids("tm")!;
    assert.notEqual(after.app, before.app);
    assert.deepEqual(procTimers(after.app), timersBefore, "same timer ids, signals, notification kinds and clocks");
    assert.deepEqual(names(after.app), namesBefore, "process and thread names");
    // inspect lists the timers of the checkpoint
    const ins = await h.cli(["inspect", id, "--json"]);
    assert.equal(ins.code, 0, ins.stderr);
    const timers = (JSON.parse(ins.stdout) as { image: { timers: { kind: string; id: number | null; clock: string; notify: string; value: string; interval: string }[] } }).image.timers;
    assert.deepEqual(timers.filter((x) => x.kind === "posix").map((x) => x.id).sort(), [0, 1, 2, 3]);
    assert.ok(timers.some((x) => x.kind === "posix" && x.notify.startsWith("signal to tid") && x.clock === "realtime" && x.interval === "30000000"), JSON.stringify(timers));
    assert.ok(timers.some((x) => x.kind === "posix" && x.notify === "none" && BigInt(x.value) > 9_000_000_000_000n), JSON.stringify(timers));
    assert.ok(timers.some((x) => x.kind === "posix" && x.value === "0"), "the disarmed timer");
    assert.ok(timers.some((x) => x.kind === "ITIMER_REAL" && x.interval === "25000000"), JSON.stringify(timers));
    const text = await h.cli(["inspect", id]);
    assert.match(text.stdout, /timers:\n.*TIMER.*CLOCK/);

    await stopEndsWithSigterm(h, "tm");
  });

  test("a SIGEV_THREAD timer is refused by id; nothing is committed and the app keeps running", async (t) => {
    const h = setup(t);
    await runApp(h, "te", [fixture("timers"), "100000", "100", "1"]);
    await waitLines(h, "te", (ls) => ls.filter((l) => l.startsWith("tick ")).length >= 2, "two ticks", WAIT);
    const cp = await h.cli(["checkpoint", "te"]);
    assert.notEqual(cp.code, 0);
    assert.match(cp.stderr, /^tardigrade: checkpoint of te failed: timer 4 \(clock 1\) cannot be checkpointed: it is a SIGEV_THREAD timer/);
    assert.match(cp.stderr, /use SIGEV_SIGNAL or SIGEV_THREAD_ID, or delete the timer/);
    assert.match(cp.stderr, /Nothing was committed/);
    const ls = JSON.parse((await h.cli(["ls", "te", "--json"])).stdout) as unknown[];
    assert.deepEqual(ls, []);
    const n = logLines(h, "te").length;
    await waitLines(h, "te", (l) => l.length >= n + 2, "ticks after the refusal", WAIT);
    assert.equal((await status(h, "te")).state, "running");
  });

  test("CPU-time clocks: a CLOCK_PROCESS_CPUTIME_ID timer comes back; a CLOCK_THREAD_CPUTIME_ID one is refused by id and clock", async (t) => {
    const h = setup(t);
    await runApp(h, "cpu", [fixture("cputimer")]);
    await runApp(h, "cput", [fixture("cputimer"), "1"]);
    await waitLines(h, "cpu", (ls) => counts(ls, "n").some((c) => c > 0), "SIGPROF ticks", WAIT);
    await waitLines(h, "cput", (ls) => counts(ls, "n").some((c) => c > 0), "SIGPROF ticks", WAIT);
    const refused = await h.cli(["checkpoint", "cput"]);
    assert.notEqual(refused.code, 0);
    assert.match(refused.stderr, /^tardigrade: checkpoint of cput failed: timer 0 \(clock -2\) cannot be checkpointed: a timer on CLOCK_THREAD_CPUTIME_ID .*delete it \(timer_delete\) before the checkpoint/);
    assert.equal((await status(h, "cput")).state, "running");
    const timersBefore = procTimers(h.pids("cpu")!.app);
    await checkpoint(h, "cpu");
    await waitLines(h, "cpu", (ls) => ls.length >= 2, "output after the checkpoint", WAIT);
    await killApp(h, "cpu");
    const from = await restore(h, "cpu");
    const restored = await waitLines(h, "cpu", (ls) => { const c = counts(ls, "n"); return c.length >= 2 && c[c.length - 1]! > c[0]!; }, "SIGPROF ticks of the restored process", WAIT, from);
    assert.ok(restored.length >= 2);
    assert.deepEqual(procTimers(h.pids("cpu")!.app), timersBefore);
    await stopEndsWithSigterm(h, "cpu");
  });

  test("python3 signal.setitimer(ITIMER_REAL): ticks continue after the restore", async (t) => {
    const h = setup(t);
    const python = execFileSync("python3", ["-c", "import sys; print(sys.executable)"], { encoding: "utf8" }).trim();
    const script = [
      "import signal, sys, time",
      "n = 0",
      "def tick(s, f):",
      "    global n",
      "    n += 1",
      "signal.signal(signal.SIGALRM, tick)",
      "signal.setitimer(signal.ITIMER_REAL, 0.05, 0.05)",
      "i = 0",
      "while True:",
      "    time.sleep(0.2)",
      "    i += 1",
      "    print(f'loop {i} ticks={n}', flush=True)",
    ].join("\n");
    await runApp(h, "py", [python, "-c", script]);
    await waitLines(h, "py", (ls) => counts(ls, "ticks").some((c) => c >= 5), "ticks", WAIT);
    await checkpoint(h, "py");
    await waitLines(h, "py", (ls) => ls.length >= 2, "output after the checkpoint", WAIT);
    await killApp(h, "py");
    const from = await restore(h, "py");
    const restored = await waitLines(h, "py", (ls) => ls.length >= 2 && counts(ls, "ticks")[ls.length - 1]! > counts(ls, "ticks")[0]! + 3, "ticks of the restored process", WAIT, from);
    const c = counts(restored, "ticks");
    assert.ok(c[c.length - 1]! > c[0]!, `SIGALRM ticks after the restore: ${restored.join(" / ")}`);
    await stopEndsWithSigterm(h, "py");
  });

  test("ruby with a Thread: keeps counting after the restore; stop ends with SIGTERM (its timer thread's POSIX timer is back)", async (t) => {
    const h = setup(t);
    const script = [
      "$stdout.sync = true",
      "count = 0",
      "t = Thread.new { Thread.current.name = 'rbworker'; loop { count += 1; sleep 0.05 } }",
      "i = 0",
      "loop { sleep 0.2; i += 1; puts \"loop #{i} count=#{count}\" }",
    ].join("\n");
    await runApp(h, "rb", ["ruby", "-e", script]);
    await waitLines(h, "rb", (ls) => ls.length >= 3, "output", WAIT);
    await waitFor("the ruby thread's name", () => names(h.pids("rb")!.app).threads.includes("rbworker"), WAIT);
    const before = h.pids("rb")!;
    const timersBefore = procTimers(before.app);
    assert.ok(timersBefore.length >= 1, "ruby's timer thread has a POSIX timer");
    const namesBefore = names(before.app);
    await checkpoint(h, "rb");
    await waitLines(h, "rb", (ls) => ls.length >= 5, "output after the checkpoint", WAIT);
    await killApp(h, "rb");
    const from = await restore(h, "rb");
    const restored = await waitLines(h, "rb", (ls) => ls.length >= 5, "output of the restored process", WAIT, from);
    const c = counts(restored, "count");
    assert.ok(c[c.length - 1]! > c[0]!, `the ruby thread keeps counting: ${restored.join(" / ")}`);
    const after = h.pids("rb")!;
    assert.deepEqual(procTimers(after.app), timersBefore, "ruby's timers");
    assert.deepEqual(names(after.app), namesBefore, "ruby's process and thread names");
    await waitFor("the restored ruby to run on", () => logLines(h, "rb", from).length >= 7, WAIT);
    await stopEndsWithSigterm(h, "rb");
    assert.doesNotMatch(h.log("rb"), /ASYNC BUG/);
  });
});
