// Unix socket pairs inside the app (issue 10, item 6): an asyncio program (its self-pipe is a
// socketpair) and a C fixture with stream, datagram and seqpacket pairs holding data in both
// directions are checkpointed, killed -9 and restored; sockets that are not entirely inside the app
// (fds in flight, a peer in another process) are refused by name, nothing is committed and the app
// keeps running.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { readdirSync, writeFileSync } from "node:fs";
import { createServer, type Server, type Socket } from "node:net";
import { join } from "node:path";
import { describe, test, type TestContext } from "node:test";
import { makeHome, type TestHome } from "./helpers/home.js";
import { fixture, fixtureScript, requireNative } from "./helpers/native.js";
import { checkpointKillRestore, killApp, logLines, logSize, runApp, status, waitExited, waitLines } from "./helpers/scenario.js";

const TIMEOUT = 1_800_000; // per describe block (all its tests): generous for a busy machine; every wait inside is on a condition

function setup(t: TestContext): TestHome {
  requireNative();
  const h = makeHome();
  t.after(() => h.cleanup());
  return h;
}

interface InspectFd {
  fd: number;
  kind: string;
  path: string;
}
interface InspectJson {
  fds: InspectFd[];
  sockets: { inode: string; type: string; bytes: number; messages: number }[];
}

async function inspect(h: TestHome, id: string): Promise<InspectJson> {
  const r = await h.cli(["inspect", id, "--json"]);
  assert.equal(r.code, 0, `inspect ${id}: ${r.stderr}`);
  return (JSON.parse(r.stdout) as { image: InspectJson }).image;
}

const count = (l: string): number | null => {
  const m = /^count (\d+) wakeups (\d+)$/.exec(l);
  return m ? Number(m[1]) : null;
};

describe("Unix socket pairs inside the app", { timeout: TIMEOUT }, () => {
  test("python3 asyncio (self-pipe socketpair fed by call_soon_threadsafe): checkpoint, kill -9, restore, it continues", async (t) => {
    const h = setup(t);
    const python = execFileSync("python3", ["-c", "import sys; print(sys.executable)"], { encoding: "utf8" }).trim();
    const r = await checkpointKillRestore(h, {
      name: "aio",
      argv: [python, fixtureScript("asyncloop.py"), "150", "50"],
      ready: (ls) => ls.length >= 10,
      done: /^done 150$/,
      timeoutMs: 90_000,
    });
    const img = await inspect(h, r.id);
    const socks = img.fds.filter((f) => f.kind === "unix-socket");
    assert.equal(socks.length, 2, `the loop's socketpair is in the image: ${JSON.stringify(img.fds)}`);
    assert.match(socks[0]!.path, /stream, peer fd \d+/);
    // The restored run continues from the checkpoint: counts consecutive from there, callbacks
    // from the thread still run (wakeups grow), and it ends like an uninterrupted run.
    const pre = logLines(h, "aio");
    const k0 = count(pre.slice(0, r.before).filter((l) => count(l) !== null).pop() ?? "count 0 wakeups 0") ?? 0;
    const k1 = count(pre.slice(0, r.after).filter((l) => count(l) !== null).pop() ?? "count 0 wakeups 0") ?? 0;
    const counts = r.restored.map(count).filter((c): c is number => c !== null);
    assert.ok(counts.length > 0, `restored output: ${r.restored.slice(0, 3).join(" | ")}`);
    assert.ok(counts[0]! >= k0 + 1 && counts[0]! <= k1 + 1, `first count after restore ${counts[0]}, checkpoint between ${k0} and ${k1}`);
    counts.forEach((c, i) => assert.equal(c, counts[0]! + i, "counts are consecutive"));
    assert.equal(counts[counts.length - 1], 150);
    const w = r.restored.map((l) => /wakeups (\d+)$/.exec(l)).filter((m) => m).map((m) => Number(m![1]));
    assert.ok(w[w.length - 1]! > w[0]!, `call_soon_threadsafe callbacks still run after the restore: ${w[0]} .. ${w[w.length - 1]}`);
  });

  test("stream, datagram and seqpacket pairs with data queued both ways: same bytes, boundaries, flags and shutdown after restore", async (t) => {
    const h = setup(t);
    const go = join(h.home, "go");
    await runApp(h, "sp", [fixture("sockpair"), "pairs", go, "50"]);
    const ls = await waitLines(h, "sp", (l) => l.includes("ready"), "pairs set up", 60_000);
    const sent = ls.filter((l) => l.startsWith("sent "));
    assert.equal(sent.length, 6);
    // Two checkpoints: the first must not consume what the second (restored) one captures.
    const c1 = await h.cli(["checkpoint", "sp", "--json"]);
    assert.equal(c1.code, 0, c1.stderr);
    const c2 = await h.cli(["checkpoint", "sp", "--json"]);
    assert.equal(c2.code, 0, c2.stderr);
    const id = (JSON.parse(c2.stdout) as { id: string }).id;
    const img = await inspect(h, id);
    assert.equal(img.fds.filter((f) => f.kind === "unix-socket").length, 6);
    const bytes = img.sockets.map((s) => s.bytes).sort((a, b) => a - b);
    const want = sent.map((l) => Number(/bytes=(\d+)/.exec(l)![1])).sort((a, b) => a - b);
    assert.deepEqual(bytes, want, "every queue is in the image, whole");
    const after = logLines(h, "sp").length;
    await waitLines(h, "sp", (l) => l.length >= after + 2, "ticks after the checkpoints");
    await killApp(h, "sp");
    const from = logSize(h, "sp");
    const rr = await h.cli(["restore", "sp", "--json"]);
    assert.equal(rr.code, 0, `restore: ${rr.stderr}\n${h.log("sp")}`);
    await waitLines(h, "sp", (l) => l.some((x) => x.startsWith("tick")), "the restored process ticks", 60_000, from);
    writeFileSync(go, "");
    const out = await waitLines(h, "sp", (l) => l.includes("done"), "the restored process to read its queues", 60_000, from);
    const recv = out.filter((l) => l.startsWith("recv "));
    assert.deepEqual(recv, sent.map((l) => l.replace(/^sent/, "recv")), "each queue: same bytes, same datagrams, same checksum");
    assert.ok(out.includes("flags ok") && out.includes("pairs ok"), out.join("\n"));
    assert.deepEqual((await waitExited(h, "sp")).exit, { exit_code: 0 });
  });
});

describe("Unix sockets not entirely inside the app are refused", { timeout: TIMEOUT }, () => {
  async function refused(h: TestHome, name: string, fd: string, why: RegExp): Promise<void> {
    const n0 = logLines(h, name).length;
    const r = await h.cli(["checkpoint", name]);
    assert.equal(r.code, 1, `checkpoint must be refused: ${r.stdout}`);
    assert.match(r.stderr, new RegExp(`^tardigrade: checkpoint of ${name} failed: fd ${fd} \\(Unix (stream|datagram) socket`));
    assert.match(r.stderr, why);
    assert.match(r.stderr, /Nothing was committed; the app keeps running/);
    await waitLines(h, name, (l) => l.length >= n0 + 3, `${name} keeps ticking`);
    assert.equal((await status(h, name)).state, "running");
    assert.deepEqual(JSON.parse((await h.cli(["ls", name, "--json"])).stdout), []);
    assert.deepEqual(readdirSync(join(h.home, "store", "staging")), []);
  }

  test("fds in flight (SCM_RIGHTS queued in a socketpair)", async (t) => {
    const h = setup(t);
    await runApp(h, "scm", [fixture("sockpair"), "scm", join(h.home, "go"), "50"]);
    const ls = await waitLines(h, "scm", (l) => l.includes("ready"), "scm ready");
    const fd = /^scmfd (\d+)$/.exec(ls.find((l) => l.startsWith("scmfd"))!)![1]!;
    await refused(h, "scm", fd, /file descriptors are in flight in it \(SCM_RIGHTS/);
  });

  test("a Unix socket connected to a listener in another process", async (t) => {
    const h = setup(t);
    const path = join(h.home, "l.sock");
    const conns: Socket[] = [];
    const server: Server = createServer((c) => conns.push(c));
    await new Promise<void>((res) => server.listen(path, res));
    t.after(() => {
      conns.forEach((c) => c.destroy());
      server.close();
    });
    await runApp(h, "out", [fixture("sockpair"), "connect", path, join(h.home, "go"), "50"]);
    const ls = await waitLines(h, "out", (l) => l.includes("ready"), "connected");
    const fd = /^connfd (\d+)$/.exec(ls.find((l) => l.startsWith("connfd"))!)![1]!;
    await refused(h, "out", fd, new RegExp(`connected to ${path.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}\\).*outside the application.*close the connection before checkpointing`));
  });
});
