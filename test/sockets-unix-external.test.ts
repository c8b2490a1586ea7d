// Issue 13, item 3: Unix sockets whose peer is a process outside the app. A python3 client (the
// app) logs through logging.handlers.SysLogHandler to a datagram server this test runs outside
// the app (syslog's /dev/log pattern) and holds a stream connection to a server outside too.
// Default policy: the stream connection makes the checkpoint refuse, naming the peer's path. With
// `run --external-unix closed`: the datagram socket is connected to the same path again after a
// kill -9 and restore (the server outside receives the next message), the stream one comes back
// closed (ECONNRESET on read, EPIPE on write) and the restore lists both; a path nobody is bound to
// at restore time leaves the datagram socket unconnected (the restore says so) and the app's
// handler connects again once the server is back. Every wait is on a condition.
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { connect, createServer, type Server } from "node:net";
import { rmSync } from "node:fs";
import { join } from "node:path";
import { describe, test } from "node:test";
import { isAlive, waitFor, type TestHome } from "./helpers/home.js";
import { fixtureScript } from "./helpers/native.js";
import { waitLines } from "./helpers/scenario.js";
import { checkpointOk, setup } from "./helpers/tree.js";

const TIMEOUT = 1_800_000; // per describe block: generous for a busy machine; every wait inside is on a condition

/** One command to the app's control socket: its answer. */
function ask(ctl: string, cmd: string): Promise<string> {
  return new Promise((resolve, reject) => {
    let got = "";
    const c = connect({ path: ctl }, () => c.write(cmd));
    c.setEncoding("utf8");
    c.on("data", (d: string) => (got += d));
    c.on("end", () => resolve(got.trim()));
    c.on("error", reject);
    c.setTimeout(60_000, () => c.destroy(new Error(`no answer to ${cmd} in 60 s`)));
  });
}

/** The datagram server outside the app: every datagram it received, as lines. */
interface Sink {
  child: ChildProcess;
  lines: string[];
}

async function startSink(path: string): Promise<Sink> {
  const child = spawn("python3", [fixtureScript("dgramsink.py"), path], { stdio: ["ignore", "pipe", "inherit"] });
  const s: Sink = { child, lines: [] };
  let buf = "";
  child.stdout!.setEncoding("utf8").on("data", (d: string) => {
    buf += d;
    const parts = buf.split("\n");
    buf = parts.pop()!;
    s.lines.push(...parts);
  });
  await waitFor("the datagram server bound", () => s.lines.includes("bound"));
  return s;
}

async function stopSink(s: Sink): Promise<void> {
  if (s.child.pid && isAlive(s.child.pid)) s.child.kill("SIGKILL");
  await waitFor("the datagram server gone", () => s.child.exitCode !== null || s.child.signalCode !== null);
}

/** A stream server outside the app: answers "pong" to every line. */
async function startPong(path: string): Promise<Server> {
  const srv = createServer((c) => {
    c.on("error", () => undefined); // the app's end goes away when it is killed
    c.on("data", () => c.write("pong\n"));
  });
  await new Promise<void>((r) => srv.listen(path, r));
  return srv;
}

async function run(h: TestHome, name: string, argv: string[], policy?: string): Promise<{ code: number | null; stderr: string }> {
  return h.cli(["run", "--name", name, ...(policy ? ["--external-unix", policy] : []), "--json", "--", ...argv]);
}

function killApp(h: TestHome, name: string): Promise<unknown> {
  const p = h.pids(name);
  assert.ok(p, `${name} has a pidfile`);
  process.kill(p.init, "SIGKILL");
  return waitFor(`${name} gone`, () => !isAlive(p.init) && !isAlive(p.app));
}

describe("issue 13: Unix sockets connected outside the app", { timeout: TIMEOUT }, () => {
  test("syslog-style datagram socket reconnected, stream connection refused by default, restored closed with --external-unix closed", async (t) => {
    const { h, dir } = setup(t);
    const logPath = join(dir, "log.sock");
    const dbPath = join(dir, "db.sock");
    const ctl = join(dir, "ctl.sock");
    let sink = await startSink(logPath);
    const pong = await startPong(dbPath);
    t.after(async () => {
      await stopSink(sink);
      await new Promise<void>((r) => pong.close(() => r()));
    });
    const argv = ["python3", fixtureScript("unixclient.py"), logPath, dbPath, ctl];

    // default policy: the stream connection refuses the checkpoint, naming its peer; the app runs on
    let r = await run(h, "ux", argv);
    assert.equal(r.code, 0, r.stderr);
    await waitLines(h, "ux", (l) => l.includes("ready"), "the client ready");
    assert.equal(await ask(ctl, "stream"), "stream pong");
    const bad = await h.cli(["checkpoint", "ux"]);
    assert.notEqual(bad.code, 0, "the checkpoint refuses");
    assert.match(bad.stderr, new RegExp(`fd \\d+ \\(Unix stream socket, connected to ${dbPath.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}\\) cannot be checkpointed: its peer is another process's socket, outside the application`), bad.stderr);
    assert.match(bad.stderr, /--external-unix closed/, bad.stderr);
    assert.match(bad.stderr, /Nothing was committed/, bad.stderr);
    assert.equal(await ask(ctl, "log"), "logged 2", "the app runs on");
    assert.equal((await h.cli(["stop", "ux"])).code, 0);
    rmSync(ctl, { force: true });

    // --external-unix closed
    r = await run(h, "uc", argv, "closed");
    assert.equal(r.code, 0, r.stderr);
    await waitLines(h, "uc", (l) => l.includes("ready"), "the client ready");
    assert.equal(await ask(ctl, "log"), "logged 1");
    assert.equal(await ask(ctl, "stream"), "stream pong");
    await waitFor("the server outside got hello 1", () => sink.lines.some((l) => l.endsWith("hello 1")));
    const id = await checkpointOk(h, "uc");
    assert.equal(await ask(ctl, "log"), "logged 3", "after the checkpoint (the restore takes it back)");
    const ins = await h.cli(["inspect", id]);
    assert.match(ins.stdout, /unix-external .*Unix datagram socket, connected to .*log\.sock \(outside the app\)/, ins.stdout);
    assert.match(ins.stdout, /unix-external .*Unix stream socket, connected to .*db\.sock \(outside the app\)/, ins.stdout);

    await killApp(h, "uc");
    const back = await h.cli(["restore", "uc", "--json"]);
    assert.equal(back.code, 0, `${back.stderr}\n--- log ---\n${h.log("uc")}`);
    const notes = (JSON.parse(back.stdout) as { notes?: string[] }).notes ?? [];
    assert.ok(notes.some((n) => /Unix datagram socket, connected to .*log\.sock \(outside the app\)\): connected to .*log\.sock again/.test(n)), notes.join("\n"));
    assert.ok(notes.some((n) => /Unix stream socket, connected to .*db\.sock \(outside the app\)\): restored closed/.test(n)), notes.join("\n"));
    const before = sink.lines.length;
    assert.equal(await ask(ctl, "log"), "logged 3", "the count as at the checkpoint");
    await waitFor("the server outside got hello 3 from the restored app", () => sink.lines.slice(before).some((l) => l.endsWith("hello 3")));
    assert.equal(await ask(ctl, "read"), "read error ECONNRESET", "a read on the closed connection: a reset");
    assert.equal(await ask(ctl, "read"), "read EOF", "then end of file");
    assert.equal(await ask(ctl, "stream"), "stream error EPIPE", "a write: EPIPE");

    // nobody bound to the path at restore time: the datagram socket comes back unconnected, the
    // restore says so; the app's handler connects again once the server is back
    await stopSink(sink);
    rmSync(logPath, { force: true });
    await killApp(h, "uc");
    const again = await h.cli(["restore", "uc", "--json"]);
    assert.equal(again.code, 0, again.stderr);
    const notes2 = (JSON.parse(again.stdout) as { notes?: string[] }).notes ?? [];
    assert.ok(notes2.some((n) => /log\.sock \(outside the app\)\): restored unconnected: nothing is bound to .*log\.sock now/.test(n)), notes2.join("\n"));
    assert.equal(await ask(ctl, "log"), "logged 3", "the send fails inside the handler; the app goes on");
    sink = await startSink(logPath);
    assert.equal(await ask(ctl, "log"), "logged 4");
    await waitFor("the new server got hello 4", () => sink.lines.some((l) => l.endsWith("hello 4")));
  });
});
