// Pipelined offers: a source offers the next checkpoints before sending the current
// one's chunks. Driven frame by frame over a real socket so that each case is exact:
// a chunk two pipelined checkpoints share is asked for once; an offer waiting for
// cache room does not stop the current checkpoint's chunks from being read; the
// window is enforced; a connection lost mid-pipeline leaves nothing behind.
import { test } from "node:test";
import assert from "node:assert/strict";
import { connect } from "node:net";
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import { MirrorServer } from "../src/mirror/server.js";
import { MirrorClient } from "../src/mirror/client.js";
import { FramedConnection } from "../src/mirror/connection.js";
import { FrameType, encodeFrameParts, encodeJsonFrame, type Frame } from "../src/mirror/frames.js";
import { decodeWant, encodeCheckpointHeader, encodeChunksTable } from "../src/mirror/messages.js";
import { OFFER_WINDOW } from "../src/mirror/session.js";
import { sha256hex, type CheckpointHeader } from "../src/mirror/objects.js";
import { TokenTable } from "../src/mirror/tokens.js";
import { tempDir, waitFor } from "../src/mirror/testing.js";

const TOKEN = "token-alpha-0123456789";

/** Runs `fn` against a server in a temp dir, then stops it and removes the dir. */
async function withServer(extra: { cacheMaxBytes?: number }, fn: (server: MirrorServer) => Promise<void>): Promise<void> {
  const tmp = tempDir();
  const server = await MirrorServer.start({
    storeDir: join(tmp.dir, "store"),
    tokens: new TokenTable([["alpha", TOKEN]]),
    maxDelayMs: 60_000, // flushes only when asked, or when the cache is full
    scrubIdleMs: 0,
    ...extra,
  });
  try {
    await fn(server);
  } finally {
    await server.close();
    tmp.cleanup();
  }
}

/** A source speaking the protocol frame by frame. */
class Peer {
  private readonly frames: AsyncGenerator<Frame, void, void>;
  /** A frames.next() that nothingWithin() stopped waiting for (the frame it brings is the next one). */
  private pending: Promise<IteratorResult<Frame, void>> | undefined;
  private constructor(readonly conn: FramedConnection) {
    this.frames = conn.frames();
  }

  static async open(port: number): Promise<{ peer: Peer; hello: Record<string, unknown> }> {
    const sock = connect({ host: "127.0.0.1", port });
    await new Promise<void>((resolve, reject) => sock.once("connect", resolve).once("error", reject));
    const peer = new Peer(new FramedConnection(sock));
    await peer.conn.sendJson(FrameType.Hello, { token: TOKEN, source: "alpha", role: "source" });
    const ok = await peer.next(FrameType.HelloOk);
    return { peer, hello: JSON.parse(ok.payload.toString()) as Record<string, unknown> };
  }

  /** The next frame, whatever its type. */
  async any(timeoutMs = 5000): Promise<Frame> {
    let timer: NodeJS.Timeout | undefined;
    const r = await Promise.race([
      this.take(),
      new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`no frame within ${timeoutMs} ms`)), timeoutMs))),
    ]).finally(() => clearTimeout(timer));
    if (r.done === true) throw new Error("connection closed");
    if (r.value.type === FrameType.Error) throw new Error(`server error: ${r.value.payload.toString()}`);
    return r.value;
  }

  /** The next frame, which must be of type `type` (an Error frame fails with its message). */
  async next(type: FrameType, timeoutMs = 5000): Promise<Frame> {
    const f = await this.any(timeoutMs);
    assert.equal(FrameType[f.type], FrameType[type]);
    return f;
  }

  /** Resolves with the next frame, or undefined if none comes within `ms`. */
  async nothingWithin(ms: number): Promise<Frame | undefined> {
    let timer: NodeJS.Timeout | undefined;
    const next = (this.pending ??= this.frames.next());
    const r = await Promise.race([next, new Promise<"none">((resolve) => (timer = setTimeout(() => resolve("none"), ms)))]);
    clearTimeout(timer);
    if (r === "none") return undefined;
    this.pending = undefined;
    return r.done === true ? undefined : r.value;
  }

  private take(): Promise<IteratorResult<Frame, void>> {
    const p = this.pending ?? this.frames.next();
    this.pending = undefined;
    return p;
  }

  offer(h: CheckpointHeader): Promise<void> {
    return this.conn.send(FrameType.Offer, [encodeCheckpointHeader(h)]);
  }

  async want(id: string, count: number): Promise<number[]> {
    const w = decodeWant((await this.next(FrameType.Want)).payload, count);
    assert.equal(w.id, id);
    return w.wanted;
  }

  sendChunks(chunks: Buffer[]): Promise<void> {
    const table = encodeChunksTable(chunks.map((c) => sha256hex(c)), chunks.map((c) => c.length));
    return this.conn.send(FrameType.Chunks, [table, ...chunks]);
  }

  commit(id: string): Promise<void> {
    return this.conn.sendJson(FrameType.Commit, { id });
  }

  close(): void {
    this.conn.socket.destroy();
  }
}

function header(id: string, seq: number, chunks: Buffer[]): CheckpointHeader {
  return { id, seq, chunks: chunks.map((c) => ({ hash: sha256hex(c), size: c.length })), manifest: Buffer.from(JSON.stringify({ id })) };
}

test("pipelined offers: a chunk two checkpoints share is asked for once, and both are stored whole", { timeout: 20_000 }, async () => {
  await withServer({}, async (server) => {
    const { peer, hello } = await Peer.open(server.address().port);
    assert.equal(hello.offerWindow, OFFER_WINDOW);
    const [a, x, b] = [randomBytes(5000), randomBytes(7000), randomBytes(3000)] as [Buffer, Buffer, Buffer];
    // Both offers go out before any chunk: the server answers p2 while p1 still waits for x.
    await peer.offer(header("p1", 1, [a, x]));
    await peer.offer(header("p2", 2, [x, b]));
    assert.deepEqual(await peer.want("p1", 2), [0, 1]);
    assert.deepEqual(await peer.want("p2", 2), [1], "x is on its way for p1: p2 must not ask for it again");
    await peer.sendChunks([a, x]);
    await peer.commit("p1");
    await peer.sendChunks([b]);
    await peer.commit("p2");
    await peer.next(FrameType.Received);
    await peer.next(FrameType.Received);
    const out = await server.flush("explicit");
    assert.equal(out.checkpoints, 2);
    for (const [id, want] of [["p1", [a, x]], ["p2", [x, b]]] as const) {
      const got = await server.fetch("alpha", id);
      assert.deepEqual(got.chunks, want.map((c) => sha256hex(c)));
      for (const c of want) assert.ok((await got.readChunk(sha256hex(c))).equals(c), `${id}: chunk bytes`);
    }
    assert.equal(server.metrics().cache.reserved, 0);
    peer.close();
  });
});

test("pipelined offers: an offer waiting for cache room does not stop the current checkpoint's chunks", { timeout: 20_000 }, async () => {
  // Room for one checkpoint (and its header) at a time.
  await withServer({ cacheMaxBytes: 96 * 1024 }, async (server) => {
    const { peer } = await Peer.open(server.address().port);
    const c1 = [randomBytes(40_000), randomBytes(40_000)];
    const c2 = [randomBytes(40_000), randomBytes(40_000)];
    await peer.offer(header("q1", 1, c1));
    await peer.offer(header("q2", 2, c2));
    assert.deepEqual(await peer.want("q1", 2), [0, 1]);
    // q2 needs room that only committing q1 and flushing it can free.
    assert.equal(await peer.nothingWithin(300), undefined, "no Want for q2 while the cache is full");
    await peer.sendChunks(c1);
    await peer.commit("q1");
    await peer.next(FrameType.Received);
    // The full cache makes the flusher commit q1; then q2 gets its room (the Want and
    // q1's Durable may come in either order).
    const two = [await peer.any(), await peer.any()];
    assert.deepEqual(two.map((f) => FrameType[f.type]).sort(), ["Durable", "Want"]);
    const w = two.find((f) => f.type === FrameType.Want) as Frame;
    assert.deepEqual(decodeWant(w.payload, 2), { id: "q2", wanted: [0, 1] });
    await peer.sendChunks(c2);
    await peer.commit("q2");
    await peer.next(FrameType.Received);
    assert.ok((server.metrics().flushesByReason.cache ?? 0) >= 1, "the flush was made by the cache trigger");
    peer.close();
  });
});

test("pipelined offers: chunks before their Want, and offers beyond the window, close the connection", { timeout: 20_000 }, async () => {
  await withServer({ cacheMaxBytes: 96 * 1024 }, async (server) => {
    // Chunks of the second checkpoint sent before its Want (it waits for cache room).
    {
      const { peer } = await Peer.open(server.address().port);
      const c1 = [randomBytes(40_000), randomBytes(40_000)];
      const c2 = [randomBytes(40_000)];
      await peer.offer(header("r1", 1, c1));
      await peer.offer(header("r2", 2, c2));
      await peer.want("r1", 2);
      await peer.sendChunks(c1);
      // Commit r1 and r2's chunks in one write: they reach the server together, long
      // before the flush that would make room for r2 has ended.
      const table = encodeChunksTable(c2.map((c) => sha256hex(c)), c2.map((c) => c.length));
      peer.conn.socket.write(Buffer.concat([encodeJsonFrame(FrameType.Commit, { id: "r1" }), ...encodeFrameParts(FrameType.Chunks, [table, ...c2])]));
      await peer.next(FrameType.Received);
      await assert.rejects(peer.next(FrameType.Want), /out-of-order.*Chunks for r2 before its Want/);
      peer.close();
    }
    // One offer more than the window.
    {
      const { peer } = await Peer.open(server.address().port);
      const chunk = randomBytes(1000);
      for (let i = 0; i <= OFFER_WINDOW; i++) await peer.offer(header(`w${i}`, 10 + i, [chunk]));
      let err: Error | undefined;
      try {
        for (let i = 0; i <= OFFER_WINDOW; i++) await peer.next(FrameType.Want);
      } catch (e) {
        err = e as Error;
      }
      assert.match(String(err?.message), new RegExp(`out-of-order.*while ${OFFER_WINDOW} offered ones are not committed`));
      peer.close();
    }
  });
});

test("pipelined offers: a connection lost mid-pipeline leaves no checkpoint and no cache held", { timeout: 20_000 }, async () => {
  await withServer({}, async (server) => {
    const { peer } = await Peer.open(server.address().port);
    const [a, x, b] = [randomBytes(5000), randomBytes(7000), randomBytes(3000)] as [Buffer, Buffer, Buffer];
    await peer.offer(header("s1", 1, [a, x]));
    await peer.offer(header("s2", 2, [x, b]));
    await peer.want("s1", 2);
    await peer.want("s2", 2);
    await peer.sendChunks([a]); // x never comes
    await waitFor(() => server.metrics().cache.bytes > 0, 5000, "chunk a cached");
    peer.close();
    await waitFor(() => server.metrics().cache.reserved === 0 && server.metrics().cache.bytes === 0, 5000, "cache released");
    assert.deepEqual(await server.list("alpha"), []);
    // The source reconnects and sends seq 1 and 2 again, pipelined by the real client.
    const client = new MirrorClient({ url: `tg://127.0.0.1:${server.address().port}`, source: "alpha", token: TOKEN });
    try {
      const mk = (id: string, seq: number, chunks: Buffer[]) => ({
        source: "alpha",
        id,
        seq,
        manifest: Buffer.from(id),
        chunks: new Map(chunks.map((c) => [sha256hex(c), c] as const)),
      });
      const sent = [client.send(mk("s1", 1, [a, x]), "received"), client.send(mk("s2", 2, [x, b]), "received")];
      assert.deepEqual(await Promise.all(sent), ["received", "received"]);
      assert.equal(client.stats.chunksSent, 3, "x was sent once for both checkpoints");
      await server.flush("explicit");
      assert.deepEqual((await server.list("alpha")).map((c) => [c.id, c.state]), [["s1", "durable"], ["s2", "durable"]]);
    } finally {
      await client.close();
    }
  });
});
