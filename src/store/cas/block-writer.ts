// Writing blocks: new pages → blocks of up to 256 pages, compressed concurrently (a few
// zstd jobs in flight), appended in order to packs. Used by ingest and by gc's rewrite.
import { fsyncPath } from "../fsutil.js";
import { encodeBlock } from "./codec.js";
import { recycleRecord } from "./image-stream.js";
import type { StoreContext } from "./context.js";
import { PACK_HEADER_SIZE, PackWriter } from "./pack.js";
import { PAGE } from "./util.js";

export interface LocalBlock {
  pack: number;
  offset: number;
  len: number;
  npages: number;
}

/** Appends encoded blocks to packs, opening a new pack when the current one is full. */
export class PackAppender {
  readonly writers: PackWriter[] = [];
  /** `fresh`: never append to an existing pack (gc writes only to new packs). */
  constructor(
    private readonly ctx: StoreContext,
    private readonly fresh = false,
  ) {}

  private async current(len: number): Promise<PackWriter> {
    const max = this.ctx.opts.packMaxBytes;
    let w = this.writers[this.writers.length - 1];
    if (!w) {
      const last = this.fresh ? undefined : this.ctx.catalog.packs().pop();
      // never append to a pack that lost bytes: new data would land after the hole
      const appendable = last !== undefined && last.size + len <= max && !this.ctx.catalog.damagedPacks().some((d) => d.id === last.id);
      w = last && appendable ? await PackWriter.append(this.ctx.packDir, last.id, last.size) : await PackWriter.create(this.ctx.packDir, this.ctx.allocPackId());
      this.writers.push(w);
    } else if (w.size + len > max && w.size > PACK_HEADER_SIZE) {
      w = await PackWriter.create(this.ctx.packDir, this.ctx.allocPackId());
      this.writers.push(w);
    }
    return w;
  }

  async write(bufs: Buffer[], npages: number): Promise<LocalBlock> {
    const len = bufs.reduce((n, b) => n + b.length, 0);
    const w = await this.current(len);
    const offset = await w.write(bufs);
    return { pack: w.id, offset, len, npages };
  }

  /** Makes the appended data durable (before the index commit that references it). */
  async sync(): Promise<void> {
    for (const w of this.writers) await w.sync();
    if (this.writers.some((w) => w.created)) await fsyncPath(this.ctx.packDir);
  }

  async close(): Promise<void> {
    for (const w of this.writers) await w.close();
  }

  async rollback(): Promise<void> {
    for (const w of this.writers) await w.rollback().catch(() => undefined);
  }
}

/** Builds blocks from new pages and keeps at most `inflight` compressions running. */
export class BlockPipeline {
  readonly blocks: LocalBlock[] = [];
  private buf: Buffer;
  private n = 0;
  /** whole: buf is a record's memory given by addWhole (handed back to the image reader once written). */
  private readonly queue: { slot: number; npages: number; buf: Buffer; whole: boolean; p: Promise<[Buffer, Buffer]> }[] = [];
  /** Block buffers whose compression finished, for reuse (fewer 1 MiB allocations, less GC). */
  private readonly free: Buffer[] = [];
  storedBytes = 0;

  constructor(
    private readonly appender: PackAppender,
    private readonly blockPages: number,
    private readonly level: number,
    private readonly inflight: number,
  ) {
    this.buf = Buffer.allocUnsafe(blockPages * PAGE);
  }

  /** Adds a page; returns its [local block, index]. */
  async add(page: Buffer): Promise<[number, number]> {
    page.copy(this.buf, this.n * PAGE);
    const at: [number, number] = [this.blocks.length + this.queue.length, this.n];
    if (++this.n === this.blockPages) await this.flush();
    return at;
  }

  /** Whether `npages` new pages can be given as one block of their own (addWhole). */
  takesWhole(npages: number): boolean {
    return this.n === 0 && npages === this.blockPages;
  }

  /**
   * Adds a whole block's worth of pages (takesWhole() was true) without copying them: the
   * caller gives `pages` up (kept until the block is written, then reused as a block buffer).
   * Returns the block's local slot; page i is at index i. `pagesCrc`, the CRC-32C of `pages`
   * when known, saves computing it again should the block be stored raw.
   */
  async addWhole(pages: Buffer, pagesCrc?: number): Promise<number> {
    const slot = this.blocks.length + this.queue.length;
    const p = encodeBlock(pages, this.level, pagesCrc);
    p.catch(() => undefined); // awaited in drainOne
    this.queue.push({ slot, npages: this.blockPages, buf: pages, whole: true, p });
    while (this.queue.length >= this.inflight) await this.drainOne();
    return slot;
  }

  async flush(): Promise<void> {
    if (this.n === 0) return;
    const slot = this.blocks.length + this.queue.length;
    const p = encodeBlock(this.buf.subarray(0, this.n * PAGE), this.level);
    p.catch(() => undefined); // awaited in drainOne; avoid an unhandled rejection meanwhile
    this.queue.push({ slot, npages: this.n, buf: this.buf, whole: false, p });
    this.buf = this.free.pop() ?? Buffer.allocUnsafe(this.blockPages * PAGE);
    this.n = 0;
    while (this.queue.length >= this.inflight) await this.drainOne();
  }

  private async drainOne(): Promise<void> {
    const q = this.queue.shift()!;
    const enc = await q.p;
    const b = await this.appender.write(enc, q.npages);
    // only now: a raw block is written straight from it. A record's memory goes back to the
    // image reader for the next records (a fresh 1 MiB buffer faults in 256 pages, several µs
    // each on this VM: docs/store.md, "third step").
    if (q.whole) recycleRecord(q.buf);
    else if (this.free.length <= this.inflight) this.free.push(q.buf);
    this.blocks[q.slot] = b;
    this.storedBytes += b.len;
  }

  async finish(): Promise<void> {
    await this.flush();
    while (this.queue.length > 0) await this.drainOne();
  }

  /** After a failure: waits for compressions in flight, ignoring their results. */
  async abandon(): Promise<void> {
    await Promise.allSettled(this.queue.map((q) => q.p));
    this.queue.length = 0;
  }
}

