// Where the pages of a composed record are: the page table's location hint when its block
// still exists (blocks are immutable and their ids never reused), the page index
// otherwise. Used by export (to read the pages) and by merge (to measure and rewrite).
import { join } from "node:path";
import type { ComposedRecord } from "./compose.js";
import { packName } from "./pack.js";
import type { StoreContext } from "./context.js";
import { HASH_LEN, LOC_LEN, ZERO_HASH, addrOf, hex, storeCorrupt } from "./util.js";

/** Where a page is: [block id, index in the block], or null for a zero page. */
export type PageLoc = [number, number] | null;

/**
 * The location of each page of `r`. `alive` caches, per block id, whether the block
 * exists; with `alive` null hints are ignored (after a failed read: a gc moved blocks).
 * `what` starts the error when a page is missing ("cannot export checkpoint X").
 */
export function locatePages(ctx: StoreContext, r: ComposedRecord, alive: Map<number, boolean> | null, what: string): PageLoc[] {
  const p = locatePagesPacked(ctx, r, alive, what);
  const out = new Array<PageLoc>(r.npages);
  for (let i = 0; i < r.npages; i++) out[i] = p[2 * i] === 0 ? null : [p[2 * i]!, p[2 * i + 1]!];
  return out;
}

/**
 * locatePages without an array per page (a restore plan walks every page of the checkpoint):
 * block id of page i at [2i] (0: a zero page; block ids start at 1), its index in the block at [2i+1].
 */
export function locatePagesPacked(ctx: StoreContext, r: ComposedRecord, alive: Map<number, boolean> | null, what: string): Uint32Array {
  const out = new Uint32Array(r.npages * 2);
  // zero hashes tested as words where the table is 4-aligned (no Buffer per page)
  const hs = r.hashes;
  const w = hs.byteOffset % 4 === 0 ? new Uint32Array(hs.buffer, hs.byteOffset, hs.length >>> 2) : null;
  let lastHint = 0;
  let lastOk: boolean | undefined;
  for (let i = 0; i < r.npages; i++) {
    const o = i * 8;
    const zero = w ? (w[o]! | w[o + 1]! | w[o + 2]! | w[o + 3]! | w[o + 4]! | w[o + 5]! | w[o + 6]! | w[o + 7]!) === 0 : hs.subarray(i * HASH_LEN, (i + 1) * HASH_LEN).equals(ZERO_HASH);
    if (zero) continue;
    const hint = r.locs.readUInt32LE(i * LOC_LEN);
    if (hint !== 0 && alive) {
      // (runs of pages share a block: the last answer first)
      let ok = hint === lastHint ? lastOk : alive.get(hint);
      if (ok === undefined) {
        ok = ctx.catalog.blockExists(hint);
        alive.set(hint, ok);
      }
      lastHint = hint;
      lastOk = ok;
      if (ok) {
        out[2 * i] = hint;
        out[2 * i + 1] = r.locs.readUInt32LE(i * LOC_LEN + 4);
        continue;
      }
    }
    const h = hs.subarray(i * HASH_LEN, (i + 1) * HASH_LEN);
    const loc = ctx.catalog.pageLoc(h);
    if (!loc) {
      // a page whose block was set aside (damage.ts): say where it was and why
      const bad = hint !== 0 ? ctx.catalog.badBlock(hint) : undefined;
      const where = bad ? `: its block at ${join(ctx.packDir, packName(bad.pack))} offset ${bad.offset} was set aside as damaged (${bad.why})` : "";
      throw storeCorrupt(what, `page ${hex(addrOf(r.page + i))} (sha256 ${h.toString("hex")}) is not in the store${where}`);
    }
    if (loc[0] === 0) throw storeCorrupt(what, `page ${hex(addrOf(r.page + i))} is indexed in block 0, which does not exist`); // (0 means a zero page here)
    out[2 * i] = loc[0];
    out[2 * i + 1] = loc[1];
  }
  return out;
}
