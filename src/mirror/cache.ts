// The destination's in-memory cache: chunk bytes shared by every source, reference
// counted by the checkpoints (in progress or queued) that need them, and a byte
// budget. A checkpoint reserves the bytes it will receive before its chunks are
// asked for; while the budget is spent, reservations wait, so the sessions waiting on
// them stop reading their sockets (backpressure) until a flush frees memory.
//
// Chunk bytes live in slabs (slabs.ts), copied there once from the socket's read
// buffers. A slab is recycled when its last chunk is dropped; chunks
// leave the cache when the flush that wrote them commits (or, pinned by a checkpoint
// that was offered before that, at the next flush), so slabs hold at most about twice
// the cache's counted bytes.
//
// Verification: chunks of Chunks frames are cached *unverified*; their SHA-256 is
// computed by worker threads soon after arrival (a slab at a time, when it is full:
// slabs.ts, hash-pool.ts), and a chunk is marked verified when its digest matches
// its name. The flush
// waits for the digests of its batch and checks them before anything is written (see
// MirrorServer.verifyBatch). An unverified chunk is usable only by checkpoints of the
// source that sent it: another source offering the same name is asked for its own
// copy, which is verified on arrival and then replaces the unverified bytes. So no
// source's bytes can spoil another source's checkpoint.
import type { HashPool } from "./hash-pool.js";
import { SlabPool, type SlabBytes } from "./slabs.js";

export interface CacheStats {
  bytes: number;
  reserved: number;
  peak: number;
  entries: number;
  waiting: number;
  /** Reservations that had to wait for room (each one paused a source). */
  waits: number;
}

interface Entry {
  /** The slab memory holding the bytes (released when the entry goes). */
  mem: SlabBytes;
  refs: number;
  /** The bytes were checked against the name. */
  verified: boolean;
  /** The SHA-256 (hex) the hash workers computed, while or after they do. */
  check?: Promise<string>;
  /** The source that sent the bytes. */
  owner: string;
}

interface Waiter {
  bytes: number;
  resolve: () => void;
  reject: (err: Error) => void;
}

export class ChunkCache {
  private readonly entries = new Map<string, Entry>();
  /** Bytes of chunk data held. */
  private bytes = 0;
  /** Bytes promised to checkpoints whose chunks have not all arrived yet (and manifests). */
  private reserved = 0;
  private peak = 0;
  private waits = 0;
  private readonly waiters: Waiter[] = [];
  /** Where chunk bytes are kept. */
  readonly slabs: SlabPool;
  /** Called when a reservation has to wait: the flusher should make room. */
  onPressure: () => void = () => {};

  /**
   * @param maxBytes the byte budget
   * @param hasher worker threads that hash arriving chunks; without one, chunks are
   *   hashed on the event loop when the flush needs their digests
   */
  constructor(
    readonly maxBytes: number,
    hasher?: HashPool,
  ) {
    // Slabs of 1-8 MiB, and free slabs kept for reuse up to the budget.
    const slabSize = Math.max(1 << 20, Math.min(8 << 20, 2 ** Math.floor(Math.log2(Math.max(1, maxBytes / 16)))));
    this.slabs = new SlabPool(slabSize, maxBytes, hasher);
  }

  get used(): number {
    return this.bytes + this.reserved;
  }

  stats(): CacheStats {
    return { bytes: this.bytes, reserved: this.reserved, peak: this.peak, entries: this.entries.size, waiting: this.waiters.length, waits: this.waits };
  }

  has(hash: string): boolean {
    return this.entries.has(hash);
  }

  /** Cached and usable by `source`: verified, or sent by that source itself. */
  usable(hash: string, source: string): boolean {
    const e = this.entries.get(hash);
    return e !== undefined && (e.verified || e.owner === source) && !e.mem.lost;
  }

  /** Cached but not usable by `source`: another source's unverified bytes. */
  conflicts(hash: string, source: string): boolean {
    const e = this.entries.get(hash);
    return e !== undefined && !e.verified && e.owner !== source;
  }

  /** A cached chunk's size in bytes (0 if not cached). */
  size(hash: string): number {
    return this.entries.get(hash)?.mem.length ?? 0;
  }

  /** A cached chunk's bytes; only once verified (before, they may be away being hashed). */
  get(hash: string): Buffer | undefined {
    return this.entries.get(hash)?.mem.data;
  }

  isVerified(hash: string): boolean {
    const e = this.entries.get(hash);
    return e !== undefined && e.verified && !e.mem.lost;
  }

  /**
   * The SHA-256 (hex) of a cached chunk's bytes: its name if already verified, else
   * the hash workers' result (waited for; the slab holding it is sent to them now if
   * it was still filling up). A chunk whose digest matches is marked verified.
   * Undefined if it is not cached.
   */
  async digest(hash: string): Promise<string | undefined> {
    const e = this.entries.get(hash);
    if (!e) return undefined;
    if (e.mem.lost) return "unavailable (lost with a failed hash worker)";
    if (e.verified) return hash;
    e.check ??= this.check(hash, e);
    this.slabs.sealNow();
    return e.check;
  }

  /**
   * Asks for the digests of these cached chunks (computed by the hash workers, a
   * slab at a time); each is marked verified when its digest matches its name.
   */
  startVerify(hashes: readonly string[]): void {
    // Without workers, the flush hashes them (on the event loop, in slices).
    if (!this.slabs.hashesInWorkers) return;
    for (const h of hashes) {
      const e = this.entries.get(h);
      if (e && !e.verified) e.check ??= this.check(h, e);
    }
  }

  private check(hash: string, e: Entry): Promise<string> {
    const p = e.mem.digest().then(
      (actual) => {
        if (actual === hash && this.entries.get(hash) === e) e.verified = true;
        return actual;
      },
      // The worker failed (its copy of the bytes is gone): report the chunk as bad.
      (err: Error) => `unavailable (${err.message})`,
    );
    return p;
  }

  /** Takes a reference on a chunk already cached and usable by `source`. Returns false if there is none. */
  pin(hash: string, source: string): boolean {
    const e = this.entries.get(hash);
    if (!e || !(e.verified || e.owner === source) || e.mem.lost) return false;
    e.refs++;
    return true;
  }

  /** Drops a chunk whatever its references (its bytes failed verification). */
  evict(hash: string): void {
    const e = this.entries.get(hash);
    if (!e) return;
    this.drop(hash, e);
  }

  private drop(hash: string, e: Entry): void {
    this.entries.delete(hash);
    this.bytes -= e.mem.length;
    e.mem.release();
    this.grant();
  }

  /**
   * Converts `reservedBytes` of a reservation into the chunk's data (or, when the
   * chunk is already cached and usable by `owner`, just pins it and returns the
   * reservation). `mem` (slab memory holding the bytes) is the cache's from now on:
   * kept, or released at once when not stored. `verified`: the caller checked the
   * bytes against the name; verified bytes replace another source's unverified ones
   * (the caller must have checked conflicts() and verified in that case). Returns
   * true when the bytes were stored.
   */
  insert(hash: string, mem: SlabBytes, reservedBytes: number, owner: string, verified: boolean): boolean {
    this.reserved -= reservedBytes;
    const e = this.entries.get(hash);
    let stored = false;
    if (e && (e.verified || e.owner === owner) && !e.mem.lost) {
      e.refs++;
      mem.release();
    } else if (e) {
      if (!verified && !e.mem.lost) {
        mem.release();
        throw new Error(`internal error: unverified chunk ${hash} over another source's unverified copy`);
      }
      // A new entry object: a hash job still running on the old bytes must not mark these.
      this.entries.set(hash, { mem, refs: e.refs + 1, verified, owner });
      this.bytes += mem.length - e.mem.length;
      e.mem.release();
      stored = true;
    } else {
      this.entries.set(hash, { mem, refs: 1, verified, owner });
      this.bytes += mem.length;
      stored = true;
    }
    this.notePeak();
    this.grant();
    return stored;
  }

  unpin(hash: string): void {
    const e = this.entries.get(hash);
    if (!e) return;
    if (--e.refs <= 0) this.drop(hash, e);
  }

  /**
   * Reserves `n` bytes, waiting while that would exceed the budget. Fails at once if
   * n alone exceeds the budget (that checkpoint could never fit).
   */
  reserve(n: number): Promise<void> {
    if (n > this.maxBytes) {
      return Promise.reject(
        new Error(`needs ${n} bytes of cache but --cache-max is ${this.maxBytes}; raise --cache-max on the server`),
      );
    }
    if (this.waiters.length === 0 && this.used + n <= this.maxBytes) {
      this.reserved += n;
      this.notePeak();
      return Promise.resolve();
    }
    this.waits++;
    return new Promise((resolve, reject) => {
      this.waiters.push({ bytes: n, resolve, reject });
      this.onPressure();
    });
  }

  release(n: number): void {
    this.reserved -= n;
    this.grant();
  }

  /** Fails every waiting reservation (shutdown). */
  rejectWaiters(err: Error): void {
    for (const w of this.waiters.splice(0)) w.reject(err);
  }

  private grant(): void {
    while (this.waiters.length > 0) {
      const w = this.waiters[0] as Waiter;
      if (this.used + w.bytes > this.maxBytes) {
        this.onPressure();
        return;
      }
      this.waiters.shift();
      this.reserved += w.bytes;
      this.notePeak();
      w.resolve();
    }
  }

  private notePeak(): void {
    if (this.used > this.peak) this.peak = this.used;
  }
}
