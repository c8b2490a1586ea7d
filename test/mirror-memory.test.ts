// The destination's memory and disk plumbing: slabs recycled when their chunks are
// gone, and pack files written around the page cache (O_DIRECT through an aligned
// stage) that must hold exactly the bytes given.
import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { SlabPool } from "../src/mirror/slabs.js";
import { PackWriter } from "../src/mirror/pack-writer.js";
import { tempDir } from "../src/mirror/testing.js";

test("slab chunks hold their bytes until released, and slabs are recycled", () => {
  const slabs = new SlabPool(1 << 20, 4 << 20);
  const chunks = Array.from({ length: 40 }, (_, i) => randomBytes(10_000 + i * 1000));
  // Pieces: as if a chunk spanned two receive buffers.
  const held = chunks.map((c) => slabs.copyOf([c.subarray(0, 100), c.subarray(100)], c.length));
  held.forEach((h, i) => assert.ok(h.data.equals(chunks[i] as Buffer), `chunk ${i} intact`));
  const before = slabs.stats();
  assert.equal(before.slabs, 2, `${before.slabs} slabs for ~1.2 MB in 1 MiB slabs`);
  for (const h of held) h.release();
  // New chunks reuse the free slab instead of allocating.
  const again = [slabs.copyOf([randomBytes(600_000)], 600_000), slabs.copyOf([randomBytes(600_000)], 600_000)];
  assert.equal(slabs.stats().slabs, before.slabs);
  for (const h of again) h.release();
  // A chunk bigger than a slab gets its own slab, not kept for reuse.
  const big = slabs.copyOf([randomBytes(3 << 20)], 3 << 20);
  assert.equal(slabs.stats().slabs, before.slabs + 1);
  big.release();
  assert.equal(slabs.stats().slabs, before.slabs);
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
