// TCP and UDP sockets (issue 13): real servers on loopback at private ports, checkpointed while
// they serve, killed -9 and restored; a client outside the app (this test) checks every answer.
// Listeners come back on the same address with the state of the checkpoint; connections whose peer
// is outside the app come back closed (the restore says so); a connection with both ends in the app
// comes back whole (TCP_REPAIR) with the bytes queued in it. Refusals: a port taken at restore time
// (the holder is named), netlink, packet and raw sockets.
import assert from "node:assert/strict";
import { execFile, execFileSync } from "node:child_process";
import { createSocket } from "node:dgram";
import { mkdirSync, writeFileSync } from "node:fs";
import { Agent, request } from "node:http";
import { connect, createServer, type Server, type Socket } from "node:net";
import { join } from "node:path";
import { describe, test, type TestContext } from "node:test";
import { makeHome, waitFor, type TestHome } from "./helpers/home.js";
import { freePort } from "./helpers/net.js";
import { fixtureScript, requireNative } from "./helpers/native.js";
import { killApp, logLines, logSize, runApp, status, waitExited, waitLines } from "./helpers/scenario.js";

const TIMEOUT = 300_000;

function setup(t: TestContext): TestHome {
  requireNative();
  const h = makeHome();
  t.after(() => h.cleanup());
  return h;
}

interface InetRow {
  fd: number;
  proto: string;
  family: string;
  state: string;
  local: string;
  remote: string;
  toRead: number;
  toSend: number;
  backlog: number;
  options: string[];
  restore?: string;
}

async function inspectInet(h: TestHome, id: string): Promise<InetRow[]> {
  const r = await h.cli(["inspect", id, "--json"]);
  assert.equal(r.code, 0, `inspect ${id}: ${r.stderr}`);
  return (JSON.parse(r.stdout) as { image: { inet: InetRow[] } }).image.inet;
}

async function checkpoint(h: TestHome, name: string): Promise<string> {
  const c = await h.cli(["checkpoint", name, "--json"]);
  assert.equal(c.code, 0, `checkpoint ${name}: ${c.stderr}`);
  return (JSON.parse(c.stdout) as { id: string }).id;
}

async function restore(h: TestHome, name: string): Promise<{ checkpoint: string; notes?: string[] }> {
  const r = await h.cli(["restore", name, "--json"]);
  assert.equal(r.code, 0, `restore ${name}: ${r.stderr}\n--- log ---\n${h.log(name)}`);
  return JSON.parse(r.stdout) as { checkpoint: string; notes?: string[] };
}

function get(port: number, agent: Agent, path = "/"): Promise<{ body: string; reused: boolean }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: "127.0.0.1", port, path, agent }, (res) => {
      let body = "";
      res.setEncoding("utf8").on("data", (d: string) => (body += d));
      res.on("end", () => resolve({ body, reused: req.reusedSocket }));
      res.on("error", reject);
    });
    req.on("error", reject);
    req.setTimeout(60_000, () => req.destroy(new Error("no answer in 60 s")));
    req.end();
  });
}

/** A line-based TCP client: send a line, wait for the answer line. */
class LineClient {
  private buf = "";
  private waiters: ((l: string) => void)[] = [];
  closed: Promise<void>;
  private constructor(readonly sock: Socket) {
    sock.setEncoding("utf8").on("data", (d: string) => {
      this.buf += d;
      let i;
      while ((i = this.buf.indexOf("\n")) >= 0 && this.waiters.length) {
        const line = this.buf.slice(0, i).replace(/\r$/, "");
        this.buf = this.buf.slice(i + 1);
        this.waiters.shift()!(line);
      }
    });
    this.closed = new Promise((res) => sock.on("close", () => res()));
    sock.on("error", () => undefined); // a reset shows as close
  }
  static open(port: number): Promise<LineClient> {
    return new Promise((resolve, reject) => {
      const s = connect(port, "127.0.0.1", () => resolve(new LineClient(s)));
      s.once("error", reject);
    });
  }
  ask(line: string): Promise<string> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no answer to ${JSON.stringify(line)} in 60 s`)), 60_000);
      this.waiters.push((l) => {
        clearTimeout(timer);
        resolve(l);
      });
      this.sock.write(line + "\n");
    });
  }
}

function redisCli(port: number, args: string[]): Promise<string> {
  return new Promise((resolve, reject) =>
    execFile("redis-cli", ["-h", "127.0.0.1", "-p", String(port), ...args], { timeout: 60_000 }, (e, out, err) => (e ? reject(new Error(`redis-cli ${args.join(" ")}: ${err || e.message}`)) : resolve(out.trim()))),
  );
}

function have(cmd: string): boolean {
  try {
    execFileSync(cmd, ["--version"], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
}

describe("TCP and UDP servers: checkpoint while serving, kill -9, restore", { timeout: TIMEOUT }, () => {
  test("node http server with keep-alive clients: the hit counter goes on from the checkpoint; the held connection is restored closed and said so", async (t) => {
    const h = setup(t);
    const port = await freePort();
    await runApp(h, "web", [process.execPath, fixtureScript("hitserver.mjs"), String(port)]);
    await waitLines(h, "web", (l) => l.includes(`listening ${port}`), "the server listens");
    const agent = new Agent({ keepAlive: true, maxSockets: 1 });
    t.after(() => agent.destroy());
    for (let i = 1; i <= 3; i++) {
      const r = await get(port, agent);
      assert.equal(r.body, `hit ${i}\n`);
      if (i > 1) assert.ok(r.reused, "keep-alive: one connection");
    }
    const id = await checkpoint(h, "web");
    const socks = await inspectInet(h, id);
    const lst = socks.find((s) => s.state === "listening");
    assert.ok(lst, `a listening socket in the image: ${JSON.stringify(socks)}`);
    assert.equal(lst.local, `127.0.0.1:${port}`);
    assert.equal(lst.proto, "tcp");
    assert.ok(lst.backlog > 0);
    const conn = socks.find((s) => s.state === "established");
    assert.ok(conn, `the keep-alive connection is in the image: ${JSON.stringify(socks)}`);
    assert.equal(conn.local, `127.0.0.1:${port}`);
    assert.equal(conn.restore, "closed");
    // the checkpoint did not disturb the live connection
    assert.deepEqual(await get(port, agent), { body: "hit 4\n", reused: true });
    assert.equal((await get(port, agent)).body, "hit 5\n");
    await killApp(h, "web");
    const r = await restore(h, "web");
    assert.equal(r.checkpoint, id);
    assert.ok(r.notes?.some((n) => n.includes(`fd ${conn.fd} `) && /restored closed/.test(n) && /ECONNRESET/.test(n)), `the restore says the connection is closed: ${JSON.stringify(r.notes)}`);
    // new keep-alive connections: the counter goes on from the checkpoint (3), not from 5 or 0
    const agent2 = new Agent({ keepAlive: true, maxSockets: 1 });
    t.after(() => agent2.destroy());
    for (let i = 4; i <= 7; i++) assert.equal((await get(port, agent2)).body, `hit ${i}\n`);
    assert.equal((await status(h, "web")).state, "running", "the restored connection's reset did not bring the server down");
    // and a second checkpoint of the restored server works
    const id2 = await checkpoint(h, "web");
    assert.ok((await inspectInet(h, id2)).some((s) => s.state === "listening" && s.local === `127.0.0.1:${port}`));
  });

  test("python3 asyncio TCP server with a running total and a UDP echo on the same port", async (t) => {
    const h = setup(t);
    const port = await freePort();
    await runApp(h, "aio", ["python3", fixtureScript("aioserver.py"), String(port)]);
    await waitLines(h, "aio", (l) => l.includes(`listening ${port}`), "the server listens");
    const c = await LineClient.open(port);
    t.after(() => c.sock.destroy());
    assert.equal(await c.ask("5"), "total 5");
    assert.equal(await c.ask("7"), "total 12");
    const udp = createSocket("udp4");
    t.after(() => udp.close());
    const echo = (msg: string): Promise<string> =>
      new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error("no UDP answer in 60 s")), 60_000);
        udp.once("message", (m) => {
          clearTimeout(timer);
          resolve(m.toString());
        });
        udp.send(msg, port, "127.0.0.1");
      });
    assert.equal(await echo("a"), "udp a");
    const id = await checkpoint(h, "aio");
    const socks = await inspectInet(h, id);
    assert.ok(socks.some((s) => s.proto === "tcp" && s.state === "listening" && s.local === `127.0.0.1:${port}`), JSON.stringify(socks));
    assert.ok(socks.some((s) => s.proto === "udp" && s.state === "unconnected" && s.local === `127.0.0.1:${port}`), JSON.stringify(socks));
    assert.ok(socks.some((s) => s.proto === "tcp" && s.state === "established" && s.restore === "closed"), JSON.stringify(socks));
    assert.equal(await c.ask("100"), "total 112", "the live connection goes on after the checkpoint");
    await killApp(h, "aio");
    await c.closed; // the client saw its connection drop with the app
    const r = await restore(h, "aio");
    assert.ok(r.notes?.some((n) => /restored closed/.test(n)), JSON.stringify(r.notes));
    const c2 = await LineClient.open(port);
    t.after(() => c2.sock.destroy());
    assert.equal(await c2.ask("1"), "total 13", "the total of the checkpoint (12), not of the moment of the kill (112)");
    assert.equal(await echo("b"), "udp b", "the UDP socket answers on the same port");
    assert.equal((await status(h, "aio")).state, "running");
  });

  test("python3 http.server on IPv6 [::1]: after kill -9 and restore it serves again on the same address", async (t) => {
    const h = setup(t);
    const port = await freePort();
    const dir = join(h.home, "www");
    mkdirSync(dir);
    writeFileSync(join(dir, "x.txt"), "hello v6\n");
    await runApp(h, "web6", ["python3", "-u", "-m", "http.server", String(port), "--bind", "::1", "--directory", dir]);
    const fetch6 = (): Promise<string> =>
      new Promise((resolve, reject) => {
        const req = request({ host: "::1", family: 6, port, path: "/x.txt", agent: false }, (res) => {
          let body = "";
          res.setEncoding("utf8").on("data", (d: string) => (body += d));
          res.on("end", () => resolve(body));
        });
        req.on("error", reject);
        req.end();
      });
    await waitFor("http.server answers on [::1]", () => fetch6().then((b) => b === "hello v6\n", () => false), 120_000, 100);
    const id = await checkpoint(h, "web6");
    const socks = await inspectInet(h, id);
    assert.ok(socks.some((s) => s.family === "ipv6" && s.state === "listening" && s.local === `[::1]:${port}` && s.backlog === 5), JSON.stringify(socks));
    await killApp(h, "web6");
    await restore(h, "web6");
    assert.equal(await fetch6(), "hello v6\n");
  });

  test("redis-server: keys of the checkpoint after kill -9 and restore; a connection held across the checkpoint", { skip: !have("redis-server") && "redis-server is not installed" }, async (t) => {
    const h = setup(t);
    const port = await freePort();
    await runApp(h, "redis", ["redis-server", "--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--daemonize", "no"]);
    await waitFor("redis answers", () => redisCli(port, ["PING"]).then((o) => o === "PONG", () => false), 120_000, 100);
    const kv = (a: number, b: number): string[] => Array.from({ length: b - a + 1 }, (_, i) => [`k${a + i}`, `v${a + i}`]).flat();
    assert.equal(await redisCli(port, ["MSET", ...kv(1, 100)]), "OK");
    const held = await LineClient.open(port);
    t.after(() => held.sock.destroy());
    assert.equal(await held.ask("PING"), "+PONG");
    const id = await checkpoint(h, "redis");
    const socks = await inspectInet(h, id);
    assert.ok(socks.some((s) => s.state === "listening" && s.local === `127.0.0.1:${port}` && s.backlog === 511), JSON.stringify(socks));
    assert.ok(socks.some((s) => s.state === "established" && s.restore === "closed"), JSON.stringify(socks));
    assert.equal(await held.ask("GET k7"), "$2", "the held connection works after the checkpoint");
    assert.equal(await redisCli(port, ["MSET", ...kv(101, 150)]), "OK");
    assert.equal(await redisCli(port, ["DBSIZE"]), "150");
    await killApp(h, "redis");
    await held.closed;
    const r = await restore(h, "redis");
    assert.ok(r.notes?.some((n) => /restored closed/.test(n)), JSON.stringify(r.notes));
    assert.equal(await redisCli(port, ["DBSIZE"]), "100", "exactly the keys of the checkpoint");
    assert.equal(await redisCli(port, ["GET", "k100"]), "v100");
    assert.equal(await redisCli(port, ["GET", "k120"]), "");
    assert.equal(await redisCli(port, ["SET", "after", "1"]), "OK");
    assert.equal((await status(h, "redis")).state, "running");
  });
});

describe("restore --replace keeps the connections to outside peers (traffic held with nftables, TCP_REPAIR)", { timeout: TIMEOUT }, () => {
  test("redis-server checkpointed while redis-benchmark runs: after restore --replace the idle held connection keeps working (same connection, no reconnect); one that carried data since is restored closed", { skip: (!have("redis-server") && "redis-server is not installed") || (!have("nft") && "nft (Debian nftables) is not installed") }, async (t) => {
    const h = setup(t);
    const port = await freePort();
    await runApp(h, "redis", ["redis-server", "--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--daemonize", "no"]);
    await waitFor("redis answers", () => redisCli(port, ["PING"]).then((o) => o === "PONG", () => false), 120_000, 100);
    assert.equal(await redisCli(port, ["SET", "n", "10"]), "OK");
    const held = await LineClient.open(port);
    const busy = await LineClient.open(port);
    t.after(() => {
      held.sock.destroy();
      busy.sock.destroy();
    });
    const heldPort = held.sock.localPort!;
    const busyPort = busy.sock.localPort!; // (read now: a closed socket no longer has it)
    let heldClosed = false;
    void held.closed.then(() => (heldClosed = true));
    assert.equal(await held.ask("INCR n"), ":11");
    assert.equal(await busy.ask("PING"), "+PONG");
    const bench = new Promise<string>((resolve, reject) =>
      execFile("redis-benchmark", ["-h", "127.0.0.1", "-p", String(port), "-n", "20000", "-c", "4", "-q", "-t", "set,get"], { timeout: 240_000 }, (e, out) => (e ? reject(e) : resolve(out))),
    );
    await waitFor("redis-benchmark connected", async () => Number(/connected_clients:(\d+)/.exec(await redisCli(port, ["INFO", "clients"]))?.[1] ?? 0) >= 5, 60_000, 20);
    const id = await checkpoint(h, "redis");
    assert.match(await bench, /GET/, "the benchmark ran through the checkpoint");
    const socks = await inspectInet(h, id);
    assert.ok(socks.filter((s) => s.state === "established").length >= 2, JSON.stringify(socks));
    assert.equal(await busy.ask("PING"), "+PONG", "this one carries data after the checkpoint");
    const r = await h.cli(["restore", "redis", "--replace", "--json"]);
    assert.equal(r.code, 0, r.stderr);
    const notes = (JSON.parse(r.stdout) as { notes?: string[] }).notes ?? [];
    assert.ok(notes.some((n) => n.includes(`127.0.0.1:${heldPort} established`) && /kept: restored with TCP_REPAIR/.test(n)), JSON.stringify(notes));
    assert.ok(notes.some((n) => n.includes(`127.0.0.1:${busyPort} established`) && /restored closed \(it carried data since the checkpoint/.test(n)), JSON.stringify(notes));
    // the held connection: same socket, the state of the checkpoint (n = 11), and it goes on
    assert.equal(await held.ask("INCR n"), ":12");
    assert.equal(await held.ask("GET n"), "$2");
    assert.equal(heldClosed, false, "no reconnect: the client's socket never closed");
    await busy.closed; // reset
    assert.equal(await redisCli(port, ["GET", "n"]), "12");
    const tables = execFileSync("nft", ["list", "tables"], { encoding: "utf8" });
    assert.ok(!tables.includes(`tardigrade_redis_`), `the hold is released: ${tables}`);
  });
});

describe("a TCP connection with both ends in the app is restored whole", { timeout: TIMEOUT }, () => {
  test("loopback connection with 50000 unread bytes queued: after kill -9 and restore the ticks go on and the queued bytes arrive intact", async (t) => {
    const h = setup(t);
    const gate = join(h.home, "gate");
    await runApp(h, "pair", ["python3", fixtureScript("tcppair.py"), gate, "50000", "50"]);
    await waitLines(h, "pair", (l) => l.filter((x) => x.startsWith("tick")).length >= 3, "ticks");
    const id = await checkpoint(h, "pair");
    const socks = await inspectInet(h, id);
    const est = socks.filter((s) => s.state === "established");
    assert.equal(est.length, 2, JSON.stringify(socks));
    assert.ok(est.every((s) => s.restore === "whole"), JSON.stringify(socks));
    assert.ok(est.some((s) => s.toRead === 50000), `the unread bytes are in the image: ${JSON.stringify(est)}`);
    const at = logLines(h, "pair").filter((l) => l.startsWith("tick")).length;
    await waitLines(h, "pair", (l) => l.filter((x) => x.startsWith("tick")).length >= at + 3, "ticks after the checkpoint");
    await killApp(h, "pair");
    const from = logSize(h, "pair");
    const r = await restore(h, "pair");
    assert.equal(r.notes?.filter((n) => /restored whole/.test(n)).length, 2, JSON.stringify(r.notes));
    await waitLines(h, "pair", (l) => l.some((x) => x.startsWith("tick")), "ticks after the restore", 120_000, from);
    writeFileSync(gate, "");
    const out = await waitLines(h, "pair", (l) => l.includes("done"), "the queued bytes read", 120_000, from);
    // byte i = i % 251: the sum of 50000 such bytes
    let sum = 0;
    for (let i = 0; i < 50000; i++) sum += i % 251;
    assert.ok(out.includes(`queued 50000 ${sum}`), out.join("\n"));
    const ticks = out.filter((l) => l.startsWith("tick")).map((l) => Number(l.split(" ")[1]));
    ticks.forEach((n, i) => assert.equal(n, ticks[0]! + i, "ticks consecutive"));
    assert.ok(ticks[0]! > 1 && ticks[0]! <= at + 1, `first tick after the restore ${ticks[0]}: continues from the checkpoint (${at} ticks then)`);
    assert.deepEqual((await waitExited(h, "pair")).exit, { exit_code: 0 });
  });
});

describe("sockets refused", { timeout: TIMEOUT }, () => {
  test("a port taken at restore time: the restore refuses naming the address and the holder's pid; once freed, the restore works", async (t) => {
    const h = setup(t);
    const port = await freePort();
    await runApp(h, "web", [process.execPath, fixtureScript("hitserver.mjs"), String(port)]);
    await waitLines(h, "web", (l) => l.includes(`listening ${port}`), "the server listens");
    const agent = new Agent({ keepAlive: false });
    assert.equal((await get(port, agent)).body, "hit 1\n");
    await checkpoint(h, "web");
    await killApp(h, "web");
    const squatter: Server = createServer((s) => s.destroy());
    await new Promise<void>((res) => squatter.listen(port, "127.0.0.1", res));
    const r = await h.cli(["restore", "web"]);
    assert.equal(r.code, 1, r.stdout);
    assert.match(r.stderr, new RegExp(`^tardigrade: cannot restore web from web@1: .*fd \\d+ \\(TCP socket 127\\.0\\.0\\.1:${port} \\(listening\\)\\): the address is taken: held by pid ${process.pid} \\(`));
    assert.equal((await status(h, "web")).state, "exited");
    await new Promise<void>((res) => squatter.close(() => res()));
    await restore(h, "web");
    assert.equal((await get(port, agent)).body, "hit 2\n");
  });

  for (const [kind, what] of [
    ["netlink", /netlink socket, protocol 0 \(route\)/],
    ["packet", /packet socket \(raw\)/],
    ["raw", /raw IPv4 socket, IP protocol 1/],
  ] as const) {
    test(`a ${kind} socket: checkpoint refuses naming the fd and its kind; nothing committed, the app keeps running`, async (t) => {
      const h = setup(t);
      await runApp(h, kind, ["python3", fixtureScript("othersock.py"), kind, "50"]);
      const ls = await waitLines(h, kind, (l) => l.some((x) => x.startsWith("sockfd")) && l.length >= 3, "ready");
      const fd = /^sockfd (\d+)$/.exec(ls.find((l) => l.startsWith("sockfd"))!)![1];
      const r = await h.cli(["checkpoint", kind]);
      assert.equal(r.code, 1, r.stdout);
      assert.match(r.stderr, new RegExp(`^tardigrade: checkpoint of ${kind} failed: fd ${fd} \\(socket:\\[\\d+\\], `));
      assert.match(r.stderr, what);
      assert.match(r.stderr, /Nothing was committed/);
      const n0 = logLines(h, kind).length;
      await waitLines(h, kind, (l) => l.length >= n0 + 3, "keeps counting");
      assert.deepEqual(JSON.parse((await h.cli(["ls", kind, "--json"])).stdout), []);
    });
  }
});

describe("a daemonizing server (issue 12: the app's first process exits 0 leaving its daemon)", { timeout: TIMEOUT }, () => {
  test("redis-server --daemonize yes: followed after its parent exits, checkpointed, killed and restored with the keys of the checkpoint; the app ends when the server shuts down", { skip: !have("redis-server") && "redis-server is not installed" }, async (t) => {
    const h = setup(t);
    const port = await freePort();
    const dir = join(h.home, "redis-files");
    mkdirSync(dir);
    await runApp(h, "rdd", ["redis-server", "--daemonize", "yes", "--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--pidfile", join(dir, "redis.pid"), "--logfile", join(dir, "redis.log")]);
    await waitFor("redis answers", () => redisCli(port, ["PING"]).then((o) => o === "PONG", () => false), 120_000, 100);
    await waitFor("the init follows the daemon", () => h.log("rdd").includes("tardigrade follows it as the app's main process"));
    assert.equal((await status(h, "rdd")).state, "running");
    assert.equal(await redisCli(port, ["SET", "k", "at-checkpoint"]), "OK");
    await checkpoint(h, "rdd");
    assert.equal(await redisCli(port, ["SET", "k", "after"]), "OK");
    await killApp(h, "rdd");
    await restore(h, "rdd");
    assert.equal(await redisCli(port, ["GET", "k"]), "at-checkpoint", "the value of the checkpoint");
    await redisCli(port, ["SHUTDOWN", "NOSAVE"]).catch(() => "");
    const st = await waitExited(h, "rdd");
    assert.equal(st.exit?.exit_code, 0, "the app ends with its server");
  });
});
