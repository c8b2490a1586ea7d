// merge: turns an incremental checkpoint into a synthetic full one, in place (same id),
// by composing its chain at the page-table level: the new page table lists, for every
// page of its memory, the hash of the page stored earlier. No page data is read or
// copied. One transaction swaps the page table and marks the row full + synthetic, so
// readers see either the incremental or the merged checkpoint, both giving the same image.
import { toCheckpoint, requireCheckpoint, type StoreContext } from "./context.js";
import { composeRecords } from "./compose.js";
import type { CasCheckpoint, CheckpointStats, MergePolicy } from "./types.js";
import { crashPoint } from "./util.js";

export function mergeCheckpoint(ctx: StoreContext, id: string, now = new Date()): CasCheckpoint {
  const row = requireCheckpoint(ctx, id);
  if (row.kind === "full") return toCheckpoint(row);
  const { chain, records } = composeRecords(ctx, id);
  const stats = JSON.parse(row.stats) as CheckpointStats;
  stats.merged = { chainLength: chain.length, pages: records.reduce((n, r) => n + r.npages, 0), mergedAt: now.toISOString() };
  const cat = ctx.catalog;
  cat.transaction(() => {
    const cur = cat.checkpoint(id);
    if (!cur || cur.cid !== row.cid || cur.kind !== "incremental") return; // changed meanwhile: nothing to do
    cat.deleteExtents(row.cid);
    records.forEach((r, ord) => cat.insertExtent(row.cid, { ord, page: r.page, npages: r.npages, hashes: r.hashes, locs: r.locs }));
    cat.markMerged(row.cid, JSON.stringify(stats));
    crashPoint("merge-in-transaction");
  });
  crashPoint("merge-committed");
  return toCheckpoint(requireCheckpoint(ctx, id));
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

export const DEFAULT_MERGE_POLICY: Required<MergePolicy> = { maxChainLength: 8, maxChainBytesRatio: 2 };

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
