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
// Verification (see docs/mirror.md, "Verification"): chunks of Chunks frames are
// cached *unverified*, owned by the source that sent them, and usable only by that
// source's checkpoints. A chunk becomes usable by every source once its bytes were
// checked against its name: when another source offers the same name, the server
// hashes the cached copy (verifyNow); a copy that fails is marked bad and is usable by
// nobody; the other source sends its own, which is checked on arrival and replaces it.
// So no source's bytes can spoil another source's checkpoint, and nothing is hashed on
// the path of a source's own data.
import { createHash } from "node:crypto";
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
  /** The bytes were checked and do not match the name: their SHA-256 (hex). */
  bad?: string;
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

  /** @param maxBytes the byte budget */
  constructor(readonly maxBytes: number) {
    // Slabs of 1-8 MiB, and free slabs kept for reuse up to the budget.
    const slabSize = Math.max(1 << 20, Math.min(8 << 20, 2 ** Math.floor(Math.log2(Math.max(1, maxBytes / 16)))));
    this.slabs = new SlabPool(slabSize, maxBytes);
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

  /** Cached and usable by `source`: verified, or sent by that source itself (and not found bad). */
  usable(hash: string, source: string): boolean {
    const e = this.entries.get(hash);
    return e !== undefined && usableBy(e, source);
  }

  /** Cached as another source's bytes that nobody has checked yet (verifyNow can make them usable). */
  foreign(hash: string, source: string): boolean {
    const e = this.entries.get(hash);
    return e !== undefined && !e.verified && e.bad === undefined && e.owner !== source;
  }

  /** A cached chunk's bytes. */
  get(hash: string): Buffer | undefined {
    return this.entries.get(hash)?.mem.data;
  }

  /** The source whose unchecked bytes these are (undefined: verified, or not cached). */
  owner(hash: string): string | undefined {
    const e = this.entries.get(hash);
    return e === undefined || e.verified ? undefined : e.owner;
  }

  /** The SHA-256 of a cached chunk found not to match its name (undefined: not found bad). */
  badDigest(hash: string): string | undefined {
    return this.entries.get(hash)?.bad;
  }

  /**
   * Checks a cached chunk's bytes against its name now (SHA-256 on this thread: only
   * chunks another source wants to share are checked, once). A match makes it usable
   * by every source; a mismatch marks it bad (usable by nobody). Returns the digest,
   * or undefined if the chunk is not cached.
   */
  verifyNow(hash: string): string | undefined {
    const e = this.entries.get(hash);
    if (!e) return undefined;
    if (e.verified) return hash;
    if (e.bad !== undefined) return e.bad;
    const actual = createHash("sha256").update(e.mem.data).digest("hex");
    if (actual === hash) e.verified = true;
    else e.bad = actual;
    return actual;
  }

  /** Takes a reference on a chunk already cached and usable by `source`. Returns false if there is none. */
  pin(hash: string, source: string): boolean {
    const e = this.entries.get(hash);
    if (!e || !usableBy(e, source)) return false;
    e.refs++;
    return true;
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
   * bytes against the name; only verified bytes may replace a cached copy this source
   * cannot use (another source's unchecked bytes, or bad ones). Returns true when the
   * bytes were stored.
   */
  insert(hash: string, mem: SlabBytes, reservedBytes: number, owner: string, verified: boolean): boolean {
    this.reserved -= reservedBytes;
    const e = this.entries.get(hash);
    let stored = false;
    if (e && usableBy(e, owner)) {
      e.refs++;
      mem.release();
    } else if (e) {
      if (!verified) {
        mem.release();
        throw new Error(`internal error: unverified chunk ${hash} over another source's or bad bytes`);
      }
      // Checked bytes replace unusable ones: the checkpoints holding the old entry
      // now read these (the name says what the bytes must be).
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

function usableBy(e: Entry, source: string): boolean {
  return e.bad === undefined && (e.verified || e.owner === source);
}
