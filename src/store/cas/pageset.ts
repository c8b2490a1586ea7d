// The pages an ingest (or a merge's rewrite) stores anew, packed: their hashes in one
// growing buffer, their place (local block slot, index) in typed arrays, and an
// open-addressing table over the hashes for the dedup inside one image. No object, string
// or Map entry per page: at 262,144 pages per GiB the per-page objects of the former
// Map<string, [number, number]> cost more main-thread time (and garbage collection) than
// the SQLite inserts they fed.
import { HASH_LEN } from "./util.js";

export class NewPages {
  /** count × 32 bytes of hashes, in the order the pages were added. */
  private hashBuf: Buffer;
  private words: Uint32Array;
  private slots: Int32Array;
  private idxs: Int32Array;
  /** Entry + 1 per table cell, 0 = empty. */
  private table: Int32Array;
  private mask: number;
  count = 0;

  constructor(expected = 1 << 12) {
    let cap = 1 << 10;
    while (cap < expected) cap *= 2;
    this.hashBuf = Buffer.alloc(cap * HASH_LEN);
    this.words = new Uint32Array(this.hashBuf.buffer, this.hashBuf.byteOffset, cap * 8);
    this.slots = new Int32Array(cap);
    this.idxs = new Int32Array(cap);
    this.table = new Int32Array(cap * 2);
    this.mask = cap * 2 - 1;
  }

  /** The entry holding the 32-byte hash at `src[off..]` (4-aligned word view `w` at word `wo`), or -1. */
  find(w: Uint32Array, wo: number): number {
    const words = this.words;
    for (let cell = w[wo + 1]! & this.mask; ; cell = (cell + 1) & this.mask) {
      const e = this.table[cell]! - 1;
      if (e < 0) return -1;
      const o = e * 8;
      if (
        words[o] === w[wo] &&
        words[o + 1] === w[wo + 1] &&
        words[o + 2] === w[wo + 2] &&
        words[o + 3] === w[wo + 3] &&
        words[o + 4] === w[wo + 4] &&
        words[o + 5] === w[wo + 5] &&
        words[o + 6] === w[wo + 6] &&
        words[o + 7] === w[wo + 7]
      )
        return e;
    }
  }

  /** Adds a hash (not present) stored at (local block slot, index); returns its entry. */
  add(w: Uint32Array, wo: number, slot: number, idx: number): number {
    if (this.count === this.slots.length) this.grow(); // the table stays at most half full
    const e = this.count++;
    this.words.set(w.subarray(wo, wo + 8), e * 8);
    this.slots[e] = slot;
    this.idxs[e] = idx;
    let cell = w[wo + 1]! & this.mask;
    while (this.table[cell] !== 0) cell = (cell + 1) & this.mask;
    this.table[cell] = e + 1;
    return e;
  }

  /** Sets where entry `e` is stored (its block slot was not known when it was added). */
  place(e: number, slot: number, idx: number): void {
    this.slots[e] = slot;
    this.idxs[e] = idx;
  }

  slot(e: number): number {
    return this.slots[e]!;
  }

  idx(e: number): number {
    return this.idxs[e]!;
  }

  /** The hash of entry `e` (a view: copy it to keep it past the next add). */
  hash(e: number): Buffer {
    return this.hashBuf.subarray(e * HASH_LEN, (e + 1) * HASH_LEN);
  }

  /**
   * Entries in the order of their hashes' first 4 bytes (big-endian, as SQLite compares
   * BLOBs): inserting index rows in key order touches each B-tree page once instead of at
   * random (measured: about half the CPU of inserting 262,144 random keys).
   */
  sorted(): Int32Array {
    const n = this.count;
    const out = new Int32Array(n);
    if (n < 2 ** 21) {
      const keys = new Float64Array(n);
      for (let e = 0; e < n; e++) keys[e] = this.hashBuf.readUInt32BE(e * HASH_LEN) * 2 ** 21 + e;
      keys.sort();
      for (let i = 0; i < n; i++) out[i] = keys[i]! % 2 ** 21;
    } else {
      for (let e = 0; e < n; e++) out[e] = e;
      out.sort((a, b) => this.hashBuf.readUInt32BE(a * HASH_LEN) - this.hashBuf.readUInt32BE(b * HASH_LEN));
    }
    return out;
  }

  private grow(): void {
    const cap = this.slots.length * 2;
    const hashBuf = Buffer.alloc(cap * HASH_LEN);
    this.hashBuf.copy(hashBuf, 0, 0, this.count * HASH_LEN);
    this.hashBuf = hashBuf;
    this.words = new Uint32Array(hashBuf.buffer, hashBuf.byteOffset, cap * 8);
    const slots = new Int32Array(cap);
    slots.set(this.slots);
    this.slots = slots;
    const idxs = new Int32Array(cap);
    idxs.set(this.idxs);
    this.idxs = idxs;
    this.table = new Int32Array(cap * 2);
    this.mask = cap * 2 - 1;
    for (let e = 0; e < this.count; e++) {
      let cell = this.words[e * 8 + 1]! & this.mask;
      while (this.table[cell] !== 0) cell = (cell + 1) & this.mask;
      this.table[cell] = e + 1;
    }
  }
}

/** A growable list of int32 triples without an object per entry. */
export class TripleList {
  private a = new Int32Array(3 * 1024);
  count = 0;
  push(x: number, y: number, z: number): void {
    if (this.count * 3 + 3 > this.a.length) {
      const b = new Int32Array(this.a.length * 2);
      b.set(this.a);
      this.a = b;
    }
    const o = this.count++ * 3;
    this.a[o] = x;
    this.a[o + 1] = y;
    this.a[o + 2] = z;
  }
  x(i: number): number {
    return this.a[i * 3]!;
  }
  y(i: number): number {
    return this.a[i * 3 + 1]!;
  }
  z(i: number): number {
    return this.a[i * 3 + 2]!;
  }
}
