// Issues 12/13: sockets (and epoll sets) of a process tree. A TCP connection over loopback with its two ends in two
// processes of the app is restored whole (both ends made with TCP_REPAIR before the tree runs),
// and a Unix socket a child holds to a server outside the app is handled as for one process:
// refused by name under the default policy, restored closed under `--external-unix closed`. A Unix
// stream connection a child made to its parent's named listener is restored (the accepted end unnamed). An
// epoll set shared by a parent and its child, each having registered an entry, is restored as one
// set with both entries.
// Real programs (python3); every wait is on a condition.
import assert from "node:assert/strict";
import { rmSync, writeFileSync } from "node:fs";
import { createServer, type Server, type Socket } from "node:net";
import { join } from "node:path";
import { describe, test } from "node:test";
import { isAlive, waitFor } from "./helpers/home.js";
import { fixtureScript } from "./helpers/native.js";
import { logLines, logSize, waitLines } from "./helpers/scenario.js";
import { checkpointOk, ids, others, setup } from "./helpers/tree.js";

const TIMEOUT = 1_800_000; // per describe block: generous for a busy machine; every wait inside is on a condition

const ticks = (ls: string[]): number[] => ls.filter((l) => /^tick \d+$/.test(l)).map((l) => Number(l.split(" ")[1]));

describe("sockets of a process tree", { timeout: TIMEOUT }, () => {
  test("a loopback TCP connection between a parent and its child, 50000 unread bytes queued: killed and restored whole; the ticks go on from the checkpoint and the bytes arrive intact", async (t) => {
    const { h, dir } = setup(t);
    const gate = join(dir, "gate");
    const r0 = await h.cli(["run", "--name", "tt", "--json", "--", "python3", fixtureScript("tcptree.py"), gate, "50000", "50"]);
    assert.equal(r0.code, 0, r0.stderr);
    await waitLines(h, "tt", (l) => ticks(l).length >= 5, "ticks");
    await waitFor("the child", () => others(h, "tt").some((p) => !p.zombie));
    await checkpointOk(h, "tt");
    const at = ticks(logLines(h, "tt")).length;
    await waitLines(h, "tt", (l) => ticks(l).length >= at + 5, "ticks after the checkpoint");
    const p = h.pids("tt")!;
    process.kill(p.init, "SIGKILL");
    await waitFor("the tree gone", () => !isAlive(p.init) && !isAlive(p.app));
    const from = logSize(h, "tt");
    const r = await h.cli(["restore", "tt", "--json"]);
    assert.equal(r.code, 0, `restore: ${r.stderr}\n--- log ---\n${h.log("tt")}`);
    const notes = (JSON.parse(r.stdout) as { notes?: string[] }).notes ?? [];
    assert.equal(notes.filter((n) => /established.*\): restored whole/.test(n)).length, 2, JSON.stringify(notes));
    await waitLines(h, "tt", (l) => ticks(l).length >= 3, "ticks after the restore", 120_000, from);
    writeFileSync(gate, "");
    const out = await waitLines(h, "tt", (l) => l.some((x) => x.startsWith("done") || x.startsWith("ERROR")), "the queued bytes read", 120_000, from);
    let sum = 0;
    for (let i = 0; i < 50000; i++) sum += i % 251;
    assert.ok(out.includes(`queued 50000 ${sum}`), out.join("\n"));
    assert.ok(out.includes("done 0"), out.join("\n"));
    const after = ticks(out);
    after.forEach((n, i) => assert.equal(n, after[0]! + i, "ticks consecutive"));
    assert.ok(after[0]! > 1 && after[0]! <= at + 1, `first tick after the restore ${after[0]}: continues from the checkpoint (${at} ticks then)`);
  });

  test("a Unix stream connection a child made to its parent's named listener, the accepted end inherited by a second child too, 50000 unread bytes queued: killed and restored; one connection, the accepted end unnamed, the listener on its path, the ticks go on and the bytes arrive intact", async (t) => {
    const { h, dir } = setup(t);
    const gate = join(dir, "gate");
    const sock = join(dir, "tree.sock");
    const r0 = await h.cli(["run", "--name", "ut", "--json", "--", "python3", fixtureScript("unixtree.py"), sock, gate, "50000", "50"]);
    assert.equal(r0.code, 0, r0.stderr);
    await waitLines(h, "ut", (l) => ticks(l).length >= 5, "ticks");
    assert.ok(logLines(h, "ut").includes(`accepted ${sock}`), "the accepted end carries the listener's name");
    await waitFor("the child and the holder", () => others(h, "ut").filter((q) => !q.zombie).length >= 2);
    await checkpointOk(h, "ut");
    const at = ticks(logLines(h, "ut")).length;
    await waitLines(h, "ut", (l) => ticks(l).length >= at + 5, "ticks after the checkpoint");
    const p = h.pids("ut")!;
    process.kill(p.init, "SIGKILL");
    await waitFor("the tree gone", () => !isAlive(p.init) && !isAlive(p.app));
    const from = logSize(h, "ut");
    const r = await h.cli(["restore", "ut", "--json"]);
    assert.equal(r.code, 0, `restore: ${r.stderr}\n--- log ---\n${h.log("ut")}`);
    await waitLines(h, "ut", (l) => ticks(l).length >= 3, "ticks after the restore", 120_000, from);
    writeFileSync(gate, "");
    const out = await waitLines(h, "ut", (l) => l.some((x) => x.startsWith("done") || x.startsWith("ERROR")), "the queued bytes read", 120_000, from);
    let sum = 0;
    for (let i = 0; i < 50000; i++) sum += i % 251;
    assert.ok(out.includes(`queued 50000 ${sum}`), out.join("\n"));
    assert.ok(out.includes("second again"), out.join("\n")); // the listener, restored on its path, accepts a new connection
    assert.ok(out.includes("done 0"), out.join("\n"));
    const after = ticks(out);
    after.forEach((n, i) => assert.equal(n, after[0]! + i, "ticks consecutive"));
    assert.ok(after[0]! > 1 && after[0]! <= at + 1, `first tick after the restore ${after[0]}: continues from the checkpoint (${at} ticks then)`);
  });

  for (const policy of ["refuse", "closed"] as const) {
    test(`a child connected to a Unix stream socket served outside the app, --external-unix ${policy}: ${policy === "refuse" ? "refused naming the peer; nothing committed, the tree runs on" : "checkpointed, killed and restored; the child's next read gets ECONNRESET and the restore says so"}`, async (t) => {
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
      const go = join(dir, "go");
      const code =
        `import os, socket, time\nif os.fork() == 0:\n    s = socket.socket(socket.AF_UNIX)\n    s.connect(${JSON.stringify(path)})\n` +
        `    print('connected', flush=True)\n    while not os.path.exists(${JSON.stringify(go)}): time.sleep(0.05)\n` +
        "    try:\n        print('read', s.recv(10), flush=True)\n    except OSError as e:\n        print('read error', e.errno, flush=True)\n    os._exit(0)\n" +
        "while True:\n    print('tick', flush=True); time.sleep(0.05)\n";
      const r0 = await h.cli(["run", "--name", "ux", "--json", ...(policy === "closed" ? ["--external-unix", "closed"] : []), "--", "python3", "-c", code]);
      assert.equal(r0.code, 0, r0.stderr);
      await waitLines(h, "ux", (l) => l.includes("connected") && l.includes("tick"), "the child connected");
      await waitFor("the server accepted", () => conns.length === 1);
      if (policy === "refuse") {
        const before = await ids(h, "ux");
        const r = await h.cli(["checkpoint", "ux"]);
        assert.equal(r.code, 1, r.stdout);
        assert.match(r.stderr, new RegExp(`pid \\d+ .*fd \\d+ \\(Unix stream socket, connected to ${path.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&")}\\) cannot be checkpointed: its peer is another process's socket, outside the application.*--external-unix closed.*Nothing was committed`, "s"));
        assert.deepEqual(await ids(h, "ux"), before, "nothing committed");
        const k = logLines(h, "ux").length;
        await waitLines(h, "ux", (l) => l.length >= k + 5, "the tree runs on");
        return;
      }
      await checkpointOk(h, "ux");
      const p = h.pids("ux")!;
      process.kill(p.init, "SIGKILL");
      await waitFor("the tree gone", () => !isAlive(p.init) && !isAlive(p.app));
      const from = logSize(h, "ux");
      const r = await h.cli(["restore", "ux", "--json"]);
      assert.equal(r.code, 0, `restore: ${r.stderr}`);
      const notes = (JSON.parse(r.stdout) as { notes?: string[] }).notes ?? [];
      assert.ok(notes.some((n) => /^pid \d+ fd \d+ .*closed/.test(n)), JSON.stringify(notes));
      writeFileSync(go, "");
      const out = await waitLines(h, "ux", (l) => l.some((x) => x.startsWith("read")), "the child's read", 120_000, from);
      assert.ok(out.includes("read error 104"), out.join("\n")); // ECONNRESET
    });
  }

  test("an epoll set shared by a parent and its child, each with an entry of its own: killed and restored; one set, both entries", async (t) => {
    const { h, dir } = setup(t);
    const gate = join(dir, "gate");
    const r0 = await h.cli(["run", "--name", "ep", "--json", "--", "python3", fixtureScript("epolltree.py"), gate]);
    assert.equal(r0.code, 0, r0.stderr);
    await waitLines(h, "ep", (l) => ticks(l).length >= 5, "ticks");
    await waitFor("the child", () => others(h, "ep").some((p) => !p.zombie));
    await checkpointOk(h, "ep");
    const p = h.pids("ep")!;
    process.kill(p.init, "SIGKILL");
    await waitFor("the tree gone", () => !isAlive(p.init) && !isAlive(p.app));
    const from = logSize(h, "ep");
    const r = await h.cli(["restore", "ep"]);
    assert.equal(r.code, 0, `restore: ${r.stderr}`);
    await waitLines(h, "ep", (l) => ticks(l).length >= 3, "ticks after the restore: the parent's entry", 120_000, from);
    writeFileSync(gate, "");
    const out = await waitLines(h, "ep", (l) => l.some((x) => x === "done" || x.startsWith("ERROR")), "the child's entry seen by the parent", 120_000, from);
    assert.ok(out.includes("child entry fired"), out.join("\n"));
  });
});
