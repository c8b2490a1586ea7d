// Content-addressed store: dedup, zero pages, chains, export, merge, gc, repair.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { appendFileSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Readable, Writable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { createWriteStream } from "node:fs";
import { after, before, describe, test } from "node:test";
import Database from "better-sqlite3";
import { ImageError } from "../src/image/parser.js";
import { buildImage, cwdRecord, pagesRecord, procRecord, sampleImage, vmaRecord } from "../src/image/writer.js";
import { CasStore, CasStoreAdapter, shouldMerge } from "../src/store/cas/index.js";
import { MemModel, P, churnChain, memoryDiff, readImageMemory, rng } from "./helpers/cas-images.js";

let tmp: string;
before(() => {
  tmp = mkdtempSync(join(tmpdir(), "tg-cas-"));
});
after(() => rmSync(tmp, { recursive: true, force: true }));

let n = 0;
function dir(): string {
  return join(tmp, `s${++n}`);
}

function writeImage(img: Buffer): string {
  const f = join(tmp, `img-${++n}.img`);
  writeFileSync(f, img);
  return f;
}

async function exportToFile(store: CasStore, id: string): Promise<string> {
  const f = join(tmp, `exp-${++n}.img`);
  await pipeline(store.exportImage(id), createWriteStream(f));
  return f;
}

async function exportDigest(store: CasStore, id: string): Promise<string> {
  const h = createHash("sha256");
  for await (const c of store.exportChunks(id)) h.update(c);
  return h.digest("hex");
}

function dirBytes(d: string): number {
  let n = 0;
  for (const e of readdirSync(d, { withFileTypes: true })) n += e.isDirectory() ? dirBytes(join(d, e.name)) : statSync(join(d, e.name)).size;
  return n;
}


/** A full image of `npages` random pages, then `steps` incrementals each rewriting 5% of them at random. */
async function scatteredChain(store: CasStore, app: string, npages: number, steps: number, seed: number): Promise<{ model: MemModel; ids: string[] }> {
  const r = rng(seed);
  const model = new MemModel();
  model.map(0x10000, npages);
  for (let p = 0; p < npages; p++) model.write(0x10000 + p);
  const ids = [(await store.ingest(app, 1, writeImage(model.image()))).id];
  for (let s = 0; s < steps; s++) {
    for (let i = 0; i < Math.ceil(npages / 20); i++) model.write(0x10000 + Math.floor(r() * npages));
    ids.push((await store.ingest(app, s + 2, writeImage(model.image()))).id);
  }
  return { model, ids };
}

/** Bytes this process read (read syscalls, /proc/self/io rchar) while exporting `id`. */
async function bytesReadByExport(store: CasStore, id: string): Promise<number> {
  const rchar = () => Number(/^rchar: (\d+)$/m.exec(readFileSync("/proc/self/io", "utf8"))![1]);
  const r0 = rchar();
  await pipeline(store.exportImage(id), new Writable({ write: (_c, _e, cb) => cb() }));
  return rchar() - r0;
}

describe("cas store", () => {
  test("page hashes: the native SHA-256 of every page equals node's, zero pages marked, also in the worker", async () => {
    const data = Buffer.alloc(300 * 4096 + 8).subarray(8); // 8-aligned, not at the buffer's start
    randomBytes(data.length).copy(data);
    data.fill(0, 4096, 2 * 4096);
    data.fill(0xab, 7 * 4096, 8 * 4096);
    data.fill(0, 299 * 4096 + 4095); // last byte zero, rest not
    const want = Buffer.alloc(300 * 32);
    for (let i = 0; i < 300; i++) if (i !== 1) createHash("sha256").update(data.subarray(i * 4096, (i + 1) * 4096)).digest().copy(want, i * 32);
    const { hashPages } = await import("../src/store/cas/hash-worker.js");
    assert.ok(hashPages(data).equals(want), "inline");
    const odd = Buffer.alloc(2 * 4096 + 1).subarray(1); // not 8-aligned: node's crypto per page
    data.copy(odd, 0, 0, 2 * 4096);
    assert.ok(hashPages(odd).equals(want.subarray(0, 64)), "unaligned");
    const { Hasher } = await import("../src/store/cas/hasher.js");
    const h = new Hasher(true);
    try {
      const got = await h.hash(Buffer.from(data));
      assert.ok(got.hashes.equals(want), "worker");
    } finally {
      await h.close();
    }
  });
  test("pages are stored once across checkpoints and apps; zero pages are never stored", async () => {
    const store = await CasStore.open(dir());
    const shared = Array.from({ length: 40 }, () => randomBytes(P));
    const a = new MemModel(2);
    a.map(0x1000, 64);
    shared.forEach((b, i) => a.write(0x1000 + i, b));
    a.write(0x1000 + 50); // unique to a
    const b = new MemModel(9);
    b.map(0x9000, 64);
    shared.forEach((buf, i) => b.write(0x9000 + i * 1, buf));
    const ca = await store.ingest("alpha", 1, writeImage(a.image({ zeroPages: [0x1000 + 60, 0x1000 + 61] })), { downtimeNs: 5, totalNs: 9 });
    assert.equal(ca.stats.pages, 43);
    assert.equal(ca.stats.zeroPages, 2);
    assert.equal(ca.stats.newPages, 41);
    assert.equal(ca.stats.tracking, "uffd");
    assert.equal(ca.stats.threads, 1);
    assert.equal(ca.stats.downtimeNs, 5);
    const cb = await store.ingest("beta", 1, writeImage(b.image()));
    assert.equal(cb.stats.newPages, 0, "beta's pages are all alpha's");
    assert.equal(cb.stats.storedBytes, 0);
    const st = await store.stats();
    assert.equal(st.uniquePages, 41);
    assert.equal(st.checkpoints, 2);
    assert.ok(st.dedupRatio > 1.9, `dedup ${st.dedupRatio}`);
    // The explicit zero pages come back as zero pages.
    const mem = await readImageMemory(await exportToFile(store, "alpha@1"));
    assert.equal(mem.zeroPages, 2);
    assert.equal(memoryDiff(mem.pages, a.snapshot()), null);
    assert.deepEqual(store.list().map((c) => c.id), ["alpha@1", "beta@1"]);
    assert.deepEqual(store.list("beta").map((c) => c.id), ["beta@1"]);
    await store.close();
  });

  test("export of every checkpoint of a 10-step chain reproduces that step's memory", async () => {
    const store = await CasStore.open(dir(), { packMaxBytes: 2 << 20 });
    const { images, expected, vmas } = churnChain(1);
    for (let i = 0; i < images.length; i++) {
      const c = await store.ingest("churn", i + 1, writeImage(images[i]!));
      assert.equal(c.kind, i === 0 ? "full" : "incremental");
      assert.equal(c.parent, i === 0 ? null : `churn@${i}`);
    }
    for (let i = 0; i < images.length; i++) {
      const mem = await readImageMemory(await exportToFile(store, `churn@${i + 1}`));
      assert.equal(mem.flags, 0, "exported images are full");
      assert.equal(memoryDiff(mem.pages, expected[i]!), null, `step ${i + 1}: ${memoryDiff(mem.pages, expected[i]!)}`);
      assert.deepEqual(mem.vmas.map((v) => v.start), vmas[i]);
    }
    // The metadata records are re-emitted byte for byte (the export of a full image equals the image minus TRACKING).
    const first = await readFile(await exportToFile(store, "churn@1"));
    assert.ok(first.subarray(64, 64 + 200).equals(images[0]!.subarray(64, 264)));
    assert.ok(store.list("churn").length === 10);
    await store.close();
  });

  test("the export of a full image is the image itself, byte for byte", async () => {
    const store = await CasStore.open(dir());
    const img = sampleImage({ npages: 700, fill: (i) => (i % 5) + 1 });
    await store.ingest("same", 3, writeImage(img));
    const out = await readFile(await exportToFile(store, "same@3"));
    assert.ok(out.equals(img), `export differs (${out.length} vs ${img.length} bytes)`);
    assert.equal((await store.stats()).uniquePages, 5, "5 distinct page contents");
    // A zero-length payload (empty CWD) streams through too, byte for byte.
    const empty = buildImage([procRecord(), cwdRecord(""), vmaRecord({ start: 0x10000n, end: 0x12000n }), pagesRecord(0x10000n, Buffer.alloc(P, 7))]);
    await store.ingest("same", 4, writeImage(empty));
    assert.ok((await readFile(await exportToFile(store, "same@4"))).equals(empty));
    await store.close();
  });

  test("merge gives a synthetic full checkpoint with the same id and the same export", async () => {
    const store = await CasStore.open(dir());
    const { images } = churnChain(2);
    for (let i = 0; i < images.length; i++) await store.ingest("m", i + 1, writeImage(images[i]!));
    const before = await Promise.all(images.map((_, i) => exportDigest(store, `m@${i + 1}`)));
    assert.equal(store.chainInfo("m@10").chainLength, 9);
    const merged = await store.merge("m@6");
    assert.equal(merged.kind, "full");
    assert.equal(merged.synthetic, true);
    assert.equal(merged.parent, "m@5", "lineage kept");
    assert.equal(merged.stats.merged?.chainLength, 6);
    assert.equal(store.chainInfo("m@10").chainLength, 4);
    await store.merge("m@10");
    await store.merge("m@1"); // a full one: nothing to do
    const after = await Promise.all(images.map((_, i) => exportDigest(store, `m@${i + 1}`)));
    assert.deepEqual(after, before);
    const list = store.list("m");
    assert.equal(list.length, 10, "merged and unmerged points are both listed");
    assert.deepEqual(list.filter((c) => c.synthetic).map((c) => c.id), ["m@6", "m@10"]);
    await store.close();
  });

  test("merge rewrites a scattered chain in address order: same exports, read amplification ≈ 1", async (t) => {
    const root = dir();
    const store = await CasStore.open(root);
    const { model, ids } = await scatteredChain(store, "sc", 2048, 20, 11);
    const want = new Map<string, string>();
    for (const id of ids) want.set(id, await exportDigest(store, id));
    const newest = ids[ids.length - 1]!;
    const before = store.readCost(newest);
    assert.ok(before.amplification > 1.5, `unmerged chain: ${JSON.stringify(before)}`);
    const readBefore = await bytesReadByExport(store, newest);

    const merged = await store.merge(newest);
    assert.equal(merged.kind, "full");
    assert.equal(merged.synthetic, true);
    assert.equal(merged.stats.merged?.readAmplification, Math.round(before.amplification * 1000) / 1000);
    assert.ok((merged.stats.merged?.rewrittenBytes ?? 0) >= before.pages * P, JSON.stringify(merged.stats.merged));
    const after = store.readCost(newest);
    assert.equal(after.amplification, 1, JSON.stringify(after));
    assert.equal(after.blocks, after.minBlocks);
    const readAfter = await bytesReadByExport(store, newest);
    const image = before.pages * P;
    t.diagnostic(`export of ${newest}: ${(readBefore / image).toFixed(2)}× the image's pages read before merge, ${(readAfter / image).toFixed(2)}× after`);
    assert.ok(readBefore > 1.5 * image, `before: ${readBefore} bytes read for ${image}`);
    assert.ok(readAfter < 1.1 * image, `after: ${readAfter} bytes read for ${image}`);
    // Every checkpoint of the chain exports byte for byte as before.
    for (const id of ids) assert.equal(await exportDigest(store, id), want.get(id), id);
    // A merge with the rewrite off (page table only) gives the same bytes too.
    const mid = await store.merge(ids[10]!, { maxReadAmplification: Infinity });
    assert.equal(mid.stats.merged?.rewrittenBytes, 0);
    assert.ok(store.readCost(ids[10]!).amplification > 1.25);
    for (const id of ids) assert.equal(await exportDigest(store, id), want.get(id), id);
    // The next incremental composes from the rewritten checkpoint.
    for (let i = 0; i < 50; i++) model.write(0x10000 + i * 7);
    const next = await store.ingest("sc", ids.length + 1, writeImage(model.image()));
    assert.equal(memoryDiff((await readImageMemory(await exportToFile(store, next.id))).pages, model.snapshot()), null);
    await store.close();
    const again = await CasStore.open(root);
    assert.deepEqual(again.repairs, { removedPacks: [], truncated: [], damaged: [] });
    for (const id of ids) assert.equal(await exportDigest(again, id), want.get(id), id);
    assert.equal(again.readCost(newest).amplification, 1);
    await again.close();
  });

  test("gc after a rewriting merge and retention frees the superseded blocks; all kept checkpoints export identically", async () => {
    const root = dir();
    const store = await CasStore.open(root, { packMaxBytes: 2 << 20 });
    const { ids } = await scatteredChain(store, "gr", 1024, 20, 12);
    const newest = ids[ids.length - 1]!;
    const wantAll = new Map<string, string>();
    for (const id of ids) wantAll.set(id, await exportDigest(store, id));
    const want = wantAll.get(newest)!;
    await store.merge(newest);
    // Everything kept: the old copies of the moved pages are dead (their pages rows point at the
    // new blocks), so gc reclaims them; pages only older checkpoints use are moved, not lost.
    const pagesBefore = (await store.stats()).uniquePages;
    const r0 = await store.gc({ keep: Infinity });
    assert.deepEqual(r0.dropped, []);
    assert.ok(r0.packsRewritten > 0 && r0.bytesFreed > 0, JSON.stringify(r0));
    assert.equal(r0.pagesDropped, 0, "every stored page is still used by some checkpoint");
    assert.equal((await store.stats()).uniquePages, pagesBefore);
    for (const id of ids) assert.equal(await exportDigest(store, id), wantAll.get(id), id);
    const sizeMerged = dirBytes(root);
    const r = await store.gc({ keep: 1 });
    assert.equal(r.dropped.length, ids.length - 1, JSON.stringify(r));
    assert.ok(r.bytesFreed > 0 && r.packsRewritten > 0, JSON.stringify(r));
    // Everything the chain stored before the merge is dead now: what stays is about one copy of the image.
    const st = await store.stats();
    assert.equal(st.uniquePages, store.readCost(newest).pages);
    assert.ok(st.packBytes < 1.1 * st.uniquePages * P + (2 << 20), JSON.stringify(st));
    assert.ok(dirBytes(root) < sizeMerged, `store ${sizeMerged} → ${dirBytes(root)} bytes`);
    assert.equal(await exportDigest(store, newest), want);
    assert.equal(store.readCost(newest).amplification, 1);
    await store.close();
    const again = await CasStore.open(root);
    assert.deepEqual(again.repairs, { removedPacks: [], truncated: [], damaged: [] });
    assert.equal(await exportDigest(again, newest), want);
    await again.close();
  });

  test("a rewriting merge runs beside ingests and gc", async (t) => {
    const store = await CasStore.open(dir(), { packMaxBytes: 1 << 20, cacheBlocks: 4 });
    const { model, ids } = await scatteredChain(store, "cc", 1024, 12, 13);
    const newest = ids[ids.length - 1]!;
    const want = new Map<string, string>();
    for (const id of ids) want.set(id, await exportDigest(store, id));
    const events: string[] = [];
    const merging = store.merge(newest).then((c) => {
      events.push("merged");
      return c;
    });
    // Ingests go on while the merge copies pages; a gc moves pages it may be reading.
    const more: Map<number, Buffer>[] = [];
    for (let k = 0; k < 3; k++) {
      for (let i = 0; i < 40; i++) model.write(0x10000 + ((k * 97 + i * 13) % 1024));
      await store.ingest("cc", ids.length + 1 + k, writeImage(model.image()));
      more.push(model.snapshot());
      events.push(`ingested ${k}`);
    }
    const gc = store.gc({ keep: 2, minDeadFraction: 0 });
    const merged = await merging;
    await gc;
    t.diagnostic(`order: ${events.join(", ")}`);
    // The rewrite does not hold the store's lock: the first ingest (issued after the merge) is not queued behind it.
    assert.equal(events[0], "ingested 0");
    assert.equal(merged.synthetic, true);
    assert.ok((merged.stats.merged?.rewrittenBytes ?? 0) > 0);
    for (const c of store.list("cc")) {
      if (want.has(c.id)) assert.equal(await exportDigest(store, c.id), want.get(c.id), c.id);
      else assert.equal(memoryDiff((await readImageMemory(await exportToFile(store, c.id))).pages, more[c.seq - ids.length - 1]!), null, c.id);
    }
    assert.ok(store.list("cc").some((c) => c.id === newest), "the merged checkpoint is kept for its children");
    await store.close();
  });

  test("merge and gc run while checkpoints keep coming; an export in progress is kept by gc", async () => {
    // A tiny block cache, so that an export has located pages whose blocks it has not read yet when gc moves them.
    const store = await CasStore.open(dir(), { packMaxBytes: 1 << 20, blockPages: 32, cacheBlocks: 2 });
    const { images, expected } = churnChain(5, 12);
    const background: Promise<unknown>[] = [];
    for (let i = 0; i < images.length; i++) {
      const c = await store.ingest("live", i + 1, writeImage(images[i]!));
      background.push(store.mergeIfNeeded(c.id, { maxChainLength: 3 })); // not awaited: the next ingest goes on
      if (i % 4 === 3) background.push(store.gc({ keep: 4, minDeadFraction: 0 }));
    }
    await Promise.all(background);
    assert.ok(store.list("live").some((c) => c.synthetic));
    for (const c of store.list("live")) {
      const mem = await readImageMemory(await exportToFile(store, c.id));
      assert.equal(memoryDiff(mem.pages, expected[c.seq - 1]!), null, c.id);
    }
    // An export that has started keeps its checkpoint through a gc that would drop it.
    const oldest = store.list("live")[0]!;
    const it = store.exportChunks(oldest.id);
    const chunks: Buffer[] = [];
    while (!chunks.some((c) => c.length > 64 << 10)) {
      const n = await it.next(); // up to the first PAGES record: the next ones are located already
      assert.equal(n.done, false);
      chunks.push(n.value as Buffer);
    }
    await store.merge("live@12");
    const r = await store.gc({ keep: 1, minDeadFraction: 0 });
    assert.ok(!r.dropped.includes(oldest.id), `${oldest.id} was dropped during its export`);
    assert.ok(r.packsRewritten > 0, "gc moved pages under the export");
    for (let n = await it.next(); !n.done; n = await it.next()) chunks.push(n.value);
    const f = writeImage(Buffer.concat(chunks));
    assert.equal(memoryDiff((await readImageMemory(f)).pages, expected[oldest.seq - 1]!), null);
    const r2 = await store.gc({ keep: 1, minDeadFraction: 0 });
    assert.ok(r2.dropped.includes(oldest.id));
    assert.deepEqual(store.list("live").map((c) => c.id), ["live@12"]);
    const mem = await readImageMemory(await exportToFile(store, "live@12"));
    assert.equal(memoryDiff(mem.pages, expected[11]!), null);
    await store.close();
  });

  test("an export whose blocks gc moves mid-stream finds them again", async () => {
    const store = await CasStore.open(dir(), { cacheBlocks: 2 }); // prefetch locates the next record but reads no block of it
    const a = new MemModel();
    a.map(0x1000, 1024);
    for (let p = 0x1000; p < 0x1000 + 1024; p++) a.write(p);
    await store.ingest("mv", 1, writeImage(a.image()));
    for (let p = 0x1000; p < 0x1000 + 1024; p++) a.write(p);
    await store.ingest("mv", 2, writeImage(a.image({ full: true })));
    const it = store.exportChunks("mv@2");
    const chunks: Buffer[] = [];
    while (!chunks.some((c) => c.length > 64 << 10)) chunks.push((await it.next()).value as Buffer);
    const r = await store.gc({ keep: 1, minDeadFraction: 0 }); // drops mv@1: its pack is half dead, mv@2's pages move
    assert.deepEqual([r.dropped, r.packsRewritten], [["mv@1"], 1]);
    for (let n = await it.next(); !n.done; n = await it.next()) chunks.push(n.value);
    const mem = await readImageMemory(writeImage(Buffer.concat(chunks)));
    assert.equal(memoryDiff(mem.pages, a.snapshot()), null);
    await store.close();
  });

  test("gc --keep 3 frees bytes and every kept checkpoint still exports identically", async () => {
    const root = dir();
    const store = await CasStore.open(root, { packMaxBytes: 1 << 20 });
    const { images } = churnChain(3);
    for (let i = 0; i < images.length; i++) await store.ingest("g", i + 1, writeImage(images[i]!));
    const other = churnChain(4, 3).images;
    for (let i = 0; i < other.length; i++) await store.ingest("h", i + 1, writeImage(other[i]!));
    const want = new Map<string, string>();
    for (const c of store.list()) want.set(c.id, await exportDigest(store, c.id));
    // Without a merge, keep 3 must keep the whole chain of g@8..10.
    const r0 = await store.gc({ keep: 3 });
    assert.deepEqual(r0.dropped, []);
    assert.equal(r0.keptForChains.length, 7);
    await store.merge("g@8");
    const sizeBefore = dirBytes(root);
    const r = await store.gc({ keep: 3 });
    const sizeAfter = dirBytes(root);
    assert.deepEqual(r.dropped.sort(), ["g@1", "g@2", "g@3", "g@4", "g@5", "g@6", "g@7"]);
    assert.ok(r.bytesFreed > 0, JSON.stringify(r));
    assert.ok(sizeAfter < sizeBefore, `store ${sizeBefore} → ${sizeAfter} bytes`);
    assert.deepEqual(store.list().map((c) => c.id), ["g@8", "g@9", "g@10", "h@1", "h@2", "h@3"]);
    for (const c of store.list()) assert.equal(await exportDigest(store, c.id), want.get(c.id), c.id);
    await store.close();
    // And after reopening.
    const again = await CasStore.open(root);
    assert.deepEqual(again.repairs, { removedPacks: [], truncated: [], damaged: [] });
    for (const c of again.list()) assert.equal(await exportDigest(again, c.id), want.get(c.id), c.id);
    await again.close();
  });

  test("a bad image is refused with its file and offset, and leaves nothing behind", async () => {
    const root = dir();
    const store = await CasStore.open(root);
    const m = new MemModel();
    m.map(0x1000, 600);
    for (let p = 0x1000; p < 0x1000 + 600; p++) m.write(p);
    await store.ingest("bad", 1, writeImage(m.image()));
    const packBytes = dirBytes(join(root, "packs"));
    for (let p = 0x1000; p < 0x1000 + 600; p++) m.write(p);
    const img = m.image();
    img[img.length - 200]! ^= 0xff; // last PAGES record's payload
    const f = writeImage(img);
    await assert.rejects(store.ingest("bad", 2, f), (e: unknown) => e instanceof ImageError && e.file === f && e.offset > 0 && /payload CRC mismatch in record PAGES/.test(e.message));
    await assert.rejects(store.ingest("bad", 2, writeImage(img.subarray(0, img.length - 100))), /truncated record/);
    assert.deepEqual(store.list().map((c) => c.id), ["bad@1"]);
    assert.equal(dirBytes(join(root, "packs")), packBytes, "uncommitted pack bytes are undone");
    // An incremental whose parent is not stored.
    const orphan = new MemModel();
    orphan.map(0x1000, 4);
    orphan.image();
    orphan.write(0x1000);
    await assert.rejects(store.ingest("orphan", 2, writeImage(orphan.image())), (e: unknown) => (e as { code?: string }).code === "missing-parent");
    await assert.rejects(store.ingest("bad", 1, writeImage(m.image({ full: true }))), (e: unknown) => (e as { code?: string }).code === "exists");
    assert.throws(() => store.exportImage("bad@9"), (e: unknown) => (e as { code?: string }).code === "unknown-checkpoint");
    await store.close();
  });

  test("ingest from a stream (as from the agent's FIFO)", async () => {
    const store = await CasStore.open(dir());
    const m = new MemModel();
    m.map(0x1000, 700);
    for (let p = 0x1000; p < 0x1000 + 700; p++) m.write(p);
    const img = m.image();
    // Odd-sized chunks, so records straddle chunk boundaries.
    const chunks: Buffer[] = [];
    for (let o = 0; o < img.length; o += 77_777) chunks.push(img.subarray(o, o + 77_777));
    const c = await store.ingest("fifo", 1, Readable.from(chunks));
    assert.equal(c.stats.imageBytes, img.length);
    const mem = await readImageMemory(await exportToFile(store, "fifo@1"));
    assert.equal(memoryDiff(mem.pages, m.snapshot()), null);
    await store.close();
  });

  test("open() removes pending packs and cuts uncommitted pack tails", async () => {
    const root = dir();
    const store = await CasStore.open(root);
    const m = new MemModel();
    m.map(0x1000, 10);
    for (let p = 0x1000; p < 0x1000 + 10; p++) m.write(p);
    await store.ingest("r", 1, writeImage(m.image()));
    const want = await exportDigest(store, "r@1");
    await store.close();
    const packs = readdirSync(join(root, "packs"));
    assert.deepEqual(packs, ["pack-000001.dat"]);
    appendFileSync(join(root, "packs", packs[0]!), randomBytes(5000));
    writeFileSync(join(root, "packs", "pack-000002.dat"), randomBytes(100));
    // as a crashed ingest leaves it: recorded pending before the file was created
    const db = new Database(join(root, "index.sqlite"));
    db.prepare("INSERT INTO pending_packs (id, why) VALUES (2, 'new')").run();
    db.close();
    writeFileSync(join(root, "lock"), `${spawnSync("true").pid}\n`); // left by a process that died
    const again = await CasStore.open(root);
    await assert.rejects(CasStore.open(root), (e: unknown) => (e as { code?: string }).code === "store-busy" && new RegExp(`process ${process.pid}`).test((e as Error).message));
    assert.deepEqual(again.repairs.removedPacks, ["pack-000002.dat"]);
    assert.deepEqual(again.repairs.truncated, [["pack-000001.dat", 5000]]);
    assert.equal(await exportDigest(again, "r@1"), want);
    await again.close();
  });

  test("a damaged block is reported with its pack file and offset", async () => {
    const root = dir();
    const store = await CasStore.open(root);
    const m = new MemModel();
    m.map(0x1000, 300);
    for (let p = 0x1000; p < 0x1000 + 300; p++) m.write(p);
    await store.ingest("dmg", 1, writeImage(m.image()));
    const pack = join(root, "packs", "pack-000001.dat");
    const bytes = await readFile(pack);
    bytes[16 + 16 + 100]! ^= 0x55; // inside the first block's compressed data
    writeFileSync(pack, bytes);
    await assert.rejects(exportDigest(store, "dmg@1"), (e: unknown) => (e as { code?: string }).code === "store-corrupt" && /pack-000001\.dat offset 16\b.*block CRC mismatch/.test((e as Error).message));
    await store.close();
  });

  test("the Store adapter: stage, put, list, openImage, recover (the daemon's contract)", async () => {
    const root = dir();
    const store = await CasStoreAdapter.open(root);
    const m = new MemModel(5);
    m.map(0x1000, 40);
    for (let p = 0x1000; p < 0x1000 + 40; p++) m.write(p);
    const s1 = await store.stage("calc");
    writeFileSync(s1.imagePath(5), m.image());
    const progress: number[] = [];
    const m1 = await store.put(s1, { downtimeNs: 10, totalNs: 20, onProgress: (d) => progress.push(d) });
    assert.equal(m1.id, "calc@1");
    assert.ok(progress.length > 0);
    m.write(0x1003);
    const s2 = await store.stage("calc");
    writeFileSync(s2.imagePath(5), m.image());
    const m2 = await store.put(s2, { downtimeNs: 10, totalNs: 20 });
    assert.deepEqual([m2.id, m2.kind, m2.parent, m2.images[0]!.file], ["calc@2", "incremental", "calc@1", "pid5.img"]);
    assert.deepEqual((await store.list("calc")).map((x) => x.id), ["calc@1", "calc@2"]);
    const opened = await store.openImage("calc@2");
    assert.equal(memoryDiff((await readImageMemory(opened.path)).pages, m.snapshot()), null);
    await opened.release();
    const s3 = await store.stage("calc");
    writeFileSync(s3.imagePath(5), "junk");
    await assert.rejects(store.put(s3, { downtimeNs: 0, totalNs: 0 }), ImageError);
    assert.deepEqual(await store.recover(), [`staging/${s3.dir.split("/").pop()}`]);
    await store.close();
  });

  test("merge policy", () => {
    assert.equal(shouldMerge(0, 0, 100), false);
    assert.equal(shouldMerge(3, 50, 100), false);
    assert.equal(shouldMerge(8, 50, 100), true);
    assert.equal(shouldMerge(3, 200, 100), true);
    assert.equal(shouldMerge(3, 200, 100, { maxChainBytesRatio: 3 }), false);
    assert.equal(shouldMerge(4, 10, 100, { maxChainLength: 4 }), true);
  });
});
