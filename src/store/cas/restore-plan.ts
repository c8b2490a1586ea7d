// The restore plan (issue 15): which stored pages tardigrade-restore reads itself, straight
// from the pack files into the application's memory, instead of through the daemon and the
// image stream. Raw blocks ("TGBR": pages stored as they are) qualify: the restorer reads
// the block header and pages and checks the block's CRC-32C, as the daemon's reader would.
// Zero pages of anonymous mappings are left out altogether (a fresh anonymous mapping reads
// zeros). What is left (pages of compressed blocks, zero pages of file mappings) goes in
// the image's PAGES records as before. File format: native/restore/pages-direct.h.
import { crc32c } from "@node-rs/crc32";
import { join } from "node:path";
import type { BlockRow } from "./catalog.js";
import { composeRecords, type ComposedRecord } from "./compose.js";
import type { StoreContext } from "./context.js";
import type { Locs } from "./export.js";
import { locatePagesPacked } from "./locate.js";
import { metaVmas } from "./meta.js";
import { packName } from "./pack.js";
import { BLOCK_HEADER_SIZE } from "./codec.js";
import { HASH_LEN, LOC_LEN, PAGE, addrOf, pageOf } from "./util.js";
import { MAX_PAGES_PER_RECORD } from "../../image/format.js";

const MAGIC = Buffer.from("TGDPLAN\0", "latin1");
const VERSION = 1;
const HEADER = 40;
const BLOCK = 24;
const PIECE = 16;
/** VMA kinds restored as fresh anonymous memory (native/common/image.h): their zero pages need no write. */
const ANON_KINDS = new Set([1, 2]);

export interface RestorePlan {
  /** The plan file's bytes. */
  file: Buffer;
  /** Pack ids the plan reads, in the order of its paths (held against gc while the restorer runs). */
  packs: number[];
  /** Block ids in plan order (the restorer names a failed block by this index). */
  blocks: BlockRow[];
  /** Records still sent in the image, and their pages' locations. */
  records: ComposedRecord[];
  locs: Locs[];
  cid: number;
  directPages: number;
  streamPages: number;
  skippedZeroPages: number;
}

interface PlanBlock {
  row: BlockRow;
  /** page: the first page number (address / 4096) the run goes to */
  pieces: { page: number; index: number; count: number; rec: ComposedRecord }[];
}

/**
 * Plans the restore of checkpoint `id`. Synchronous from the first location lookup to the
 * return, so that the caller can hold the packs against gc before any gc step runs.
 */
export function planRestore(ctx: StoreContext, id: string): RestorePlan {
  const { chain, records } = composeRecords(ctx, id);
  const target = chain[chain.length - 1]!;
  const { meta } = ctx.catalog.headerAndMeta(target.cid);
  const vmas = metaVmas(meta, id);
  const alive = new Map<number, boolean>();
  const blockRows = new Map<number, BlockRow | null>();
  const byBlock = new Map<number, PlanBlock>();
  const outRecords: ComposedRecord[] = [];
  const outLocs: Locs[] = [];
  let directPages = 0;
  let streamPages = 0;
  let skippedZeroPages = 0;
  let v = 0;
  let lastBlk = -1;
  let lastRow: BlockRow | null | undefined;
  let lastPbBlk = -1;
  let lastPb: PlanBlock | undefined;
  for (const r of records) {
    while (v < vmas.length && pageOf(vmas[v]!.end) <= r.page) v++;
    const anon = v < vmas.length && ANON_KINDS.has(vmas[v]!.kind) && pageOf(vmas[v]!.start) <= r.page;
    const locs = locatePagesPacked(ctx, r, alive, `cannot restore checkpoint ${id}`);
    // pages of this record still sent in the image: runs of consecutive indexes
    let runFrom = -1;
    const flush = (to: number) => {
      if (runFrom < 0) return;
      outRecords.push({ page: r.page + runFrom, npages: to - runFrom, hashes: r.hashes.subarray(runFrom * HASH_LEN, to * HASH_LEN), locs: r.locs.subarray(runFrom * LOC_LEN, to * LOC_LEN) });
      outLocs.push(locs.subarray(2 * runFrom, 2 * to));
      streamPages += to - runFrom;
      runFrom = -1;
    };
    for (let i = 0; i < r.npages; i++) {
      const blk = locs[2 * i]!;
      if (blk === 0) {
        if (anon) {
          flush(i);
          skippedZeroPages++;
          continue;
        }
        if (runFrom < 0) runFrom = i;
        continue;
      }
      const idx = locs[2 * i + 1]!;
      // (runs of pages share a block: the last one's row first)
      let row = blk === lastBlk ? lastRow : blockRows.get(blk);
      if (row === undefined) {
        row = ctx.catalog.block(blk) ?? null;
        blockRows.set(blk, row);
      }
      lastBlk = blk;
      lastRow = row;
      if (row === null || row.len !== BLOCK_HEADER_SIZE + row.npages * PAGE) {
        if (runFrom < 0) runFrom = i; // compressed (or gone: the image path reports it)
        continue;
      }
      flush(i);
      let pb = blk === lastPbBlk ? lastPb : byBlock.get(blk);
      if (!pb) {
        pb = { row, pieces: [] };
        byBlock.set(blk, pb);
      }
      lastPbBlk = blk;
      lastPb = pb;
      const page = r.page + i;
      const last = pb.pieces[pb.pieces.length - 1];
      // a piece stays inside one record, hence one mapping (the restorer checks each piece against one)
      if (last && last.rec === r && last.index + last.count === idx && last.page + last.count === page) last.count++;
      else pb.pieces.push({ page, index: idx, count: 1, rec: r });
      directPages++;
    }
    flush(r.npages);
  }
  // records in the image stay at most 256 pages and in address order (they are, as cut from records)
  for (const r of outRecords) if (r.npages > MAX_PAGES_PER_RECORD) throw new Error(`restore plan: record of ${r.npages} pages`);

  const blocks = [...byBlock.values()].sort((a, b) => a.row.pack - b.row.pack || a.row.offset - b.row.offset);
  const packs = [...new Set(blocks.map((b) => b.row.pack))];
  const packIndex = new Map(packs.map((p, i) => [p, i]));
  const paths = Buffer.from(packs.map((p) => join(ctx.packDir, packName(p)) + "\0").join(""), "utf8");
  const pathsPad = (paths.length + 7) & ~7;
  const npieces = blocks.reduce((n, b) => n + b.pieces.length, 0);
  const file = Buffer.alloc(HEADER + pathsPad + blocks.length * BLOCK + npieces * PIECE);
  MAGIC.copy(file, 0);
  file.writeUInt32LE(VERSION, 8);
  file.writeUInt32LE(packs.length, 12);
  file.writeBigUInt64LE(BigInt(blocks.length), 16);
  file.writeBigUInt64LE(BigInt(npieces), 24);
  file.writeUInt32LE(paths.length, 32);
  paths.copy(file, HEADER);
  let bo = HEADER + pathsPad;
  let po = bo + blocks.length * BLOCK;
  let first = 0;
  for (const b of blocks) {
    file.writeBigUInt64LE(BigInt(b.row.offset), bo);
    file.writeUInt32LE(packIndex.get(b.row.pack)!, bo + 8);
    file.writeUInt32LE(b.row.npages, bo + 12);
    file.writeUInt32LE(first, bo + 16);
    file.writeUInt32LE(b.pieces.length, bo + 20);
    bo += BLOCK;
    for (const p of b.pieces) {
      file.writeBigUInt64LE(addrOf(p.page), po);
      file.writeUInt32LE(p.index, po + 8);
      file.writeUInt32LE(p.count, po + 12);
      po += PIECE;
    }
    first += b.pieces.length;
  }
  file.writeUInt32LE(crc32c(file), 36);
  return { file, packs, blocks: blocks.map((b) => b.row), records: outRecords, locs: outLocs, cid: target.cid, directPages, streamPages, skippedZeroPages };
}
