// Store integrity (issue 11, defects 5, 6, 14): a bad block must not poison later
// checkpoints, gc must get past it, verify must name the damaged blocks and the
// checkpoints they affect; a missing index must never cost the packs; a pack that lost
// bytes is reported at open and never appended to.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync, readdirSync, renameSync, rmSync, statSync, truncateSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import Database from "better-sqlite3";
import { CasStore, type DamageEvent } from "../src/store/cas/index.js";
import { MemModel } from "./helpers/cas-images.js";

let tmp: string;
before(() => {
  tmp = mkdtempSync(join(tmpdir(), "tg-integrity-"));
});
after(() => rmSync(tmp, { recursive: true, force: true }));

let n = 0;
const dir = (): string => join(tmp, `s${++n}`);
function writeImage(img: Buffer): string {
  const f = join(tmp, `img-${++n}.img`);
  writeFileSync(f, img);
  return f;
}

async function exportDigest(store: CasStore, id: string): Promise<string> {
  const h = createHash("sha256");
  for await (const c of store.exportChunks(id)) h.update(c);
  return h.digest("hex");
}

/** A model process with `npages` random pages at 0x1000. */
function model(npages: number): MemModel {
  const m = new MemModel();
  m.map(0x1000, npages);
  for (let p = 0x1000; p < 0x1000 + npages; p++) m.write(p);
  return m;
}

/** Flips one byte inside the compressed data of the block at `offset` of pack 1 (the first block is at 16). */
function flipByte(root: string, offset = 16): void {
  const pack = join(root, "packs", "pack-000001.dat");
  const bytes = readFileSync(pack);
  bytes[offset + 16 + 100]! ^= 0x55;
  writeFileSync(pack, bytes);
}

const corrupt = (e: unknown): boolean => (e as { code?: string }).code === "store-corrupt";

describe("one bad block does not poison the future (defect 5)", () => {
  test("after a failed read, the next checkpoint (full, same pages) stores the pages again and restores; gc works", async () => {
    const root = dir();
    const store = await CasStore.open(root, { hashWorker: false });
    const events: DamageEvent[] = [];
    store.onDamage = (e) => events.push(e);
    const m = model(300);
    const img = m.image();
    await store.ingest("app", 1, writeImage(img));
    const want = await exportDigest(store, "app@1");
    flipByte(root);
    await assert.rejects(exportDigest(store, "app@1"), corrupt);
    // The same memory again, full (as `checkpoint --full` of an app that did not change).
    const c2 = await store.ingest("app", 2, writeImage(img));
    assert.ok(c2.stats.newPages > 0, `the pages of the bad block are stored again (newPages ${c2.stats.newPages})`);
    assert.equal(events.length, 1, `one block set aside: ${JSON.stringify(events)}`);
    assert.equal(events[0]!.kind, "block");
    assert.equal(events[0]!.pack, "pack-000001.dat");
    assert.match(events[0]!.why, /CRC mismatch/);
    assert.equal(await exportDigest(store, "app@2"), want, "the new checkpoint restores the right memory");
    assert.equal(await exportDigest(store, "app@1"), want, "the old one heals: its pages are found again");
    const r = await store.gc({ keep: 1, minDeadFraction: 0 });
    assert.deepEqual(r.dropped, ["app@1"]);
    assert.equal(await exportDigest(store, "app@2"), want);
    const v = await store.verify();
    assert.equal(v.ok, true, JSON.stringify(v));
    await store.close();
  });

  test("verify: reads every block, names the damaged one and the checkpoints that need it; exit state not ok", async () => {
    const root = dir();
    const store = await CasStore.open(root, { hashWorker: false, blockPages: 64 });
    const m = model(256); // 4 blocks of 64 pages
    await store.ingest("a", 1, writeImage(m.image()));
    for (let p = 0x1000 + 200; p < 0x1000 + 210; p++) m.write(p); // a@2 changes pages of the 4th block only
    await store.ingest("a", 2, writeImage(m.image()));
    const other = model(10);
    await store.ingest("b", 1, writeImage(other.image()));
    const clean = await store.verify();
    assert.equal(clean.ok, true, JSON.stringify(clean));
    assert.equal(clean.blocksChecked, 6);
    assert.equal(clean.pagesChecked, 256 + 10 + 10);
    flipByte(root); // the first block: pages 0..63 of a@1, also needed by a@2
    const v = await store.verify();
    assert.equal(v.ok, false);
    assert.equal(v.damagedBlocks.length, 1, JSON.stringify(v.damagedBlocks));
    assert.equal(v.damagedBlocks[0]!.pack, "pack-000001.dat");
    assert.equal(v.damagedBlocks[0]!.offset, 16);
    assert.equal(v.damagedBlocks[0]!.found, "now");
    assert.deepEqual(v.damagedBlocks[0]!.checkpoints, ["a@1", "a@2"]);
    assert.deepEqual(
      v.affected.map((a) => [a.id, a.badPages]),
      [
        ["a@1", 64],
        ["a@2", 64],
      ],
    );
    // Only a@2 (and what its chain needs): b is not read.
    const one = await store.verify({ id: "b@1" });
    assert.equal(one.ok, true);
    assert.deepEqual(one.checkpoints, ["b@1"]);
    // Again: the block was set aside; the same checkpoints still depend on it.
    const again = await store.verify({ app: "a" });
    assert.equal(again.ok, false);
    assert.equal(again.damagedBlocks[0]!.found, "earlier");
    assert.deepEqual(again.damagedBlocks[0]!.checkpoints, ["a@1", "a@2"]);
    await store.close();
  });

  test("gc skips a block it cannot read (sets it aside) instead of failing forever", async () => {
    const root = dir();
    const store = await CasStore.open(root, { hashWorker: false, blockPages: 64 });
    const m = model(128);
    await store.ingest("g", 1, writeImage(m.image()));
    for (let p = 0x1000; p < 0x1000 + 128; p += 2) m.write(p);
    const img2 = m.image({ full: true });
    await store.ingest("g", 2, writeImage(img2));
    const want2 = await exportDigest(store, "g@2");
    flipByte(root); // a block of g@1 that g@2 still needs half of
    const r = await store.gc({ keep: 1, minDeadFraction: 0 });
    assert.deepEqual(r.dropped, ["g@1"]);
    assert.equal(r.damaged?.length, 1, JSON.stringify(r));
    const r2 = await store.gc({ keep: 1, minDeadFraction: 0 });
    assert.deepEqual(r2.damaged ?? [], [], "the second gc does not meet it again");
    const v = await store.verify();
    assert.deepEqual(v.affected.map((a) => a.id), ["g@2"]);
    await store.ingest("g", 3, writeImage(img2));
    assert.equal(await exportDigest(store, "g@3"), want2);
    assert.equal((await store.verify()).ok, true, "g@3 stored the lost pages again, g@2 heals");
    await store.close();
  });
});

describe("a missing index never deletes the packs (defect 6)", () => {
  test("index.sqlite moved away: open refuses, the packs stay; put back, everything is there", async () => {
    const root = dir();
    const store = await CasStore.open(root, { hashWorker: false });
    await store.ingest("x", 1, writeImage(model(50).image()));
    const want = await exportDigest(store, "x@1");
    await store.close();
    for (const f of ["index.sqlite", "index.sqlite-wal", "index.sqlite-shm"]) if (existsSync(join(root, f))) renameSync(join(root, f), join(tmp, `${f}.${n}`));
    const size = statSync(join(root, "packs", "pack-000001.dat")).size;
    await assert.rejects(CasStore.open(root), (e: Error) => /store index missing; 1 pack file\(s\) present \(pack-000001\.dat\)/.test(e.message) && /Put back the index\.sqlite/.test(e.message));
    await assert.rejects(CasStore.open(root), /store index missing/, "again: no empty index was created");
    assert.equal(existsSync(join(root, "index.sqlite")), false);
    assert.equal(statSync(join(root, "packs", "pack-000001.dat")).size, size);
    for (const f of ["index.sqlite", "index.sqlite-wal", "index.sqlite-shm"]) if (existsSync(join(tmp, `${f}.${n}`))) renameSync(join(tmp, `${f}.${n}`), join(root, f));
    const back = await CasStore.open(root);
    assert.equal(await exportDigest(back, "x@1"), want);
    await back.close();
  });

  test("a pack the index does not know is never deleted (refused); one it records as pending is", async () => {
    const root = dir();
    const store = await CasStore.open(root, { hashWorker: false });
    await store.ingest("y", 1, writeImage(model(20).image()));
    await store.close();
    writeFileSync(join(root, "packs", "pack-000007.dat"), "someone's data");
    await assert.rejects(CasStore.open(root), (e: Error) => /the store index does not know 1 pack file\(s\) \(pack-000007\.dat\)/.test(e.message));
    assert.equal(readFileSync(join(root, "packs", "pack-000007.dat"), "utf8"), "someone's data");
    const db = new Database(join(root, "index.sqlite"));
    db.prepare("INSERT INTO pending_packs (id, why) VALUES (7, 'new')").run();
    db.close();
    const again = await CasStore.open(root);
    assert.deepEqual(again.repairs.removedPacks, ["pack-000007.dat"]);
    assert.deepEqual(readdirSync(join(root, "packs")), ["pack-000001.dat"]);
    await again.close();
  });
});

describe("a pack that lost bytes (defect 14)", () => {
  test("truncated pack: reported at open, its lost blocks set aside, new data goes to a new pack and restores", async () => {
    const root = dir();
    const store = await CasStore.open(root, { hashWorker: false, blockPages: 64 });
    const m = model(128);
    const img = m.image();
    await store.ingest("t", 1, writeImage(img));
    const want = await exportDigest(store, "t@1");
    await store.close();
    const pack = join(root, "packs", "pack-000001.dat");
    const full = statSync(pack).size;
    truncateSync(pack, full - 1000); // the second block loses its tail
    const again = await CasStore.open(root, { hashWorker: false, blockPages: 64 });
    assert.deepEqual(again.repairs.damaged, ["pack-000001.dat"]);
    assert.equal(again.damage.length, 1);
    assert.equal(again.damage[0]!.blocks, 1);
    assert.equal(again.damage[0]!.pages, 64);
    assert.match(again.damage[0]!.why, new RegExp(`pack-000001\\.dat is ${full - 1000} bytes, the index says ${full}`));
    const v = await again.verify();
    assert.equal(v.ok, false);
    assert.deepEqual(v.affected.map((a) => [a.id, a.badPages]), [["t@1", 64]]);
    assert.deepEqual(v.damagedPacks.map((p) => p.pack), ["pack-000001.dat"]);
    await assert.rejects(exportDigest(again, "t@1"), corrupt);
    const c2 = await again.ingest("t", 2, writeImage(img));
    assert.equal(c2.stats.newPages, 64, "only the lost pages are stored again");
    assert.equal(statSync(pack).size, full - 1000, "nothing appended after the hole");
    assert.ok(existsSync(join(root, "packs", "pack-000002.dat")));
    assert.equal(await exportDigest(again, "t@2"), want);
    assert.equal(await exportDigest(again, "t@1"), want, "t@1 heals");
    await again.close();
  });
});
