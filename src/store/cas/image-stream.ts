// Single-pass, bounds-checked reader of a raw image (docs/format.md) from a file or a
// stream (the agent can write into a FIFO). Verifies every CRC and structural rule the
// random-access parser (src/image/parser.ts) checks that can be checked in one pass,
// and yields records one at a time: page data is never held beyond one record (≤ 1 MiB).
import { open, type FileHandle } from "node:fs/promises";
import type { Readable } from "node:stream";
import { crc32c } from "@node-rs/crc32";
import {
  FILE_HEADER_SIZE,
  MAGIC,
  MAX_META_PAYLOAD,
  MAX_PAGES_PER_RECORD,
  MIN_PAYLOAD,
  PAGE_SIZE,
  RECORD_HEADER_SIZE,
  RecordType,
  VERSION,
  recordTypeName,
  type FileHeader,
  type TrackingInfo,
} from "../../image/format.js";
import { ImageError, decodeTimers } from "../../image/parser.js";
import { hex } from "./util.js";

export type ImageItem =
  | { kind: "header"; header: FileHeader; raw: Buffer }
  /** A metadata record, `raw` = header + payload + padding exactly as in the file. */
  | { kind: "meta"; type: RecordType; raw: Buffer; payload: Buffer; offset: number }
  /** With `deferPagesCrc`, `crc` is the CRC-32C the payload must have (not checked here) and `prefixCrc` that of its first 16 bytes. */
  | { kind: "pages"; addr: bigint; npages: number; data: Buffer; offset: number; crc?: number; prefixCrc?: number }
  | { kind: "clear"; addr: bigint; npages: number; offset: number }
  | { kind: "tracking"; info: TrackingInfo; raw: Buffer }
  | { kind: "end"; recordCount: number; pagesTotal: number; fileSize: number };

/** Exact-length reads of an image, from a chunk stream or a file descriptor. */
export interface ImageBytes {
  /** Bytes consumed so far. */
  readonly offset: number;
  /** Exactly n bytes, or null when the input ends first (`available()` then says how many were left). */
  read(n: number): Promise<Buffer | null>;
  available(): number;
  atEnd(): Promise<boolean>;
  /** Counts (and consumes) what is left. */
  drainCount(): Promise<number>;
  /** Stops reading: a writer on the other end of a FIFO gets EPIPE. */
  close(): void;
}

/**
 * Spare record buffers, reused: a fresh 1 MiB buffer is an mmap whose 256 pages each fault
 * on first write (in this VM that kernel time was a tenth of the ingest's main thread). The
 * consumer of readImage hands a PAGES record's memory back with `recycleRecord` once it is
 * done with it (readImage's contract already says its data buffers may be reused).
 */
const spare: ArrayBuffer[] = [];
const SPARE_MAX = 8;

/** A buffer of its own memory (never a slice of a shared pool) for an n-byte record. */
function allocRecord(n: number): Buffer {
  const i = spare.findIndex((b) => b.byteLength === n);
  if (i >= 0) return Buffer.from(spare.splice(i, 1)[0]!, 0, n);
  return Buffer.allocUnsafeSlow(n);
}

/**
 * Gives the memory of a record `view` (as readImage yielded it, or handed back by the hashing
 * worker) for reuse by later reads. The caller must hold no other reference into it.
 */
export function recycleRecord(view: Buffer): void {
  const ab = view.buffer;
  if (!(ab instanceof ArrayBuffer) || ab.byteLength < 64 << 10 || spare.length >= SPARE_MAX) return;
  spare.push(ab);
}

/** How much a stream source buffers before it pauses its stream. */
const STREAM_HIGH_WATER = 8 << 20;

/**
 * Exact-length reads over a chunk stream, fed by its 'data' events (paused above
 * STREAM_HIGH_WATER). Not through the stream's async iterator: that calls read(), which
 * concatenates everything buffered into one new buffer (a copy of every byte, and the
 * largest main-thread cost of reading a 1 GiB image from the agent's FIFO after hashing's);
 * here a chunk is copied once, into the record that needs it, or not at all.
 */
class ByteSource implements ImageBytes {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private done = false;
  private error: Error | null = null;
  private wake: (() => void) | null = null;
  private started = false;
  offset = 0;
  constructor(private readonly stream: Readable) {}

  /** Starts the flow on first use (a FIFO is read only once the store holds its lock). */
  private start(): void {
    this.started = true;
    const s = this.stream;
    const signal = (): void => {
      const w = this.wake;
      this.wake = null;
      w?.();
    };
    s.on("data", (c: Buffer | string) => {
      const b = typeof c === "string" ? Buffer.from(c) : c;
      if (b.length === 0) return;
      this.chunks.push(b);
      this.buffered += b.length;
      if (this.buffered >= STREAM_HIGH_WATER) s.pause();
      signal();
    });
    s.on("end", () => {
      this.done = true;
      signal();
    });
    s.on("error", (e: Error) => {
      this.error ??= e;
      this.done = true;
      signal();
    });
    s.on("close", () => {
      this.done = true;
      signal();
    });
    if (s.readableEnded) this.done = true;
  }

  private async fill(n: number): Promise<boolean> {
    if (!this.started) this.start();
    while (this.buffered < n && !this.done) {
      if (this.stream.isPaused()) this.stream.resume();
      await new Promise<void>((resolve) => (this.wake = resolve));
    }
    if (this.buffered < n && this.error) throw this.error;
    if (this.buffered < STREAM_HIGH_WATER && this.stream.isPaused() && !this.done) this.stream.resume();
    return this.buffered >= n;
  }

  /** Exactly n bytes, or null when the stream ends first (`available()` then says how many were left). */
  async read(n: number): Promise<Buffer | null> {
    if (n === 0) return Buffer.alloc(0);
    if (!(await this.fill(n))) return null;
    let out: Buffer;
    const first = this.chunks[0]!;
    if (first.length >= n) {
      out = first.subarray(0, n);
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
    } else {
      out = allocRecord(n); // its own memory: may be moved to the hashing thread
      let got = 0;
      while (got < n) {
        const c = this.chunks[0]!;
        const take = Math.min(c.length, n - got);
        c.copy(out, got, 0, take);
        got += take;
        if (take === c.length) this.chunks.shift();
        else this.chunks[0] = c.subarray(take);
      }
    }
    this.buffered -= n;
    this.offset += n;
    if (this.buffered < STREAM_HIGH_WATER && this.stream.isPaused() && !this.done) this.stream.resume();
    return out;
  }

  available(): number {
    return this.buffered;
  }

  async atEnd(): Promise<boolean> {
    return !(await this.fill(1));
  }

  async drainCount(): Promise<number> {
    let n = 0;
    for (;;) {
      n += this.buffered; // counted, not kept
      this.chunks = [];
      this.buffered = 0;
      if (!(await this.fill(1))) return n;
    }
  }

  close(): void {
    this.stream.destroy();
  }
}

/**
 * A byte source that hands its data over as it lands in a buffer it reuses (the daemon's
 * FIFO: a socket with `onread`), instead of a new chunk per read(2): every 64 KiB chunk of a
 * stream is a fresh ArrayBuffer (its pages fault on first write, and V8 starts a full GC for
 * every 64 MiB of such memory). A Readable offering one carries it under CHUNK_FEED.
 */
export const CHUNK_FEED = Symbol.for("tardigrade.chunkFeed");

export interface FeedSink {
  /** n bytes arrived in buf[0..n) (valid only during the call); false: pause until resume(). */
  got(n: number, buf: Buffer): boolean;
  /** The source ended (`err`: failed). */
  end(err: Error | null): void;
  /** A read is waiting for bytes not delivered yet (the reader's idle watch counts only that time). */
  readonly waiting: boolean;
}

export interface ChunkFeed {
  /** Starts delivering to `sink` (what arrived before is delivered first). */
  attach(sink: FeedSink): void;
  /** Delivers again after got() returned false. */
  resume(): void;
  /** Stops the source (a writer gets EPIPE). */
  destroy(): void;
}

/** Bytes a FeedSource keeps between the feed and the reads. */
const STASH = 4 << 20;
/** Largest delivery the feed makes at once (its read buffer). */
export const FEED_CHUNK = 256 << 10;

/** Exact-length reads over a ChunkFeed: bytes are copied once, from the feed's buffer into the record's. */
class FeedSource implements ImageBytes, FeedSink {
  offset = 0;
  private stash = Buffer.allocUnsafeSlow(STASH);
  private head = 0;
  private tail = 0;
  private done = false;
  private error: Error | null = null;
  private paused = false;
  private started = false;
  private wake: (() => void) | null = null;
  /** After a short read: how many bytes the input still had. */
  private left = 0;
  /** A read is waiting for bytes the feed has not delivered yet. */
  waiting = false;
  /** The record a waiting read fills (`got` bytes so far): got() copies into it directly. */
  private want: { out: Buffer; got: number } | null = null;

  constructor(private readonly feed: ChunkFeed) {}

  got(n0: number, buf0: Buffer): boolean {
    // A read waiting for the rest of its record, with nothing stashed before these bytes: they
    // go straight into the record (one copy instead of two), only what is left over is stashed.
    let n = n0;
    let buf = buf0;
    const w = this.want;
    if (w && this.tail === this.head && w.got < w.out.length) {
      const k = Math.min(n, w.out.length - w.got);
      buf.copy(w.out, w.got, 0, k);
      w.got += k;
      buf = buf.subarray(k);
      n -= k;
      if (n === 0) {
        this.signal();
        return !this.paused;
      }
    }
    if (this.tail + n > this.stash.length) {
      this.stash.copy(this.stash, 0, this.head, this.tail);
      this.tail -= this.head;
      this.head = 0;
    }
    if (this.tail + n > this.stash.length) {
      // cannot happen: we pause while less than a chunk is free (guard against a larger delivery)
      const bigger = Buffer.allocUnsafeSlow(this.tail + n);
      this.stash.copy(bigger, 0, 0, this.tail);
      this.stash = bigger;
    }
    buf.copy(this.stash, this.tail, 0, n);
    this.tail += n;
    this.signal();
    const free = this.stash.length - (this.tail - this.head);
    if (free >= FEED_CHUNK) return true;
    this.paused = true;
    return false;
  }

  end(err: Error | null): void {
    this.error ??= err;
    this.done = true;
    this.signal();
  }

  private signal(): void {
    const w = this.wake;
    this.wake = null;
    w?.();
  }

  private async more(): Promise<void> {
    if (!this.started) {
      this.started = true;
      this.feed.attach(this);
      // (what arrived early may have filled the waiting record already: got() signalled nobody)
      if (this.tail > this.head || this.done || (this.want !== null && this.want.got === this.want.out.length)) return;
    }
    this.waiting = true;
    try {
      await new Promise<void>((resolve) => (this.wake = resolve));
    } finally {
      this.waiting = false;
    }
  }

  /** Takes up to `max` bytes of the stash into out[at..). */
  private take(out: Buffer, at: number, max: number): number {
    const k = Math.min(max, this.tail - this.head);
    if (k === 0) return 0;
    this.stash.copy(out, at, this.head, this.head + k);
    this.head += k;
    if (this.head === this.tail) this.head = this.tail = 0;
    if (this.paused && this.stash.length - (this.tail - this.head) >= 2 * FEED_CHUNK) {
      this.paused = false;
      this.feed.resume();
    }
    return k;
  }

  async read(n: number): Promise<Buffer | null> {
    if (n === 0) return Buffer.alloc(0);
    const out = allocRecord(n); // its own memory: may be moved to the hashing thread
    const w = { out, got: 0 };
    for (;;) {
      w.got += this.take(out, w.got, n - w.got);
      if (w.got === n) break;
      if (this.done) {
        if (this.error) throw this.error;
        this.left = w.got;
        return null;
      }
      this.want = w;
      try {
        await this.more();
      } finally {
        this.want = null;
      }
    }
    this.offset += n;
    return out;
  }

  available(): number {
    return this.left + (this.tail - this.head);
  }

  async atEnd(): Promise<boolean> {
    while (this.tail === this.head && !this.done) await this.more();
    if (this.tail === this.head && this.error) throw this.error;
    return this.tail === this.head;
  }

  async drainCount(): Promise<number> {
    let n = 0;
    for (;;) {
      n += this.tail - this.head; // counted, not kept
      this.head = this.tail = 0;
      if (this.paused) {
        this.paused = false;
        this.feed.resume();
      }
      if (this.done) return n;
      await this.more();
    }
  }

  close(): void {
    this.done = true;
    this.feed.destroy();
    this.signal();
  }
}

/**
 * Exact-length reads straight from a file or FIFO: each read gets a buffer of its own,
 * filled by read(2) calls (a FIFO returns at most its pipe size per call), with no
 * intermediate chunks: a 1 MiB PAGES payload is one allocation, no copy (the agent's
 * FIFO holds 1 MiB), and it can be handed to another thread whole.
 */
class FdSource implements ImageBytes {
  offset = 0;
  private fh: FileHandle | null = null;
  private opening: Promise<FileHandle> | null = null;
  /** Bytes read ahead by atEnd(). */
  private carry: Buffer | null = null;
  /** After a short read: how many bytes the input still had. */
  private left = 0;
  private closed = false;

  /** Opens at once, as a read stream would: a FIFO's writer may be waiting for a reader (and a caller that gives up unblocks this open by opening the write end). */
  constructor(private readonly path: string) {
    this.handle().catch(() => undefined); // the error surfaces on the first read
  }

  private handle(): Promise<FileHandle> {
    if (this.fh) return Promise.resolve(this.fh);
    this.opening ??= open(this.path, "r").then((fh) => {
      if (this.closed) {
        void fh.close();
        throw new Error(`${this.path}: closed`);
      }
      this.fh = fh;
      return fh;
    });
    return this.opening;
  }

  /** Fills buf[from..) from the file; returns how many bytes it got (short only at end of input). */
  private async fill(buf: Buffer, from: number): Promise<number> {
    const fh = await this.handle();
    let got = from;
    while (got < buf.length) {
      const { bytesRead } = await fh.read(buf, got, buf.length - got, null);
      if (bytesRead === 0) break;
      got += bytesRead;
    }
    return got;
  }

  async read(n: number): Promise<Buffer | null> {
    if (n === 0) return Buffer.alloc(0);
    const buf = allocRecord(n);
    let from = 0;
    if (this.carry) {
      from = this.carry.copy(buf, 0);
      this.carry = null;
    }
    const got = await this.fill(buf, from);
    if (got < n) {
      this.left = got;
      return null;
    }
    this.offset += n;
    return buf;
  }

  available(): number {
    return this.left + (this.carry?.length ?? 0);
  }

  async atEnd(): Promise<boolean> {
    if (this.carry) return false;
    const b = Buffer.allocUnsafe(1);
    if ((await this.fill(b, 0)) === 0) return true;
    this.carry = b;
    return false;
  }

  async drainCount(): Promise<number> {
    let n = this.carry?.length ?? 0;
    this.carry = null;
    const b = Buffer.allocUnsafe(1 << 20);
    const fh = await this.handle();
    for (;;) {
      const { bytesRead } = await fh.read(b, 0, b.length, null);
      if (bytesRead === 0) return n;
      n += bytesRead;
    }
  }

  close(): void {
    this.closed = true;
    const fh = this.fh;
    this.fh = null;
    if (fh) void fh.close().catch(() => undefined);
  }
}

function align8(n: number): number {
  return (n + 7) & ~7;
}

/** A path (file or FIFO: read directly) or a stream, as exact-length reads. */
export function openImageSource(source: string | Readable): { bytes: ImageBytes; label: string } {
  if (typeof source === "string") return { bytes: new FdSource(source), label: source };
  // A stream that knows where it reads from (fs.ReadStream, the daemon's FIFO reader) names it in errors.
  const path = (source as { path?: unknown }).path;
  const label = typeof path === "string" ? path : "(image stream)";
  const feed = (source as { [CHUNK_FEED]?: ChunkFeed })[CHUNK_FEED];
  return { bytes: feed ? new FeedSource(feed) : new ByteSource(source), label };
}

/**
 * Yields the image's records in order after checking them; throws ImageError naming
 * `label`, the byte offset and the defect. The consumer must not keep `data` buffers
 * it does not own beyond the next iteration (they may be reused in later versions).
 */
export async function* readImage(src: ImageBytes, label: string, opts: { deferPagesCrc?: boolean } = {}): AsyncGenerator<ImageItem> {
  const fail = (offset: number, reason: string): never => {
    throw new ImageError(label, offset, reason);
  };
  const h = await src.read(FILE_HEADER_SIZE);
  if (!h) return fail(0, `truncated file header (stream has ${src.available()} bytes, header needs ${FILE_HEADER_SIZE})`);
  if (!h.subarray(0, 8).equals(MAGIC)) fail(0, `bad magic ${JSON.stringify(h.subarray(0, 8).toString("latin1"))} (not a tardigrade image)`);
  const version = h.readUInt32LE(8);
  if (version !== VERSION) fail(8, `unsupported image version ${version} (this tardigrade reads version ${VERSION})`);
  if (h.readUInt32LE(12) !== FILE_HEADER_SIZE) fail(12, `bad header_size ${h.readUInt32LE(12)} (expected ${FILE_HEADER_SIZE})`);
  if (crc32c(h.subarray(0, 60)) !== h.readUInt32LE(60)) fail(0, "file header CRC mismatch");
  const pageSize = h.readUInt32LE(48);
  if (pageSize !== PAGE_SIZE) fail(48, `unsupported page_size ${pageSize} (expected ${PAGE_SIZE})`);
  const header: FileHeader = {
    version,
    createdNs: h.readBigUInt64LE(16),
    pid: h.readUInt32LE(24),
    flags: h.readUInt32LE(28),
    seq: h.readBigUInt64LE(32),
    parentSeq: h.readBigUInt64LE(40),
    pageSize,
  };
  yield { kind: "header", header, raw: Buffer.from(h) };

  const vmas: { start: bigint; end: bigint }[] = [];
  let records = 0;
  let pagesTotal = 0;
  let lastPageEnd = 0n;
  let inPages = false;
  let sawProc = false;
  let sawTracking = false;
  for (;;) {
    const off = src.offset;
    const rh = await src.read(RECORD_HEADER_SIZE);
    if (!rh) {
      if (src.available() === 0) fail(off, `missing END record (stream ends after ${records} records)`);
      fail(off, `truncated record header (${src.available()} bytes left, need ${RECORD_HEADER_SIZE})`);
    }
    const rhb = rh as Buffer;
    if (crc32c(rhb.subarray(0, 28)) !== rhb.readUInt32LE(28)) fail(off, "record header CRC mismatch");
    const type = rhb.readUInt32LE(0);
    const name = recordTypeName(type);
    if (!(type in MIN_PAYLOAD)) fail(off, `unknown record type ${type}`);
    const rtype = type as RecordType;
    const plen64 = rhb.readBigUInt64LE(8);
    const limit = rtype === RecordType.PAGES ? 16 + MAX_PAGES_PER_RECORD * PAGE_SIZE : MAX_META_PAYLOAD;
    if (plen64 > BigInt(limit)) fail(off, `record ${name} payload of ${plen64} bytes exceeds the ${limit}-byte limit`);
    const plen = Number(plen64);
    if (plen < MIN_PAYLOAD[rtype]) fail(off, `payload too short for record ${name}: ${plen} bytes, need at least ${MIN_PAYLOAD[rtype]}`);
    if (records === 0 && rtype !== RecordType.PROC) fail(off, `first record is ${name}, expected PROC`);
    const padded = align8(plen);
    const body = await src.read(padded);
    if (!body) fail(off, `truncated record ${name}: payload of ${plen} bytes (padded ${padded}) but only ${src.available()} bytes left in the stream`);
    const payload = (body as Buffer).subarray(0, plen);
    for (let i = plen; i < padded; i++) if ((body as Buffer)[i] !== 0) fail(off, `non-zero padding after record ${name}`);
    // deferred: the consumer checks a PAGES payload's CRC where it reads the pages anyway (the hashing thread)
    const defer = opts.deferPagesCrc === true && rtype === RecordType.PAGES && plen >= 16;
    if (!defer && crc32c(payload) !== rhb.readUInt32LE(16)) {
      const what = rtype === RecordType.PAGES ? ` (${hex(payload.readBigUInt64LE(0))}, ${payload.readBigUInt64LE(8)} pages)` : "";
      fail(off, `payload CRC mismatch in record ${name}${what}`);
    }
    const pageSection = rtype === RecordType.PAGES || rtype === RecordType.END || rtype === RecordType.PAGES_CLEAR || rtype === RecordType.TRACKING;
    if (inPages && !pageSection) fail(off, `record ${name} after PAGES records (page records must come last)`);
    switch (rtype) {
      case RecordType.PAGES: {
        inPages = true;
        const addr = payload.readBigUInt64LE(0);
        const np64 = payload.readBigUInt64LE(8);
        if (np64 < 1n || np64 > BigInt(MAX_PAGES_PER_RECORD)) fail(off, `PAGES record with ${np64} pages (must be 1..${MAX_PAGES_PER_RECORD})`);
        const npages = Number(np64);
        if (plen !== 16 + npages * PAGE_SIZE) fail(off, `PAGES record payload is ${plen} bytes, expected ${16 + npages * PAGE_SIZE} for ${npages} pages`);
        if (addr % BigInt(PAGE_SIZE) !== 0n) fail(off, `PAGES address ${hex(addr)} is not page aligned`);
        if (addr < lastPageEnd) fail(off, `PAGES address ${hex(addr)} is not after the previous extent (ends ${hex(lastPageEnd)})`);
        const end = addr + BigInt(npages * PAGE_SIZE);
        if (!vmas.some((v) => v.start <= addr && end <= v.end)) fail(off, `PAGES ${hex(addr)}-${hex(end)} is not inside one VMA`);
        lastPageEnd = end;
        pagesTotal += npages;
        if (defer) yield { kind: "pages", addr, npages, data: payload.subarray(16), offset: off, crc: rhb.readUInt32LE(16), prefixCrc: crc32c(payload.subarray(0, 16)) };
        else yield { kind: "pages", addr, npages, data: payload.subarray(16), offset: off };
        break;
      }
      case RecordType.PAGES_CLEAR: {
        inPages = true;
        const addr = payload.readBigUInt64LE(0);
        const np = payload.readBigUInt64LE(8);
        if (np < 1n || addr % BigInt(PAGE_SIZE) !== 0n) fail(off, `PAGES_CLEAR ${hex(addr)} x ${np} is empty or not page aligned`);
        if (np > 1n << 40n) fail(off, `PAGES_CLEAR ${hex(addr)} x ${np} covers more than 2^40 pages`);
        yield { kind: "clear", addr, npages: Number(np), offset: off };
        break;
      }
      case RecordType.TRACKING:
        if (sawTracking) fail(off, "second TRACKING record (at most one allowed)");
        sawTracking = true;
        yield {
          kind: "tracking",
          info: { mode: payload.readUInt32LE(0), pagesScanned: payload.readBigUInt64LE(8), pagesWritten: payload.readBigUInt64LE(16), freshMappings: payload.readBigUInt64LE(24) },
          raw: Buffer.concat([rhb, body as Buffer]),
        };
        break;
      case RecordType.END: {
        const endOff = src.offset;
        if (!(await src.atEnd())) fail(endOff, `data after END (${await src.drainCount()} extra bytes)`);
        const recordCount = payload.readBigUInt64LE(0);
        const pt = payload.readBigUInt64LE(8);
        const fileSize = payload.readBigUInt64LE(16);
        if (fileSize !== BigInt(endOff)) fail(endOff, `END says file_size ${fileSize} but the image has ${endOff} bytes`);
        if (recordCount !== BigInt(records)) fail(endOff, `END says ${recordCount} records but the image has ${records}`);
        if (pt !== BigInt(pagesTotal)) fail(endOff, `END says ${pt} pages but PAGES records hold ${pagesTotal}`);
        if (!sawProc) fail(FILE_HEADER_SIZE, "no PROC record");
        yield { kind: "end", recordCount: records, pagesTotal, fileSize: endOff };
        return;
      }
      default: {
        if (rtype === RecordType.PROC) {
          if (sawProc) fail(off, "second PROC record (exactly one allowed)");
          sawProc = true;
          if (payload.readUInt32LE(152) > 512) fail(off, `PROC auxv_len ${payload.readUInt32LE(152)} exceeds 512`);
        } else if (rtype === RecordType.VMA) {
          const start = payload.readBigUInt64LE(0);
          const end = payload.readBigUInt64LE(8);
          if (start >= end || start % BigInt(PAGE_SIZE) !== 0n || end % BigInt(PAGE_SIZE) !== 0n) fail(off, `VMA ${hex(start)}-${hex(end)} is empty or not page aligned`);
          const prev = vmas[vmas.length - 1];
          if (prev && start < prev.end) fail(off, `VMA ${hex(start)} overlaps or precedes the previous VMA (ends ${hex(prev.end)})`);
          vmas.push({ start, end });
        } else if (rtype === RecordType.TIMERS) {
          const t = decodeTimers(payload);
          if (typeof t === "string") fail(off, t);
        } else if (rtype === RecordType.FD) {
          const extraLen = payload.readUInt32LE(72);
          if (80 + extraLen > payload.length) fail(off, `FD extra_len ${extraLen} exceeds the payload (${payload.length - 80} bytes)`);
        }
        yield { kind: "meta", type: rtype, raw: Buffer.concat([rhb, body as Buffer]), payload, offset: off };
      }
    }
    records++;
  }
}
