// The destination's memory and disk plumbing: slabs hashed by worker threads (the
// memory goes to the worker and back), and pack files written around the page cache
// (O_DIRECT through an aligned stage) that must hold exactly the bytes given.
import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { HashPool } from "../src/mirror/hash-pool.js";
import { SlabPool } from "../src/mirror/slabs.js";
import { PackWriter } from "../src/mirror/pack-writer.js";
import { sha256hex, type MirrorCheckpoint } from "../src/mirror/objects.js";
import { MirrorServer } from "../src/mirror/server.js";
import { MirrorClient } from "../src/mirror/client.js";
import { SyntheticSource } from "../src/mirror/synthetic.js";
import { withAdmin } from "../src/mirror/admin.js";
import { tempDir } from "../src/mirror/testing.js";

test("slab chunks are hashed by a worker, readable after, and slabs are recycled", { timeout: 30_000 }, async () => {
  const pool = new HashPool(1);
  try {
    const slabs = new SlabPool(1 << 20, 4 << 20, pool);
    const chunks = Array.from({ length: 40 }, (_, i) => randomBytes(10_000 + i * 1000));
    // Pieces: as if a chunk spanned two receive buffers.
    const held = chunks.map((c) => slabs.copyOf([c.subarray(0, 100), c.subarray(100)], c.length));
    const digests = held.map((h) => h.digest());
    slabs.sealNow(); // the last slab is still filling up: send it
    const got = await Promise.all(digests);
    assert.deepEqual(got, chunks.map((c) => sha256hex(c)));
    held.forEach((h, i) => assert.ok(h.data.equals(chunks[i] as Buffer), `chunk ${i} intact after its slab came back`));
    const before = slabs.stats();
    assert.ok(before.slabs >= 2, `${before.slabs} slabs for ~760 KB in 1 MiB slabs, one sealed early`);
    for (const h of held) h.release();
    // A new chunk reuses a free slab instead of allocating.
    const again = slabs.copyOf([randomBytes(5000)], 5000);
    assert.equal(slabs.stats().slabs, before.slabs);
    assert.ok(slabs.stats().free >= 1);
    again.release();
  } finally {
    await pool.close();
  }
});

test("without hash workers, digests are computed on the caller's thread", async () => {
  const slabs = new SlabPool(1 << 20, 1 << 20);
  const c = randomBytes(70_000);
  const h = slabs.copyOf([c], c.length);
  assert.equal(await h.digest(), sha256hex(c));
  h.release();
});

test("pack writer: the file holds exactly the bytes added, at the offsets returned", { timeout: 30_000 }, async () => {
  const tmp = tempDir();
  try {
    const cases = [[1, 2, 3], [4096], [5000, 9_000_000, 1], [8 * 1024 * 1024], [8 * 1024 * 1024 - 1, 2], []];
    for (const sizes of cases) {
      const path = join(tmp.dir, "p.pack");
      const w = await PackWriter.create(path);
      const bufs = sizes.map((n) => randomBytes(n));
      const offsets: number[] = [];
      try {
        for (const b of bufs) offsets.push(await w.add(b));
        const len = await w.finish();
        assert.equal(len, bufs.reduce((n, b) => n + b.length, 0));
      } finally {
        await w.close();
      }
      const file = readFileSync(path);
      assert.ok(file.equals(Buffer.concat(bufs)), `content for sizes ${sizes.join(",")}`);
      let at = 0;
      bufs.forEach((b, i) => {
        assert.equal(offsets[i], at);
        at += b.length;
      });
    }
    console.log(`pack writer: ${PackWriter.directUnavailable === undefined ? "O_DIRECT" : `buffered (${PackWriter.directUnavailable})`}`);
  } finally {
    tmp.cleanup();
  }
});

test("a server without hash workers verifies at flush time on the event loop", { timeout: 30_000 }, async () => {
  const tmp = tempDir();
  const server = await MirrorServer.start({ storeDir: join(tmp.dir, "store"), hashThreads: 0, maxDelayMs: 3_600_000 });
  const client = new MirrorClient({ url: `tg://127.0.0.1:${server.address().port}`, source: "a", token: "token-a-0123456789", ack: "received" });
  try {
    const gen = new SyntheticSource("a", { pages: 64, pageSize: 65536, sharedFraction: 0 });
    const cks = [gen.next(), gen.next()];
    for (const c of cks) await client.send(c);
    const out = await withAdmin({ url: `tg://127.0.0.1:${server.address().port}`, token: "token-a-0123456789", source: "a" }, (a) => a.flush());
    assert.equal(out.checkpoints, 2);
    const got = await withAdmin({ url: `tg://127.0.0.1:${server.address().port}`, token: "token-a-0123456789", source: "a" }, (a) =>
      a.fetch("a", (cks[1] as MirrorCheckpoint).id),
    );
    for (const [h, d] of (cks[1] as MirrorCheckpoint).chunks) assert.ok(got.chunks.get(h)?.equals(d));
  } finally {
    await client.close();
    await server.close();
    tmp.cleanup();
  }
});
