// Composition of a checkpoint's memory from its chain (docs/format.md, "Incremental
// images"): from the nearest full (captured or merged) ancestor to the target, apply each
// image's PAGES_CLEAR then its PAGES; keep the pages inside the target's VMAs (except
// vdso/vsyscall/shared-file kinds). Works on page hashes only: no page data is read.
import type { CheckpointRow } from "./catalog.js";
import { requireCheckpoint, type StoreContext } from "./context.js";
import { metaVmas, UNSTORED_VMA_KINDS } from "./meta.js";
import { storeCorrupt, HASH_LEN, pageOf } from "./util.js";
import { MAX_PAGES_PER_RECORD } from "../../image/format.js";

/** One output PAGES record: contiguous pages inside one VMA, at most 256. */
export interface ComposedRecord {
  page: number;
  npages: number;
  /** npages × 32 bytes; zero pages are 32 zero bytes. */
  hashes: Buffer;
}

/** The chain from the nearest full/synthetic ancestor to `id`, oldest first. */
export function resolveChain(ctx: StoreContext, id: string): CheckpointRow[] {
  const chain: CheckpointRow[] = [];
  const seen = new Set<string>();
  let row = requireCheckpoint(ctx, id);
  for (;;) {
    chain.push(row);
    if (row.kind === "full") break;
    seen.add(row.id);
    const parentId = row.parent;
    const parent = parentId === null ? undefined : ctx.catalog.checkpoint(parentId);
    if (!parent || seen.has(parent.id))
      throw storeCorrupt(`cannot compose checkpoint ${id}`, `its chain is broken at ${row.id} (parent ${parentId ?? "none"} ${parent ? "forms a cycle" : "is missing"})`);
    row = parent;
  }
  return chain.reverse();
}

/** Page number → hash (a 32-byte view into the page table rows) after applying the chain. */
export function composeChain(ctx: StoreContext, chain: CheckpointRow[]): Map<number, Buffer> {
  const mem = new Map<number, Buffer>();
  for (const ck of chain) {
    const ext = ctx.catalog.extents(ck.cid);
    for (const e of ext) {
      if (e.hashes !== null) continue;
      const end = e.page + e.npages;
      if (e.npages > mem.size) {
        for (const p of mem.keys()) if (p >= e.page && p < end) mem.delete(p);
      } else {
        for (let p = e.page; p < end; p++) mem.delete(p);
      }
    }
    for (const e of ext) {
      if (e.hashes === null) continue;
      for (let i = 0; i < e.npages; i++) mem.set(e.page + i, e.hashes.subarray(i * HASH_LEN, (i + 1) * HASH_LEN));
    }
  }
  return mem;
}

/** Restricts composed memory to the target's VMAs and cuts it into PAGES records. */
export function toRecords(mem: Map<number, Buffer>, metaBlob: Buffer, id: string): ComposedRecord[] {
  const keys = Float64Array.from(mem.keys()).sort();
  const out: ComposedRecord[] = [];
  let k = 0;
  for (const v of metaVmas(metaBlob, id)) {
    if (UNSTORED_VMA_KINDS.has(v.kind)) continue;
    const s = pageOf(v.start);
    const e = pageOf(v.end);
    // first key >= s
    let lo = k;
    let hi = keys.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (keys[mid]! < s) lo = mid + 1;
      else hi = mid;
    }
    k = lo;
    let run: number[] = [];
    const flush = () => {
      if (run.length === 0) return;
      const hashes = Buffer.allocUnsafe(run.length * HASH_LEN);
      run.forEach((p, i) => mem.get(p)!.copy(hashes, i * HASH_LEN));
      out.push({ page: run[0]!, npages: run.length, hashes });
      run = [];
    };
    while (k < keys.length && keys[k]! < e) {
      const p = keys[k]!;
      if (run.length > 0 && (p !== run[run.length - 1]! + 1 || run.length === MAX_PAGES_PER_RECORD)) flush();
      run.push(p);
      k++;
    }
    flush();
  }
  return out;
}

/** The records of a full image of checkpoint `id`. */
export function composeRecords(ctx: StoreContext, id: string): { chain: CheckpointRow[]; records: ComposedRecord[] } {
  const chain = resolveChain(ctx, id);
  const target = chain[chain.length - 1]!;
  const mem = composeChain(ctx, chain);
  const { meta } = ctx.catalog.headerAndMeta(target.cid);
  return { chain, records: toRecords(mem, meta, id) };
}
