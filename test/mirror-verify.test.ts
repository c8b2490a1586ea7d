// Protocol 2's batched Chunks frames: the codec across arbitrary splits, and content
// verification, which the flush does before anything is written: a chunk whose bytes
// do not match its name never becomes durable, its source is told, other sources keep
// going, and no source's unverified bytes are used for another source's checkpoint.
import { test } from "node:test";
import assert from "node:assert/strict";
import { connect } from "node:net";
import { join } from "node:path";
import { MirrorServer } from "../src/mirror/server.js";
import { MirrorClient } from "../src/mirror/client.js";
import { SyntheticSource } from "../src/mirror/synthetic.js";
import { withAdmin } from "../src/mirror/admin.js";
import { TokenTable } from "../src/mirror/tokens.js";
import { captureLogger, tempDir, waitFor } from "../src/mirror/testing.js";
import { FrameDecoder, FrameType, encodeFrame, encodeFrameParts, encodeJsonFrame, type Frame } from "../src/mirror/frames.js";
import { decodeChunks, encodeCheckpointHeader, encodeChunksTable } from "../src/mirror/messages.js";
import { headerOf, sha256hex, type MirrorCheckpoint } from "../src/mirror/objects.js";

const A = "token-alpha-0123456789";
const B = "token-bravo-0123456789";

test("Chunks frames decode across arbitrary splits, without copying whole chunks", () => {
  const chunks = [Buffer.alloc(5000, 1), Buffer.alloc(0), Buffer.alloc(70_000, 2), Buffer.alloc(4096, 3)];
  const hashes = chunks.map((c) => sha256hex(c));
  const frame = Buffer.concat(encodeFrameParts(FrameType.Chunks, [encodeChunksTable(hashes, chunks.map((c) => c.length)), ...chunks]));
  for (const step of [1, 7, 12, 100, 4096, 65536, frame.length]) {
    const d = new FrameDecoder();
    const got: Frame[] = [];
    for (let i = 0; i < frame.length; i += step) {
      d.push(frame.subarray(i, i + step));
      let f;
      while ((f = d.next()) !== undefined) got.push(f);
    }
    assert.equal(got.length, 1);
    const f = got[0] as Frame;
    assert.equal(f.type, FrameType.Chunks);
    const parts = f.parts ?? [];
    const total = parts.reduce((n, p) => n + p.length, 0);
    const dec = decodeChunks(parts, total);
    assert.deepEqual(dec.hashes, hashes);
    dec.data.forEach((x, i) => assert.ok(x.equals(chunks[i] as Buffer), `chunk ${i} at step ${step}`));
  }
  // A corrupted byte anywhere in a Chunks frame fails its CRC.
  const bad = Buffer.from(frame);
  bad[bad.length - 10] = (bad[bad.length - 10] as number) ^ 1;
  const d = new FrameDecoder();
  d.push(bad);
  assert.throws(() => d.next(), /checksum mismatch in Chunks frame/);
  // Layout errors are malformed frames.
  const table = encodeChunksTable([hashes[0] as string], [100]);
  assert.throws(() => decodeChunks([table, Buffer.alloc(99)], table.length + 99), /runs past the|table describes/);
  assert.throws(() => decodeChunks([Buffer.alloc(4)], 4), /holds 0 chunks/);
});

interface Raw {
  frames: Frame[];
  closed: Promise<void>;
  write(b: Buffer): void;
  waitFor(type: FrameType, timeoutMs?: number): Promise<Frame>;
  end(): void;
}

function rawSource(port: number): Raw {
  const s = connect({ host: "127.0.0.1", port, allowHalfOpen: true });
  const dec = new FrameDecoder();
  const frames: Frame[] = [];
  s.on("data", (d: Buffer) => {
    dec.push(d);
    let f;
    while ((f = dec.next()) !== undefined) frames.push(f);
  });
  s.on("error", () => undefined);
  s.on("end", () => s.end());
  const closed = new Promise<void>((r) => s.on("close", () => r()));
  return {
    frames,
    closed,
    write: (b) => s.write(b),
    waitFor: async (type, timeoutMs = 10_000) => {
      await waitFor(() => frames.some((f) => f.type === type), timeoutMs, `${FrameType[type]} frame`);
      return frames.find((f) => f.type === type) as Frame;
    },
    end: () => s.destroy(),
  };
}

/** Offer, then every chunk in one Chunks frame (with `corrupt` hashes given wrong bytes of the same size), then Commit. */
function sendBatched(raw: Raw, c: MirrorCheckpoint, corrupt: Set<string>): void {
  raw.write(encodeFrame(FrameType.Offer, encodeCheckpointHeader(headerOf(c))));
  const hashes = [...c.chunks.keys()];
  const data = hashes.map((h) => (corrupt.has(h) ? Buffer.alloc((c.chunks.get(h) as Buffer).length, 0x5a) : (c.chunks.get(h) as Buffer)));
  raw.write(Buffer.concat(encodeFrameParts(FrameType.Chunks, [encodeChunksTable(hashes, data.map((d) => d.length)), ...data])));
  raw.write(encodeJsonFrame(FrameType.Commit, { id: c.id }));
}

async function startServer(): Promise<{ server: MirrorServer; url: string; port: number; cleanup(): Promise<void> }> {
  const tmp = tempDir();
  const { logger } = await captureLogger();
  const server = await MirrorServer.start({
    storeDir: join(tmp.dir, "store"),
    tokens: new TokenTable([
      ["alpha", A],
      ["bravo", B],
    ]),
    maxDelayMs: 3_600_000,
    logger,
  });
  const port = server.address().port;
  return {
    server,
    port,
    url: `tg://127.0.0.1:${port}`,
    cleanup: async () => {
      await server.close();
      tmp.cleanup();
    },
  };
}

test("a batched chunk whose bytes do not match its name: cached, never durable, its source told; others go on", { timeout: 30_000 }, async () => {
  const { server, url, port, cleanup } = await startServer();
  const bravo = new MirrorClient({ url, source: "bravo", token: B, ack: "durable" });
  const raw = rawSource(port);
  try {
    const c = new SyntheticSource("alpha", { pages: 8, sharedFraction: 0 }).next();
    const victim = [...c.chunks.keys()][5] as string;
    raw.write(encodeJsonFrame(FrameType.Hello, { token: A, role: "source" }));
    sendBatched(raw, c, new Set([victim]));
    // Received means cached and queued: the bytes are checked by the flush.
    await raw.waitFor(FrameType.Received);
    const bravoDurable = bravo.send(new SyntheticSource("bravo", { pages: 8 }).next());
    await waitFor(() => server.metrics().queued === 2, 10_000, "both queued");
    const out = await withAdmin({ url, token: B }, (a) => a.flush());
    assert.equal(out.checkpoints, 1, "only bravo's checkpoint committed");
    assert.equal(await bravoDurable, "durable");
    const err = await raw.waitFor(FrameType.Error);
    const e = JSON.parse(err.payload.toString()) as { code: string; message: string };
    assert.equal(e.code, "checksum-mismatch");
    assert.match(e.message, new RegExp(`chunk ${victim} of checkpoint alpha/${c.id} hashes to [0-9a-f]{64}`));
    assert.match(e.message, /were not made durable and must be sent again/);
    await raw.closed;
    assert.equal(raw.frames.filter((f) => f.type === FrameType.Durable).length, 0, "no durable ack for alpha");
    assert.deepEqual(await withAdmin({ url, token: A }, (a) => a.list()), [], "nothing of alpha's is visible");
    assert.equal(server.store.hasChunk(victim), false, "the bad bytes were never written");
    const st = server.cache.stats();
    assert.equal(st.bytes, 0, "the dropped checkpoint's chunks left the cache");
    assert.equal(st.reserved, 0);
    // alpha resends with good bytes (as its client does after reconnecting): accepted.
    const again = new MirrorClient({ url, source: "alpha", token: A, ack: "durable" });
    try {
      const d = again.send(c);
      await waitFor(() => again.state(c.id) === "received", 10_000, "alpha received again");
      await withAdmin({ url, token: A }, (a) => a.flush());
      assert.equal(await d, "durable");
    } finally {
      await again.close();
    }
    const got = await withAdmin({ url, token: A }, (a) => a.fetch("alpha", c.id));
    assert.ok(got.chunks.get(victim)?.equals(c.chunks.get(victim) as Buffer));
  } finally {
    raw.end();
    await bravo.close();
    await cleanup();
  }
});

test("a batched chunk never asked for, and a malformed Chunks table, close the connection at once", { timeout: 30_000 }, async () => {
  const { url, port, cleanup } = await startServer();
  try {
    const c = new SyntheticSource("alpha", { pages: 2 }).next();
    const r1 = rawSource(port);
    r1.write(encodeJsonFrame(FrameType.Hello, { token: A, role: "source" }));
    r1.write(encodeFrame(FrameType.Offer, encodeCheckpointHeader(headerOf(c))));
    const stray = Buffer.alloc(4096, 9);
    r1.write(Buffer.concat(encodeFrameParts(FrameType.Chunks, [encodeChunksTable([sha256hex(stray)], [4096]), stray])));
    const e1 = JSON.parse((await r1.waitFor(FrameType.Error)).payload.toString()) as { code: string; message: string };
    assert.equal(e1.code, "out-of-order");
    assert.match(e1.message, /was not asked for/);
    const r2 = rawSource(port);
    r2.write(encodeJsonFrame(FrameType.Hello, { token: A, role: "source" }));
    r2.write(encodeFrame(FrameType.Offer, encodeCheckpointHeader(headerOf(c))));
    const [h] = [...c.chunks.keys()];
    r2.write(Buffer.concat(encodeFrameParts(FrameType.Chunks, [encodeChunksTable([h as string], [4096]), Buffer.alloc(100)])));
    const e2 = JSON.parse((await r2.waitFor(FrameType.Error)).payload.toString()) as { code: string; message: string };
    assert.equal(e2.code, "malformed-frame");
    await Promise.all([r1.closed, r2.closed]);
    // The connection-level failures left nothing behind.
    assert.deepEqual(await withAdmin({ url, token: A }, (a) => a.list()), []);
  } finally {
    await cleanup();
  }
});

test("another source's unverified bytes are never used for a checkpoint: it sends its own copy", { timeout: 30_000 }, async () => {
  const { server, url, port, cleanup } = await startServer();
  const bravo = new MirrorClient({ url, source: "bravo", token: B, ack: "durable" });
  const raw = rawSource(port);
  try {
    // Both sources share half their pages (same seed); alpha sends garbage for a shared one.
    const ca = new SyntheticSource("alpha", { pages: 8, sharedFraction: 0.5, seed: "iso" }).next();
    const cb = new SyntheticSource("bravo", { pages: 8, sharedFraction: 0.5, seed: "iso" }).next();
    const shared = [...ca.chunks.keys()].filter((h) => cb.chunks.has(h));
    assert.equal(shared.length, 4);
    const poisoned = shared[0] as string;
    raw.write(encodeJsonFrame(FrameType.Hello, { token: A, role: "source" }));
    sendBatched(raw, ca, new Set([poisoned]));
    await raw.waitFor(FrameType.Received);
    assert.ok(server.cache.has(poisoned), "alpha's bytes are cached (unverified)");
    const durable = bravo.send(cb);
    await waitFor(() => bravo.state(cb.id) === "received", 10_000, "bravo received");
    assert.equal(bravo.stats.chunksSent, 8, "bravo was asked for every chunk alpha sent unverified, not deduplicated against them");
    await withAdmin({ url, token: B }, (a) => a.flush());
    assert.equal(await durable, "durable");
    const got = await withAdmin({ url, token: B }, (a) => a.fetch("bravo", cb.id));
    for (const [h, d] of cb.chunks) assert.ok(got.chunks.get(h)?.equals(d), `bravo's chunk ${h} intact`);
    assert.ok(server.store.hasChunk(poisoned));
  } finally {
    raw.end();
    await bravo.close();
    await cleanup();
  }
});
