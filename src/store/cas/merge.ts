// merge: turns an incremental checkpoint into a synthetic full one, in place (same id).
//  1. compose its chain at the page-table level (the hash of every page of its memory);
//  2. measure the read amplification of exporting it from where those pages are
//     (relayout.ts). At or below `maxReadAmplification` the composed page table is enough;
//  3. above it (pages scattered over blocks mostly superseded), copy the pages in address
//     order into new blocks of packs of their own, fsynced, without holding the store's
//     lock (ingests go on; the checkpoint is pinned against gc meanwhile);
//  4. under the store's lock, one transaction: the new packs and blocks, the `pages` rows
//     of those hashes pointed at their new place, the page table replaced, the row marked
//     full + synthetic. Readers see either the incremental or the merged checkpoint, both
//     giving the same image. Old blocks stay until gc finds them dead.
import { toCheckpoint, requireCheckpoint, unknownCheckpointError, type StoreContext } from "./context.js";
import type { CheckpointRow } from "./catalog.js";
import { composeRecords, type ComposedRecord } from "./compose.js";
import { locateRecords, readCost, rewritePages, type Relayout } from "./relayout.js";
import type { CasCheckpoint, CheckpointStats, MergePolicy } from "./types.js";
import { HASH_LEN, LOC_LEN, ZERO_HASH, crashPoint, putLoc } from "./util.js";

/** What merge needs from the store: its write lock, and a pin that keeps a checkpoint (and its chain) from gc. */
export interface MergeHooks {
  locked<T>(fn: () => Promise<T>): Promise<T>;
  pin(id: string): () => void;
}

export async function mergeCheckpoint(ctx: StoreContext, id: string, policy: MergePolicy, hooks: MergeHooks, now = new Date()): Promise<CasCheckpoint> {
  const row = requireCheckpoint(ctx, id);
  if (row.kind === "full") return toCheckpoint(row);
  const maxAmp = policy.maxReadAmplification ?? DEFAULT_MERGE_POLICY.maxReadAmplification;
  const unpin = hooks.pin(id);
  let layout: Relayout | null = null;
  try {
    // Synchronous: one consistent view of the index (no transaction can interleave).
    const { chain, records } = composeRecords(ctx, id);
    const locs = locateRecords(ctx, id, records);
    const cost = readCost(ctx, records, locs, ctx.opts.blockPages, ctx.opts.cacheBlocks);
    const stats = JSON.parse(row.stats) as CheckpointStats;
    stats.merged = { chainLength: chain.length, pages: records.reduce((n, r) => n + r.npages, 0), mergedAt: now.toISOString(), readAmplification: round3(cost.amplification), rewrittenBytes: 0 };
    if (cost.amplification > maxAmp) {
      layout = await rewritePages(ctx, records, locs, cost.pages);
      stats.merged.rewrittenBytes = layout.bytes;
    }
    const done = await hooks.locked(async () => {
      if (!commit(ctx, row, records, stats, layout)) return false;
      crashPoint(layout ? "merge-rewrite-committed" : "merge-committed");
      const committed = layout;
      layout = null; // its packs are the index's now: never roll them back
      await committed?.appender.close();
      return true;
    });
    if (!done) {
      // Changed since it was composed (removed by a gc that did not see the pin yet): drop the new packs.
      const unused = layout;
      layout = null;
      await unused?.appender.rollback();
      if (!ctx.catalog.checkpoint(id)) throw unknownCheckpointError(id, "it was removed (by gc) while it was being merged");
    }
  } catch (e) {
    if (layout) await layout.appender.rollback();
    throw e;
  } finally {
    unpin();
  }
  return toCheckpoint(requireCheckpoint(ctx, id));
}

function round3(x: number): number {
  return Math.round(x * 1000) / 1000;
}

/** The composed records with location hints pointing at the relaid blocks (block ids as committed). */
function relocated(records: ComposedRecord[], at: Map<string, [number, number]>, ids: number[]): ComposedRecord[] {
  return records.map((r) => {
    const locs = Buffer.alloc(r.npages * LOC_LEN);
    for (let i = 0; i < r.npages; i++) {
      const h = r.hashes.subarray(i * HASH_LEN, (i + 1) * HASH_LEN);
      if (h.equals(ZERO_HASH)) continue;
      const a = at.get(h.toString("latin1"))!;
      putLoc(locs, i, ids[a[0]]!, a[1]);
    }
    return { ...r, locs };
  });
}

/**
 * One transaction: (new packs, blocks and page locations,) the page table, the merged mark.
 * Returns false, changing nothing, if the checkpoint changed since it was composed.
 */
function commit(ctx: StoreContext, row: CheckpointRow, records: ComposedRecord[], stats: CheckpointStats, layout: Relayout | null): boolean {
  const cat = ctx.catalog;
  return cat.transaction(() => {
    const cur = cat.checkpoint(row.id);
    if (!cur || cur.cid !== row.cid || cur.kind !== "incremental" || cur.stats !== row.stats) return false;
    let table = records;
    if (layout) {
      for (const w of layout.appender.writers) cat.upsertPack(w.id, w.size);
      const ids = layout.pipeline.blocks.map((b) => cat.insertBlock(b.pack, b.offset, b.len, b.npages));
      for (const [key, [local, idx]] of layout.at) cat.placePage(Buffer.from(key, "latin1"), ids[local]!, idx);
      table = relocated(records, layout.at, ids);
    }
    cat.deleteExtents(row.cid);
    table.forEach((r, ord) => cat.insertExtent(row.cid, { ord, page: r.page, npages: r.npages, hashes: r.hashes, locs: r.locs }));
    cat.markMerged(row.cid, JSON.stringify(stats));
    crashPoint(layout ? "merge-rewrite-in-transaction" : "merge-in-transaction");
    return true;
  });
}

/** Length (in checkpoints, base excluded) and stored bytes of the chain ending at `id`, and its base's stored bytes. */
export function chainInfo(ctx: StoreContext, id: string): { chainLength: number; chainBytes: number; baseBytes: number } {
  let row = requireCheckpoint(ctx, id);
  let chainLength = 0;
  let chainBytes = 0;
  while (row.kind === "incremental") {
    chainLength++;
    chainBytes += (JSON.parse(row.stats) as CheckpointStats).imageBytes;
    const p = row.parent === null ? undefined : ctx.catalog.checkpoint(row.parent);
    if (!p) return { chainLength, chainBytes, baseBytes: 0 };
    row = p;
  }
  return { chainLength, chainBytes, baseBytes: (JSON.parse(row.stats) as CheckpointStats).imageBytes };
}

export const DEFAULT_MERGE_POLICY: Required<MergePolicy> = { maxChainLength: 8, maxChainBytesRatio: 2, maxReadAmplification: 1.25 };

/**
 * Whether a chain should be merged: `chainLength` incrementals since the base, whose images
 * total `chainBytes`, on a base whose image is `baseBytes`.
 */
export function shouldMerge(chainLength: number, chainBytes: number, baseBytes: number, policy: MergePolicy = {}): boolean {
  const p = { ...DEFAULT_MERGE_POLICY, ...policy };
  if (chainLength <= 0) return false;
  if (chainLength >= p.maxChainLength) return true;
  return baseBytes > 0 && chainBytes >= p.maxChainBytesRatio * baseBytes;
}
