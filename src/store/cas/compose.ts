// Composition of a checkpoint's memory from its chain (docs/format.md, "Incremental
// images"): from the nearest full (captured or merged) ancestor to the target, apply each
// image's PAGES_CLEAR then its PAGES; keep the pages inside the target's VMAs (except
// vdso/vsyscall/shared-file kinds). Works on page hashes only: no page data is read.
import type { CheckpointRow, ExtentRow } from "./catalog.js";
import { requireCheckpoint, type StoreContext } from "./context.js";
import { metaVmas, storedVma } from "./meta.js";
import { storeCorrupt, HASH_LEN, LOC_LEN, pageOf } from "./util.js";
import { MAX_PAGES_PER_RECORD } from "../../image/format.js";

/** One output PAGES record: contiguous pages inside one VMA, at most 256. */
export interface ComposedRecord {
  page: number;
  npages: number;
  /** npages × 32 bytes; zero pages are 32 zero bytes. */
  hashes: Buffer;
  /** npages × location hints (see ExtentRow). */
  locs: Buffer;
}

/** A PAGES row holds at most 256 pages: row index × 256 + page index fits a JS number. */
const ROW_STRIDE = 256;

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

/** Composed memory: page number → where its hash is (row index × 256 + index in the row's PAGES). */
export interface Composed {
  mem: Map<number, number>;
  rows: ExtentRow[];
}

/** Applies the chain's page tables, oldest first (PAGES_CLEAR, then PAGES, per image). */
export function composeChain(ctx: StoreContext, chain: CheckpointRow[]): Composed {
  const mem = new Map<number, number>();
  const rows: ExtentRow[] = [];
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
      const r = rows.length * ROW_STRIDE;
      rows.push(e);
      for (let i = 0; i < e.npages; i++) mem.set(e.page + i, r + i);
    }
  }
  return { mem, rows };
}

/** Restricts composed memory to the target's VMAs and cuts it into PAGES records. */
export function toRecords({ mem, rows }: Composed, metaBlob: Buffer, id: string): ComposedRecord[] {
  const keys = Float64Array.from(mem.keys()).sort();
  const out: ComposedRecord[] = [];
  let k = 0;
  for (const v of metaVmas(metaBlob, id)) {
    if (!storedVma(v)) continue;
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
      const locs = Buffer.alloc(run.length * LOC_LEN);
      run.forEach((p, i) => {
        const at = mem.get(p)!;
        const row = rows[Math.floor(at / ROW_STRIDE)]!;
        const j = at % ROW_STRIDE;
        row.hashes!.copy(hashes, i * HASH_LEN, j * HASH_LEN, (j + 1) * HASH_LEN);
        if (row.locs) row.locs.copy(locs, i * LOC_LEN, j * LOC_LEN, (j + 1) * LOC_LEN);
      });
      out.push({ page: run[0]!, npages: run.length, hashes, locs });
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

/**
 * A full (captured or merged) checkpoint's own page table as records, when it already is
 * one: PAGES rows in ascending address order, each inside one stored VMA. Null otherwise
 * (the general composition then applies). Saves the page map (~0.4 s per GiB).
 */
export function ownRecords(ext: ExtentRow[], metaBlob: Buffer, id: string): ComposedRecord[] | null {
  const vmas = metaVmas(metaBlob, id).filter(storedVma);
  const out: ComposedRecord[] = [];
  let v = 0;
  let prevEnd = -1;
  for (const e of ext) {
    if (e.hashes === null) return null;
    if (e.npages < 1 || e.npages > MAX_PAGES_PER_RECORD || e.page < prevEnd || e.hashes.length !== e.npages * HASH_LEN) return null;
    const start = e.page;
    const end = e.page + e.npages;
    while (v < vmas.length && pageOf(vmas[v]!.end) <= start) v++;
    if (v >= vmas.length || pageOf(vmas[v]!.start) > start || pageOf(vmas[v]!.end) < end) return null;
    out.push({ page: e.page, npages: e.npages, hashes: e.hashes, locs: e.locs && e.locs.length === e.npages * LOC_LEN ? e.locs : Buffer.alloc(e.npages * LOC_LEN) });
    prevEnd = end;
  }
  return out;
}

/** The records of a full image of checkpoint `id`. */
export function composeRecords(ctx: StoreContext, id: string): { chain: CheckpointRow[]; records: ComposedRecord[] } {
  const chain = resolveChain(ctx, id);
  const target = chain[chain.length - 1]!;
  const { meta } = ctx.catalog.headerAndMeta(target.cid);
  if (chain.length === 1) {
    const own = ownRecords(ctx.catalog.extents(target.cid), meta, id);
    if (own) return { chain, records: own };
  }
  const composed = composeChain(ctx, chain);
  return { chain, records: toRecords(composed, meta, id) };
}
