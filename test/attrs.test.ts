// Process attributes a restore gives back (ATTRS record): child subreaper, dumpable, no_new_privs,
// timer slack, personality, nice, scheduling policy, CPU affinity, a child's parent-death signal; a
// second thread's own nice, policy, timer slack and affinity (THREAD_ATTRS records); each thread's
// alternate signal stack (given back by the kernel's sigreturn from the park frame); and a process that
// installed a seccomp filter refused by name (a restore would run it without its sandbox). A C
// fixture (test/fixtures/attrs.c) prints what the kernel says of each; every process started is
// killed by PID (helpers/tree.ts, helpers/home.ts).
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { describe, test } from "node:test";
import { fixture } from "./helpers/native.js";
import { logLines, logSize, runApp, status, waitExited, waitLines } from "./helpers/scenario.js";
import { checkpointOk, crashAndRestore, ids, others, setup } from "./helpers/tree.js";

const last = (ls: string[], who: string): string | undefined => ls.filter((l) => l.startsWith(`attrs ${who} `)).pop();

describe("process attributes", { timeout: 600_000 }, () => {
  test("subreaper, dumpable, no_new_privs, timer slack, personality, affinity, a child's parent-death signal and a thread's own come back", async (t) => {
    const { h, dir, release } = setup(t);
    await runApp(h, "attrs", [fixture("attrs"), dir]);
    const all = (l: string[]): boolean => !!last(l, "main") && !!last(l, "child") && !!last(l, "thread");
    const ls = await waitLines(h, "attrs", all, "both processes and the thread print", 120_000);
    const main = last(ls, "main")!;
    const child = last(ls, "child")!;
    const thread = last(ls, "thread")!;
    assert.match(thread, /^attrs thread pdeath 0 sub 1 dump 0 nnp 1 pers 0x40000 slack 654321 nice 11 sched 0 cpus 0 alt thread$/);
    assert.match(main, /^attrs main pdeath 0 sub 1 dump 0 nnp 1 pers 0x40000 slack 123456 nice 7 sched 3 cpus \d+ alt main$/);
    assert.match(child, /^attrs child pdeath 12 sub 0 dump 0 nnp 1 pers 0x40000 slack 123456 nice 7 sched 3 cpus \d+ alt main$/);
    const id = await checkpointOk(h, "attrs");
    const seen = JSON.parse((await h.cli(["inspect", id, "--json"])).stdout) as unknown;
    assert.match(JSON.stringify(seen), /"subreaper":true/, "inspect --json carries the attributes");
    assert.match(JSON.stringify(seen), /"attrs":\{"nice":11,"schedPolicy":0,"schedPriority":0,"schedResetOnFork":false,"timerslackNs":654321,"cpus":\[0\]\}/, "inspect --json carries the thread's own");
    const from = logSize(h, "attrs");
    await crashAndRestore(h, "attrs");
    const after = await waitLines(h, "attrs", all, "both processes and the thread print after the restore", 120_000, from);
    assert.equal(last(after, "main"), main, "the main process's attributes as at the checkpoint");
    assert.equal(last(after, "child"), child, "the child's attributes as at the checkpoint");
    assert.equal(last(after, "thread"), thread, "the second thread's own attributes as at the checkpoint");
    // and from outside: the kernel's view of the restored main process
    const st = readFileSync(`/proc/${h.pids("attrs")!.app}/status`, "utf8");
    assert.match(st, /^NoNewPrivs:\s+1$/m);
    assert.equal(others(h, "attrs").length, 1, "the child is back");
    assert.equal((await status(h, "attrs")).state, "running");
    release();
    await waitExited(h, "attrs", 120_000);
  });

  test("a process that installed a seccomp filter: the checkpoint refuses naming it, nothing committed, the app runs on", async (t) => {
    const { h, dir } = setup(t);
    await runApp(h, "sc", [fixture("attrs"), dir, "seccomp"]);
    await waitLines(h, "sc", (l) => !!last(l, "main") && !!last(l, "child"), "both processes print", 120_000);
    const r = await h.cli(["checkpoint", "sc"]);
    assert.equal(r.code, 1, r.stdout);
    assert.match(r.stderr, /installed a seccomp filter \(1 filter\(s\), 0 inherited from tardigrade\): seccomp filters are not restored yet/);
    assert.match(r.stderr, /Nothing was committed/);
    assert.deepEqual(await ids(h, "sc"), []);
    const n = logLines(h, "sc").length;
    await waitLines(h, "sc", (l) => l.length > n + 4, "prints on after the refusal", 60_000);
    assert.equal((await status(h, "sc")).state, "running");
  });
});
