// Damaged store data: blocks that fail their checks and packs that lost bytes.
// A block found bad is set aside in the index (Catalog.markBlocksBad): its row moves to
// `bad_blocks` and the pages stored in it are forgotten, so dedup no longer points new
// checkpoints at it (the next ingest of such a page stores it again, which also heals the
// older checkpoints that need it: their lookups fall back to the page index), gc no longer
// reads it, and exports needing one of its pages fail with "not in the store".
// A pack shorter than committed (or missing) at open: its blocks past the end are set
// aside and the pack is recorded in `damaged_packs` (never appended to again).
import { stat } from "node:fs/promises";
import { join } from "node:path";
import { TgError, errMessage } from "../../errors.js";
import type { BlockRow, Catalog } from "./catalog.js";
import { decodeBlock } from "./codec.js";
import type { StoreContext } from "./context.js";
import { packName } from "./pack.js";

/** What the store tells its owner (the daemon logs it) when it sets data aside. */
export interface DamageEvent {
  /** "block": a block failed its checks when read; "pack": a pack is short or missing at open. */
  kind: "block" | "pack";
  pack: string;
  /** Block id and offset in the pack (kind "block"); for a pack, the blocks set aside. */
  block?: number;
  offset?: number;
  blocks?: number;
  /** Pages of the index forgotten with the block(s). */
  pages: number;
  why: string;
}

/** The reason a block is unreadable or fails its checks, or null if it reads back fine. */
export async function checkBlock(ctx: StoreContext, row: BlockRow): Promise<string | null> {
  try {
    const buf = await ctx.readers.read(row.pack, row.offset, row.len);
    await decodeBlock(buf, row.npages, `${join(ctx.packDir, packName(row.pack))} offset ${row.offset}`);
    return null;
  } catch (e) {
    return shortWhy(e);
  }
}

/** The "why" of a read error (a TgError's why plus where, otherwise its message). */
export function shortWhy(e: unknown): string {
  return e instanceof TgError ? `${e.what}: ${e.why}` : errMessage(e);
}

/** True for errors that mean the data itself is bad (not a block moved away by a concurrent gc). */
export function isDamageError(e: unknown): boolean {
  const code = (e as { code?: string }).code;
  return code === "store-corrupt" || code === "ENOENT";
}

/**
 * Sets aside blocks found bad (call with the store's lock held: ingest relies on stored
 * pages not disappearing under it). Blocks no longer in the index (moved by gc) are
 * skipped. Returns one event per block set aside.
 */
export function setAsideBlocks(cat: Catalog, bad: { id: number; why: string }[]): DamageEvent[] {
  const rows: { block: BlockRow; why: string }[] = [];
  for (const b of bad) {
    const row = cat.block(b.id);
    if (row && !rows.some((r) => r.block.id === row.id)) rows.push({ block: row, why: b.why });
  }
  if (rows.length === 0) return [];
  cat.transaction(() => cat.markBlocksBad(rows));
  const byId = new Map(cat.badBlocks().map((r) => [r.id, r]));
  return rows.map(({ block, why }) => ({ kind: "block", pack: packName(block.pack), block: block.id, offset: block.offset, pages: byId.get(block.id)?.pages ?? 0, why }));
}

/**
 * At open: each pack shorter than the index says (or missing) is recorded damaged, and its
 * blocks that lie past the file's end are set aside. Returns one event per damaged pack.
 */
export async function setAsideDamagedPacks(cat: Catalog, packDir: string, damaged: string[]): Promise<DamageEvent[]> {
  const events: DamageEvent[] = [];
  const committed = new Map(cat.packs().map((p) => [packName(p.id), p]));
  for (const name of damaged) {
    const p = committed.get(name);
    if (!p) continue;
    const size = await stat(join(packDir, name)).then((s) => s.size, () => -1);
    const why = size < 0 ? `${name} is missing (the index says ${p.size} bytes)` : `${name} is ${size} bytes, the index says ${p.size} (truncated)`;
    const lost = cat.blocksOfPack(p.id).filter((b) => size < 0 || b.offset + b.len > size);
    let pages = 0;
    cat.transaction(() => {
      pages = cat.markBlocksBad(lost.map((block) => ({ block, why })));
      cat.addDamagedPack(p.id, why);
    });
    events.push({ kind: "pack", pack: name, blocks: lost.length, pages, why });
  }
  return events;
}
