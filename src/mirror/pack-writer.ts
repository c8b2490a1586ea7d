// Writes one pack file of the mirror store, bypassing the page cache (O_DIRECT) where
// the filesystem allows it.
//
// Why: on the test VM a buffered write costs ~2.5 CPU s/GiB in the kernel (copying
// into page-cache pages and reclaiming others to make room; dd: 0.65 s of system time
// for 256 MiB) against ~0.15 with O_DIRECT (the device reads our memory). The pack's
// bytes are only read back by fetches, which are rare, so caching them is no loss.
//
// O_DIRECT needs the memory address, the length and the file offset of each write
// aligned to the device's logical block (512 bytes; 4096 is used to be safe). The bytes
// are staged through two aligned buffers (a memcpy of warm memory, ~0.1 s/GiB): one is
// filled while the other is being written, so copying overlaps the device's work. They
// are written in whole blocks; the last, partial block is padded and the file truncated
// to the exact length, so the file is byte for byte what a buffered writer makes. Where
// O_DIRECT is refused (tmpfs, some network filesystems, an unaligned buffer), the
// writer falls back to ordinary vectored writes.
import { constants } from "node:fs";
import { open, type FileHandle } from "node:fs/promises";

const BLOCK = 4096;
/** Bytes staged per direct write. */
const STAGE_BYTES = 8 * 1024 * 1024;

/** Aligned staging buffers not in use (found by alignedStage; two per concurrent writer). */
const freeStages: Buffer[] = [];
/** O_DIRECT failed once in this process for this reason: do not try again. */
let directRefused: string | undefined;

export interface PackWriterStats {
  direct: boolean;
  bytes: number;
}

export class PackWriter {
  private offset = 0;
  /** Buffered mode: pieces not yet written. */
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  /** Direct mode: bytes in the stage not yet written (fewer than one block after a write). */
  private staged = 0;
  /** Direct mode: file offset of the stage's first byte. */
  private stageAt = 0;
  /** Direct mode: the write of the other stage, still in flight. */
  private inFlight: Promise<void> | undefined;

  private constructor(
    private readonly fh: FileHandle,
    /** Direct mode: the aligned staging buffer being filled (undefined: buffered writes). */
    private stage: Buffer | undefined,
    /** Direct mode: the other one, written while this one fills. */
    private spare: Buffer | undefined,
  ) {}

  /** Creates (truncates) `path` for writing. */
  static async create(path: string): Promise<PackWriter> {
    if (directRefused === undefined && constants.O_DIRECT !== undefined) {
      let fh: FileHandle | undefined;
      try {
        fh = await open(path, constants.O_WRONLY | constants.O_CREAT | constants.O_TRUNC | constants.O_DIRECT, 0o600);
        const st = await alignedStage(fh);
        const spare = st && (await alignedStage(fh));
        if (st && spare) return new PackWriter(fh, st, spare);
        if (st) freeStages.push(st);
        directRefused = "no aligned staging buffer";
      } catch (err) {
        await fh?.close();
        // EINVAL: this filesystem does not do O_DIRECT. Anything else (no space, no
        // permission) would fail a buffered open just the same: report it.
        if ((err as NodeJS.ErrnoException).code !== "EINVAL") throw err;
        directRefused = "EINVAL";
        fh = undefined;
      }
      await fh?.close();
    }
    return new PackWriter(await open(path, "w", 0o600), undefined, undefined);
  }

  /** Why this process writes packs through the page cache (undefined: it does not). */
  static get directUnavailable(): string | undefined {
    return directRefused;
  }

  get isDirect(): boolean {
    return this.stage !== undefined;
  }

  /** Appends bytes; returns their offset in the file. */
  async add(b: Buffer): Promise<number> {
    const at = this.offset;
    this.offset += b.length;
    if (this.stage) {
      let from = 0;
      while (from < b.length) {
        const s = this.stage; // (the other one after a swap)
        const k = b.copy(s, this.staged, from);
        this.staged += k;
        from += k;
        if (this.staged === s.length) await this.swapStage();
      }
    } else {
      this.pending.push(b);
      this.pendingBytes += b.length;
      if (this.pending.length >= 512 || this.pendingBytes >= STAGE_BYTES) await this.flushPending();
    }
    return at;
  }

  /** Writes what is left and fsyncs the file's data; returns the file's length. */
  async finish(): Promise<number> {
    if (this.stage) {
      await this.inFlight;
      this.inFlight = undefined;
      if (this.staged > 0) await this.writeLast();
      await this.fh.truncate(this.offset);
    } else {
      await this.flushPending();
    }
    await this.fh.sync();
    return this.offset;
  }

  async close(): Promise<void> {
    // (A write still in flight after a failure must end before its stage is reused.)
    await this.inFlight?.catch(() => undefined);
    this.inFlight = undefined;
    if (this.stage) freeStages.push(this.stage);
    if (this.spare) freeStages.push(this.spare);
    this.stage = this.spare = undefined;
    await this.fh.close();
  }

  private async flushPending(): Promise<void> {
    if (this.pending.length === 0) return;
    const bufs = this.pending;
    this.pending = [];
    this.pendingBytes = 0;
    await this.fh.writev(bufs);
  }

  /**
   * The stage is full (a whole number of blocks): starts writing it, and goes on
   * filling the other one once that one's write has ended.
   */
  private async swapStage(): Promise<void> {
    const full = this.stage as Buffer;
    const at = this.stageAt;
    const write = this.writeAll(full, full.length, at);
    write.catch(() => undefined); // (awaited below or by the next swap, finish or close)
    const previous = this.inFlight;
    this.inFlight = write;
    this.stage = this.spare;
    this.spare = full;
    this.staged = 0;
    this.stageAt = at + full.length;
    await previous;
  }

  private async writeAll(s: Buffer, whole: number, at: number): Promise<void> {
    let done = 0;
    while (done < whole) {
      const { bytesWritten } = await this.fh.write(s, done, whole - done, at + done);
      if (bytesWritten <= 0 || bytesWritten % BLOCK !== 0) throw new Error(`pack write: short direct write (${bytesWritten} bytes)`);
      done += bytesWritten;
    }
  }

  /** Writes what is staged, padded to whole blocks (the file is truncated to its exact length after). */
  private async writeLast(): Promise<void> {
    const whole = Math.ceil(this.staged / BLOCK) * BLOCK;
    await this.writeAll(this.stage as Buffer, whole, this.stageAt);
    this.stageAt += whole;
    this.staged = 0;
  }
}

/**
 * A BLOCK-aligned staging buffer (a free one, or a new one): JavaScript cannot see a
 * buffer's address, so candidate offsets into a slightly larger allocation are tried
 * with a one-block O_DIRECT write at offset 0 of the new (empty) pack; the kernel
 * refuses misaligned ones with EINVAL. Large allocations come from mmap, 16 bytes past
 * a page boundary, so the first candidate nearly always fits.
 */
async function alignedStage(fh: FileHandle): Promise<Buffer | undefined> {
  const free = freeStages.pop();
  if (free) return free;
  const raw = Buffer.alloc(STAGE_BYTES + BLOCK);
  const tried = new Set<number>();
  const candidates = [BLOCK - 16, 0, BLOCK - 32, BLOCK - 64];
  for (let k = 0; k < BLOCK; k += 16) candidates.push(k);
  for (const k of candidates) {
    if (tried.has(k)) continue;
    tried.add(k);
    try {
      await fh.write(raw, k, BLOCK, 0);
      await fh.truncate(0);
      return raw.subarray(k, k + STAGE_BYTES);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EINVAL") throw err;
    }
  }
  return undefined;
}
