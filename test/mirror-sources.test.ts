// Many sources streaming to one destination over real TCP on loopback.
import { test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { MirrorServer } from "../src/mirror/server.js";
import { MirrorClient, type MirrorStateEvent } from "../src/mirror/client.js";
import { SyntheticSource } from "../src/mirror/synthetic.js";
import { withAdmin } from "../src/mirror/admin.js";
import { pullCheckpoint, verifyPulled } from "../src/mirror/pull.js";
import { TokenTable } from "../src/mirror/tokens.js";
import { tempDir } from "../src/mirror/testing.js";
import type { MirrorCheckpoint } from "../src/mirror/objects.js";

const SOURCES = ["alpha", "bravo", "charlie", "delta", "echo"];
const tokenOf = (s: string): string => `token-${s}-0123456789`;

test("5 concurrent sources: every checkpoint arrives intact, in order; shared chunks stored once", { timeout: 60_000 }, async () => {
  const tmp = tempDir();
  const server = await MirrorServer.start({
    storeDir: join(tmp.dir, "store"),
    tokens: new TokenTable(SOURCES.map((s) => [s, tokenOf(s)])),
    maxDelayMs: 50,
    maxQueued: 8,
  });
  const clients: MirrorClient[] = [];
  try {
    const url = `tg://127.0.0.1:${server.address().port}`;
    const PER_SOURCE = 6;
    const sent = new Map<string, MirrorCheckpoint[]>();
    const events = new Map<string, MirrorStateEvent[]>();
    let sharedHashes: string[] = [];
    await Promise.all(
      SOURCES.map(async (source) => {
        const client = new MirrorClient({ url, source, token: tokenOf(source), ack: "durable" });
        clients.push(client);
        const evs: MirrorStateEvent[] = [];
        events.set(source, evs);
        client.on("state", (e: MirrorStateEvent) => evs.push(e));
        const gen = new SyntheticSource(source, { pages: 128, sharedFraction: 0.5, dirtyFraction: 0.25 });
        sharedHashes = gen.sharedHashes();
        const list: MirrorCheckpoint[] = [];
        sent.set(source, list);
        const acks: Promise<unknown>[] = [];
        for (let i = 0; i < PER_SOURCE; i++) {
          const c = gen.next();
          list.push(c);
          acks.push(client.send(c));
        }
        await Promise.all(acks);
      }),
    );

    // Every checkpoint went queued -> received -> durable, in seq order.
    for (const [source, evs] of events) {
      for (const state of ["queued", "received", "durable"] as const) {
        const seqs = evs.filter((e) => e.state === state).map((e) => e.seq);
        assert.deepEqual(seqs, [1, 2, 3, 4, 5, 6], `${source} ${state} events in seq order`);
      }
    }

    // The mirror lists them durable, in order, and each pulls back byte-identical.
    for (const source of SOURCES) {
      const rows = await withAdmin({ url, token: tokenOf(source) }, (a) => a.list());
      assert.deepEqual(rows.map((r) => [r.id, r.seq, r.state]), (sent.get(source) ?? []).map((c) => [c.id, c.seq, "durable"]));
      for (const c of [sent.get(source)?.[0], sent.get(source)?.[5]]) {
        assert.ok(c);
        const got = await withAdmin({ url, token: tokenOf(source) }, (a) => a.fetch(source, c.id));
        assert.ok(got.header.manifest.equals(c.manifest), "manifest intact");
        assert.equal(got.header.parent, c.parent);
        assert.equal(got.chunks.size, c.chunks.size);
        for (const [h, d] of c.chunks) assert.ok(got.chunks.get(h)?.equals(d), `chunk ${h} intact`);
      }
    }

    // Cross-source dedup: every distinct chunk stored exactly once.
    const distinct = new Set<string>();
    let total = 0;
    for (const list of sent.values()) {
      for (const c of list) {
        for (const h of c.chunks.keys()) {
          distinct.add(h);
          total++;
        }
      }
    }
    const m = server.metrics();
    assert.equal(server.store.chunkCount, distinct.size, "one stored copy per distinct chunk");
    assert.equal(m.chunksWritten, distinct.size);
    for (const h of sharedHashes) assert.ok(server.store.hasChunk(h));
    const sharedRefs = SOURCES.length * PER_SOURCE * sharedHashes.length;
    console.log(
      `dedup: ${total} chunk references, ${distinct.size} stored (${((1 - distinct.size / total) * 100).toFixed(1)}% saved); ` +
        `${sharedHashes.length} shared chunks referenced ${sharedRefs} times stored once; ` +
        `${m.flushes} flushes, ${m.fsyncs} fsyncs for ${m.checkpointsCommitted} checkpoints`,
    );
    assert.equal(m.checkpointsCommitted, SOURCES.length * PER_SOURCE);
    // Sources sent only what the mirror lacked (the shared pool once per race, not per checkpoint).
    const chunksSent = clients.reduce((n, c) => n + c.stats.chunksSent, 0);
    assert.ok(chunksSent < total / 2, `sent ${chunksSent} chunks for ${total} references`);
  } finally {
    await Promise.all(clients.map((c) => c.close()));
    await server.close();
    tmp.cleanup();
  }
});

test("ack levels: received resolves before durable; mirror pull fetches and verifies", { timeout: 30_000 }, async () => {
  const tmp = tempDir();
  const server = await MirrorServer.start({
    storeDir: join(tmp.dir, "store"),
    tokens: new TokenTable([["alpha", tokenOf("alpha")]]),
    maxDelayMs: 3_600_000,
  });
  const client = new MirrorClient({ url: `tg://127.0.0.1:${server.address().port}`, source: "alpha", token: tokenOf("alpha") });
  try {
    const gen = new SyntheticSource("alpha", { pages: 64 });
    const c1 = gen.next();
    assert.equal(await client.send(c1, "received"), "received");
    assert.equal(client.state(c1.id), "received");
    assert.equal(server.store.committedGeneration, 0, "received is not durable");
    const durable = client.send(gen.next(), "durable");
    const url = `tg://127.0.0.1:${server.address().port}`;
    await withAdmin({ url, token: tokenOf("alpha") }, (a) => a.flush());
    assert.equal(await durable, "durable");
    assert.equal(client.state(c1.id), "durable");

    const r = await pullCheckpoint({ url, token: tokenOf("alpha") }, { source: "alpha", id: c1.id, dir: join(tmp.dir, "pulled") });
    assert.equal(r.chunks, 64);
    assert.equal(r.fetchedChunks, 64);
    const v = await verifyPulled(r.dir);
    assert.equal(v.chunks, 64);
    // A second pull only fetches what the local store lacks.
    const r2 = await pullCheckpoint({ url, token: tokenOf("alpha") }, { source: "alpha", id: "latest", dir: join(tmp.dir, "pulled") });
    assert.equal(r2.id, "ck000002");
    assert.ok(r2.fetchedChunks < 64, `fetched ${r2.fetchedChunks}`);
  } finally {
    await client.close();
    await server.close();
    tmp.cleanup();
  }
});
