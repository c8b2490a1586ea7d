// Unix datagram sockets bound to a name of their own (python3, test/fixtures/dgramnamed.py): one
// bound to a path (mode 0640) that a client outside sends to, with three datagrams queued in it
// at the checkpoint; one bound to an abstract name and connected to a receiver outside the app.
// The checkpoint takes nothing from the running app (it reads the three afterwards); kill -9 and
// restore: the path is bound again with its mode, the three datagrams are queued again in order,
// new ones arrive, and the receiver outside gets the restored app's ticks from the same abstract
// name. Every process started is killed by PID (helpers/tree.ts, helpers/home.ts, t.after).
import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { statSync, writeFileSync } from "node:fs";
import { basename, join } from "node:path";
import { describe, test } from "node:test";
import { waitFor } from "./helpers/home.js";
import { fixtureScript } from "./helpers/native.js";
import { logLines, runApp, status, waitLines } from "./helpers/scenario.js";
import { checkpointOk, crashAndRestore, setup } from "./helpers/tree.js";

const SINK = "import socket, sys\ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\ns.bind(sys.argv[1])\nprint('bound', flush=True)\nwhile True:\n    m, a = s.recvfrom(65536)\n    print(repr(a), m.decode(), flush=True)\n";
const SEND = "import socket, sys\ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\nfor m in sys.argv[2:]:\n    s.sendto(m.encode(), sys.argv[1])\n";

describe("named Unix datagram sockets", { timeout: 600_000 }, () => {
  test("bound to a path and to an abstract name: restored on the same names, with their queued datagrams, connected where they were", async (t) => {
    const { h, dir } = setup(t);
    const sink = spawn("python3", ["-c", SINK, join(dir, "out.sock")], { stdio: ["ignore", "pipe", "inherit"] });
    t.after(() => sink.kill("SIGKILL"));
    let got = "";
    sink.stdout.setEncoding("utf8").on("data", (s: string) => (got += s));
    await waitFor("the receiver outside bound", () => got.includes("bound"), 60_000);
    await runApp(h, "dgn", ["python3", fixtureScript("dgramnamed.py"), dir]);
    const from = `'\\x00tg-dgnamed-${basename(dir)}'`;
    await waitFor("ticks from the app's abstract name", () => got.includes(`${from} tick `), 120_000);
    const srv = join(dir, "srv.sock");
    execFileSync("python3", ["-c", SEND, srv, "q1", "q2", "q3"], { timeout: 60_000 });
    const id = await checkpointOk(h, "dgn");
    const ins = await h.cli(["inspect", id]);
    assert.match(ins.stdout, new RegExp(`unix-dgram +\\S+ +\\d+ +Unix datagram socket bound to ${srv.replace(/[/.]/g, "\\$&")}\\n`));
    assert.match(ins.stdout, new RegExp(`unix-dgram +\\S+ +\\d+ +Unix datagram socket bound to @tg-dgnamed-${basename(dir)}, connected to ${join(dir, "out.sock").replace(/[/.]/g, "\\$&")}`));
    // the checkpoint took nothing: the app reads the three now
    writeFileSync(join(dir, "read-1"), "");
    const before = await waitLines(h, "dgn", (ls) => ls.includes("read 1 done"), "read before the restore", 60_000);
    assert.deepEqual(before.filter((l) => l.startsWith("got ")), ["got q1", "got q2", "got q3"]);
    await crashAndRestore(h, "dgn");
    assert.equal(statSync(srv).mode & 0o777, 0o640, "the socket file's mode");
    const mark = got.length;
    // (restored from before read-1: the restored app reads at read-1 again, then at read-2)
    writeFileSync(join(dir, "read-2"), "");
    const after = await waitLines(h, "dgn", (ls) => ls.includes("read 2 done"), "read after the restore", 60_000);
    assert.deepEqual(after.filter((l) => l.startsWith("got ")), ["got q1", "got q2", "got q3", "got q1", "got q2", "got q3"], "the queue as at the checkpoint, read again after the restore");
    execFileSync("python3", ["-c", SEND, srv, "q4"], { timeout: 60_000 });
    writeFileSync(join(dir, "read-3"), "");
    const last = await waitLines(h, "dgn", (ls) => ls.includes("read 3 done"), "a new datagram read", 60_000);
    assert.deepEqual(last.slice(last.lastIndexOf("read 2 done") + 1).filter((l) => l.startsWith("got ")), ["got q4"]);
    await waitFor("the restored app's ticks reach the receiver from the same name", () => got.slice(mark).includes(`${from} tick `), 60_000);
    assert.ok(!logLines(h, "dgn").some((l) => l.startsWith("send ")), "every send went through");
    assert.equal((await status(h, "dgn")).state, "running");
  });
});
