// A Bloom filter over stored page hashes, so ingest asks SQLite only about pages that may
// be stored already (a miss in the index costs ~5 µs here; new pages are the common case
// of a full checkpoint). SHA-256 output is uniform, so the bit indexes are taken straight
// from the hash. False positives only cost an index lookup; gc rebuilds the filter.
import type { Catalog } from "./catalog.js";

const K = 7;

export class PageFilter {
  private bits: Uint32Array;
  private mask: number;
  count = 0;

  private constructor(log2Bits: number) {
    this.bits = new Uint32Array(2 ** (log2Bits - 5));
    this.mask = 2 ** log2Bits - 1;
  }

  /** A filter sized for at least `expected` entries (≥ 16 bits each). */
  static sized(expected: number): PageFilter {
    let log2 = 25; // 4 MiB: 2M pages (8 GiB) before a rebuild from the index, which costs ~1 s per 256k pages here
    while (2 ** log2 < expected * 16 && log2 < 32) log2++;
    return new PageFilter(log2);
  }

  /** Built from the index, with room to double before it needs rebuilding. */
  static fromCatalog(cat: Catalog): PageFilter {
    const n = cat.pageCount();
    const f = PageFilter.sized(2 * n + (1 << 16));
    for (const [hash] of cat.allPages()) f.add(hash);
    return f;
  }

  /** True once the filter holds more than 1/16 of its bits in entries (false positives grow). */
  get full(): boolean {
    return this.count * 16 > this.mask + 1;
  }

  add(hash: Buffer): void {
    for (let i = 0; i < K; i++) {
      const b = hash.readUInt32LE(i * 4) & this.mask;
      this.bits[b >>> 5]! |= 1 << (b & 31);
    }
    this.count++;
  }

  /** mayHave() of the hash held in words w[wo..wo+8) (little-endian words, as readUInt32LE reads). */
  mayHaveWords(w: Uint32Array, wo: number): boolean {
    for (let i = 0; i < K; i++) {
      const b = w[wo + i]! & this.mask;
      if ((this.bits[b >>> 5]! & (1 << (b & 31))) === 0) return false;
    }
    return true;
  }

  mayHave(hash: Buffer): boolean {
    for (let i = 0; i < K; i++) {
      const b = hash.readUInt32LE(i * 4) & this.mask;
      if ((this.bits[b >>> 5]! & (1 << (b & 31))) === 0) return false;
    }
    return true;
  }
}
