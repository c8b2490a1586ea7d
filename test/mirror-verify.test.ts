// Protocol 2's batched Chunks frames: the codec across arbitrary splits, and content
// verification. The destination trusts a source with its own chunks (the frame CRC
// covers them in transit) and checks a chunk's bytes against its name only when
// another source would share it: no source's wrong bytes ever reach another source's
// checkpoint, the sharer sends its own copy instead, and that copy repairs the first
// source's checkpoints. Fetches check every chunk end to end.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, writeFileSync } from "node:fs";
import { connect } from "node:net";
import { join } from "node:path";
import { MirrorServer, type MirrorServerOptions } from "../src/mirror/server.js";
import { DiskStore } from "../src/mirror/disk-store.js";
import { MirrorClient } from "../src/mirror/client.js";
import { SyntheticSource } from "../src/mirror/synthetic.js";
import { withAdmin } from "../src/mirror/admin.js";
import { TokenTable } from "../src/mirror/tokens.js";
import { captureLogger, tempDir, waitFor } from "../src/mirror/testing.js";
import { FrameDecoder, FrameType, encodeFrame, encodeFrameParts, encodeJsonFrame, type Frame } from "../src/mirror/frames.js";
import { decodeChunks, decodeWant, encodeCheckpointHeader, encodeChunksTable } from "../src/mirror/messages.js";
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

/** Chunks (with `corrupt` hashes given wrong bytes of the same size) in one Chunks frame, then Commit. */
function sendChunks(raw: Raw, c: MirrorCheckpoint, hashes: string[], corrupt: Set<string>): void {
  const data = hashes.map((h) => (corrupt.has(h) ? Buffer.alloc((c.chunks.get(h) as Buffer).length, 0x5a) : (c.chunks.get(h) as Buffer)));
  raw.write(Buffer.concat(encodeFrameParts(FrameType.Chunks, [encodeChunksTable(hashes, data.map((d) => d.length)), ...data])));
  raw.write(encodeJsonFrame(FrameType.Commit, { id: c.id }));
}

/** Offer, then every chunk in one Chunks frame (see sendChunks), then Commit: for a source nothing of which is on the mirror. */
function sendBatched(raw: Raw, c: MirrorCheckpoint, corrupt: Set<string>): void {
  raw.write(encodeFrame(FrameType.Offer, encodeCheckpointHeader(headerOf(c))));
  sendChunks(raw, c, [...c.chunks.keys()], corrupt);
}

/** The hashes a Want frame asks for. */
function wantedHashes(want: Frame, c: MirrorCheckpoint): string[] {
  const h = headerOf(c);
  return decodeWant(want.payload, h.chunks.length).wanted.map((i) => (h.chunks[i] as { hash: string }).hash);
}

interface Started {
  server: MirrorServer;
  url: string;
  port: number;
  logs: { msg?: unknown; [k: string]: unknown }[];
  /** Stops this server and starts another on the same store. */
  restart(): Promise<Started>;
  cleanup(): Promise<void>;
}

async function startServer(dir?: string, extra: Partial<MirrorServerOptions> = {}): Promise<Started> {
  const tmp = dir === undefined ? tempDir() : { dir, cleanup: () => undefined };
  const { logger, lines } = await captureLogger();
  const server = await MirrorServer.start({
    storeDir: join(tmp.dir, "store"),
    tokens: new TokenTable([
      ["alpha", A],
      ["bravo", B],
    ]),
    maxDelayMs: 3_600_000,
    logger,
    ...extra,
  });
  const port = server.address().port;
  return {
    server,
    port,
    url: `tg://127.0.0.1:${port}`,
    logs: lines as { msg?: unknown }[],
    restart: async () => {
      await server.close();
      const next = await startServer(tmp.dir, extra);
      return { ...next, cleanup: async () => (await next.cleanup(), tmp.cleanup()) };
    },
    cleanup: async () => {
      await server.close();
      tmp.cleanup();
    },
  };
}

test("a source's own wrong chunk: stored for it alone, caught when another source shares it, repaired by that source's copy", { timeout: 30_000 }, async () => {
  let srv = await startServer();
  const raw = rawSource(srv.port);
  let bravo: MirrorClient | undefined;
  try {
    // Both sources share half their pages (same seed); alpha sends wrong bytes for a shared one.
    const ca = new SyntheticSource("alpha", { pages: 8, sharedFraction: 0.5, seed: "own" }).next();
    const cb = new SyntheticSource("bravo", { pages: 8, sharedFraction: 0.5, seed: "own" }).next();
    const shared = [...ca.chunks.keys()].filter((h) => cb.chunks.has(h));
    assert.equal(shared.length, 4);
    const victim = shared[0] as string;
    raw.write(encodeJsonFrame(FrameType.Hello, { token: A, role: "source" }));
    sendBatched(raw, ca, new Set([victim]));
    await raw.waitFor(FrameType.Received);
    // alpha's own bytes are its own business: the destination does not hash them.
    await withAdmin({ url: srv.url, token: A }, (a) => a.flush());
    await raw.waitFor(FrameType.Durable);
    assert.ok(srv.server.store.hasChunk(victim));
    assert.equal(srv.server.store.usableBy(victim, "bravo"), false, "alpha's unchecked bytes are not bravo's to use");
    // A fetch checks every chunk end to end: the wrong bytes are caught there.
    await assert.rejects(
      withAdmin({ url: srv.url, token: A }, (a) => a.fetch("alpha", ca.id)),
      new RegExp(`chunk ${victim} from the mirror hashes to [0-9a-f]{64}`),
    );
    // bravo shares 4 chunks: the destination checks alpha's copies of them now. Three
    // match and are deduplicated; the wrong one is asked of bravo, whose copy replaces it.
    bravo = new MirrorClient({ url: srv.url, source: "bravo", token: B, ack: "durable" });
    const durable = bravo.send(cb);
    await waitFor(() => bravo?.state(cb.id) === "received", 10_000, "bravo received");
    assert.equal(bravo.stats.chunksSent, 5, "bravo sent its 4 own chunks and its copy of the one alpha got wrong");
    assert.ok(
      srv.logs.some((l) => typeof l.msg === "string" && l.msg.includes(`chunk ${victim} on disk does not match its name`)),
      "the wrong bytes are logged",
    );
    // Known bad on disk, not replaced yet (bravo's copy is only cached): the fetch is refused.
    await assert.rejects(
      withAdmin({ url: srv.url, token: A }, (a) => a.fetch("alpha", ca.id)),
      (e: Error & { code?: string }) =>
        e.code === "damaged" && new RegExp(`chunk ${victim} on this mirror does not match its name`).test(e.message),
    );
    await withAdmin({ url: srv.url, token: B }, (a) => a.flush());
    assert.equal(await durable, "durable");
    const gotB = await withAdmin({ url: srv.url, token: B }, (a) => a.fetch("bravo", cb.id));
    for (const [h, d] of cb.chunks) assert.ok(gotB.chunks.get(h)?.equals(d), `bravo's chunk ${h} intact`);
    // alpha's checkpoint reads the correct copy now (a name says what its bytes must be).
    const gotA = await withAdmin({ url: srv.url, token: A }, (a) => a.fetch("alpha", ca.id));
    for (const [h, d] of ca.chunks) assert.ok(gotA.chunks.get(h)?.equals(d), `alpha's chunk ${h} intact`);
    // What was checked is on disk: after a restart the shared chunks are still usable by both.
    await bravo.close();
    bravo = undefined;
    srv = await srv.restart();
    for (const h of shared) {
      assert.ok(srv.server.store.usableBy(h, "bravo") && srv.server.store.usableBy(h, "alpha"), `shared chunk ${h} checked, after restart`);
    }
    const again = await withAdmin({ url: srv.url, token: A }, (a) => a.fetch("alpha", ca.id));
    assert.ok(again.chunks.get(victim)?.equals(ca.chunks.get(victim) as Buffer));
  } finally {
    raw.end();
    await bravo?.close();
    await srv.cleanup();
  }
});

test("a cached wrong chunk found by a sharer before the flush: its source's checkpoint is not made durable, its source is told", { timeout: 30_000 }, async () => {
  const { server, url, port, cleanup } = await startServer();
  const alpha = rawSource(port);
  const bravo = rawSource(port);
  try {
    const ca = new SyntheticSource("alpha", { pages: 8, sharedFraction: 0.5, seed: "iso" }).next();
    const cb = new SyntheticSource("bravo", { pages: 8, sharedFraction: 0.5, seed: "iso" }).next();
    const shared = [...ca.chunks.keys()].filter((h) => cb.chunks.has(h));
    const victim = shared[0] as string;
    alpha.write(encodeJsonFrame(FrameType.Hello, { token: A, role: "source" }));
    sendBatched(alpha, ca, new Set([victim]));
    await alpha.waitFor(FrameType.Received);
    assert.ok(server.cache.has(victim), "alpha's bytes are cached, unchecked");
    // bravo offers: alpha's cached copies of the shared chunks are checked now.
    bravo.write(encodeJsonFrame(FrameType.Hello, { token: B, role: "source" }));
    bravo.write(encodeFrame(FrameType.Offer, encodeCheckpointHeader(headerOf(cb))));
    const want = wantedHashes(await bravo.waitFor(FrameType.Want), cb);
    assert.equal(want.length, 5, "bravo is asked for its 4 own chunks and the shared one alpha got wrong");
    assert.ok(want.includes(victim));
    assert.equal(server.cache.badDigest(victim) !== undefined, true, "alpha's copy is marked bad");
    // A flush now (bravo's copy not there yet): alpha's checkpoint is dropped, alpha told.
    const out = await withAdmin({ url, token: B }, (a) => a.flush());
    assert.equal(out.checkpoints, 0);
    const e = JSON.parse((await alpha.waitFor(FrameType.Error)).payload.toString()) as { code: string; message: string };
    assert.equal(e.code, "checksum-mismatch");
    assert.match(e.message, new RegExp(`chunk ${victim} of checkpoint alpha/${ca.id} hashes to [0-9a-f]{64}`));
    assert.match(e.message, /were not made durable and must be sent again/);
    await alpha.closed;
    assert.equal(alpha.frames.filter((f) => f.type === FrameType.Durable).length, 0, "no durable ack for alpha");
    assert.deepEqual(await withAdmin({ url, token: A }, (a) => a.list()), [], "nothing of alpha's is visible");
    assert.equal(server.store.hasChunk(victim), false, "the wrong bytes were never written");
    // bravo goes on: its copy is checked on arrival and committed.
    sendChunks(bravo, cb, want, new Set());
    await bravo.waitFor(FrameType.Received);
    await withAdmin({ url, token: B }, (a) => a.flush());
    await bravo.waitFor(FrameType.Durable);
    const got = await withAdmin({ url, token: B }, (a) => a.fetch("bravo", cb.id));
    for (const [h, d] of cb.chunks) assert.ok(got.chunks.get(h)?.equals(d), `bravo's chunk ${h} intact`);
    const st = server.cache.stats();
    assert.equal(st.bytes, 0, "the dropped checkpoint's chunks left the cache");
    assert.equal(st.reserved, 0);
    // alpha resends with good bytes (as its client does after reconnecting): accepted.
    const again = new MirrorClient({ url, source: "alpha", token: A, ack: "durable" });
    try {
      const d = again.send(ca);
      await waitFor(() => again.state(ca.id) === "received", 10_000, "alpha received again");
      assert.equal(again.stats.chunksSent, 4, "only alpha's own chunks: the shared ones are on disk, checked");
      await withAdmin({ url, token: A }, (a) => a.flush());
      assert.equal(await d, "durable");
    } finally {
      await again.close();
    }
    const gotA = await withAdmin({ url, token: A }, (a) => a.fetch("alpha", ca.id));
    for (const [h, d] of ca.chunks) assert.ok(gotA.chunks.get(h)?.equals(d), `alpha's chunk ${h} intact`);
  } finally {
    alpha.end();
    bravo.end();
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

test("scrub: once idle, unchecked chunks are checked; a wrong one is logged, listed damaged, refused, and repaired by a new copy", { timeout: 30_000 }, async () => {
  let srv = await startServer(undefined, { scrubIdleMs: 200 });
  const raw = rawSource(srv.port);
  let alpha: MirrorClient | undefined;
  try {
    const c1 = new SyntheticSource("alpha", { pages: 8, sharedFraction: 0, seed: "scrub" }).next();
    const victim = [...c1.chunks.keys()][3] as string;
    raw.write(encodeJsonFrame(FrameType.Hello, { token: A, role: "source" }));
    sendBatched(raw, c1, new Set([victim]));
    await raw.waitFor(FrameType.Received);
    // Busy (a checkpoint cached and queued): no scrub, however long.
    await new Promise((r) => setTimeout(r, 600));
    assert.equal(srv.server.metrics().scrub.passes, 0, "no scrub while something is queued");
    await withAdmin({ url: srv.url, token: A }, (a) => a.flush());
    await raw.waitFor(FrameType.Durable);
    raw.end();
    assert.equal(srv.server.store.uncheckedCount, 8);
    // Idle: the scrub checks the 8 chunks, finds the wrong one, and commits what it found.
    await waitFor(() => srv.server.metrics().scrub.passes >= 1, 10_000, "a scrub pass");
    await srv.server.scrubber.idle();
    const m = srv.server.metrics();
    assert.equal(m.scrub.checked, 8);
    assert.equal(m.scrub.bad, 1);
    assert.equal(srv.server.store.uncheckedCount, 0);
    const report = srv.logs.find((l) => typeof l.msg === "string" && l.msg.startsWith(`scrub: chunk ${victim} of source alpha does not match its name`));
    assert.ok(report, "the wrong chunk is logged");
    assert.deepEqual(report.damaged, [c1.id], "with the checkpoint it damages");
    assert.ok(srv.logs.some((l) => l.msg === "flush committed (scrub)"), "the findings were committed");
    const listed = await withAdmin({ url: srv.url, token: A }, (a) => a.list());
    assert.equal(listed[0]?.damaged, true, "mirror ls shows the checkpoint damaged");
    await assert.rejects(
      withAdmin({ url: srv.url, token: A }, (a) => a.fetch("alpha", c1.id)),
      (e: Error & { code?: string }) => e.code === "damaged",
    );
    // The findings survive a restart: nothing is checked again, the bad chunk stays bad.
    srv = await srv.restart();
    assert.equal(srv.server.store.uncheckedCount, 0);
    assert.ok(srv.server.store.badChunks.has(victim));
    for (const h of c1.chunks.keys()) if (h !== victim) assert.ok(srv.server.store.usableBy(h, "bravo"), `${h} checked, usable by any source`);
    // alpha's next checkpoint holds the same chunk: the mirror asks for that one only, and the new copy repairs c1.
    alpha = new MirrorClient({ url: srv.url, source: "alpha", token: A, ack: "durable" });
    const c2 = { ...c1, id: "repair", seq: c1.seq + 1, parent: c1.id };
    const d = alpha.send(c2);
    await waitFor(() => alpha?.state(c2.id) === "received", 10_000, "c2 received");
    assert.equal(alpha.stats.chunksSent, 1);
    await withAdmin({ url: srv.url, token: A }, (a) => a.flush());
    assert.equal(await d, "durable");
    const after = await withAdmin({ url: srv.url, token: A }, (a) => a.list());
    assert.equal(after.some((r) => r.damaged), false, "nothing damaged any more");
    const got = await withAdmin({ url: srv.url, token: A }, (a) => a.fetch("alpha", c1.id));
    for (const [h, data] of c1.chunks) assert.ok(got.chunks.get(h)?.equals(data), `c1's chunk ${h} intact`);
  } finally {
    raw.end();
    await alpha?.close();
    await srv.cleanup();
  }
});

test("store format: version 1 meta files (every chunk checked) load as checked; a newer version is refused by name", async () => {
  const tmp = tempDir();
  try {
    const dir = join(tmp.dir, "store");
    mkdirSync(join(dir, "gen"), { recursive: true });
    const data = Buffer.alloc(5000, 7);
    const h = sha256hex(data);
    writeFileSync(join(dir, "gen", "1.pack"), data);
    const meta = { format: "tardigrade-mirror-meta", version: 1, generation: 1, chunks: [[h, 0, data.length]], checkpoints: [] };
    writeFileSync(join(dir, "gen", "1.meta.json"), JSON.stringify(meta));
    writeFileSync(join(dir, "COMMITTED"), "tardigrade-mirror 1 1\n");
    const { store } = await DiskStore.open(dir);
    assert.ok(store.usableBy(h, "alpha") && store.usableBy(h, "bravo"), "a version 1 chunk is usable by every source");
    assert.equal(store.uncheckedCount, 0);
    assert.ok((await store.readChunk(h)).equals(data));
    await store.close();
    writeFileSync(join(dir, "gen", "1.meta.json"), JSON.stringify({ ...meta, version: 3 }));
    await assert.rejects(DiskStore.open(dir), /1\.meta\.json is not a mirror meta file of version 1 or 2 \(format tardigrade-mirror-meta, version 3\)/);
  } finally {
    tmp.cleanup();
  }
});
