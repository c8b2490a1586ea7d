// Memory for the destination's cached chunk bytes: large slabs handed out by bump
// allocation, and recycled when every chunk cut from them is gone.
//
// Why: chunks arrive in the socket's read buffers. Keeping views of those kept whole
// read buffers alive, and every chunk larger than one read had to be copied into a
// fresh allocation, and fresh memory costs a page fault per 4 KiB on this kind of VM
// (~0.5 CPU s/GiB measured). Copying each chunk once into a recycled (warm) slab
// costs a plain memcpy instead, and lets the read buffers be reused at once.

/** A piece of a slab holding one chunk; release() it exactly once when the chunk is dropped. */
export interface SlabBytes {
  readonly length: number;
  /** The bytes (a view of the slab; valid until release()). */
  readonly data: Buffer;
  release(): void;
}

class Slab {
  readonly ab: ArrayBuffer;
  /** Allocations still live. */
  refs = 0;
  /** Bytes handed out. */
  used = 0;
  /** No more allocations (full or oversized). */
  sealed = false;

  constructor(readonly size: number) {
    this.ab = new ArrayBuffer(size);
  }
}

export interface SlabStats {
  slabs: number;
  free: number;
  slabBytes: number;
}

/** Allocation offsets are rounded up to this (cache-line aligned copies). */
const ALIGN = 64;

export class SlabPool {
  private current: Slab | undefined;
  private readonly free: Slab[] = [];
  private live = 0;

  /**
   * @param slabSize bytes per slab (a chunk larger than this gets a slab of its own, not recycled)
   * @param maxFreeBytes free slabs kept for reuse, at most this many bytes (the rest are left to GC)
   */
  constructor(
    readonly slabSize: number = 8 * 1024 * 1024,
    private readonly maxFreeBytes: number = 256 * 1024 * 1024,
  ) {}

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
    s.refs++;
    return {
      length: n,
      data: target,
      release: () => {
        if (--s.refs === 0 && s.sealed) this.recycle(s);
      },
    };
  }

  private newSlab(size: number): Slab {
    this.live++;
    return new Slab(size);
  }

  private seal(s: Slab): void {
    s.sealed = true;
    if (s.refs === 0) this.recycle(s);
  }

  /** Frees a sealed slab nobody uses any more (once: the callers may race to it). */
  private recycle(s: Slab): void {
    if (s === this.current || !s.sealed || s.refs > 0) return;
    s.sealed = false; // (a free slab is unsealed: this call cannot repeat)
    if (s.size === this.slabSize && (this.free.length + 1) * this.slabSize <= this.maxFreeBytes) {
      s.used = 0;
      this.free.push(s);
    } else {
      this.live--;
    }
  }
}
