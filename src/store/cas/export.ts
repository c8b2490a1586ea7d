// export: a checkpoint as a raw FULL image (docs/format.md) for the restorer: header
// (incremental flag and parent cleared), the checkpoint's metadata records byte for
// byte (TRACKING dropped), its composed memory as PAGES records, END. Streams with
// backpressure (pull-based), decompressing blocks through an LRU cache with a few
// blocks prefetched ahead of the record being assembled.
import { Readable } from "node:stream";
import { crc32c } from "@node-rs/crc32";
import { FILE_HEADER_SIZE, MAX_PAGES_PER_RECORD as MAX_RECORD_PAGES, RECORD_HEADER_SIZE, RecordType } from "../../image/format.js";
import { BlockCache } from "./blocks.js";
import { rawBlockCrc } from "./codec.js";
import { crc32cCombine } from "./crc-combine.js";
import { composeRecords, type ComposedRecord } from "./compose.js";
import type { StoreContext } from "./context.js";
import { locatePagesPacked } from "./locate.js";
import { metaRecords } from "./meta.js";
import { PAGE, addrOf, storeCorrupt } from "./util.js";

const PREFETCH_RECORDS = 4;

/** A record header for a payload of `len` bytes whose CRC-32C is `payloadCrc`. */
function recordHeader(type: number, len: number, payloadCrc: number): Buffer {
  const h = Buffer.alloc(RECORD_HEADER_SIZE);
  h.writeUInt32LE(type, 0);
  h.writeBigUInt64LE(BigInt(len), 8);
  h.writeUInt32LE(payloadCrc, 16);
  h.writeUInt32LE(crc32c(h.subarray(0, 28)), 28);
  return h;
}

/** The stored header with flags and parent_seq cleared and its CRC recomputed. */
function fullHeader(stored: Buffer): Buffer {
  const h = Buffer.from(stored.subarray(0, FILE_HEADER_SIZE));
  h.writeUInt32LE(h.readUInt32LE(28) & ~1, 28);
  h.writeBigUInt64LE(0n, 40);
  h.writeUInt32LE(crc32c(h.subarray(0, 60)), 60);
  return h;
}

function locate(ctx: StoreContext, id: string, r: ComposedRecord, alive: Map<number, boolean> | null): Locs {
  return locatePagesPacked(ctx, r, alive, `cannot export checkpoint ${id}`);
}

/** A record's page locations, packed (locate.ts, locatePagesPacked): block id of page i at [2i] (0: a zero page), its index at [2i+1]. */
export type Locs = Uint32Array;

/** Zero pages for records: slices of one shared buffer (never written). */
const ZEROS = Buffer.alloc(MAX_RECORD_PAGES * PAGE);

/**
 * One PAGES record as slices, without copying page data: the record header, the
 * 16-byte payload prefix, then runs of consecutive pages taken straight from the
 * (decoded, immutable) blocks or from a shared zero buffer. The CRC is chained over the
 * slices.
 */
async function pagesRecord(ctx: StoreContext, cache: BlockCache, id: string, r: ComposedRecord, located: Locs, onStale: () => void): Promise<Buffer[]> {
  const build = async (locs: Locs): Promise<Buffer[]> => {
    const prefix = Buffer.allocUnsafe(16);
    prefix.writeBigUInt64LE(addrOf(r.page), 0);
    prefix.writeBigUInt64LE(BigInt(r.npages), 8);
    const out: Buffer[] = [prefix];
    let crc = crc32c(prefix);
    for (let i = 0; i < r.npages; ) {
      const blk = locs[2 * i]!;
      let j = i + 1;
      let slice: Buffer;
      let block: Buffer | null = null;
      if (blk === 0) {
        while (j < r.npages && locs[2 * j] === 0) j++;
        slice = ZEROS.subarray(0, (j - i) * PAGE);
      } else {
        const idx = locs[2 * i + 1]!;
        while (j < r.npages && locs[2 * j] === blk && locs[2 * j + 1] === idx + (j - i)) j++;
        block = await cache.get(blk);
        slice = block.subarray(idx * PAGE, (idx + j - i) * PAGE);
        if (slice.length !== (j - i) * PAGE) throw storeCorrupt(`cannot export checkpoint ${id}`, `block ${blk} is shorter than its pages ${idx}..${idx + j - i}`);
      }
      // a whole raw block: its CRC was just checked against the bytes read; combine, do not recompute
      const whole = block && slice.length === block.length ? rawBlockCrc.get(block) : undefined;
      crc = whole !== undefined ? crc32cCombine(crc, whole, slice.length) : crc32c(slice, crc);
      out.push(slice);
      i = j;
    }
    out.unshift(recordHeader(RecordType.PAGES, 16 + r.npages * PAGE, crc));
    return out;
  };
  try {
    return await build(located);
  } catch (e) {
    // A gc may have moved the blocks between locating the pages and reading them: locate again once.
    if ((e as { code?: string }).code === "store-corrupt" || (e as NodeJS.ErrnoException).code === "ENOENT") {
      onStale();
      return build(locate(ctx, id, r, null));
    }
    throw e;
  }
}

/** Page locations of records, looked up once (ahead, for prefetching) and kept until the record is built. */
class Locator {
  private readonly locs = new Map<number, Locs>();
  /** Block id → exists, for location hints (blocks only disappear in gc: a stale answer costs one retry). */
  private readonly alive = new Map<number, boolean>();
  constructor(
    private readonly ctx: StoreContext,
    private readonly id: string,
    private readonly records: ComposedRecord[],
    /** Locations already looked up (restore-plan.ts), used until a read fails. */
    private preset: Locs[] | null = null,
  ) {}
  get(i: number): Locs {
    let l = this.locs.get(i);
    if (!l && this.preset) l = this.preset[i];
    if (!l) {
      if (this.alive.size > 100_000) this.alive.clear();
      l = locate(this.ctx, this.id, this.records[i]!, this.alive);
      this.locs.set(i, l);
    }
    return l;
  }
  /** After a failed read (a gc moved blocks): forget which blocks exist. */
  stale(): void {
    this.preset = null;
    this.alive.clear();
    this.locs.clear();
  }
  take(i: number): Locs {
    const l = this.get(i);
    this.locs.delete(i);
    return l;
  }
}

/** Starts loading the blocks of records [from, to) (errors surface when the record is built). */
function prefetch(cache: BlockCache, locator: Locator, from: number, to: number, budget: number): void {
  const seen = new Set<number>();
  for (let i = from; i < to; i++) {
    let locs: Locs;
    try {
      locs = locator.get(i);
    } catch {
      return;
    }
    for (let k = 0; k < locs.length; k += 2) {
      const blk = locs[k]!;
      if (blk === 0 || seen.has(blk)) continue;
      seen.add(blk);
      if (seen.size > budget) return;
      cache.get(blk).catch(() => undefined);
    }
  }
}

/** The full image of checkpoint `id`, as chunks (record by record). */
export async function* exportChunks(ctx: StoreContext, id: string): AsyncGenerator<Buffer> {
  const { chain, records } = composeRecords(ctx, id);
  yield* imageChunks(ctx, id, chain[chain.length - 1]!.cid, records);
}

/**
 * An image of checkpoint `id` (cid: its catalog row) with `records` as its PAGES: the full
 * image when they are its composed records; a restore with a plan (restore-plan.ts) passes
 * only the pages the plan does not read from the packs, with their locations (`locs`).
 * With `records` empty: the metadata alone (what `tardigrade-restore --check-files` reads).
 */
export async function* imageChunks(ctx: StoreContext, id: string, cid: number, records: ComposedRecord[], locs: Locs[] | null = null): AsyncGenerator<Buffer> {
  const { header, meta } = ctx.catalog.headerAndMeta(cid);
  const cache = new BlockCache(ctx.catalog, ctx.readers, ctx.packDir, ctx.opts.cacheBlocks, ctx.reportBad);
  const budget = Math.max(1, Math.floor(ctx.opts.cacheBlocks / 2));
  let size = FILE_HEADER_SIZE;
  let count = 0;
  let pages = 0;
  const h = fullHeader(header);
  yield h;
  for (const r of metaRecords(meta, id)) {
    if (r.type === RecordType.TRACKING || r.type === RecordType.PAGES_CLEAR) continue;
    size += r.raw.length;
    count++;
    yield r.raw;
  }
  const locator = new Locator(ctx, id, records, locs);
  for (let i = 0; i < records.length; i++) {
    if (i % PREFETCH_RECORDS === 0) prefetch(cache, locator, i, Math.min(records.length, i + PREFETCH_RECORDS * 2), budget);
    const r = records[i]!;
    const parts = await pagesRecord(ctx, cache, id, r, locator.take(i), () => locator.stale());
    size += RECORD_HEADER_SIZE + 16 + r.npages * PAGE;
    count++;
    pages += r.npages;
    yield* parts;
  }
  const end = Buffer.alloc(24);
  end.writeBigUInt64LE(BigInt(count), 0);
  end.writeBigUInt64LE(BigInt(pages), 8);
  end.writeBigUInt64LE(BigInt(size + RECORD_HEADER_SIZE + 24), 16);
  yield Buffer.concat([recordHeader(RecordType.END, end.length, crc32c(end)), end]);
}

/** The full image as a Readable (backpressure: records are built only as the consumer reads). */
export function exportStream(ctx: StoreContext, id: string): Readable {
  return Readable.from(exportChunks(ctx, id), { objectMode: false, highWaterMark: 4 << 20 });
}
