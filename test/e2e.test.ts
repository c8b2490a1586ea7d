// End-to-end tests of issue 2: checkpoint while running, kill -9 the app's host
// PID, restore, and check that the program continues from the checkpointed state.
// They need the C core (native/build) and build the fixtures (make -C test/fixtures);
// without the C core every test here FAILS with a message saying so.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, test, type TestContext } from "node:test";
import { isAlive, makeHome, waitFor, type TestHome } from "./helpers/home.js";
import { fixture, fixtureScript, requireNative } from "./helpers/native.js";
import { baseline, checkpointKillRestore, killApp, logLines, logSize, runApp, status, waitExited, waitLines } from "./helpers/scenario.js";

const TIMEOUT = 1_800_000; // per describe block: generous, every wait inside is on a condition

/** A fresh home for one test, cleaned up (everything killed by PID) when it ends. */
function setup(t: TestContext): TestHome {
  requireNative();
  const h = makeHome();
  t.after(() => h.cleanup());
  return h;
}

const num = (re: RegExp) => (l: string): number | null => {
  const m = re.exec(l);
  return m ? Number(m[1]) : null;
};

function lastNum(ls: string[], re: RegExp): number {
  const f = num(re);
  for (let i = ls.length - 1; i >= 0; i--) {
    const v = f(ls[i]!);
    if (v !== null) return v;
  }
  return 0;
}

function seq(n: number, f: (i: number) => string[]): string[] {
  return Array.from({ length: n }, (_, i) => f(i + 1)).flat();
}

const computed = (ls: string[]) => Promise.resolve({ lines: ls, code: 0 });

describe("end to end: C fixtures", { timeout: TIMEOUT }, () => {
  test("counter: continues from the checkpoint; same checkpoint restores twice; --replace", async (t) => {
    const h = setup(t);
    // 300 ticks of 50 ms: a restored copy runs for 15 s, long enough to still be running when the
    // second restore is refused on a busy machine (with 100 it had ended first, under load 12)
    const expected = [...seq(300, (i) => [`count ${i}`]), "done 300"];
    const r = await checkpointKillRestore(h, {
      name: "counter",
      argv: [fixture("counter"), "300", "50"],
      ready: (ls) => ls.length >= 10,
      done: /^done 300$/,
      baseline: computed(expected),
    });
    assert.ok(r.resumeAt! >= 10);
    // Restore the same checkpoint again, while the app is not running.
    const again = await h.cli(["restore", "counter", "--checkpoint", r.id, "--json"]);
    assert.equal(again.code, 0, again.stderr);
    const from = logSize(h, "counter");
    await waitLines(h, "counter", (ls) => ls.length >= 2, "second restored copy runs", 300_000, from);
    // While running: refused without --replace, replaced with it.
    const refused = await h.cli(["restore", "counter"]);
    assert.equal(refused.code, 1);
    assert.match(refused.stderr, /^tardigrade: cannot restore counter: the app is still running \(host pid \d+\)\. Stop it first .* or pass --replace/);
    const old = h.pids("counter")!;
    const rep = await h.cli(["restore", "counter", "--replace", "--json"]);
    assert.equal(rep.code, 0, rep.stderr);
    assert.ok(!isAlive(old.app) && !isAlive(old.init), "the replaced copy is gone");
    assert.equal((JSON.parse(rep.stdout) as { checkpoint: string }).checkpoint, r.id);
    await waitLines(h, "counter", (ls) => ls[ls.length - 1] === "done 300", "replaced copy finishes", 300_000);
    // The replacing copy's output starts at the last occurrence of the checkpointed line.
    const all = logLines(h, "counter");
    const start = all.lastIndexOf(expected[r.resumeAt!]!);
    assert.deepEqual(all.slice(start), expected.slice(r.resumeAt!), "the replacing copy also resumes at the checkpoint");
    assert.deepEqual((await waitExited(h, "counter")).exit, { exit_code: 0 });
  });

  test("two apps side by side", async (t) => {
    const h = setup(t);
    await runApp(h, "a", [fixture("counter"), "400", "50"]);
    await runApp(h, "b", [fixture("counter"), "400", "50"]);
    const [sa, sb] = [await status(h, "a"), await status(h, "b")];
    assert.equal(sa.state, "running");
    assert.equal(sb.state, "running");
    assert.notEqual(sa.appHostPid, sb.appHostPid);
    await waitLines(h, "a", (ls) => ls.length >= 3, "a runs");
    await waitLines(h, "b", (ls) => ls.length >= 3, "b runs");
    for (const n of ["a", "b"]) {
      const c = await h.cli(["checkpoint", n]);
      assert.equal(c.code, 0, c.stderr);
      assert.match(c.stdout, new RegExp(`^${n}@1 \\(full\\): \\d+ pages, .* downtime`));
    }
    const ls = JSON.parse((await h.cli(["ls", "--json"])).stdout) as { id: string }[];
    assert.deepEqual(ls.map((m) => m.id), ["a@1", "b@1"]);
    const stop = await h.cli(["stop", "a"]);
    assert.equal(stop.code, 0, stop.stderr);
    assert.equal((await status(h, "a")).state, "exited");
    assert.equal((await status(h, "b")).state, "running");
  });

  test("workers: 8 threads with mutex/condvar keep their invariant and checksum", async (t) => {
    const h = setup(t);
    const expect = execFileSync(fixture("workers"), ["--expect", "4000", "4"], { encoding: "utf8" }).trim();
    const re = /^check (\d+) produced (\d+) completed (\d+) ok$/;
    const r = await checkpointKillRestore(h, {
      name: "workers",
      argv: [fixture("workers"), "4000", "4"],
      ready: (ls) => ls.length >= 15,
      done: /^done 4000$/,
    });
    const k0 = lastNum(logLines(h, "workers").slice(0, r.before), re);
    const k1 = lastNum(logLines(h, "workers").slice(0, r.after), re);
    const first = num(re)(r.restored[0]!);
    assert.ok(first !== null && first >= k0 + 1 && first <= k1 + 1, `first check after restore ${first}, checkpoint between ${k0} and ${k1}`);
    const checks = r.restored.filter((l) => re.test(l)).map(num(re));
    checks.forEach((k, i) => assert.equal(k, first! + i, "check lines are consecutive"));
    assert.deepEqual(r.restored.slice(-2), [expect, "done 4000"]);
  });

  test("piperead: a thread blocked in read() on a pipe fed by another thread", async (t) => {
    const h = setup(t);
    await checkpointKillRestore(h, {
      name: "piperead",
      argv: [fixture("piperead"), "100", "50"],
      ready: (ls) => ls.length >= 12,
      done: /^done 100$/,
      baseline: computed([...seq(100, (i) => [`got ${i}`]), "eof", "done 100"]),
    });
  });

  test("sleeper: a thread in the middle of nanosleep", async (t) => {
    const h = setup(t);
    const r = await checkpointKillRestore(h, {
      name: "sleeper",
      argv: [fixture("sleeper"), "5", "2000"],
      ready: (ls) => ls.length >= 3 && ls[ls.length - 1]!.endsWith("begin"),
      moreLines: 1,
      done: /^done 5$/,
      baseline: computed([...seq(5, (i) => [`sleep ${i} begin`, `sleep ${i} end`]), "done 5"]),
      timeoutMs: 300_000,
    });
    assert.match(r.restored[0]!, /^sleep \d+ end$/, "resumes inside the sleep");
  });

  test("sigusr: handlers, masks and pending signals survive", async (t) => {
    const h = setup(t);
    await runApp(h, "sig", [fixture("sigusr"), "200", "50", "150"]);
    await waitLines(h, "sig", (ls) => ls.length >= 5, "ticks");
    const pid0 = h.pids("sig")!.app;
    process.kill(pid0, "SIGUSR1");
    await waitLines(h, "sig", (ls) => ls.includes("sigusr1 1"), "first SIGUSR1 handled");
    await waitLines(h, "sig", (ls) => lastNum(ls, /^tick (\d+)$/) >= 20, "tick 20");
    const kb = lastNum(logLines(h, "sig"), /^tick (\d+)$/);
    const cp = await h.cli(["checkpoint", "sig"]);
    const ka = lastNum(logLines(h, "sig"), /^tick (\d+)$/);
    assert.equal(cp.code, 0, cp.stderr);
    await waitLines(h, "sig", (ls) => lastNum(ls, /^tick (\d+)$/) >= ka + 3, "ticks after checkpoint");
    await killApp(h, "sig");
    const from = logSize(h, "sig");
    const rr = await h.cli(["restore", "sig"]);
    assert.equal(rr.code, 0, rr.stderr);
    const ls1 = await waitLines(h, "sig", (ls) => ls.some((l) => /^tick \d+$/.test(l)), "restored ticks", 300_000, from);
    const first = Number(/^tick (\d+)$/.exec(ls1.find((l) => l.startsWith("tick"))!)![1]);
    assert.ok(first >= kb + 1 && first <= ka + 1, `first tick ${first}, checkpoint between ${kb} and ${ka}`);
    process.kill(h.pids("sig")!.app, "SIGUSR1");
    await waitLines(h, "sig", (ls) => ls.includes("sigusr1 2"), "SIGUSR1 handler still installed after restore", 300_000, from);
    const all = await waitLines(h, "sig", (ls) => ls.some((l) => l.startsWith("done")), "done", 300_000, from);
    assert.equal(all[all.length - 1], "done 200 sigusr1=2");
    const u = all.indexOf("unblock");
    const ud = all.indexOf("unblocked");
    assert.ok(u >= 0 && ud === u + 3, `unblock block: ${JSON.stringify(all.slice(u, u + 4))}`);
    assert.deepEqual(all.slice(u + 1, ud).sort(), ["sigusr2 1", "sigwinch 1"]);
    assert.deepEqual((await waitExited(h, "sig")).exit, { exit_code: 0 });
  });

  test("fpmix: AVX/SSE state (and MXCSR) restored bit for bit", async (t) => {
    const h = setup(t);
    const argv = [fixture("fpmix"), "300"];
    const base = baseline(argv);
    await checkpointKillRestore(h, { name: "fpmix", argv, ready: (ls) => ls.length >= 40, done: /^done 300$/, baseline: base, timeoutMs: 300_000 });
  });

  test("bigmem: 512 MiB of random data, checksum verified after restore", async (t) => {
    const h = setup(t);
    const re = /^ok ([0-9a-f]{16}) (\d+)$/;
    await runApp(h, "big", [fixture("bigmem"), "512", "300"]);
    const ready = await waitLines(h, "big", (ls) => ls.filter((l) => re.test(l)).length >= 2, "ready + 2 rounds", 300_000);
    const sum = /^ready ([0-9a-f]{16})$/.exec(ready[0]!)![1];
    assert.equal(sum, "e26ae13380833bc3");
    const iter = /^ok [0-9a-f]{16} (\d+)$/;
    const ib = lastNum(logLines(h, "big"), iter);
    const cp = await h.cli(["checkpoint", "big", "--json"]);
    const ia = lastNum(logLines(h, "big"), iter);
    assert.equal(cp.code, 0, cp.stderr);
    const m = JSON.parse(cp.stdout) as { pages: number; bytes: number; downtimeNs: number };
    assert.ok(m.pages >= 131072, `at least 512 MiB of pages stored (${m.pages})`);
    t.diagnostic(`512 MiB checkpoint: ${m.bytes} bytes, downtime ${(m.downtimeNs / 1e6).toFixed(1)} ms`);
    await killApp(h, "big");
    const from = logSize(h, "big");
    const rr = await h.cli(["restore", "big", "--json"]);
    assert.equal(rr.code, 0, rr.stderr);
    t.diagnostic(`restore to running: ${((JSON.parse(rr.stdout) as { restoreNs: number }).restoreNs / 1e6).toFixed(0)} ms`);
    const after = await waitLines(h, "big", (ls) => ls.filter((l) => re.test(l)).length >= 2, "rounds after restore", 300_000, from);
    const oks = after.filter((l) => re.test(l)).map((l) => re.exec(l)!);
    assert.ok(oks.every((o) => o[1] === sum), `checksum after restore: ${JSON.stringify(after)}`);
    const i0 = Number(oks[0]![2]);
    assert.ok(i0 >= ib + 1 && i0 <= ia + 1, `iteration ${i0} continues the checkpoint (${ib}..${ia})`);
  });

  test("mmapfile: written MAP_PRIVATE file pages and mprotect'ed regions", async (t) => {
    const h = setup(t);
    const dir = mkdtempSync(join(tmpdir(), "tg-mm-"));
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    const file = join(dir, "pattern.bin");
    execFileSync(fixture("mmapfile"), ["--create", file]);
    const sha = (): string => createHash("sha256").update(readFileSync(file)).digest("hex");
    const before = sha();
    const argv = [fixture("mmapfile"), file, "100", "50"];
    const r = await checkpointKillRestore(h, { name: "mmap", argv, ready: (ls) => ls.length >= 15, done: /^done 100$/, baseline: baseline(argv) });
    assert.equal(logLines(h, "mmap").filter((l) => l === "protect ro").length >= 1, true);
    assert.equal(r.restored.filter((l) => l === "protect ro").length, r.resumeAt! < 50 ? 1 : 0);
    assert.equal(sha(), before, "the mapped file is unchanged");
  });

  test("fileio: a file being read and another being written at known offsets", async (t) => {
    const h = setup(t);
    const dir = mkdtempSync(join(tmpdir(), "tg-io-"));
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    const [inp, out, ref] = ["in", "out", "ref"].map((f) => join(dir, f)) as [string, string, string];
    execFileSync(fixture("fileio"), ["--make-input", inp, "120"]);
    execFileSync(fixture("fileio"), [inp, ref, "64", "0"]);
    const expected = [...Array.from({ length: 120 }, (_, i) => [`read ${i * 64}`, `wrote ${i * 64}`]).flat(), "done 120"];
    // the output file is written after the checkpoint and not rolled back: a plain restore
    // refuses (test/files.test.ts); fileio rewrites the same records at the restored offsets
    await checkpointKillRestore(h, { name: "fileio", argv: [fixture("fileio"), inp, out, "64", "50"], ready: (ls) => ls.length >= 30, done: /^done 120$/, baseline: computed(expected), restoreArgs: ["--allow-file-changes"] });
    assert.ok(readFileSync(out).equals(readFileSync(ref)), "output equals an uninterrupted run's");
  });
});

describe("end to end: Node API and periodic checkpoints", { timeout: TIMEOUT }, () => {
  test("run/checkpoint/restore/ls through the Node API", async (t) => {
    const h = setup(t);
    const api = await import("../src/index.js");
    const o = { home: h.home };
    const r = await api.run([fixture("counter"), "400", "50"], { ...o, name: "apic" });
    assert.equal(r.name, "apic");
    assert.ok(r.appHostPid > 0 && r.pid > 0);
    await waitLines(h, "apic", (ls) => ls.length >= 5, "api app runs");
    const phases: string[] = [];
    const m = await api.checkpoint("apic", { ...o, onProgress: (e) => phases.push(e.phase) });
    assert.deepEqual([...new Set(phases)], ["capture", "write", "verify"], "checkpoint progress");
    assert.equal(m.id, "apic@1");
    assert.equal(m.kind, "full");
    assert.ok(m.pages > 0 && m.bytes > 0 && m.threads === 1 && m.downtimeNs > 0 && m.totalNs >= m.downtimeNs);
    assert.deepEqual((await api.ls("apic", o)).map((x) => x.id), ["apic@1"]);
    const ins = await api.inspect("apic@1", o);
    assert.ok(ins.image.threads.some((th) => th.tid === r.pid && /^0x[0-9a-f]+$/.test(th.rip)));
    assert.ok(ins.image.fds.some((f) => f.fd === 1 && f.path.endsWith("/apps/apic/log")), JSON.stringify(ins.image.fds));
    phases.length = 0;
    const rr = await api.restore("apic", { ...o, replace: true, onProgress: (e) => phases.push(e.phase) });
    assert.deepEqual([...new Set(phases)], ["verify", "kill", "start"], "restore progress");
    assert.equal(rr.checkpoint, "apic@1");
    assert.ok(rr.restoreNs > 0);
    assert.equal((await api.status("apic", o)).state, "running");
    await assert.rejects(api.restore("apic", o), (e: unknown) => e instanceof api.TgError && e.code === "conflict");
    assert.equal((await api.stop("apic", o)).state, "exited");
  });

  test("run --every: periodic checkpoints", async (t) => {
    const h = setup(t);
    const r = await h.cli(["run", "--name", "tick", "--every", "500ms", "--", fixture("counter"), "400", "50"]);
    assert.equal(r.code, 0, r.stderr);
    await waitFor("three periodic checkpoints", async () => {
      const ls = JSON.parse((await h.cli(["ls", "tick", "--json"])).stdout) as unknown[];
      return ls.length >= 3;
    }, 300_000, 250);
    // Periodic checkpoints go on after a restore.
    await killApp(h, "tick");
    const rr = await h.cli(["restore", "tick"]);
    assert.equal(rr.code, 0, rr.stderr);
    const n = (JSON.parse((await h.cli(["ls", "tick", "--json"])).stdout) as unknown[]).length;
    await waitFor("periodic checkpoints after the restore", async () => {
      const ls = JSON.parse((await h.cli(["ls", "tick", "--json"])).stdout) as unknown[];
      return ls.length >= n + 2;
    }, 300_000, 250);
  });
});

describe("end to end: real programs", { timeout: TIMEOUT }, () => {
  test("python3 running a stateful script", async (t) => {
    const h = setup(t);
    // The real interpreter, not a wrapper script that execs it (pyenv shims): see README "Limits".
    const python = execFileSync("python3", ["-c", "import sys; print(sys.executable)"], { encoding: "utf8" }).trim();
    const argv = [python, fixtureScript("stateful.py"), "120", "50"];
    const r = await checkpointKillRestore(h, { name: "py", argv, ready: (ls) => ls.length >= 15, done: /^done 120 /, baseline: baseline(argv), gateStep: 60 });
    assert.match(r.restored[r.restored.length - 1]!, /^done 120 hash [0-9a-f]{16}$/);
  });

  test("node running setInterval over a large array (multi-threaded V8, JIT)", async (t) => {
    const h = setup(t);
    const argv = [process.execPath, fixtureScript("ticker.mjs"), "120", "50", "20"];
    await checkpointKillRestore(h, { name: "node", argv, ready: (ls) => ls.length >= 15, done: /^done 120 /, baseline: baseline(argv), timeoutMs: 300_000, gateStep: 60 });
  });

  test("bash running a loop", async (t) => {
    const h = setup(t);
    const argv = ["bash", fixtureScript("loop.sh"), "2000000", "20000"];
    await checkpointKillRestore(h, { name: "bash", argv, ready: (ls) => ls.length >= 15, done: /^done 2000000 /, baseline: baseline(argv), timeoutMs: 300_000 });
  });
});

describe("end to end: refusals and crash safety", { timeout: TIMEOUT }, () => {
  test("run of a nonexistent command fails clearly and leaves nothing running", async (t) => {
    const h = setup(t);
    const r = await h.cli(["run", "--name", "nx", "--", "/nonexistent/command", "arg"]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /^tardigrade: cannot run nx: cannot execute "\/nonexistent\/command": No such file or directory\. Check the command/);
    assert.ok(!existsSync(join(h.home, "apps", "nx")), "no app state left");
    const st = await h.cli(["status", "nx"]);
    assert.equal(st.code, 1);
    assert.match(st.stderr, /no app named nx/);
    const rel = await h.cli(["run", "--", "./no-such-program"]);
    assert.equal(rel.code, 1);
    assert.match(rel.stderr, /cannot execute "\.\/no-such-program"/);
  });

  test("restore --replace from damaged store data refuses before touching the running app", async (t) => {
    const h = setup(t);
    await runApp(h, "keep", [fixture("counter"), "1000", "50"]);
    await waitLines(h, "keep", (ls) => ls.length >= 2, "keep runs");
    const packDir = join(h.home, "store", "packs");
    const lastPack = (): string => join(packDir, readdirSync(packDir).filter((f) => f.endsWith(".dat")).sort().pop()!);
    const c = await h.cli(["checkpoint", "keep"]);
    assert.equal(c.code, 0, c.stderr);
    // every block of the pack written for this checkpoint gets a flipped byte
    const file = lastPack();
    const buf = readFileSync(file);
    for (let off = 64; off < buf.length; off += 997) buf[off]! ^= 0xff;
    writeFileSync(file, buf);
    const before = h.pids("keep")!;
    const r = await h.cli(["restore", "keep", "--replace"]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /^tardigrade: .*pack-[0-9]+\.dat.*offset/);
    assert.ok(isAlive(before.app), "the running app was not killed");
    assert.deepEqual(h.pids("keep"), before);
    assert.equal((await status(h, "keep")).state, "running");
  });

  test("checkpoint of an app that has exited", async (t) => {
    const h = setup(t);
    await runApp(h, "short", [fixture("counter"), "3", "10"]);
    await waitExited(h, "short");
    const r = await h.cli(["checkpoint", "short"]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /^tardigrade: cannot checkpoint short: the app has exited \(exit status 0\)\. Restore its last checkpoint/);
    assert.deepEqual(JSON.parse((await h.cli(["ls", "short", "--json"])).stdout), []);
  });

  test("an app holding a netlink socket: checkpoint refuses naming the fd; earlier checkpoints intact; app keeps running", async (t) => {
    const h = setup(t);
    await runApp(h, "calc", [fixture("counter"), "1000", "50"]);
    await waitLines(h, "calc", (ls) => ls.length >= 2, "calc runs");
    const first = await h.cli(["checkpoint", "calc", "--json"]);
    assert.equal(first.code, 0, first.stderr);
    await runApp(h, "tcp", ["python3", fixtureScript("othersock.py"), "netlink", "50"]); // TCP and UDP are supported: test/sockets-*.test.ts
    const ls = await waitLines(h, "tcp", (l) => l.some((x) => x.startsWith("sockfd")) && l.length >= 4, "tcpsock ready");
    const fd = /^sockfd (\d+)$/.exec(ls.find((l) => l.startsWith("sockfd"))!)![1];
    const n0 = lastNum(logLines(h, "tcp"), /^count (\d+)$/);
    const r = await h.cli(["checkpoint", "tcp"]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, new RegExp(`^tardigrade: checkpoint of tcp failed: .*fd ${fd}\\b.*netlink socket, protocol 0 \\(route\\)`, "i"));
    assert.match(r.stderr, /Nothing was committed/);
    await waitLines(h, "tcp", (l) => lastNum(l, /^count (\d+)$/) >= n0 + 5, "tcp app keeps counting");
    const counts = logLines(h, "tcp").filter((l) => l.startsWith("count")).map((l) => Number(l.split(" ")[1]));
    counts.forEach((c, i) => assert.equal(c, i + 1, "no gap, no restart"));
    assert.equal((await status(h, "tcp")).state, "running");
    const all = JSON.parse((await h.cli(["ls", "--json"])).stdout) as { id: string }[];
    assert.deepEqual(all.map((m) => m.id), ["calc@1"]);
    const ins = await h.cli(["inspect", "calc@1", "--json"]);
    assert.equal(ins.code, 0, `earlier checkpoint still valid: ${ins.stderr}`);
    assert.deepEqual(readdirSync(join(h.home, "store", "staging")), []);
  });

  test("kill -9 of the daemon in the middle of a checkpoint", async (t) => {
    const h = setup(t);
    const re = /^ok ([0-9a-f]{16}) (\d+)$/;
    await runApp(h, "big", [fixture("bigmem"), "256", "200"]);
    await waitLines(h, "big", (ls) => ls.some((l) => re.test(l)), "bigmem ready", 300_000);
    const c1 = await h.cli(["checkpoint", "big", "--json"]);
    assert.equal(c1.code, 0, c1.stderr);
    const daemon = h.daemonPid()!;
    const staging = join(h.home, "store", "staging");
    const { done } = h.cliSpawn(["checkpoint", "big"]);
    // Kill the daemon as soon as the agent has started writing the image.
    await waitFor("an image in staging", () => readdirSync(staging).some((d) => readdirSync(join(staging, d)).length > 0), 300_000, 2);
    process.kill(daemon, "SIGKILL");
    const r = await done;
    assert.equal(r.code, 1, `interrupted checkpoint: ${r.stdout}`);
    assert.match(r.stderr, /^tardigrade: lost contact with the tardigrade daemon: .*Apps keep running/);
    // The app survives and keeps running.
    const n = logLines(h, "big").length;
    await waitLines(h, "big", (ls) => ls.length >= n + 2, "app keeps running after the daemon died", 300_000);
    assert.equal((await status(h, "big")).state, "running"); // (starts a new daemon)
    assert.notEqual(h.daemonPid(), daemon);
    // Only complete checkpoints; the half-written one is gone.
    const ls = JSON.parse((await h.cli(["ls", "big", "--json"])).stdout) as { id: string }[];
    assert.deepEqual(ls.map((m) => m.id), ["big@1"]);
    // the agent notices its caller went away and the new daemon discards the staged image
    await waitFor("staging emptied", () => readdirSync(staging).length === 0, 300_000, 50);
    // The next checkpoint succeeds.
    const c2 = await h.cli(["checkpoint", "big", "--json"]);
    assert.equal(c2.code, 0, c2.stderr);
    assert.equal((JSON.parse(c2.stdout) as { id: string }).id, "big@2");
    assert.ok(!logLines(h, "big").some((l) => l.startsWith("CORRUPT")));
  });
});
