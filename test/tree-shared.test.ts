// Issue 12, item 4: resources two processes of a tree share, restored shared, with their contents:
// an open file description shared through fork (one offset), socket pairs (stream, datagram,
// seqpacket) split between parent and child with data queued, an eventfd, shared memory; and the
// refusals of what is not supported (an epoll set shared through fork watching a file no process holds at its number, fds in flight over a socket
// between processes, a socket connected to a process outside the app). Real programs (a C fixture,
// bash, python3); every wait is on a condition.
import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { rmSync, writeFileSync } from "node:fs";
import { createServer, type Server, type Socket } from "node:net";
import { join } from "node:path";
import { describe, test } from "node:test";
import { waitFor } from "./helpers/home.js";
import { fixture } from "./helpers/native.js";
import { logLines, runApp, waitLines } from "./helpers/scenario.js";
import { checkpointOk, crashAndRestore, ids, others, setup } from "./helpers/tree.js";

const TIMEOUT = 1_800_000; // per describe block (all its tests): generous for a busy machine; every wait inside is on a condition

function lastTick(ls: string[]): number {
  for (let i = ls.length - 1; i >= 0; i--) {
    const m = /^tick (\d+)$/.exec(ls[i]!);
    if (m) return Number(m[1]);
  }
  return -1;
}

describe("issue 12: resources shared by the processes of a tree", { timeout: TIMEOUT }, () => {
  test("a C fixture sharing a file description, stream/datagram/seqpacket pairs, an eventfd and shared memory with its child: checkpointed twice mid-run, killed and restored; every check holds", async (t) => {
    const { h, dir } = setup(t);
    const n = 5000; // (5 ms a round: some 25 s in all)
    await runApp(h, "ts", [fixture("treeshare"), join(dir, "shared.txt"), String(n)]);
    await waitLines(h, "ts", (l) => lastTick(l) >= 200, "the pair at work");
    await waitFor("the child", () => others(h, "ts").some((p) => !p.zombie));
    await checkpointOk(h, "ts");
    const at = lastTick(logLines(h, "ts"));
    await waitLines(h, "ts", (l) => lastTick(l) >= at + 200, "more work after the first checkpoint");
    // the second checkpoint is incremental for both processes
    const id = await checkpointOk(h, "ts");
    const ins = await h.cli(["inspect", id]);
    assert.equal(ins.code, 0, ins.stderr);
    const tickAtCheckpoint = lastTick(logLines(h, "ts"));
    await waitLines(h, "ts", (l) => lastTick(l) >= tickAtCheckpoint + 200, "work the restore takes back");
    // (files are not rolled back yet: the lines written after the checkpoint stay in the file, and
    // the restored pair writes over them from the shared offset; two offsets would overwrite each
    // other's lines and the fixture's count would fail)
    await crashAndRestore(h, "ts", ["--allow-file-changes"]);
    const ls = await waitLines(h, "ts", (l) => l.some((x) => x.startsWith("result ")), "the fixture's result", 240_000);
    assert.deepEqual(
      ls.filter((x) => x.startsWith("result ")),
      ["result ok"],
      ls.slice(-5).join("\n"),
    );
  });

  test("bash and a subshell holding one file through one shared fd (one offset): checkpointed mid-file, killed and restored; the subshell reads on from the checkpoint's line, and bash, reading the fd after it, finds its end", async (t) => {
    const { h, dir } = setup(t);
    const total = 1500;
    writeFileSync(join(dir, "data"), Array.from({ length: total }, (_, i) => `line ${i}`).join("\n") + "\n");
    // (fd 9: a low number can race with the agent's connection being accepted, a known limit)
    // bash reads the fd only once the child has ended: with one offset it is at the end; a
    // restore that gave each process its own description would let bash read lines again
    const script = `exec 9<${JSON.stringify(join(dir, "data"))}; (while read -r -u 9 l; do echo "child $l"; sleep 0.01; done; echo child-done) & wait; while read -r -u 9 l; do echo "parent $l"; done; echo all-done`;
    await runApp(h, "sh", ["bash", "-c", script]);
    await waitLines(h, "sh", (l) => l.filter((x) => x.startsWith("child line")).length >= 20, "the child reads the shared fd");
    await checkpointOk(h, "sh");
    await crashAndRestore(h, "sh");
    await waitLines(h, "sh", (l) => l.includes("all-done"), "both at the end of the file", 240_000);
    const ls = h.log("sh").split("\n");
    const marker = ls.findIndex((x) => x.startsWith("--- tardigrade: restored "));
    assert.ok(marker > 0, "the restore's marker is in the log");
    const num = (x: string): number => Number(x.split(" ")[2]);
    const before = ls.slice(0, marker).filter((x) => /^child line \d+$/.test(x)).map(num);
    const after = ls.slice(marker).filter((x) => /^child line \d+$/.test(x)).map(num);
    assert.ok(after.length > 0 && after[0]! <= before[before.length - 1]! + 1, `the child reads on from the checkpoint's line (first after the restore: ${after[0]}, last before the kill: ${before[before.length - 1]})`);
    assert.deepEqual(after, Array.from({ length: total - after[0]! }, (_, i) => after[0]! + i), "every line after it once, in order");
    assert.deepEqual(ls.filter((x) => x.startsWith("parent ")), [], "bash found the end of the file: one offset");
  });

  test("an epoll set shared through fork whose entry's file no process holds at its fd number any more: refused, naming the set; nothing committed, the tree runs on", async (t) => {
    const { h } = setup(t);
    // the pipe stays open at another fd, its entry (file, fd r) stays in the set, fd r is /dev/null
    const code =
      "import os, select, time\nep = select.epoll()\nr, w = os.pipe()\nep.register(r)\nkeep = os.dup(r)\nn = os.open('/dev/null', os.O_RDONLY)\nos.dup2(n, r)\n" +
      "if os.fork() == 0:\n    while True: time.sleep(0.05)\nwhile True:\n    print('tick', flush=True); time.sleep(0.05)\n";
    await runApp(h, "ep", ["python3", "-c", code]);
    await waitLines(h, "ep", (l) => l.includes("tick"), "ticking");
    await waitFor("the child", () => others(h, "ep").some((p) => !p.zombie && p.comm.startsWith("python")));
    const before = await ids(h, "ep");
    const r = await h.cli(["checkpoint", "ep"]);
    assert.equal(r.code, 1, r.stdout);
    assert.match(r.stderr, /the epoll set at fd \d+ of pid \d+ \(python3?\S*\), shared with 1 other process, watches a file \(inode \d+\) that none of them holds at fd \d+ any more.*Nothing was committed; the app keeps running/s);
    assert.deepEqual(await ids(h, "ep"), before, "nothing committed");
    const k = logLines(h, "ep").length;
    await waitLines(h, "ep", (l) => l.length >= k + 5, "the tree runs on");
  });

  test("a file descriptor in flight (SCM_RIGHTS sent by the parent, not received by the child): refused by name; nothing committed, the tree runs on", async (t) => {
    const { h } = setup(t);
    const code =
      "import os, socket, time\na, b = socket.socketpair()\nif os.fork() == 0:\n    a.close()\n    while True: time.sleep(0.05)\nb.close()\nsocket.send_fds(a, [b'x'], [0])\nwhile True:\n    print('tick', flush=True); time.sleep(0.05)\n";
    await runApp(h, "fl", ["python3", "-c", code]);
    await waitLines(h, "fl", (l) => l.includes("tick"), "ticking");
    await waitFor("the child", () => others(h, "fl").some((p) => !p.zombie && p.comm.startsWith("python")));
    const before = await ids(h, "fl");
    const r = await h.cli(["checkpoint", "fl"]);
    assert.equal(r.code, 1, r.stdout);
    assert.match(r.stderr, /fd \d+ \(Unix stream socket pair\) cannot be checkpointed: file descriptors are in flight in it.*Nothing was committed/s);
    assert.deepEqual(await ids(h, "fl"), before, "nothing committed");
    const k = logLines(h, "fl").length;
    await waitLines(h, "fl", (l) => l.length >= k + 5, "the tree runs on");
  });

  test("a child connected to a Unix socket served outside the app: refused naming the socket; nothing committed, the tree runs on", async (t) => {
    const { h, dir } = setup(t);
    const path = join(dir, "outside.sock");
    const conns: Socket[] = [];
    const server: Server = createServer((c) => conns.push(c));
    await new Promise<void>((r) => server.listen(path, r));
    t.after(() => {
      for (const c of conns) c.destroy();
      server.close();
      rmSync(path, { force: true });
    });
    const code = `import os, socket, time\nif os.fork() == 0:\n    s = socket.socket(socket.AF_UNIX)\n    s.connect(${JSON.stringify(path)})\n    while True: time.sleep(0.05)\nwhile True:\n    print('tick', flush=True); time.sleep(0.05)\n`;
    await runApp(h, "ux", ["python3", "-c", code]);
    await waitLines(h, "ux", (l) => l.includes("tick"), "ticking");
    await waitFor("the child connected", () => conns.length === 1);
    const before = await ids(h, "ux");
    const r = await h.cli(["checkpoint", "ux"]);
    assert.equal(r.code, 1, r.stdout);
    assert.match(r.stderr, /pid \d+ \(python3?\S*\): fd \d+ \(Unix stream socket, connected to .*outside\.sock\) cannot be checkpointed: its peer is another process's socket, outside the application.*Nothing was committed; the app keeps running/s);
    assert.deepEqual(await ids(h, "ux"), before, "nothing committed");
    const k = logLines(h, "ux").length;
    await waitLines(h, "ux", (l) => l.length >= k + 5, "the tree runs on");
  });

  test("a pipe whose other end a process outside the app holds: refused naming the pipe and the holder; nothing committed, the tree runs on", async (t) => {
    const { h } = setup(t);
    // a pipeline outside the app (node's own stdio "pipes" are socket pairs); $! is its reader
    const outside = spawn("bash", ["-c", "sleep 1000 | sleep 1000 & echo $!; wait"], { stdio: ["ignore", "pipe", "ignore"], detached: true });
    t.after(() => {
      process.kill(-outside.pid!, "SIGKILL");
    });
    const reader = await new Promise<number>((r) => outside.stdout.once("data", (d: Buffer) => r(Number(d.toString().trim()))));
    // the app opens the read end of that pipe through /proc
    await runApp(h, "po", ["bash", "-c", `exec 7</proc/${reader}/fd/0 && echo opened; (while :; do sleep 0.05; done) & while :; do echo tick; sleep 0.05; done`]);
    await waitLines(h, "po", (l) => l.includes("opened"), "the pipe opened");
    await waitLines(h, "po", (l) => l.includes("tick"), "ticking");
    await waitFor("the child", () => others(h, "po").some((p) => !p.zombie));
    const before = await ids(h, "po");
    const r = await h.cli(["checkpoint", "po"]);
    assert.equal(r.code, 1, r.stdout);
    assert.match(r.stderr, new RegExp(`pipes to processes outside the app: pipe:\\[\\d+\\] \\(pid \\d+, fd 7; also held by host pid \\d+, outside the app\\).*Nothing was committed`, "s"));
    assert.deepEqual(await ids(h, "po"), before, "nothing committed");
    const k = logLines(h, "po").length;
    await waitLines(h, "po", (l) => l.length >= k + 5, "the tree runs on");
  });

  test("file locks (flock, a POSIX byte range, an open-file-description lock) held by a parent and its child: taken back on restore; one another process took meanwhile makes the restore fail naming the file", async (t) => {
    const { h, dir } = setup(t);
    for (const f of ["flock", "posix", "ofd", "child"]) writeFileSync(join(dir, f), "x".repeat(200));
    const OFD = "import fcntl, struct\ndef ofd(f, t): fcntl.fcntl(f, 37, struct.pack('hh4xqqi4x', t, 0, 0, 0, 0))\n";
    const app =
      OFD +
      `import os, sys, time\nd = ${JSON.stringify(dir)}\n` +
      "a = open(d + '/flock', 'r+'); fcntl.flock(a, fcntl.LOCK_EX)\n" +
      "b = open(d + '/posix', 'r+'); fcntl.lockf(b, fcntl.LOCK_EX, 10, 100)\n" +
      "c = open(d + '/ofd', 'r+'); ofd(c, fcntl.F_WRLCK)\n" +
      "if os.fork() == 0:\n    e = open(d + '/child', 'r+'); fcntl.lockf(e, fcntl.LOCK_EX)\n    while True: time.sleep(0.05)\n" +
      "while True:\n    print('tick', flush=True); time.sleep(0.05)\n";
    // what another process can take now, without waiting: "flock posix posix-other-bytes ofd child", 1 = free
    const probe =
      OFD +
      `import os\nd = ${JSON.stringify(dir)}\nout = []\n` +
      "def t(f):\n    try:\n        f(); out.append('1')\n    except OSError: out.append('0')\n" +
      "t(lambda: fcntl.flock(open(d + '/flock', 'r+'), fcntl.LOCK_EX | fcntl.LOCK_NB))\n" +
      "t(lambda: fcntl.lockf(open(d + '/posix', 'r+'), fcntl.LOCK_EX | fcntl.LOCK_NB, 10, 100))\n" +
      "t(lambda: fcntl.lockf(open(d + '/posix', 'r+'), fcntl.LOCK_EX | fcntl.LOCK_NB, 10, 0))\n" +
      "t(lambda: fcntl.fcntl(open(d + '/ofd', 'r+'), 37, struct.pack('hh4xqqi4x', fcntl.F_WRLCK, 0, 0, 0, 0)))\n" +
      "t(lambda: fcntl.lockf(open(d + '/child', 'r+'), fcntl.LOCK_EX | fcntl.LOCK_NB))\n" +
      "print(' '.join(out))\n";
    const free = (): string => execFileSync("python3", ["-c", probe], { encoding: "utf8" }).trim();
    await runApp(h, "lk", ["python3", "-c", app]);
    await waitLines(h, "lk", (l) => l.includes("tick"), "ticking");
    await waitFor("the child holding its lock", () => free() === "0 0 1 0 0");
    const id = await checkpointOk(h, "lk");
    const ins = await h.cli(["inspect", id]);
    assert.match(ins.stdout, /file locks: fd \d+ flock write 0-EOF, fd \d+ posix write 100-109, fd \d+ ofd write 0-EOF/, ins.stdout);
    const p = h.pids("lk")!;
    process.kill(p.init, "SIGKILL");
    await waitFor("the tree gone", () => free() === "1 1 1 1 1");
    // another process holds the flock now: the restore must not run the app without it
    const holder = spawn("python3", ["-c", `import fcntl, time\nf = open(${JSON.stringify(join(dir, "flock"))}, 'r+'); fcntl.flock(f, fcntl.LOCK_EX)\nprint('held', flush=True)\ntime.sleep(1000)\n`], { stdio: ["ignore", "pipe", "ignore"] });
    t.after(() => {
      holder.kill("SIGKILL");
    });
    await new Promise<void>((r) => holder.stdout.once("data", () => r()));
    const bad = await h.cli(["restore", "lk"]);
    assert.notEqual(bad.code, 0, "the restore fails while another process holds the lock");
    assert.match(bad.stderr, /cannot take back its write flock lock on bytes 0-EOF: .*another process holds a lock on it now/, bad.stderr);
    holder.kill("SIGKILL");
    await waitFor("the holder gone", () => holder.exitCode !== null || holder.signalCode !== null);
    const r = await h.cli(["restore", "lk"]);
    assert.equal(r.code, 0, r.stderr);
    await waitFor("every lock held again by the restored processes", () => free() === "0 0 1 0 0");
    const k = logLines(h, "lk").length;
    await waitLines(h, "lk", (l) => l.length >= k + 5, "the tree runs on");
  });
});
