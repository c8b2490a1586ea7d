// Datagrams queued at a named Unix datagram socket come back from the address they were sent from
// (issue 13): a python3 server in the app (test/fixtures/dgramreply.py) answers each client at
// the address recvfrom gives. At the checkpoint its queue holds a datagram from its own client
// inside the app (bound to a path), one from a client outside bound to a path and one from a
// client outside bound to an abstract name (both still running, so their names are in use at the
// restore), and one from an unnamed sender. After kill -9 and restore the server reads the four
// from the same addresses and every client gets its answer. Every process started is killed by
// PID (helpers/tree.ts, helpers/home.ts, t.after).
import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { readdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, join } from "node:path";
import { describe, test } from "node:test";
import { waitFor } from "./helpers/home.js";
import { fixtureScript } from "./helpers/native.js";
import { isAlive } from "./helpers/home.js";
import { runApp, status, waitLines } from "./helpers/scenario.js";
import { checkpointOk, crashAndRestore, setup } from "./helpers/tree.js";

// CLIENT ADDR SRV MSG: binds ADDR ("@x": abstract), sends MSG to SRV (the same), prints "sent", then "reply X" for each answer
const CLIENT = "import socket, sys\ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\nn = lambda a: b'\\0' + a[1:].encode() if a.startswith('@') else a\ns.bind(n(sys.argv[1]))\ns.sendto(sys.argv[3].encode(), n(sys.argv[2]))\nprint('sent', flush=True)\nwhile True:\n    m = s.recv(65536)\n    print('reply', m.decode(), flush=True)\n";
const SEND = "import socket, sys\ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\ns.sendto(sys.argv[2].encode(), sys.argv[1])\n";

describe("named Unix datagram sockets: senders' addresses", { timeout: 600_000 }, () => {
  test("a restored server answers each queued datagram's client at its address (path, abstract, in the app)", async (t) => {
    const { h, dir } = setup(t);
    await runApp(h, "dgr", ["python3", fixtureScript("dgramreply.py"), dir]);
    await waitLines(h, "dgr", (ls) => ls.includes("ready"), "the server ready", 120_000);
    const srv = join(dir, "srv.sock");
    const abs = `@tg-dgr-${basename(dir)}`;
    const clients: { addr: string; msg: string; out: string }[] = [];
    // one after the other: the queue's order is known
    for (const c of [{ addr: join(dir, "a.sock"), msg: "a1" }, { addr: abs, msg: "b1" }]) {
      const p = spawn("python3", ["-c", CLIENT, c.addr, srv, c.msg], { stdio: ["ignore", "pipe", "inherit"] });
      t.after(() => p.kill("SIGKILL"));
      const o = { ...c, out: "" };
      p.stdout.setEncoding("utf8").on("data", (s: string) => (o.out += s));
      clients.push(o);
      await waitFor(`client ${c.addr} sent`, () => o.out.includes("sent"), 60_000);
    }
    execFileSync("python3", ["-c", SEND, srv, "u1"], { timeout: 60_000 });
    const id = await checkpointOk(h, "dgr");
    const ins = await h.cli(["inspect", id]);
    assert.ok(ins.stdout.includes(`in 4 datagrams (from ${join(dir, "in.sock")}, ${join(dir, "a.sock")}, ${abs}, unnamed)`), `inspect lists each datagram's sender: ${ins.stdout}`);
    await crashAndRestore(h, "dgr");
    for (const c of clients) assert.equal(c.out.includes("reply"), false, "no answer before the restored server reads");
    execFileSync("touch", [join(dir, "read-1")]);
    const ls = await waitLines(h, "dgr", (l) => l.includes("read 1 done"), "the restored server reads its queue", 120_000);
    const got = ls.filter((l) => l.startsWith("got "));
    assert.match(got.pop() ?? "", /^got u1 from (''|None)$/, "the unnamed sender's datagram, last, still unnamed");
    assert.deepEqual(got, [
      `got in1 from '${join(dir, "in.sock")}'`,
      `got a1 from '${join(dir, "a.sock")}'`,
      `got b1 from b'\\x00${abs.slice(1)}'`,
    ], "each datagram from the address it was sent from, in order");
    for (const c of clients) await waitFor(`client ${c.addr} answered`, () => c.out.includes(`reply re ${c.msg}`), 60_000);
    await waitLines(h, "dgr", (l) => l.includes("in-reply re in1"), "the app's own client answered", 60_000);
    assert.ok(!ls.some((l) => l.startsWith("answer ")), "every answer went out");
    assert.deepEqual(readdirSync(tmpdir()).filter((f) => f.startsWith("tardigrade-sender-")), [], "no private root left behind");
    assert.equal((await status(h, "dgr")).state, "running");
  });

  test("a server on an abstract name: a datagram from an abstract name another socket holds at the restore refuses it, naming both; once the name is free the restore gives the datagram that name", async (t) => {
    const { h, dir } = setup(t);
    await runApp(h, "dga", ["python3", fixtureScript("dgramreply.py"), dir, "abstract"]);
    await waitLines(h, "dga", (ls) => ls.includes("ready"), "the server ready", 120_000);
    const srv = `@tg-dgr-srv-${basename(dir)}`;
    const abs = `@tg-dgr-c-${basename(dir)}`;
    const c = spawn("python3", ["-c", CLIENT, abs, srv, "c1"], { stdio: ["ignore", "pipe", "inherit"] });
    t.after(() => c.kill("SIGKILL"));
    let out = "";
    c.stdout.setEncoding("utf8").on("data", (s: string) => (out += s));
    await waitFor("the client sent", () => out.includes("sent"), 60_000);
    await checkpointOk(h, "dga");
    const p = h.pids("dga")!;
    process.kill(p.init, "SIGKILL");
    await waitFor("the app gone", () => !isAlive(p.init) && !isAlive(p.app));
    const refused = await h.cli(["restore", "dga"]);
    assert.notEqual(refused.code, 0, "refused while the client holds its name");
    assert.ok(refused.stderr.includes(`(Unix datagram socket bound to ${srv}): its queued datagram 2 came from ${abs}, a name another socket holds now`), refused.stderr);
    assert.match(refused.stderr, new RegExp(`end the process that holds ${abs}`));
    c.kill("SIGKILL");
    await waitFor("the client gone", () => c.exitCode !== null || c.signalCode !== null, 60_000);
    const r = await h.cli(["restore", "dga"]);
    assert.equal(r.code, 0, `restore once the name is free: ${r.stderr}`);
    execFileSync("touch", [join(dir, "read-1")]);
    const ls = await waitLines(h, "dga", (l) => l.includes("read 1 done"), "the restored server reads its queue", 120_000);
    assert.deepEqual(ls.filter((l) => l.startsWith("got ")), [`got in1 from '${join(dir, "in.sock")}'`, `got c1 from b'\\x00${abs.slice(1)}'`]);
    assert.deepEqual(readdirSync(tmpdir()).filter((f) => f.startsWith("tardigrade-sender-")), [], "no private root left behind");
  });
});
