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

/**
 * A run of composed memory: pages [start, start + n) are pages [off, off + n) of a PAGES row.
 * Composition by runs costs per row, not per page (issue 15: the page map cost ~1 s per GiB
 * of a two-image chain under load, before every restore of it).
 */
interface Seg {
  start: number;
  n: number;
  row: ExtentRow;
  off: number;
}

/** Rows sorted by page, or null if two of them overlap (then the page map composes). */
function sortedDisjoint(rows: ExtentRow[]): ExtentRow[] | null {
  const r = rows.slice().sort((a, b) => a.page - b.page);
  for (let i = 1; i < r.length; i++) if (r[i - 1]!.page + r[i - 1]!.npages > r[i]!.page) return null;
  return r;
}

/** `segs` with the pages of `rows` (sorted, disjoint) removed, and, unless `clear`, replaced by them. */
function overlay(segs: Seg[], rows: ExtentRow[], clear: boolean): Seg[] {
  const out: Seg[] = [];
  let i = 0;
  let cur: Seg | undefined = segs[0];
  for (const r of rows) {
    const end = r.page + r.npages;
    while (cur && cur.start + cur.n <= r.page) {
      out.push(cur);
      cur = segs[++i];
    }
    if (cur && cur.start < r.page) {
      out.push({ start: cur.start, n: r.page - cur.start, row: cur.row, off: cur.off });
      cur = { start: r.page, n: cur.start + cur.n - r.page, row: cur.row, off: cur.off + (r.page - cur.start) };
    }
    while (cur && cur.start + cur.n <= end) cur = segs[++i];
    if (cur && cur.start < end) cur = { start: end, n: cur.start + cur.n - end, row: cur.row, off: cur.off + (end - cur.start) };
    if (!clear) out.push({ start: r.page, n: r.npages, row: r, off: 0 });
  }
  while (cur) {
    out.push(cur);
    cur = segs[++i];
  }
  return out;
}

/** composeChain + toRecords by runs; null when an image's rows overlap each other. */
export function composeBySegments(ctx: StoreContext, chain: CheckpointRow[], metaBlob: Buffer, id: string): ComposedRecord[] | null {
  let segs: Seg[] = [];
  for (const ck of chain) {
    const ext = ctx.catalog.extents(ck.cid);
    const clears = sortedDisjoint(ext.filter((e) => e.hashes === null));
    const pages = sortedDisjoint(ext.filter((e) => e.hashes !== null));
    if (!clears || !pages) return null;
    if (clears.length) segs = overlay(segs, clears, true);
    segs = overlay(segs, pages, false);
  }
  const out: ComposedRecord[] = [];
  let k = 0;
  for (const v of metaVmas(metaBlob, id)) {
    if (!storedVma(v)) continue;
    const s = pageOf(v.start);
    const e = pageOf(v.end);
    while (k < segs.length && segs[k]!.start + segs[k]!.n <= s) k++;
    // runs of consecutive pages inside [s, e), cut every MAX_PAGES_PER_RECORD pages, as toRecords does
    let parts: Seg[] = [];
    let runStart = -1;
    let runLen = 0;
    const flush = () => {
      if (runLen === 0) return;
      const hashes = Buffer.allocUnsafe(runLen * HASH_LEN);
      const locs = Buffer.alloc(runLen * LOC_LEN);
      let at = 0;
      for (const p of parts) {
        p.row.hashes!.copy(hashes, at * HASH_LEN, p.off * HASH_LEN, (p.off + p.n) * HASH_LEN);
        if (p.row.locs) p.row.locs.copy(locs, at * LOC_LEN, p.off * LOC_LEN, (p.off + p.n) * LOC_LEN);
        at += p.n;
      }
      out.push({ page: runStart, npages: runLen, hashes, locs });
      parts = [];
      runLen = 0;
    };
    for (let j = k; j < segs.length && segs[j]!.start < e; j++) {
      const g = segs[j]!;
      let from = Math.max(g.start, s);
      const to = Math.min(g.start + g.n, e);
      while (from < to) {
        if (runLen > 0 && (from !== runStart + runLen || runLen === MAX_PAGES_PER_RECORD)) flush();
        if (runLen === 0) runStart = from;
        const take = Math.min(to - from, MAX_PAGES_PER_RECORD - runLen);
        parts.push({ start: from, n: take, row: g.row, off: g.off + (from - g.start) });
        runLen += take;
        from += take;
      }
    }
    flush();
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
  const bySegs = composeBySegments(ctx, chain, meta, id);
  if (bySegs) return { chain, records: bySegs };
  return { chain, records: composeByPages(ctx, chain, meta, id) };
}

/** The page-map composition (images whose rows overlap each other; and the reference in tests). */
export function composeByPages(ctx: StoreContext, chain: CheckpointRow[], metaBlob: Buffer, id: string): ComposedRecord[] {
  return toRecords(composeChain(ctx, chain), metaBlob, id);
}
