// Issue 10, items 1 and 8: process trees are refused by name (a bash child, a zombie, a pipeline,
// a double-forked daemon), nothing is committed and the app keeps running; an app that exits
// during a checkpoint, a daemonizing app, a failed restore and a static binary each get a
// message that says what happened. Real programs (bash, python3, sh, yes/head/md5sum) and C
// fixtures; every wait is on a condition.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { appendFileSync, copyFileSync, existsSync, readFileSync, readdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, test } from "node:test";
import { checkpoint as agentCheckpoint } from "../src/daemon/agent.js";
import { isAlive, waitFor } from "./helpers/home.js";
import { fixture, fixtureScript } from "./helpers/native.js";
import { checkpointOk, crashAndRestore, ids, others, setup } from "./helpers/tree.js";
import { logLines, runApp, status, waitExited, waitLines } from "./helpers/scenario.js";

const TIMEOUT = 1_800_000; // per describe block (all its tests): generous for a busy machine; every wait inside is on a condition

function lastTick(ls: string[]): number {
  for (let i = ls.length - 1; i >= 0; i--) {
    const m = /^tick (\d+)$/.exec(ls[i]!);
    if (m) return Number(m[1]);
  }
  return 0;
}

describe("issue 12: process trees are captured and restored whole", { timeout: TIMEOUT }, () => {
  test("bash with a child `sh -c '...; exit 3'` alive: checkpointed, the tree killed and restored, bash then sees the child's exit status 3", async (t) => {
    const { h, dir, release } = setup(t);
    await runApp(h, "b", ["bash", fixtureScript("children.sh"), "child", dir]);
    const ls = await waitLines(h, "b", (l) => l.some((x) => /^child \d+$/.test(x)), "child started");
    const child = Number(/^child (\d+)$/.exec(ls.find((x) => /^child \d+$/.test(x))!)![1]);
    const id = await checkpointOk(h, "b");
    // inspect lists the tree: bash (pid 2) and its child, each with its own checkpoint
    const ins = await h.cli(["inspect", id]);
    assert.equal(ins.code, 0, ins.stderr);
    assert.match(ins.stdout, /process tree of \d+ processes, tree downtime /);
    assert.match(ins.stdout, new RegExp(`\\n\\s*2\\s+1\\s+\\d+\\s+\\d+\\s+bash\\s+\\d+\\s+${id}\\s`));
    assert.match(ins.stdout, new RegExp(`\\n\\s*${child}\\s+2\\s+\\d+\\s+\\d+\\s+sh\\s+\\d+\\s+b~${child}@\\d+\\s`));
    await crashAndRestore(h, "b");
    // the child is back with its pid, still a child of bash
    const back = await waitFor("the child restored", () => others(h, "b").find((p) => p.pid === child && p.command.startsWith("sh -c")));
    assert.equal(back.ppid, 2);
    release();
    await waitLines(h, "b", (l) => l.includes("child rc=3") && lastTick(l) >= 3, "the child's real exit status, seen after the restore, then ticks");
  });

  test("the agent's own check, once every thread is parked (a single-process request while a child exists): refused, no image written", async (t) => {
    const { h, dir, release } = setup(t);
    await runApp(h, "ag", ["bash", fixtureScript("children.sh"), "child", dir]);
    const ls = await waitLines(h, "ag", (l) => l.some((x) => /^child \d+$/.test(x)), "child started");
    const child = Number(/^child (\d+)$/.exec(ls.find((x) => /^child \d+$/.test(x))!)![1]);
    // bash prints the pid at fork: the child is named by what it runs, so wait for its exec of sh
    await waitFor("the child running sh", () => others(h, "ag").some((p) => p.pid === child && p.command.startsWith("sh -c")));
    // straight to the agent's socket, without `hold`: the agent alone cannot capture a tree
    const sock = join(h.home, "apps", "ag", "agent.sock");
    const image = join(dir, "direct.img");
    const ev = await agentCheckpoint(sock, image, () => {});
    const last = ev[ev.length - 1]!;
    assert.equal(last.ok, false, JSON.stringify(ev));
    assert.match(last.ok === false ? last.error : "", new RegExp(`^the app has \\d+ other process(es)?: .*pid ${child} \\(sh -c until [^)]*exit 3\\)(, pid \\d+ \\([^)]*\\))*; process trees are not supported yet$`));
    assert.ok(!ev.some((e) => e.event === "resumed"), "no snapshot was taken");
    assert.ok(!existsSync(image), "no image written");
    assert.equal((await status(h, "ag")).state, "running");
    release();
    await waitLines(h, "ag", (l) => l.includes("child rc=3") && lastTick(l) >= 3, "child over, ticking");
  });

  test("a zombie child not yet reaped (python3): checkpointed and restored as a zombie; python then reaps it with its status", async (t) => {
    const { h, dir, release } = setup(t);
    await runApp(h, "z", ["python3", fixtureScript("zombie.py"), dir]);
    const ls = await waitLines(h, "z", (l) => l.some((x) => /^zombie \d+$/.test(x)) && lastTick(l) >= 2, "zombie made");
    const pid = Number(/^zombie (\d+)$/.exec(ls.find((x) => /^zombie \d+$/.test(x))!)![1]);
    await checkpointOk(h, "z");
    await crashAndRestore(h, "z");
    await waitFor("the zombie restored", () => others(h, "z").some((p) => p.pid === pid && p.zombie));
    release();
    await waitLines(h, "z", (l) => l.includes(`reaped ${pid} status 5`), "reaped after the restore, with the status it had");
  });

  test("a pipeline `yes | head -c 1G | md5sum` checkpointed mid-stream, killed and restored: the same sum as an uninterrupted run", async (t) => {
    const { h, dir } = setup(t);
    const expected = execFileSync("bash", ["-c", "yes | head -c 1G | md5sum"], { encoding: "utf8" }).trim();
    await runApp(h, "p", ["bash", fixtureScript("children.sh"), "pipeline", dir]);
    await waitLines(h, "p", (l) => l.includes("pipeline started"), "pipeline started");
    await waitFor("the three pipeline processes", () => {
      const o = others(h, "p");
      return ["yes", "head -c 1G", "md5sum"].every((c) => o.some((p) => p.command === c)) ? o : null;
    });
    await checkpointOk(h, "p");
    await crashAndRestore(h, "p");
    const done = await waitLines(h, "p", (l) => l.includes("pipeline done") && lastTick(l) >= 3, "pipeline over, ticking", 240_000);
    const sums = done.filter((l) => /^[0-9a-f]{32} {2}-$/.test(l));
    assert.deepEqual(sums, [expected], "md5sum printed once, the sum of the whole stream");
  });

  test("a double-forked daemon inside the namespace (re-parented to its init): checkpointed and restored", async (t) => {
    const { h, dir, release } = setup(t);
    await runApp(h, "d", ["bash", fixtureScript("children.sh"), "daemon", dir]);
    const ls = await waitLines(h, "d", (l) => l.some((x) => /^daemon \d+$/.test(x)) && lastTick(l) >= 2, "daemon started");
    const pid = Number(/^daemon (\d+)$/.exec(ls.find((x) => /^daemon \d+$/.test(x))!)![1]);
    const orig = await waitFor("the daemon re-parented and exec'd", () => others(h, "d").find((p) => p.pid === pid && p.command.startsWith("sh -c") && p.ppid === 1));
    await checkpointOk(h, "d");
    await crashAndRestore(h, "d");
    const back = await waitFor("the daemon restored, the init's child again", () => others(h, "d").find((p) => p.pid === pid && p.ppid === 1));
    assert.ok(back.command.startsWith("sh -c"));
    assert.deepEqual([back.sid, back.pgid], [orig.sid, orig.pgid], "its session and process group as before");
    const n = lastTick(logLines(h, "d"));
    await waitLines(h, "d", (l) => lastTick(l) >= n + 3, "bash ticks after the restore");
    release();
    await waitFor("the daemon gone once released", () => !isAlive(back.hostPid));
  });

  test("a classic daemon (python: fork, setsid, fork, the middle one exits): restored in its session, whose leader is gone, and counts on", async (t) => {
    const { h, dir, release } = setup(t);
    await runApp(h, "cd", ["python3", fixtureScript("daemonize.py"), dir]);
    const ls = await waitLines(h, "cd", (l) => l.some((x) => /^daemon \d+$/.test(x)) && lastTick(l) >= 2, "daemon started");
    const pid = Number(/^daemon (\d+)$/.exec(ls.find((x) => /^daemon \d+$/.test(x))!)![1]);
    const orig = await waitFor("the daemon re-parented", () => others(h, "cd").find((p) => p.pid === pid && p.ppid === 1));
    assert.ok(orig.sid !== 1 && orig.sid !== pid && !others(h, "cd").some((p) => p.pid === orig.sid), `its session's leader is gone: ${JSON.stringify(orig)}`);
    await checkpointOk(h, "cd");
    const count = (): number => Number(readFileSync(join(dir, "daemon"), "utf8") || "0");
    await crashAndRestore(h, "cd", ["--allow-file-changes"]);
    const back = await waitFor("the daemon restored", () => others(h, "cd").find((p) => p.pid === pid && p.ppid === 1));
    assert.deepEqual([back.sid, back.pgid], [orig.sid, orig.pgid], "its session and process group as before");
    const n = count();
    await waitFor("the daemon counts on after the restore", () => count() >= n + 3);
    release();
    await waitFor("the daemon gone once released", () => !isAlive(back.hostPid));
  });

  test("python3 multiprocessing.Pool(4) checkpointed mid-run, killed and restored: the known total (its lock is shared memory of the tree)", async (t) => {
    const { h } = setup(t);
    const expected = execFileSync("python3", [fixtureScript("pool.py"), "--expect"], { encoding: "utf8" }).trim();
    await runApp(h, "pool", ["python3", fixtureScript("pool.py")]);
    await waitLines(h, "pool", (l) => l.some((x) => /^progress [1-9]\d*00$/.test(x)), "the pool at work");
    await waitFor("the pool's 4 workers", () => others(h, "pool").filter((p) => !p.zombie).length >= 4);
    await checkpointOk(h, "pool");
    await crashAndRestore(h, "pool");
    const ls = await waitLines(h, "pool", (l) => l.some((x) => x.startsWith("total ")), "the pool finished", 240_000);
    assert.deepEqual(ls.filter((x) => x.startsWith("total ")), [expected]);
    assert.ok(!ls.some((x) => /Traceback|Error/.test(x)), ls.filter((x) => /Traceback|Error/.test(x)).join("\n"));
  });

  test("a statically linked child (no agent can enter it): refused naming its pid and command; nothing committed, the tree runs on", async (t) => {
    const { h, dir } = setup(t);
    writeFileSync(join(dir, "st.c"), "#include <unistd.h>\nint main(void) { for (;;) pause(); }\n");
    execFileSync("cc", ["-static", "-o", join(dir, "static-child"), join(dir, "st.c")]);
    await runApp(h, "st", ["bash", "-c", `${join(dir, "static-child")} & while :; do echo tick; sleep 0.05; done`]);
    const child = await waitFor("the static child", () => others(h, "st").find((p) => p.command.endsWith("static-child")));
    await waitLines(h, "st", (l) => l.includes("tick"), "ticking");
    const before = await ids(h, "st");
    const r = await h.cli(["checkpoint", "st"]);
    assert.equal(r.code, 1, r.stdout);
    assert.match(r.stderr, new RegExp(`pid ${child.pid} \\([^)]*static-child\\): has no tardigrade agent inside \\(a statically linked program, or one started without LD_PRELOAD\\).*Nothing was committed; the app keeps running`));
    assert.deepEqual(await ids(h, "st"), before, "nothing committed");
    const n = logLines(h, "st").length;
    await waitLines(h, "st", (l) => l.length >= n + 5, "the tree runs on");
    process.kill(child.hostPid, "SIGKILL");
  });

  test("make -j2 building a small C project, checkpointed while compilers run, killed and restored: the build completes and the program works", async (t) => {
    const { h, dir } = setup(t);
    const proj = join(dir, "proj");
    execFileSync("mkdir", ["-p", proj]);
    const units = 8;
    for (let i = 0; i < units; i++) {
      // enough work for cc1 at -O2 (a few hundred ms each) that the checkpoint finds compilers running
      const cases = Array.from({ length: 1500 }, (_, k) => `case ${k}: x = x * ${k + 3} + ${i}; break;`).join("\n");
      writeFileSync(join(proj, `u${i}.c`), `unsigned long f${i}(unsigned long x, int k) { for (int j = 0; j < 4; j++) switch ((k + j) % 1500) {\n${cases}\n} return x; }\n`);
    }
    const calls = Array.from({ length: units }, (_, i) => `s += f${i}(${i + 1}, ${i * 7});`).join(" ");
    const decls = Array.from({ length: units }, (_, i) => `unsigned long f${i}(unsigned long, int);`).join("\n");
    writeFileSync(join(proj, "main.c"), `#include <stdio.h>\n${decls}\nint main(void) { unsigned long s = 0; ${calls} printf("sum %lu\\n", s); return 0; }\n`);
    const objs = [...Array.from({ length: units }, (_, i) => `u${i}.o`), "main.o"];
    // -pipe: cc1 and as talk through a pipe (captured) instead of a temporary file that gcc deletes
    // once `as` is done, which would make the restore refuse (files are not rolled back yet)
    writeFileSync(join(proj, "Makefile"), `prog: ${objs.join(" ")}\n\tcc -o $@ $^\n%.o: %.c\n\tcc -pipe -O2 -c -o $@ $<\n`);
    const expected = (() => {
      const ref = join(dir, "ref");
      execFileSync("cp", ["-r", proj, ref]);
      execFileSync("make", ["-s", "-C", ref, "-j2"]);
      return execFileSync(join(ref, "prog"), { encoding: "utf8" }).trim();
    })();
    await runApp(h, "mk", ["bash", "-c", `make -j2 -C ${JSON.stringify(proj)} && echo "build ok" && ${JSON.stringify(join(proj, "prog"))}; while :; do echo tick; sleep 0.05; done`]);
    await waitFor("compilers running", () => others(h, "mk").some((p) => p.comm === "cc1"));
    await checkpointOk(h, "mk");
    // the build goes on until the kill: an object file `as` had open may have been written since;
    // restored `as` writes it again whole (data files are not rolled back yet: issue 14)
    await crashAndRestore(h, "mk", ["--allow-file-changes"]);
    const ls = await waitLines(h, "mk", (l) => l.includes(expected) || l.some((x) => /Error|error:/.test(x)), "the build finished and the program ran", 240_000);
    assert.ok(ls.includes("build ok"), ls.join("\n"));
    assert.ok(ls.includes(expected), ls.join("\n"));
  });

  test("python3 subprocess with pipes to a child that keeps a running sum, checkpointed mid-conversation, killed and restored: the final sum is right", async (t) => {
    const { h } = setup(t);
    const n = 400;
    await runApp(h, "sp", ["python3", fixtureScript("subproc.py"), String(n)]);
    await waitLines(h, "sp", (l) => l.some((x) => /^sum \d{3,}$/.test(x)), "the conversation under way");
    await checkpointOk(h, "sp");
    await crashAndRestore(h, "sp");
    const ls = await waitLines(h, "sp", (l) => l.some((x) => x.startsWith("final ")), "the conversation over", 240_000);
    assert.ok(ls.includes(`final ${(n * (n + 1)) / 2} child rc 0`), ls.slice(-5).join("\n"));
  });

  test("kill -9 of one child while the tree is parked: that cut is abandoned and the checkpoint taken again, with the child as the zombie it now is; the rest runs on", async (t) => {
    const { h } = setup(t, { TG_TEST_DELAY_AT: "tree-parked:4000" });
    const code = "import os, time\nfor _ in range(2):\n    if os.fork() == 0:\n        while True: time.sleep(0.05)\nwhile True:\n    print('tick', flush=True); time.sleep(0.05)\n";
    await runApp(h, "kc", ["python3", "-c", code]);
    await waitLines(h, "kc", (l) => l.includes("tick"), "python ticking (a pyenv shim's helpers gone)");
    const kids = await waitFor("two children", () => {
      const o = others(h, "kc").filter((p) => !p.zombie && p.comm.startsWith("python"));
      return o.length === 2 ? o : null;
    });
    const before = await ids(h, "kc");
    const ck = h.cli(["checkpoint", "kc"]);
    // every process parked (its main thread waits in the agent's park futex): kill one child
    const victim = kids[0]!;
    const wchan = (): string => {
      try {
        return readFileSync(`/proc/${victim.hostPid}/wchan`, "utf8");
      } catch (e) {
        return `(${(e as Error).message}; processes now: ${JSON.stringify(others(h, "kc"))})`;
      }
    };
    await waitFor("the tree parked", () => {
      const w = wchan();
      assert.ok(!w.startsWith("("), `the child ${victim.pid} is gone before the kill: ${w}`);
      return w === "futex_do_wait";
    });
    process.kill(victim.hostPid, "SIGKILL");
    const r = await ck;
    assert.equal(r.code, 0, `the checkpoint is taken again once the tree changed: ${r.stderr}`);
    const after = await ids(h, "kc");
    assert.equal(after.length, before.length + 1, "one checkpoint committed");
    const ins = await h.cli(["inspect", after[after.length - 1]!]);
    assert.match(ins.stdout, new RegExp(`\\n\\s*${victim.pid}\\s+2\\s+.*zombie, wait status 9\\s`), ins.stdout);
    const n = logLines(h, "kc").length;
    await waitLines(h, "kc", (l) => l.length >= n + 5, "the rest of the tree runs on");
    await checkpointOk(h, "kc");
  });
});

describe("item 8: what ends and fails says what happened", { timeout: TIMEOUT }, () => {
  test("an app that fails (bash exits 4) leaving a process: status names what it left, and it is not left running", async (t) => {
    const { h, dir } = setup(t);
    await runApp(h, "dz", ["bash", fixtureScript("children.sh"), "exit", dir]);
    // bash exits once `run` has returned (at once, `run` itself could fail: the app ended before its agent answered)
    await waitLines(h, "dz", (l) => l.some((x) => /^daemon \d+$/.test(x)), "the daemon started");
    writeFileSync(join(dir, "go"), "");
    const st = await waitExited(h, "dz");
    assert.equal(st.exit?.exit_code, 4);
    const ls = logLines(h, "dz");
    const pid = Number(/^daemon (\d+)$/.exec(ls.find((x) => /^daemon \d+$/.test(x)) ?? "")?.[1]);
    assert.ok(pid > 0, `the fixture printed its daemon's pid: ${ls.join(" | ")}`);
    const s = await h.cli(["status", "dz"]);
    assert.match(s.stdout, new RegExp(`exit status 4, leaving 1 process in the background, stopped with it: pid ${pid} \\(.*\\) \\(tardigrade goes on with the processes an app leaves only when the process it follows exits with status 0`));
    // nothing of it survives (the namespace ended with the app)
    await waitFor("no process of the app left", () =>
      readdirSync("/proc")
        .filter((p) => /^\d+$/.test(p))
        .every((p) => {
          try {
            return !readFileSync(`/proc/${p}/cmdline`, "utf8").includes(`${dir}/release`);
          } catch {
            return true;
          }
        }),
    );
  });

  test("a daemonizing app (python: fork, setsid, fork; the parent exits 0): tardigrade follows the daemon, checkpoints it, restores it, and ends with it", async (t) => {
    const { h, dir, release } = setup(t);
    await runApp(h, "dmn", ["python3", fixtureScript("daemonize.py"), dir, "exit"]);
    const ls = await waitLines(h, "dmn", (l) => l.some((x) => /^daemon \d+$/.test(x)), "daemon started");
    const pid = Number(/^daemon (\d+)$/.exec(ls.find((x) => /^daemon \d+$/.test(x))!)![1]);
    const parentHost = h.pids("dmn")!.app;
    writeFileSync(join(dir, "go"), "");
    await waitFor("the init follows the daemon (and says so in the log)", () => h.log("dmn").split("\n").some((x) => x.startsWith("tardigrade: the app's process") && x.includes(`leaving pid ${pid} (`) && x.includes("follows it as the app's main process")));
    await waitFor("the pidfile names the daemon", () => h.pids("dmn")?.app !== parentHost);
    const st = await status(h, "dmn");
    assert.equal(st.state, "running", "the app runs on in its daemon");
    const count = (): number => Number(readFileSync(join(dir, "daemon"), "utf8") || "0");
    const c1 = await h.cli(["checkpoint", "dmn", "--json"]);
    assert.equal(c1.code, 0, c1.stderr);
    const m1 = JSON.parse(c1.stdout) as { id: string; kind: string };
    assert.equal(m1.kind, "full");
    const seen = JSON.parse((await h.cli(["inspect", m1.id, "--json"])).stdout) as { image: { pid: number } };
    assert.equal(seen.image.pid, pid, "the checkpoint is the daemon's");
    const before = count();
    const c2 = JSON.parse((await h.cli(["checkpoint", "dmn", "--json"])).stdout) as { id: string; kind: string; parent?: string };
    assert.equal(c2.kind, "incremental", "then incremental on the daemon's own checkpoint");
    const atCheckpoint = count();
    await waitFor("the daemon counts on", () => count() >= atCheckpoint + 3);
    await crashAndRestore(h, "dmn");
    const back = await waitFor("the daemon restored", () => {
      const p = h.pids("dmn");
      return p && isAlive(p.app) ? p : undefined;
    });
    const n = count();
    assert.ok(n >= before, `the daemon goes on from the checkpoint (${n}; ${before} before it)`);
    await waitFor("the daemon counts on after the restore", () => count() >= n + 3);
    assert.equal((await status(h, "dmn")).state, "running");
    release();
    const end = await waitExited(h, "dmn");
    assert.equal(end.exit?.exit_code, 0, "the app ends with its daemon");
    assert.ok(!isAlive(back.app));
  });

  test("an app that exits during the checkpoint: 'the app exited during the checkpoint', nothing committed", async (t) => {
    const { h } = setup(t);
    await runApp(h, "ex", [fixture("exitpark"), "128"]);
    await waitLines(h, "ex", (l) => l.includes("ready"), "ready", 120_000);
    const r = await h.cli(["checkpoint", "ex"]);
    assert.equal(r.code, 1, r.stdout);
    assert.match(r.stderr, /^tardigrade: checkpoint of ex failed: the app exited during the checkpoint \(exit status 7\)\. Nothing was committed/);
    assert.doesNotMatch(r.stderr, /lost contact/);
    assert.deepEqual(await ids(h, "ex"), []);
    const st = await status(h, "ex");
    assert.equal(st.state, "exited");
    assert.deepEqual(st.exit, { exit_code: 7 }, "the snapshot writer is not taken for a daemonized process");
  });

  test("a failed restore keeps the exited app's exit status", async (t) => {
    const { h, dir } = setup(t);
    const bin = join(dir, "counter");
    copyFileSync(fixture("counter"), bin);
    await runApp(h, "rf", [bin, "1000000", "50"]);
    await waitLines(h, "rf", (l) => l.length >= 2, "counting");
    const c = await h.cli(["checkpoint", "rf"]);
    assert.equal(c.code, 0, c.stderr);
    const stop = await h.cli(["stop", "rf"]);
    assert.equal(stop.code, 0, stop.stderr);
    const st0 = await waitExited(h, "rf");
    assert.equal(st0.exit?.signal, 15);
    appendFileSync(bin, "\n"); // the mapped program changed: the restore must fail
    const r = await h.cli(["restore", "rf"]);
    assert.equal(r.code, 1, r.stdout);
    assert.match(r.stderr, /^tardigrade: cannot restore rf from rf@1: .*counter changed since the checkpoint/);
    const st = await status(h, "rf");
    assert.equal(st.state, "exited");
    assert.deepEqual(st.exit, st0.exit, "the app's real exit status, not the restore's");
    const s = await h.cli(["status", "rf"]);
    assert.match(s.stdout, /killed by signal 15 \(SIGTERM\)/);
  });

  test("a statically linked program: the message does not say wrapper scripts fail", async (t) => {
    const { h, dir } = setup(t);
    writeFileSync(join(dir, "st.c"), "#include <stdio.h>\nint main(void) { puts(\"static\"); return 0; }\n");
    execFileSync("cc", ["-static", "-o", join(dir, "st"), join(dir, "st.c")]);
    const r = await h.cli(["run", "--name", "st", "--", join(dir, "st")]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /statically linked programs are not supported yet \(wrapper scripts that exec the real program, e\.g\. pyenv shims, do work/);
    assert.doesNotMatch(r.stderr, /wrapper scripts [^(]*are not supported/);
  });
});
