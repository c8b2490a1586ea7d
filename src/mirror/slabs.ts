// Memory for the destination's cached chunk bytes: large slabs handed out by bump
// allocation, hashed by worker threads a whole slab at a time, and recycled when
// every chunk cut from them is gone.
//
// Why: chunks arrive in the socket's 64 KiB read buffers. Keeping views of those
// kept whole read buffers alive, and every chunk larger than one read had to be
// copied into a fresh allocation, and fresh memory costs a page fault per 4 KiB on
// this kind of VM (~0.5 CPU s/GiB measured). Copying each chunk once into a recycled
// (warm) slab costs a plain memcpy instead, and lets the read buffers die young.
//
// Hashing: a chunk's SHA-256 is requested with digest(); the requests of a slab go to
// a worker thread together when the slab is sealed (full, or sealNow()), the slab's
// memory *transferred* to the worker and back (not copied; shared memory would make
// every copy into the slab a slow "relaxed" atomic copy in V8). While a slab is away
// its bytes cannot be read: `data` throws. Only the flush reads cached bytes, and only
// after their digests came back.
import { hash } from "node:crypto";
import type { HashPool } from "./hash-pool.js";

/** A piece of a slab holding one chunk; release() it exactly once when the chunk is dropped. */
export interface SlabBytes {
  readonly length: number;
  /** The bytes (a view of the slab; valid until release(); throws while the slab is being hashed). */
  readonly data: Buffer;
  /** The bytes were lost with a failed hash worker (the chunk must be treated as bad). */
  readonly lost: boolean;
  /** SHA-256 (lowercase hex) of the bytes, computed by a worker thread when the slab is sealed. */
  digest(): Promise<string>;
  release(): void;
}

interface Job {
  off: number;
  len: number;
  resolve: (hex: string) => void;
  reject: (err: Error) => void;
}

class Slab {
  ab: ArrayBuffer;
  /** Allocations still live. */
  refs = 0;
  /** Bytes handed out. */
  used = 0;
  /** No more allocations (full, oversized, or sealed for hashing). */
  sealed = false;
  /** The memory is in a worker thread. */
  away = false;
  /** The memory was lost with a failed worker. */
  lost = false;
  jobs: Job[] = [];

  constructor(readonly size: number) {
    this.ab = new ArrayBuffer(size);
  }
}

export interface SlabStats {
  slabs: number;
  free: number;
  slabBytes: number;
}

/** Allocation offsets are rounded up to this (cache-line aligned copies and hashing). */
const ALIGN = 64;

export class SlabPool {
  private current: Slab | undefined;
  private readonly free: Slab[] = [];
  private live = 0;

  /**
   * @param slabSize bytes per slab (a chunk larger than this gets a slab of its own, not recycled)
   * @param maxFreeBytes free slabs kept for reuse, at most this many bytes (the rest are left to GC)
   * @param hasher worker threads for digest(); without one, digests are computed on the caller's thread
   */
  constructor(
    readonly slabSize: number = 8 * 1024 * 1024,
    private readonly maxFreeBytes: number = 256 * 1024 * 1024,
    private readonly hasher?: HashPool,
  ) {}

  /** Digests are computed by worker threads (else on the caller's thread, when asked). */
  get hashesInWorkers(): boolean {
    return this.hasher !== undefined;
  }

  stats(): SlabStats {
    return { slabs: this.live, free: this.free.length, slabBytes: this.slabSize };
  }

  /** A copy of `pieces` (`n` bytes in all) in slab memory. */
  copyOf(pieces: readonly Buffer[], n: number): SlabBytes {
    let s: Slab;
    let at = 0;
    if (n > this.slabSize) {
      s = this.newSlab(n);
      s.sealed = true;
    } else {
      let c = this.current;
      if (c === undefined || c.used + n > c.size) {
        if (c !== undefined) this.seal(c);
        c = this.current = this.free.pop() ?? this.newSlab(this.slabSize);
      }
      s = c;
      at = s.used;
      s.used = Math.min(s.size, at + n + ((ALIGN - ((at + n) % ALIGN)) % ALIGN));
    }
    const target = Buffer.from(s.ab, at, n);
    let k = 0;
    for (const p of pieces) k += p.copy(target, k);
    return this.handOut(s, at, n);
  }

  /** Sends the current slab's pending hash requests now (the flush needs their digests). */
  sealNow(): void {
    const c = this.current;
    if (c !== undefined && c.jobs.length > 0) {
      this.current = undefined;
      this.seal(c);
    }
  }

  private newSlab(size: number): Slab {
    this.live++;
    return new Slab(size);
  }

  private handOut(s: Slab, off: number, len: number): SlabBytes {
    s.refs++;
    let digest: Promise<string> | undefined;
    return {
      length: len,
      get lost(): boolean {
        return s.lost;
      },
      get data(): Buffer {
        if (s.away) throw new Error("internal error: chunk bytes read while their slab is being hashed");
        if (s.lost) throw new Error("chunk bytes lost with a failed hash worker");
        return Buffer.from(s.ab, off, len);
      },
      digest: () => {
        digest ??= this.requestDigest(s, off, len);
        return digest;
      },
      release: () => {
        if (--s.refs === 0 && s.sealed && !s.away) this.recycle(s);
      },
    };
  }

  private requestDigest(s: Slab, off: number, len: number): Promise<string> {
    if (!this.hasher) return Promise.resolve(hash("sha256", Buffer.from(s.ab, off, len), "hex"));
    const p = new Promise<string>((resolve, reject) => s.jobs.push({ off, len, resolve, reject }));
    if (s.sealed) this.dispatch(s);
    return p;
  }

  private seal(s: Slab): void {
    s.sealed = true;
    if (s.jobs.length > 0) this.dispatch(s);
    else if (s.refs === 0) this.recycle(s);
  }

  /** Hashes a sealed slab's pending jobs in a worker (the memory goes there and back). */
  private dispatch(s: Slab): void {
    if (s.away || s.jobs.length === 0) return;
    const jobs = s.jobs;
    s.jobs = [];
    s.away = true;
    (this.hasher as HashPool)
      .digestRanges(s.ab, jobs.map((j) => [j.off, j.len]))
      .then(
        ({ ab, digests }) => {
          s.ab = ab;
          s.away = false;
          jobs.forEach((j, i) => j.resolve(digests[i] as string));
        },
        (err: Error) => {
          // The memory is lost with the worker: the chunks cannot be used.
          s.away = false;
          s.lost = true;
          s.sealed = true;
          for (const j of jobs) j.reject(err);
        },
      )
      .finally(() => {
        if (s.jobs.length > 0) this.dispatch(s);
        else if (s.refs === 0) this.recycle(s);
      });
  }

  /** Frees a sealed slab nobody uses any more (once: the callers may race to it). */
  private recycle(s: Slab): void {
    if (s === this.current || !s.sealed || s.away || s.refs > 0 || s.jobs.length > 0) return;
    s.sealed = false; // (a free slab is unsealed: this call cannot repeat)
    if (!s.lost && s.size === this.slabSize && (this.free.length + 1) * this.slabSize <= this.maxFreeBytes) {
      s.used = 0;
      this.free.push(s);
    } else {
      this.live--;
    }
  }
}
