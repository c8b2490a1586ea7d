// Each flush trigger on its own: nothing is durable before it fires, everything queued
// is durable after, and the flush records the trigger as its reason.
import { test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { MirrorServer, type MirrorServerOptions } from "../src/mirror/server.js";
import { MirrorClient, type MirrorStateEvent } from "../src/mirror/client.js";
import { SyntheticSource } from "../src/mirror/synthetic.js";
import { withAdmin } from "../src/mirror/admin.js";
import { captureLogger, startServerProcess, tempDir, waitFor, writeTokens, type LogLine } from "../src/mirror/testing.js";
import { TokenTable } from "../src/mirror/tokens.js";

const TOKEN = "token-alpha-0123456789";
const HOUR = 3_600_000;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

interface Rig {
  server: MirrorServer;
  client: MirrorClient;
  gen: SyntheticSource;
  url: string;
  lines: LogLine[];
  events: MirrorStateEvent[];
  done(): Promise<void>;
}

async function rig(opts: Partial<MirrorServerOptions>, pages = 32): Promise<Rig> {
  const tmp = tempDir();
  const { logger, lines } = await captureLogger();
  const server = await MirrorServer.start({
    storeDir: join(tmp.dir, "store"),
    tokens: new TokenTable([["alpha", TOKEN]]),
    maxDelayMs: HOUR,
    maxQueued: 1000,
    logger,
    ...opts,
  });
  const url = `tg://127.0.0.1:${server.address().port}`;
  const client = new MirrorClient({ url, source: "alpha", token: TOKEN, ack: "received" });
  const events: MirrorStateEvent[] = [];
  client.on("state", (e: MirrorStateEvent) => events.push(e));
  const gen = new SyntheticSource("alpha", { pages, sharedFraction: 0, dirtyFraction: 1 });
  return {
    server,
    client,
    gen,
    url,
    lines,
    events,
    done: async () => {
      await client.close();
      await server.close();
      tmp.cleanup();
    },
  };
}

function flushLogs(lines: LogLine[]): LogLine[] {
  return lines.filter((l) => typeof l.msg === "string" && l.msg.startsWith("flush committed"));
}

test("trigger: cache above its high-water mark", { timeout: 120_000 }, async () => {
  // 32 pages of 4 KiB = 128 KiB per checkpoint; high-water = 1 MiB / 2 = 512 KiB.
  const r = await rig({ cacheMaxBytes: 1024 * 1024 });
  try {
    for (let i = 0; i < 3; i++) await r.client.send(r.gen.next());
    await sleep(200);
    assert.equal(r.server.store.committedGeneration, 0, "nothing durable below the high-water mark");
    assert.equal(r.server.metrics().flushes, 0);
    const c4 = r.gen.next();
    await r.client.send(c4); // crosses 512 KiB
    await waitFor(() => r.server.store.committedGeneration === 1, 60_000, "flush");
    await waitFor(() => r.client.state(c4.id) === "durable", 60_000, "durable ack");
    const f = flushLogs(r.lines);
    assert.equal(f.length, 1);
    assert.deepEqual(f[0]?.reasons, ["cache"]);
    assert.equal(f[0]?.checkpoints, 4);
    assert.equal(r.server.metrics().flushesByReason.cache, 1);
    // The received ack of the triggering checkpoint went out before the flush committed.
    const ev = r.events.filter((e) => e.id === c4.id).map((e) => e.state);
    assert.deepEqual(ev, ["queued", "received", "durable"]);
  } finally {
    await r.done();
  }
});

test("trigger: oldest queued checkpoint older than max-delay", { timeout: 120_000 }, async () => {
  const r = await rig({ maxDelayMs: 400 });
  try {
    const t0 = Date.now();
    const c = r.gen.next();
    await r.client.send(c);
    await sleep(150);
    assert.equal(r.server.store.committedGeneration, 0, "not durable before max-delay");
    await waitFor(() => r.client.state(c.id) === "durable", 60_000, "durable");
    const elapsed = Date.now() - t0;
    assert.ok(elapsed >= 400, `durable after ${elapsed} ms`);
    assert.deepEqual(flushLogs(r.lines)[0]?.reasons, ["delay"]);
    assert.equal(r.server.metrics().flushesByReason.delay, 1);
  } finally {
    await r.done();
  }
});

test("trigger: queue length", { timeout: 120_000 }, async () => {
  const r = await rig({ maxQueued: 3 });
  try {
    await r.client.send(r.gen.next());
    await r.client.send(r.gen.next());
    await sleep(300);
    assert.equal(r.server.store.committedGeneration, 0, "2 queued < 3: nothing durable");
    const c3 = r.gen.next();
    await r.client.send(c3);
    await waitFor(() => r.client.state(c3.id) === "durable", 60_000, "durable");
    const f = flushLogs(r.lines);
    assert.deepEqual(f[0]?.reasons, ["queue"]);
    assert.equal(f[0]?.checkpoints, 3);
  } finally {
    await r.done();
  }
});

test("trigger: explicit flush (mirror flush)", { timeout: 120_000 }, async () => {
  const r = await rig({});
  try {
    const a = r.gen.next();
    const b = r.gen.next();
    await r.client.send(a);
    await r.client.send(b);
    await sleep(300);
    assert.equal(r.server.store.committedGeneration, 0);
    const rows = await withAdmin({ url: r.url, token: TOKEN }, (x) => x.list());
    assert.deepEqual(rows.map((x) => x.state), ["received", "received"]);
    const out = await withAdmin({ url: r.url, token: TOKEN }, (x) => x.flush());
    assert.equal(out.checkpoints, 2);
    assert.deepEqual(out.reasons, ["explicit"]);
    await waitFor(() => r.client.state(b.id) === "durable", 60_000, "durable");
    const rows2 = await withAdmin({ url: r.url, token: TOKEN }, (x) => x.list());
    assert.deepEqual(rows2.map((x) => x.state), ["durable", "durable"]);
  } finally {
    await r.done();
  }
});

test("trigger: a restore (fetch) that needs a queued checkpoint", { timeout: 120_000 }, async () => {
  const r = await rig({});
  try {
    const a = r.gen.next();
    await r.client.send(a);
    await sleep(200);
    assert.equal(r.server.store.committedGeneration, 0);
    const got = await withAdmin({ url: r.url, token: TOKEN }, (x) => x.fetch("alpha", "latest"));
    assert.equal(got.header.id, a.id);
    assert.deepEqual(flushLogs(r.lines)[0]?.reasons, ["restore"]);
  } finally {
    await r.done();
  }
});

test("trigger: SIGTERM flushes and exits; the checkpoints are durable after restart", { timeout: 120_000 }, async () => {
  const tmp = tempDir();
  const tokens = writeTokens(tmp.dir, { alpha: TOKEN });
  const store = join(tmp.dir, "store");
  const args = ["--listen", "127.0.0.1:0", "--store", store, "--tokens", tokens, "--max-delay", "1h"];
  let srv = await startServerProcess(args);
  let client: MirrorClient | undefined;
  try {
    client = new MirrorClient({ url: srv.url, source: "alpha", token: TOKEN, ack: "received" });
    const gen = new SyntheticSource("alpha", { pages: 32 });
    const ids: string[] = [];
    for (let i = 0; i < 3; i++) {
      const c = gen.next();
      ids.push(c.id);
      await client.send(c);
    }
    await sleep(200);
    assert.equal(flushLogs(srv.logs).length, 0, "nothing flushed before SIGTERM");
    const rows = await withAdmin({ url: srv.url, token: TOKEN }, (x) => x.list());
    assert.deepEqual(rows.map((x) => x.state), ["received", "received", "received"]);
    srv.kill("SIGTERM");
    const exit = await srv.exited;
    assert.equal(exit.code, 0, `exit ${JSON.stringify(exit)} stderr ${srv.stderr.join("")}`);
    const f = flushLogs(srv.logs);
    assert.equal(f.length, 1);
    assert.deepEqual(f[0]?.reasons, ["shutdown"]);
    assert.equal(f[0]?.checkpoints, 3);
    await client.close();
    client = undefined;
    srv = await startServerProcess(args);
    const rows2 = await withAdmin({ url: srv.url, token: TOKEN }, (x) => x.list());
    assert.deepEqual(rows2.map((x) => [x.id, x.state]), ids.map((id) => [id, "durable"]));
  } finally {
    await client?.close();
    srv.kill("SIGKILL");
    await srv.exited;
    tmp.cleanup();
  }
});
