// The restore plan (src/store/cas/restore-plan.ts, native/restore/pages-direct.h): raw
// blocks' pages are listed for the restorer to read from the pack files, the rest stays in
// the image. Checked here by doing what the restorer does, in JS: every page of the
// checkpoint must come back from exactly one of plan and image, zero pages of anonymous
// mappings from neither; gc must not unlink a pack a plan still reads; and a damaged raw
// block stops the restore before anything runs.
import assert from "node:assert/strict";
import { crc32c } from "@node-rs/crc32";
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { buildImage, cwdRecord, pagesRecord, procRecord, threadRecord, vmaRecord } from "../src/image/writer.js";
import { CasStore } from "../src/store/cas/index.js";
import type { RestorePlan } from "../src/store/cas/restore-plan.js";
import { P, churnChain, readImageMemory, rng } from "./helpers/cas-images.js";
import { composeByPages, composeBySegments, composeRecords, resolveChain } from "../src/store/cas/compose.js";
import type { StoreContext } from "../src/store/cas/context.js";
import { makeHome, type TestHome } from "./helpers/home.js";
import { fixture, requireNative } from "./helpers/native.js";
import { killApp, runApp, status, waitLines } from "./helpers/scenario.js";

let tmp: string;
before(() => {
  tmp = mkdtempSync(join(tmpdir(), "tg-plan-"));
});
after(() => rmSync(tmp, { recursive: true, force: true }));
let n = 0;

const ANON = 0x10000000n;
const FILEP = 0x20000000n;

/** Memory: `random` incompressible pages, then `zeros` zero pages, then `text` compressible ones, in one
 * anonymous mapping; and one private file mapping with a zero page and a random page. */
function memory(seed: number, random: number, zeros: number, text: number): Map<bigint, Buffer> {
  const r = rng(seed);
  const m = new Map<bigint, Buffer>();
  let a = ANON;
  for (let i = 0; i < random; i++, a += BigInt(P)) {
    const b = Buffer.alloc(P);
    for (let k = 0; k < P; k += 4) b.writeUInt32LE(Math.floor(r() * 2 ** 32), k);
    m.set(a, b);
  }
  for (let i = 0; i < zeros; i++, a += BigInt(P)) m.set(a, Buffer.alloc(P));
  for (let i = 0; i < text; i++, a += BigInt(P)) m.set(a, Buffer.from(`page ${i} `.repeat(P).slice(0, P)));
  m.set(FILEP, Buffer.alloc(P));
  const b = Buffer.alloc(P);
  for (let k = 0; k < P; k += 4) b.writeUInt32LE(Math.floor(r() * 2 ** 32), k);
  m.set(FILEP + BigInt(P), b);
  return m;
}

function image(m: Map<bigint, Buffer>, anonPages: number): Buffer {
  const recs = [];
  const addrs = [...m.keys()].sort((x, y) => (x < y ? -1 : 1));
  // runs of consecutive pages, at most 256 a record
  for (let i = 0; i < addrs.length; ) {
    let j = i + 1;
    while (j < addrs.length && j - i < 256 && addrs[j] === addrs[j - 1]! + BigInt(P)) j++;
    recs.push(pagesRecord(addrs[i]!, Buffer.concat(addrs.slice(i, j).map((x) => m.get(x)!))));
    i = j;
  }
  return buildImage([
    procRecord({ pid: 2 }),
    cwdRecord("/tmp"),
    vmaRecord({ start: ANON, end: ANON + BigInt(anonPages * P) }),
    vmaRecord({ start: FILEP, end: FILEP + BigInt(2 * P), prot: 3, kind: 3, path: "/usr/lib/libx.so" }),
    threadRecord({ tid: 2, comm: "app" }),
    ...recs,
  ]);
}

/** What the restorer does with the plan: read each block's header and pages from its pack, check, place. */
function applyPlan(plan: RestorePlan): Map<bigint, Buffer> {
  const f = plan.file;
  assert.equal(f.subarray(0, 8).toString("latin1"), "TGDPLAN\0");
  const crc = f.readUInt32LE(36);
  const z = Buffer.from(f);
  z.writeUInt32LE(0, 36);
  assert.equal(crc32c(z), crc, "plan CRC");
  const npacks = f.readUInt32LE(12);
  const nblocks = Number(f.readBigUInt64LE(16));
  const npieces = Number(f.readBigUInt64LE(24));
  const plen = f.readUInt32LE(32);
  const paths = f.subarray(40, 40 + plen).toString("utf8").split("\0").slice(0, npacks);
  const bo = 40 + ((plen + 7) & ~7);
  const po = bo + nblocks * 24;
  assert.equal(f.length, po + npieces * 16);
  const out = new Map<bigint, Buffer>();
  for (let i = 0; i < nblocks; i++) {
    const off = Number(f.readBigUInt64LE(bo + i * 24));
    const pack = readFileSync(paths[f.readUInt32LE(bo + i * 24 + 8)]!);
    const np = f.readUInt32LE(bo + i * 24 + 12);
    const first = f.readUInt32LE(bo + i * 24 + 16);
    const cnt = f.readUInt32LE(bo + i * 24 + 20);
    assert.equal(pack.readUInt32LE(off), 0x52424754, "a raw block");
    assert.equal(pack.readUInt32LE(off + 4), np);
    const data = pack.subarray(off + 16, off + 16 + np * P);
    assert.equal(crc32c(data), pack.readUInt32LE(off + 12));
    for (let k = first; k < first + cnt; k++) {
      const addr = f.readBigUInt64LE(po + k * 16);
      const idx = f.readUInt32LE(po + k * 16 + 8);
      const count = f.readUInt32LE(po + k * 16 + 12);
      for (let p = 0; p < count; p++) {
        const a = addr + BigInt(p * P);
        assert.ok(!out.has(a), `page ${a.toString(16)} placed twice`);
        out.set(a, data.subarray((idx + p) * P, (idx + p + 1) * P));
      }
    }
  }
  return out;
}

describe("restore plan", () => {
  test("every page comes back from exactly one of plan and image; zero pages of anonymous memory from neither", async () => {
    const store = await CasStore.open(join(tmp, `s${++n}`));
    try {
      const m = memory(7, 700, 40, 300);
      const file = join(tmp, `i${++n}.img`);
      writeFileSync(file, image(m, 700 + 40 + 300));
      const ck = await store.ingest("app", 1, file);
      const { plan, image: rest, release } = store.restoreWithPlan(ck.id);
      try {
        const out = join(tmp, `o${++n}.img`);
        const chunks: Buffer[] = [];
        for await (const c of rest) chunks.push(c as Buffer);
        writeFileSync(out, Buffer.concat(chunks));
        const streamed = await readImageMemory(out);
        const direct = applyPlan(plan);
        // blocks are cut from the new pages in order: the first 512 random pages fill two raw blocks;
        // the rest share a block with compressible pages, which is compressed, so they are streamed
        assert.equal(plan.directPages, 512);
        assert.equal(plan.skippedZeroPages, 40);
        assert.equal(plan.streamPages, m.size - 512 - 40);
        assert.equal(direct.size, 512);
        for (const [a, want] of m) {
          const page = Number(a / BigInt(P));
          const fromImage = streamed.pages.get(page);
          const fromPlan = direct.get(a);
          assert.ok(!(fromImage && fromPlan), `page ${a.toString(16)} in both`);
          // zero pages: left out (anonymous memory) or sent as zeros (counted below)
          const got = fromPlan ?? fromImage ?? (want.equals(Buffer.alloc(P)) ? Buffer.alloc(P) : undefined);
          assert.ok(got, `page ${a.toString(16)} missing`);
          assert.ok(got.equals(want), `page ${a.toString(16)} differs`);
        }
        // the file mapping's zero page is sent (a file mapping does not read zeros by itself)
        assert.equal(streamed.zeroPages, 1);
      } finally {
        release();
      }
    } finally {
      await store.close();
    }
  });

  test("gc does not unlink a pack a plan reads: it goes once the restorer is done", async () => {
    const store = await CasStore.open(join(tmp, `s${++n}`));
    try {
      const a = memory(11, 512, 0, 0);
      const f1 = join(tmp, `i${++n}.img`);
      writeFileSync(f1, image(a, 512));
      await store.ingest("app", 1, f1);
      // the second checkpoint keeps half the pages: dropping the first leaves pack 1 half dead
      const b = new Map([...a].filter(([addr]) => addr < ANON + BigInt(256 * P) || addr >= FILEP));
      const f2 = join(tmp, `i${++n}.img`);
      writeFileSync(f2, image(b, 512));
      const ck2 = await store.ingest("app", 2, f2);
      const { plan, image: rest, release } = store.restoreWithPlan(ck2.id);
      rest.destroy();
      const pack = join(store.root, "packs", "pack-000001.dat");
      assert.deepEqual(plan.packs, [1]);
      const r = await store.gc({ keep: 1 });
      assert.ok(r.packsRemoved.includes("pack-000001.dat"), JSON.stringify(r));
      assert.ok(existsSync(pack), "held: still there after gc");
      const before = applyPlan(plan); // the restorer can still read everything
      assert.equal(before.size, 257);
      release();
      for (let i = 0; i < 200 && existsSync(pack); i++) await new Promise((res) => setTimeout(res, 10));
      assert.ok(!existsSync(pack), "unlinked on release");
      // the moved pages read back through a new plan
      const again = store.restoreWithPlan(ck2.id);
      again.image.destroy();
      assert.ok(!again.plan.packs.includes(1));
      assert.equal(applyPlan(again.plan).size, 257);
      again.release();
    } finally {
      await store.close();
    }
  });
});

describe("composition by runs", () => {
  test("gives the records the page map gives, on every checkpoint of churned chains", async () => {
    for (const seed of [3, 4, 5]) {
      const store = await CasStore.open(join(tmp, `s${++n}`));
      try {
        const { images } = churnChain(seed, 12);
        const ids: string[] = [];
        for (let i = 0; i < images.length; i++) {
          const f = join(tmp, `c${++n}.img`);
          writeFileSync(f, images[i]!);
          ids.push((await store.ingest("churn", i + 1, f)).id);
        }
        // the store's context, for the composition functions (not part of CasStore's API)
        const ctx = (store as unknown as { ctx: StoreContext }).ctx;
        let longest = 0;
        for (const id of ids) {
          const chain = resolveChain(ctx, id);
          const { meta } = ctx.catalog.headerAndMeta(chain[chain.length - 1]!.cid);
          const want = composeByPages(ctx, chain, meta, id);
          assert.ok(composeBySegments(ctx, chain, meta, id), `${id}: composed by runs (no overlapping rows)`);
          longest = Math.max(longest, chain.length);
          const got = composeRecords(ctx, id).records;
          assert.equal(got.length, want.length, `${id}: record count`);
          got.forEach((r, i) => {
            const w = want[i]!;
            assert.deepEqual([r.page, r.npages], [w.page, w.npages], `${id} record ${i}`);
            assert.ok(r.hashes.equals(w.hashes) && r.locs.equals(w.locs), `${id} record ${i}: hashes and locations`);
          });
        }
        assert.ok(longest >= 3, `chains of several images (longest ${longest})`);
      } finally {
        await store.close();
      }
    }
  });
});

describe("restore plan through the daemon", { timeout: 600_000 }, () => {
  let h: TestHome;
  before(() => {
    requireNative();
    h = makeHome("tg-plan-d-");
  });
  after(async () => {
    await h.cleanup();
  });

  test("a damaged raw block: the restorer refuses (pack file and offset named), nothing runs, the block is set aside; verify finds it", async () => {
    await runApp(h, "hold", [fixture("holder"), "4"]);
    const ready = await waitLines(h, "hold", (ls) => ls.some((l) => l.startsWith("ready ")), "holder ready");
    assert.ok(ready.length > 0);
    const cp = await h.cli(["checkpoint", "hold", "--json"]);
    assert.equal(cp.code, 0, cp.stderr);
    await killApp(h, "hold");
    // the first raw block of the first pack: flip a byte of its pages
    const pack = join(h.home, "store", "packs", "pack-000001.dat");
    const buf = readFileSync(pack);
    let off = 16;
    while (off < buf.length && buf.readUInt32LE(off) !== 0x52424754) off += 16 + buf.readUInt32LE(off + 8);
    assert.ok(off < buf.length, "a raw block in the pack (the holder's memory is random)");
    buf[off + 16 + 5000]! ^= 0x40;
    writeFileSync(pack, buf);
    const r = await h.cli(["restore", "hold"]);
    assert.notEqual(r.code, 0, "the restore must fail");
    assert.match(r.stderr, new RegExp(`checking a stored block \\(bad header or CRC mismatch: the block at ${pack.replace(/[.]/g, "\\.")} offset ${off}\\)`));
    assert.equal((await status(h, "hold")).state, "exited");
    const v = await h.cli(["verify", "hold", "--json"]);
    assert.equal(v.code, 2, v.stdout + v.stderr);
    assert.ok((JSON.parse(v.stdout) as { damagedBlocks: { offset: number }[] }).damagedBlocks.some((b) => b.offset === off));
  });
});

// The restorer checks each raw block's CRC-32C over three interleaved streams joined by the CRC's
// algebra (native/common/crc32c-fast.h, ~2.6x one stream's speed on a block in the cache): it must
// give the plain CRC (native/common/crc32c.c, the one of docs/format.md) for every input.
test("the restorer's three-stream CRC-32C equals the plain one on every length and alignment", () => {
  requireNative();
  const r = spawnSync(fixture("crc3way"), ["16"], { encoding: "utf8", timeout: 120_000 });
  assert.equal(r.status, 0, r.stdout + r.stderr);
  assert.match(r.stdout, /^ok \d+ buffers/);
});
