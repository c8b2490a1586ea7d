// Synthetic checkpoints for tests and benchmarks, standing in for the engine's store.
// Each source has an "address space" of pages: a fraction comes from a pool shared by
// every source (think libc, identical across hosts), the rest is unique to the source.
// Each new checkpoint rewrites a fraction of the unique pages (the dirty pages) and
// lists every page, so consecutive checkpoints share most chunks.
import { createCipheriv, createHash } from "node:crypto";
import { sha256hex, type MirrorCheckpoint } from "./objects.js";

export interface SyntheticOptions {
  /** Pages per checkpoint (default 256). */
  pages?: number;
  /** Page (chunk) size in bytes (default 4096). */
  pageSize?: number;
  /** Fraction of pages taken from the pool shared by all sources (default 0.25). */
  sharedFraction?: number;
  /** Fraction of the unique pages rewritten between checkpoints (default 0.25). */
  dirtyFraction?: number;
  /** Seed of the shared pool: sources with the same seed share pages (default "tardigrade"). */
  seed?: string;
}

/** Deterministic pseudo-random bytes: AES-128-CTR keystream of (seed, label). */
export function pseudoRandomBytes(seed: string, label: string, n: number): Buffer {
  const key = createHash("sha256").update(`key:${seed}`).digest().subarray(0, 16);
  const iv = createHash("sha256").update(`iv:${label}`).digest().subarray(0, 16);
  const c = createCipheriv("aes-128-ctr", key, iv);
  return Buffer.concat([c.update(Buffer.alloc(n)), c.final()]);
}

export class SyntheticSource {
  private readonly pages: Buffer[];
  private readonly sharedCount: number;
  private seq = 0;
  private parent: string | undefined;
  private readonly pageSize: number;
  private readonly dirtyFraction: number;
  private readonly seed: string;

  constructor(
    readonly source: string,
    opts: SyntheticOptions = {},
  ) {
    const n = opts.pages ?? 256;
    this.pageSize = opts.pageSize ?? 4096;
    this.dirtyFraction = opts.dirtyFraction ?? 0.25;
    this.seed = opts.seed ?? "tardigrade";
    this.sharedCount = Math.floor(n * (opts.sharedFraction ?? 0.25));
    this.pages = [];
    for (let i = 0; i < n; i++) {
      this.pages.push(
        i < this.sharedCount
          ? pseudoRandomBytes(this.seed, `shared:${i}`, this.pageSize)
          : pseudoRandomBytes(this.seed, `${source}:0:${i}`, this.pageSize),
      );
    }
  }

  /** The next checkpoint of this source (the first is full, the others rewrite dirty pages). */
  next(): MirrorCheckpoint {
    this.seq++;
    if (this.seq > 1) {
      const unique = this.pages.length - this.sharedCount;
      const dirty = Math.max(1, Math.floor(unique * this.dirtyFraction));
      for (let k = 0; k < dirty; k++) {
        const i = this.sharedCount + ((this.seq * 7919 + k * 104729) % unique);
        this.pages[i] = pseudoRandomBytes(this.seed, `${this.source}:${this.seq}:${i}`, this.pageSize);
      }
    }
    const chunks = new Map<string, Buffer>();
    const hashes: string[] = [];
    for (const p of this.pages) {
      const h = sha256hex(p);
      hashes.push(h);
      chunks.set(h, p);
    }
    const id = `ck${String(this.seq).padStart(6, "0")}`;
    const manifest = Buffer.from(
      JSON.stringify({ format: "synthetic", source: this.source, id, seq: this.seq, pageSize: this.pageSize, pages: hashes }),
    );
    const c: MirrorCheckpoint = {
      source: this.source,
      id,
      seq: this.seq,
      ...(this.parent !== undefined ? { parent: this.parent } : {}),
      manifest,
      chunks,
    };
    this.parent = id;
    return c;
  }

  /** Hashes of the pages every source with the same seed and size shares. */
  sharedHashes(): string[] {
    return this.pages.slice(0, this.sharedCount).map((p) => sha256hex(p));
  }
}
