// Test-only image builder for the content-addressed store: a model of a process's memory
// (VMAs + pages) that emits full and incremental raw images the way the agent does
// (fresh mappings: PAGES_CLEAR over the whole mapping, then its pages; tracked pages that
// became zero: PAGES_CLEAR), and says what memory each checkpoint must restore to.
import { randomBytes } from "node:crypto";
import { PAGE_SIZE, RecordType } from "../../src/image/format.js";
import { parseImage } from "../../src/image/parser.js";
import { buildImage, cwdRecord, fdRecord, pagesRecord, procRecord, threadRecord, vmaRecord, type RawRecord } from "../../src/image/writer.js";
import { open } from "node:fs/promises";

export const P = PAGE_SIZE;
const STORED_KINDS = new Set([1, 2, 3]);

export interface ModelVma {
  start: number; // page number
  end: number;
  kind: number;
  path: string;
}

/** Deterministic PRNG (mulberry32). */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function clearRecord(page: number, npages: number): RawRecord {
  const b = Buffer.alloc(16);
  b.writeBigUInt64LE(BigInt(page) * BigInt(P), 0);
  b.writeBigUInt64LE(BigInt(npages), 8);
  return { type: RecordType.PAGES_CLEAR, payload: b };
}

function trackingRecord(mode: number, scanned: number, written: number, fresh: number): RawRecord {
  const b = Buffer.alloc(32);
  b.writeUInt32LE(mode, 0);
  b.writeBigUInt64LE(BigInt(scanned), 8);
  b.writeBigUInt64LE(BigInt(written), 16);
  b.writeBigUInt64LE(BigInt(fresh), 24);
  return { type: RecordType.TRACKING, payload: b };
}

export class MemModel {
  vmas: ModelVma[] = [];
  mem = new Map<number, Buffer>();
  private dirty = new Set<number>();
  private fresh = new Set<number>();
  seq = 0;

  constructor(readonly pid = 7) {}

  vmaAt(page: number): ModelVma | undefined {
    return this.vmas.find((v) => v.start <= page && page < v.end);
  }

  map(start: number, npages: number, kind = 1, path = ""): ModelVma {
    const v = { start, end: start + npages, kind, path };
    if (this.vmas.some((o) => o.start < v.end && v.start < o.end)) throw new Error(`model: overlapping map at ${start}`);
    this.vmas.push(v);
    this.vmas.sort((a, b) => a.start - b.start);
    this.fresh.add(start);
    return v;
  }

  unmap(start: number): void {
    const v = this.vmas.find((o) => o.start === start)!;
    this.vmas = this.vmas.filter((o) => o !== v);
    for (let p = v.start; p < v.end; p++) this.mem.delete(p);
    this.fresh.delete(start);
  }

  /** Grows a mapping (like brk up): the agent captures it whole once. */
  grow(start: number, by: number): void {
    const v = this.vmas.find((o) => o.start === start)!;
    v.end += by;
    this.fresh.add(start);
  }

  /** Shrinks a mapping (like brk down): pages beyond the new end are gone. */
  shrink(start: number, by: number): void {
    const v = this.vmas.find((o) => o.start === start)!;
    for (let p = v.end - by; p < v.end; p++) this.mem.delete(p);
    v.end -= by;
  }

  write(page: number, data: Buffer = randomBytes(P)): void {
    const v = this.vmaAt(page);
    if (!v || !STORED_KINDS.has(v.kind)) throw new Error(`model: write outside a stored mapping at page ${page}`);
    if (data.equals(Buffer.alloc(P))) this.mem.delete(page);
    else this.mem.set(page, data);
    this.dirty.add(page);
  }

  /** MADV_DONTNEED: the page reads as zeros. */
  zero(page: number): void {
    this.mem.delete(page);
    this.dirty.add(page);
  }

  /** Expected memory at this point: page → content, zero pages absent. */
  snapshot(): Map<number, Buffer> {
    const out = new Map<number, Buffer>();
    for (const [p, b] of this.mem) {
      const v = this.vmaAt(p);
      if (v && STORED_KINDS.has(v.kind)) out.set(p, b);
    }
    return out;
  }

  private metaRecords(): RawRecord[] {
    return [
      procRecord({ pid: this.pid, nthreads: 2 }),
      cwdRecord("/srv/app"),
      ...this.vmas.map((v) => vmaRecord({ start: BigInt(v.start) * BigInt(P), end: BigInt(v.end) * BigInt(P), kind: v.kind, path: v.path })),
      threadRecord({ tid: this.pid, comm: "main" }),
      threadRecord({ tid: this.pid + 1, comm: "tg-manager", manager: true }),
      fdRecord({ fd: 1, kind: 1, path: "/tmp/out.log", pos: 7n }),
    ];
  }

  /** Pages records for sorted page numbers (runs ≤ 256 inside one VMA). */
  private pageRecords(pages: number[], extraZero = new Set<number>()): RawRecord[] {
    const out: RawRecord[] = [];
    let run: number[] = [];
    const flush = () => {
      if (run.length === 0) return;
      out.push(pagesRecord(BigInt(run[0]!) * BigInt(P), Buffer.concat(run.map((p) => this.mem.get(p) ?? Buffer.alloc(P)))));
      run = [];
    };
    for (const p of pages) {
      const last = run[run.length - 1];
      if (last !== undefined && (p !== last + 1 || run.length === 256 || this.vmaAt(p) !== this.vmaAt(last))) flush();
      if (this.mem.has(p) || extraZero.has(p)) run.push(p);
      else flush();
    }
    flush();
    return out;
  }

  /**
   * The next image. Full: every non-zero page (plus `zeroPages`, written as explicit zero
   * pages). Incremental: relative to the previous image, the way the uffd tracker does it.
   */
  image(opts: { full?: boolean; zeroPages?: number[] } = {}): Buffer {
    const full = opts.full ?? this.seq === 0;
    this.seq++;
    const records = this.metaRecords();
    const stored = this.vmas.filter((v) => STORED_KINDS.has(v.kind));
    const zeros = new Set(opts.zeroPages ?? []);
    let written = 0;
    if (full) {
      records.push(trackingRecord(1, 0, 0, 0));
      const pages = [...this.mem.keys(), ...zeros].filter((p) => STORED_KINDS.has(this.vmaAt(p)?.kind ?? 0)).sort((a, b) => a - b);
      records.push(...this.pageRecords([...new Set(pages)], zeros));
    } else {
      const freshVmas = stored.filter((v) => this.fresh.has(v.start));
      let scanned = 0;
      for (const v of stored) scanned += v.end - v.start;
      records.push(trackingRecord(1, scanned, this.dirty.size, freshVmas.length));
      for (const v of stored) {
        if (this.fresh.has(v.start)) {
          records.push(clearRecord(v.start, v.end - v.start));
          const pages = [...this.mem.keys()].filter((p) => p >= v.start && p < v.end).sort((a, b) => a - b);
          records.push(...this.pageRecords(pages));
        } else {
          const d = [...this.dirty].filter((p) => p >= v.start && p < v.end).sort((a, b) => a - b);
          for (const p of d) if (!this.mem.has(p)) records.push(clearRecord(p, 1));
          records.push(...this.pageRecords(d.filter((p) => this.mem.has(p))));
          written += d.length;
        }
      }
    }
    // Page records must be in address order overall: sort PAGES by address, keep the others in place before them.
    const meta = records.filter((r) => r.type !== RecordType.PAGES && r.type !== RecordType.PAGES_CLEAR);
    const pageSection = records.filter((r) => r.type === RecordType.PAGES || r.type === RecordType.PAGES_CLEAR);
    const pagesOnly = pageSection.filter((r) => r.type === RecordType.PAGES).sort((a, b) => (a.payload.readBigUInt64LE(0) < b.payload.readBigUInt64LE(0) ? -1 : 1));
    const clears = pageSection.filter((r) => r.type === RecordType.PAGES_CLEAR);
    void written;
    this.dirty.clear();
    this.fresh.clear();
    return buildImage([...meta, ...clears, ...pagesOnly], { pid: this.pid, seq: BigInt(this.seq), parentSeq: full ? 0n : BigInt(this.seq - 1), flags: full ? 0 : 1 });
  }
}

export interface ImageMemory {
  pages: Map<number, Buffer>;
  /** Explicit zero pages in the image. */
  zeroPages: number;
  vmas: { start: number; end: number; kind: number }[];
  flags: number;
  records: number;
}

/** Parses an image file with the project's parser (all checks) and reads its memory. */
export async function readImageMemory(file: string): Promise<ImageMemory> {
  const img = await parseImage(file);
  const fh = await open(file, "r");
  const pages = new Map<number, Buffer>();
  let zeroPages = 0;
  try {
    for (const e of img.extents) {
      const buf = Buffer.alloc(e.npages * P);
      await fh.read(buf, 0, buf.length, e.dataOffset);
      const base = Number(e.addr / BigInt(P));
      for (let i = 0; i < e.npages; i++) {
        const b = buf.subarray(i * P, (i + 1) * P);
        if (b.equals(Buffer.alloc(P))) zeroPages++;
        else pages.set(base + i, b);
      }
    }
  } finally {
    await fh.close();
  }
  return {
    pages,
    zeroPages,
    vmas: img.vmas.map((v) => ({ start: Number(v.start / BigInt(P)), end: Number(v.end / BigInt(P)), kind: v.kind })),
    flags: img.header.flags,
    records: img.recordCount,
  };
}

/** First difference between two memories, or null. */
export function memoryDiff(got: Map<number, Buffer>, want: Map<number, Buffer>): string | null {
  for (const [p, b] of want) {
    const g = got.get(p);
    if (!g) return `page ${p} missing (want ${b.subarray(0, 4).toString("hex")}…)`;
    if (!g.equals(b)) return `page ${p} differs`;
  }
  for (const p of got.keys()) if (!want.has(p)) return `page ${p} should not be there`;
  return null;
}

/** A 10-step chain exercising every kind of change; returns the expected memory per step. */
export function churnChain(seed: number, steps = 10): { images: Buffer[]; expected: Map<number, Buffer>[]; vmas: number[][] } {
  const r = rng(seed);
  const m = new MemModel(2);
  const pool = Array.from({ length: 16 }, () => randomBytes(P)); // repeated content → dedup
  const rnd = (k: number) => Math.floor(r() * k);
  m.map(0x400, 4, 3, "/usr/bin/app"); // file private: some written pages
  m.write(0x401);
  const heap = m.map(0x1000, 300, 1, "[heap]").start;
  m.map(0x2000, 600, 1); // > 256 pages: records split
  m.map(0x3000, 64, 2); // anon shared
  m.map(0x4000, 8, 4, "/dev/shm/x"); // shared file: never stored
  m.map(0x7fff0, 2, 5, "[vdso]");
  for (let p = 0x1000; p < 0x1000 + 300; p += 2) m.write(p);
  for (let p = 0x2000; p < 0x2000 + 600; p++) if (r() < 0.7) m.write(p, r() < 0.2 ? pool[rnd(pool.length)]! : undefined);
  for (let p = 0x3000; p < 0x3040; p++) m.write(p);
  const images: Buffer[] = [];
  const expected: Map<number, Buffer>[] = [];
  const vmas: number[][] = [];
  const take = (opts: { full?: boolean; zeroPages?: number[] } = {}) => {
    images.push(m.image(opts));
    expected.push(m.snapshot());
    vmas.push(m.vmas.map((v) => v.start));
  };
  take({ zeroPages: [0x1001, 0x1003] });
  for (let s = 2; s <= steps; s++) {
    switch (s % 5) {
      case 2: // random pages
        for (let i = 0; i < 80; i++) {
          const p = 0x2000 + rnd(600);
          m.write(p, r() < 0.3 ? pool[rnd(pool.length)]! : undefined);
        }
        break;
      case 3: // sweep + new mapping (sometimes where an earlier one was unmapped)
        for (let p = 0x1000; p < 0x1000 + 120; p++) m.write(p);
        if (!m.vmas.some((v) => v.start === 0x5000)) {
          m.map(0x5000, 40);
          for (let p = 0x5000; p < 0x5000 + 40; p += 3) m.write(p);
        }
        break;
      case 4: // munmap + MADV_DONTNEED + brk down
        if (m.vmas.some((v) => v.start === 0x5000)) m.unmap(0x5000);
        for (let p = 0x2000 + 100; p < 0x2000 + 140; p++) m.zero(p);
        m.shrink(heap, 20);
        for (let i = 0; i < 10; i++) m.write(0x2000 + 200 + rnd(300));
        break;
      case 0: // brk up (captured whole) and a few writes in the shared anon mapping
        m.grow(heap, 30);
        for (let p = 0x1000 + 280; p < 0x1000 + 310; p++) m.write(p);
        for (let p = 0x3000; p < 0x3010; p++) m.write(p);
        break;
      case 1: // mapping remapped at a formerly used address: stale pages must not show through
        m.map(0x5000, 40);
        m.write(0x5001);
        m.write(0x401);
        break;
    }
    take();
  }
  return { images, expected, vmas };
}

