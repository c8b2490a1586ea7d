// A loopback TCP connection with both ends in the app, one end held by a process without
// CAP_NET_ADMIN (test/fixtures/tcpnobody.py: a root parent and a child that became uid 65534,
// python3): its agent cannot read the connection with TCP_REPAIR, so the checkpoint holds no state
// for it. The checkpoint commits and says so; the restore refuses, naming the connection and the option; `restore --allow-closed-tcp`
// brings both ends back as a connection closed by its peer: the parent's next read gets end of
// file, the child's read or write ends too, and the restore says so. Every process started is
// killed by PID (helpers/tree.ts, helpers/home.ts).
import assert from "node:assert/strict";
import { chmodSync } from "node:fs";
import { describe, test } from "node:test";
import { isAlive, waitFor } from "./helpers/home.js";
import { fixtureScript } from "./helpers/native.js";
import { logLines, runApp, status, waitLines } from "./helpers/scenario.js";
import { setup } from "./helpers/tree.js";

const skip = process.getuid?.() !== 0 ? "needs root (tardigrade run does)" : false;

describe("TCP connections that cannot be restored whole", { timeout: 600_000 }, () => {
  test("a loopback connection held by a process without CAP_NET_ADMIN: the restore refuses naming it; --allow-closed-tcp restores it closed by its peer", { skip }, async (t) => {
    const { h, dir } = setup(t);
    chmodSync(dir, 0o755); // the uid 65534 child looks for DIR/release
    await runApp(h, "tcpn", ["python3", fixtureScript("tcpnobody.py"), dir]);
    const ls = await waitLines(h, "tcpn", (l) => l.some((x) => x.startsWith("child got ack 3")), "ticks acknowledged", 120_000);
    const m = ls.map((l) => /^child connected to (\d+) as uid 65534$/.exec(l)).find((x) => x);
    assert.ok(m, "the child became uid 65534 and connected");
    const port = m[1]!;
    const ck = await h.cli(["checkpoint", "tcpn", "--json"]);
    assert.equal(ck.code, 0, `the checkpoint commits: ${ck.stderr}`);
    const notes = (JSON.parse(ck.stdout) as { notes?: string[] }).notes ?? [];
    assert.equal(notes.length, 1, `the checkpoint says what a restore will refuse: ${ck.stdout}`);
    assert.match(notes[0]!, /^pid \d+ fd \d+ \(tcp ipv4 127\.0\.0\.1:\d+ <-> 127\.0\.0\.1:\d+ established.*\): no TCP_REPAIR state \(its process has no CAP_NET_ADMIN\) and its other end is in the app: a restore of this checkpoint refuses it unless `restore --allow-closed-tcp`/);
    const p = h.pids("tcpn")!;
    process.kill(p.init, "SIGKILL");
    await waitFor("the tree gone", () => !isAlive(p.init) && !isAlive(p.app));
    const refused = await h.cli(["restore", "tcpn"]);
    t.diagnostic(`refused: ${refused.stderr.trim()}`);
    assert.notEqual(refused.code, 0, `the restore refuses: ${refused.stdout}`);
    assert.match(refused.stderr, new RegExp(`TCP socket 127\\.0\\.0\\.1:\\d+ <-> 127\\.0\\.0\\.1:\\d+ \\(established\\)\\) cannot be restored whole`));
    assert.match(refused.stderr, new RegExp(`127\\.0\\.0\\.1:${port}\\b`), "the connection named by its addresses");
    assert.match(refused.stderr, /--allow-closed-tcp/, "what to do");
    const mark = logLines(h, "tcpn").length;
    const r = await h.cli(["restore", "tcpn", "--allow-closed-tcp"]);
    assert.equal(r.code, 0, `restore --allow-closed-tcp: ${r.stderr}`);
    t.diagnostic(`restored: ${r.stdout.trim()}`);
    assert.equal(r.stdout.match(/: restored closed by its peer \(--allow-closed-tcp/g)?.length, 2, `the restore says so for both ends: ${r.stdout}`);
    const after = await waitLines(h, "tcpn", (l) => l.slice(mark).includes("parent eof") && l.slice(mark).some((x) => /^child (eof|error \d+)$/.test(x)), "both ends see the connection closed", 120_000);
    assert.ok(!after.slice(mark).some((x) => x.startsWith("parent error")), "the parent reads end of file, not an error");
    await waitLines(h, "tcpn", (l) => l.slice(mark).some((x) => /^child alive \d+$/.test(x)) && l.slice(mark).some((x) => /^parent alive \d+$/.test(x)), "both processes go on", 60_000);
    assert.equal((await status(h, "tcpn")).state, "running");
  });

  test("one process without CAP_NET_ADMIN holding both ends of a loopback connection: the checkpoint refuses naming it; nothing committed, the app runs on", { skip }, async (t) => {
    const { h, dir } = setup(t);
    chmodSync(dir, 0o755);
    await runApp(h, "tcpa", ["python3", fixtureScript("tcpnobody.py"), dir, "alone"]);
    const ls = await waitLines(h, "tcpa", (l) => l.some((x) => x.startsWith("alone alive 3")), "connected as uid 65534", 120_000);
    const port = ls.map((l) => /^alone connected to (\d+)$/.exec(l)).find((x) => x)?.[1];
    assert.ok(port, "connected");
    const r = await h.cli(["checkpoint", "tcpa"]);
    t.diagnostic(`refused: ${r.stderr.trim()}`);
    assert.notEqual(r.code, 0, "the checkpoint refuses");
    assert.match(r.stderr, new RegExp(`TCP socket 127\\.0\\.0\\.1:\\d+ <-> 127\\.0\\.0\\.1:\\d+ \\(established\\)\\): TCP_REPAIR: Operation not permitted \\(capturing a connection needs CAP_NET_ADMIN, which this process does not have`));
    assert.match(r.stderr, new RegExp(`127\\.0\\.0\\.1:${port}\\b`));
    const l = await h.cli(["ls", "tcpa", "--json"]);
    assert.deepEqual(JSON.parse(l.stdout), [], "nothing committed");
    const n = logLines(h, "tcpa").length;
    await waitLines(h, "tcpa", (x) => x.length > n + 3, "the app runs on", 60_000);
    assert.equal((await status(h, "tcpa")).state, "running");
  });
});
