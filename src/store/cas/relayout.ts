// Relayout: how much an export of a composed checkpoint would read (read amplification),
// and the rewrite of its pages, in address order, into new blocks of packs of their own.
// This is merge's write phase; the index commit that makes the new blocks visible is
// merge.ts's. Nothing here changes the index: until that commit the new packs are unknown
// to it (open() removes them after a crash; rollback() removes them after a failure).
import { BlockPipeline, PackAppender } from "./block-writer.js";
import { BlockCache } from "./blocks.js";
import type { ComposedRecord } from "./compose.js";
import type { StoreContext } from "./context.js";
import { locatePages, type PageLoc } from "./locate.js";
import type { ReadCost } from "./types.js";
import { HASH_LEN, PAGE, crashPoint } from "./util.js";

export type { PageLoc } from "./locate.js";

/** Where every page of `records` is (one array per record), by the same rule as export. */
export function locateRecords(ctx: StoreContext, id: string, records: ComposedRecord[]): PageLoc[][] {
  const alive = new Map<number, boolean>();
  return records.map((r) => locatePages(ctx, r, alive, `cannot merge checkpoint ${id}`));
}

/**
 * The read cost of exporting pages at `locs` in order: every page of a block is read (and
 * decompressed) to get any one of them, and a block evicted from the export's cache is
 * read again when needed again. A fresh full checkpoint costs 1; a merged chain whose pages
 * are scattered over blocks mostly superseded costs about 1 + the fraction superseded.
 */
export function readCost(ctx: StoreContext, records: ComposedRecord[], locs: PageLoc[][], blockPages: number, cacheBlocks: number): ReadCost {
  const npages = new Map<number, number>();
  const sizeOf = (b: number): number => {
    let n = npages.get(b);
    if (n === undefined) npages.set(b, (n = ctx.catalog.block(b)?.npages ?? blockPages));
    return n;
  };
  const distinct = new Set<string>();
  const lru = new Map<number, true>();
  let pagesRead = 0;
  records.forEach((r, k) => {
    const l = locs[k]!;
    for (let i = 0; i < r.npages; i++) {
      const loc = l[i];
      if (!loc) continue;
      distinct.add(r.hashes.toString("latin1", i * HASH_LEN, (i + 1) * HASH_LEN));
      const b = loc[0];
      if (lru.has(b)) {
        lru.delete(b);
        lru.set(b, true);
        continue;
      }
      pagesRead += sizeOf(b);
      lru.set(b, true);
      if (lru.size > cacheBlocks) lru.delete(lru.keys().next().value as number);
    }
  });
  const pages = distinct.size;
  return { pages, blocks: npages.size, minBlocks: Math.ceil(pages / blockPages), pagesRead, amplification: pages === 0 ? 1 : pagesRead / pages };
}

/** New blocks holding a checkpoint's pages, written and fsynced, not yet in the index. */
export interface Relayout {
  appender: PackAppender;
  pipeline: BlockPipeline;
  /** Page hash (latin1 string) → [index into pipeline.blocks, index in that block]. */
  at: Map<string, [number, number]>;
  /** Bytes appended to packs (block headers + data). */
  bytes: number;
}

const PREFETCH_RECORDS = 8;

/** True for the errors of reading a block that a concurrent gc moved away (its row or its pack is gone). */
function isStale(e: unknown): boolean {
  const code = (e as { code?: string }).code;
  return code === "store-corrupt" || code === "ENOENT";
}

/**
 * Copies the distinct non-zero pages of `records` (address order, first occurrence) into
 * new blocks, compressed as ingest does (raw TGBR blocks for incompressible data), in packs
 * created for them, and fsyncs them. A page whose block a concurrent gc removed is found
 * again through the page index. On failure the new packs are removed.
 */
export async function rewritePages(ctx: StoreContext, records: ComposedRecord[], locs: PageLoc[][], distinctPages: number): Promise<Relayout> {
  const appender = new PackAppender(ctx, true);
  const pipeline = new BlockPipeline(appender, ctx.opts.blockPages, ctx.opts.level, ctx.opts.inflight);
  const cache = new BlockCache(ctx.catalog, ctx.readers, ctx.packDir, ctx.opts.cacheBlocks, ctx.reportBad);
  const budget = Math.max(1, Math.floor(ctx.opts.cacheBlocks / 2));
  const at = new Map<string, [number, number]>();
  const half = Math.ceil(distinctPages / 2);

  const prefetch = (from: number): void => {
    const seen = new Set<number>();
    for (let k = from; k < Math.min(records.length, from + PREFETCH_RECORDS); k++) {
      for (const l of locs[k]!) {
        if (!l || seen.has(l[0])) continue;
        seen.add(l[0]);
        if (seen.size > budget) return;
        cache.get(l[0]).catch(() => undefined); // errors surface when the page is read
      }
    }
  };
  const readPage = async (loc: [number, number], hash: Buffer): Promise<Buffer> => {
    let [block, idx] = loc;
    try {
      return (await cache.get(block)).subarray(idx * PAGE, (idx + 1) * PAGE);
    } catch (e) {
      if (!isStale(e)) throw e;
      const again = ctx.catalog.pageLoc(hash);
      if (!again || (again[0] === block && again[1] === idx)) throw e;
      [block, idx] = again;
      return (await cache.get(block)).subarray(idx * PAGE, (idx + 1) * PAGE);
    }
  };

  try {
    for (let k = 0; k < records.length; k++) {
      if (k % (PREFETCH_RECORDS / 2) === 0) prefetch(k);
      const r = records[k]!;
      const l = locs[k]!;
      for (let i = 0; i < r.npages; i++) {
        const loc = l[i];
        if (!loc) continue;
        const key = r.hashes.toString("latin1", i * HASH_LEN, (i + 1) * HASH_LEN);
        if (at.has(key)) continue;
        const data = await readPage(loc, r.hashes.subarray(i * HASH_LEN, (i + 1) * HASH_LEN));
        at.set(key, await pipeline.add(data));
        if (at.size === half) crashPoint("merge-rewrite-partial");
      }
    }
    await pipeline.finish();
    crashPoint("merge-rewrite-written");
    await appender.sync();
    crashPoint("merge-rewrite-synced");
  } catch (e) {
    await pipeline.abandon();
    await appender.rollback();
    throw e;
  }
  return { appender, pipeline, at, bytes: pipeline.storedBytes };
}
