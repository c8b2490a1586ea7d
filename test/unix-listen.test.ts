// Issue 13, item 1 (Unix part): listening Unix sockets bound to a path or an abstract name are
// checkpointed and restored on the same name, with their backlog, mode and flags; a socket file
// left by the killed process is replaced; a name another process listens on by then makes the
// restore fail, naming it. A python3 server (with a forked child holding the sockets too), a
// client outside the app (this process) checks every answer; every wait is on a condition.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync, rmSync, statSync } from "node:fs";
import { connect, createServer } from "node:net";
import { join } from "node:path";
import { describe, test } from "node:test";
import { isAlive, waitFor } from "./helpers/home.js";
import { fixtureScript } from "./helpers/native.js";
import { runApp, waitLines } from "./helpers/scenario.js";
import { checkpointOk, setup } from "./helpers/tree.js";

const TIMEOUT = 1_800_000; // per describe block (all its tests): generous for a busy machine; every wait inside is on a condition

/** One connection: what the server says before it closes. */
function ask(path: string): Promise<string> {
  return new Promise((resolve, reject) => {
    let got = "";
    const c = connect({ path });
    c.setEncoding("utf8");
    c.on("data", (d: string) => (got += d));
    c.on("end", () => resolve(got.trim()));
    c.on("error", reject);
  });
}

/** The same through python3 (node cannot connect to an abstract name). */
function askAbstract(name: string): string {
  return execFileSync("python3", ["-c", `import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect("\\0" + ${JSON.stringify(name)})\nprint(s.recv(100).decode().strip())`], { encoding: "utf8" }).trim();
}

describe("issue 13: listening Unix sockets", { timeout: TIMEOUT }, () => {
  test("a server on a path and an abstract name (its child holding both): checkpointed, killed and restored on the same names; the counter goes on from the checkpoint; a name taken by another process by then fails the restore, naming it", async (t) => {
    const { h, dir } = setup(t);
    const path = join(dir, "srv.sock");
    const abstract = `tg-test-${process.pid}-${Date.now()}`;
    await runApp(h, "us", ["python3", fixtureScript("unixserver.py"), path, abstract]);
    await waitLines(h, "us", (l) => l.includes("listening"), "the server listening");
    assert.equal(await ask(path), "1");
    assert.equal(askAbstract(abstract), "2");
    await checkpointOk(h, "us");
    assert.equal(await ask(path), "3", "served after the checkpoint (the restore takes it back)");
    const p = h.pids("us")!;
    process.kill(p.init, "SIGKILL");
    await waitFor("the tree gone", () => !isAlive(p.init) && !isAlive(p.app));
    assert.ok(existsSync(path), "the killed server left its socket file");
    // somebody else serves on the path now: the restore must not take it
    rmSync(path);
    const other = createServer((c) => {
      c.on("error", () => undefined); // the restorer's probe connects and goes at once
      c.end("other\n");
    });
    await new Promise<void>((r) => other.listen(path, r));
    const bad = await h.cli(["restore", "us"]);
    assert.notEqual(bad.code, 0, "the restore fails while another process listens on the path");
    assert.match(bad.stderr, new RegExp(`cannot listen on ${path.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")} again: another process listens on it now`), bad.stderr);
    await new Promise<void>((r) => other.close(() => r()));
    rmSync(path, { force: true });
    const r = await h.cli(["restore", "us"]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(await ask(path), "3", "the counter as at the checkpoint");
    assert.equal(askAbstract(abstract), "4");
    assert.equal(statSync(path).mode & 0o777, 0o660, "the socket file's mode as bound");
    const ins = await h.cli(["inspect", "us@1"]);
    assert.match(ins.stdout, /unix-listen .*Unix stream socket listening on .*srv\.sock \(backlog 5\)/, ins.stdout);
  });
});
