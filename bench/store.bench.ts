// Content-addressed store benchmark: ingest and export throughput of N MiB of random pages
// (incompressible, all new), re-ingest of the same image (all pages deduplicated), and
// zstd levels 1–3 on real memory (this process's own heap); each against a plain copy of the same file
// (read + write + fsync) measured in the same run.
// TG_BENCH_STORE_MIB=256,1024 picks the sizes (default 256).
// Merge: a base of N MiB of random pages + 20 incrementals each rewriting 5% of its pages at
// random, stored directly in a CasStore; exportImage (drained, no file) of the base, of the
// unmerged newest and of the newest after CasStore.merge(), medians of reps alternated in each
// phase. TG_BENCH_MERGE_MIB (default 256), TG_BENCH_MERGE_REPS (default 7),
// TG_BENCH_MERGE_MAX_AMP (MergePolicy.maxReadAmplification; "Infinity" = page-table-only merge).
// TG_BENCH_STORE_PARTS=throughput,levels,merge picks the parts (default all).
import { randomFillSync } from "node:crypto";
import { closeSync, createReadStream, createWriteStream, mkdirSync, mkdtempSync, openSync, readFileSync, readSync, rmSync, writeFileSync } from "node:fs";
import { open } from "node:fs/promises";
import { cpus, loadavg, tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { Writable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { fileURLToPath } from "node:url";
import { crc32c } from "@node-rs/crc32";
import { RecordType } from "../src/image/format.js";
import { buildImage, cwdRecord, fileHeader, pagesRecord, procRecord, recordBytes, threadRecord, vmaRecord, type RawRecord } from "../src/image/writer.js";
import { CasStore } from "../src/store/cas/index.js";

const here = dirname(fileURLToPath(import.meta.url));
const MiB = 1024 * 1024;
const P = 4096;

/** Writes an image of `npages` pages in one VMA, page data from `fill`, without holding it in memory. */
export async function writeBigImage(path: string, npages: number, fill: (buf: Buffer, firstPage: number) => void): Promise<number> {
  const fh = await open(path, "w");
  let off = 0;
  const put = async (b: Buffer) => {
    await fh.write(b, 0, b.length, off);
    off += b.length;
  };
  const base = 0x100000000n;
  const meta = [procRecord({ pid: 2 }), cwdRecord("/"), vmaRecord({ start: base, end: base + BigInt(npages * P) }), threadRecord({ tid: 2 })];
  await put(fileHeader({ pid: 2 }));
  for (const r of meta) await put(recordBytes(r));
  const rec = Buffer.alloc(32 + 16 + 256 * P);
  let records = meta.length;
  for (let p = 0; p < npages; p += 256) {
    const n = Math.min(256, npages - p);
    const payload = rec.subarray(32, 32 + 16 + n * P);
    payload.writeBigUInt64LE(base + BigInt(p * P), 0);
    payload.writeBigUInt64LE(BigInt(n), 8);
    fill(payload.subarray(16), p);
    const h = rec.subarray(0, 32);
    h.fill(0);
    h.writeUInt32LE(RecordType.PAGES, 0);
    h.writeBigUInt64LE(BigInt(payload.length), 8);
    h.writeUInt32LE(crc32c(payload), 16);
    h.writeUInt32LE(crc32c(h.subarray(0, 28)), 28);
    await put(rec.subarray(0, 32 + payload.length));
    records++;
  }
  const end = Buffer.alloc(24);
  end.writeBigUInt64LE(BigInt(records), 0);
  end.writeBigUInt64LE(BigInt(npages), 8);
  end.writeBigUInt64LE(BigInt(off + 32 + 24), 16);
  await put(recordBytes({ type: RecordType.END, payload: end }));
  await fh.sync();
  await fh.close();
  return off;
}

/**
 * Real memory: the non-zero pages of this process's private anonymous mappings (V8 heap
 * with a few hundred thousand small objects, malloc arenas, stacks), read from /proc/self/mem.
 */
function ownMemoryPages(): Buffer[] {
  const junk: unknown[] = [];
  for (let i = 0; i < 300_000; i++) junk.push({ id: i, name: `item-${i}`, tags: ["a", `b${i % 7}`], v: Math.random() });
  const maps = readFileSync("/proc/self/maps", "utf8").split("\n").filter((l) => / rw-p 00000000 00:00 0/.test(l));
  const fd = openSync("/proc/self/mem", "r");
  const zero = Buffer.alloc(P);
  const pages: Buffer[] = [];
  try {
    for (const l of maps) {
      const [s, e] = l.split(" ")[0]!.split("-").map((x) => BigInt(`0x${x}`)) as [bigint, bigint];
      for (let a = s; a < e; a += BigInt(P)) {
        const b = Buffer.alloc(P);
        try {
          readSync(fd, b, 0, P, a);
        } catch {
          continue;
        }
        if (!b.equals(zero)) pages.push(b);
      }
    }
  } finally {
    closeSync(fd);
  }
  void junk.length;
  return pages;
}

let lastCpuMs = 0;
/** Runs fn; returns its result and wall ms, and leaves the CPU ms of this process (all threads) in lastCpuMs. */
async function timed<T>(fn: () => Promise<T>): Promise<[T, number]> {
  const c = process.cpuUsage();
  const t = performance.now();
  const r = await fn();
  const d = process.cpuUsage(c);
  lastCpuMs = (d.user + d.system) / 1000;
  return [r, performance.now() - t];
}

async function plainCopy(src: string, dst: string): Promise<void> {
  await pipeline(createReadStream(src, { highWaterMark: 4 * MiB }), createWriteStream(dst));
  const fh = await open(dst, "r");
  await fh.sync();
  await fh.close();
}

function sink(): Writable {
  return new Writable({ highWaterMark: 4 * MiB, write: (_c, _e, cb) => cb() });
}

const BASE = 0x100000000n;

/** An incremental image (seq, parent seq - 1) of the single VMA of writeBigImage's images: new random data at `pages` (sorted). */
function incrementalImage(npages: number, seq: number, pages: number[]): Buffer {
  const recs: RawRecord[] = [procRecord({ pid: 2 }), cwdRecord("/"), vmaRecord({ start: BASE, end: BASE + BigInt(npages * P) }), threadRecord({ tid: 2 })];
  for (let i = 0; i < pages.length; ) {
    let j = i + 1;
    while (j < pages.length && pages[j] === pages[j - 1]! + 1 && j - i < 256) j++;
    recs.push(pagesRecord(BASE + BigInt(pages[i]! * P), randomFillSync(Buffer.allocUnsafe((j - i) * P))));
    i = j;
  }
  return buildImage(recs, { pid: 2, seq: BigInt(seq), parentSeq: BigInt(seq - 1), flags: 1 });
}

/** Bytes this process read (read syscalls: /proc/self/io rchar). */
function rchar(): number {
  return Number(/^rchar: (\d+)$/m.exec(readFileSync("/proc/self/io", "utf8"))?.[1] ?? NaN);
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

/** Restore-side cost of a merged chain: export times of the base, the unmerged newest and the merged newest. */
async function mergeBench(tmp: string): Promise<Record<string, unknown>> {
  const mib = Number(process.env.TG_BENCH_MERGE_MIB ?? 256);
  const reps = Number(process.env.TG_BENCH_MERGE_REPS ?? 7);
  const steps = 20;
  const npages = (mib * MiB) / P;
  const root = join(tmp, "merge-store");
  const store = await CasStore.open(root);
  try {
    const img = join(tmp, "merge.img");
    await writeBigImage(img, npages, (b) => randomFillSync(b));
    await store.ingest("m", 1, img);
    for (let s = 2; s <= steps + 1; s++) {
      const pick = new Set<number>();
      while (pick.size < Math.round(npages * 0.05)) pick.add(Math.floor(Math.random() * npages));
      writeFileSync(img, incrementalImage(npages, s, [...pick].sort((a, b) => a - b)));
      await store.ingest("m", s, img);
    }
    rmSync(img);
    const base = "m@1";
    const newest = `m@${steps + 1}`;
    const exportOnce = async (id: string): Promise<{ ms: number; read: number }> => {
      const r0 = rchar();
      const [, ms] = await timed(() => pipeline(store.exportImage(id), sink()));
      return { ms, read: rchar() - r0 };
    };
    const phase = async (ids: string[]): Promise<Map<string, { ms: number; read: number }[]>> => {
      const out = new Map<string, { ms: number; read: number }[]>(ids.map((id) => [id, []]));
      for (const id of ids) await exportOnce(id); // warm-up (page cache, JIT)
      for (let r = 0; r < reps; r++) for (const id of r % 2 ? [...ids].reverse() : ids) out.get(id)!.push(await exportOnce(id));
      return out;
    };
    const costBefore = store.readCost(newest);
    const before = await phase([base, newest]);
    const maxAmp = process.env.TG_BENCH_MERGE_MAX_AMP;
    const [merged, mergeMs] = await timed(() => store.merge(newest, maxAmp === undefined ? {} : { maxReadAmplification: Number(maxAmp) }));
    const costAfter = store.readCost(newest);
    const after = await phase([base, newest]);
    const med = (m: Map<string, { ms: number; read: number }[]>, id: string) => median(m.get(id)!.map((x) => x.ms));
    const readPerPage = (m: Map<string, { ms: number; read: number }[]>, id: string) => median(m.get(id)!.map((x) => x.read)) / (npages * P);
    return {
      case: `merge: ${mib} MiB random base + ${steps} × 5% random pages, ${reps} reps, maxReadAmplification ${maxAmp ?? "default"}`,
      baseMsBefore: med(before, base),
      unmergedMs: med(before, newest),
      baseMsAfter: med(after, base),
      mergedMs: med(after, newest),
      unmergedVsBase: med(before, newest) / med(before, base),
      mergedVsBase: med(after, newest) / med(after, base),
      /** Median of the per-rep ratios (each rep exports both, back to back: less sensitive to load drifting over the phase). */
      unmergedVsBasePaired: median(before.get(newest)!.map((x, i) => x.ms / before.get(base)![i]!.ms)),
      mergedVsBasePaired: median(after.get(newest)!.map((x, i) => x.ms / after.get(base)![i]!.ms)),
      mergeMs,
      rewrittenMiB: (merged.stats.merged?.rewrittenBytes ?? 0) / MiB,
      ampBefore: costBefore.amplification,
      ampAfter: costAfter.amplification,
      /** Bytes read (rchar) per byte of the image's pages, median. */
      readBase: readPerPage(after, base),
      readUnmerged: readPerPage(before, newest),
      readMerged: readPerPage(after, newest),
      samplesMs: { before: Object.fromEntries([...before].map(([k, v]) => [k, v.map((x) => Math.round(x.ms))])), after: Object.fromEntries([...after].map(([k, v]) => [k, v.map((x) => Math.round(x.ms))])) },
    };
  } finally {
    await store.close();
    rmSync(root, { recursive: true, force: true });
  }
}

export async function main(): Promise<void> {
  const sizes = (process.env.TG_BENCH_STORE_MIB ?? "256").split(",").map(Number);
  const parts = new Set((process.env.TG_BENCH_STORE_PARTS ?? "throughput,levels,merge").split(","));
  const own = parts.has("levels") ? ownMemoryPages() : []; // first, before the random images leave garbage in our heap
  const tmp = mkdtempSync(join(process.env.TG_BENCH_TMP ?? tmpdir(), "tg-store-bench-"));
  const rows: Record<string, unknown>[] = [];
  try {
    if (parts.has("merge")) rows.push(await mergeBench(tmp));
    for (const mib of parts.has("throughput") ? sizes : []) {
      const npages = (mib * MiB) / P;
      const img = join(tmp, `random-${mib}.img`);
      const bytes = await writeBigImage(img, npages, (b) => randomFillSync(b));
      const [, copyMs] = await timed(() => plainCopy(img, join(tmp, "copy.img")));
      rmSync(join(tmp, "copy.img"));
      const store = await CasStore.open(join(tmp, `store-${mib}`));
      const [c1, ingestMs] = await timed(() => store.ingest("bench", 1, img));
      const ingestCpu = lastCpuMs;
      const [c2, dedupMs] = await timed(() => store.ingest("bench", 2, img));
      const [, exportMs] = await timed(() => pipeline(store.exportImage("bench@1"), sink()));
      const exportCpu = lastCpuMs;
      const st = await store.stats();
      await store.close();
      const row = {
        case: `random ${mib} MiB`,
        bytes,
        copyMBps: bytes / MiB / (copyMs / 1000),
        ingestMBps: bytes / MiB / (ingestMs / 1000),
        dedupIngestMBps: bytes / MiB / (dedupMs / 1000),
        exportMBps: bytes / MiB / (exportMs / 1000),
        ingestVsCopy: copyMs / ingestMs,
        /** CPU seconds (all threads) per GiB: independent of what else runs on the VM. */
        ingestCpuSecPerGiB: ingestCpu / 1000 / (bytes / 1024 / MiB),
        exportCpuSecPerGiB: exportCpu / 1000 / (bytes / 1024 / MiB),
        exportVsCopy: copyMs / exportMs,
        storedBytes: c1.stats.storedBytes,
        dedupStoredBytes: c2.stats.storedBytes,
        dedupRatio: st.dedupRatio,
      };
      rows.push(row);
      rmSync(join(tmp, `store-${mib}`), { recursive: true });
      rmSync(img);
    }
    if (parts.has("levels")) {
      const img = join(tmp, "own-memory.img");
      const bytes = await writeBigImage(img, own.length, (buf, first) => {
        for (let i = 0; i < buf.length / P; i++) own[first + i]!.copy(buf, i * P);
      });
      const mib = Math.round(bytes / MiB);
      // Best of two runs per level, in the orders 1,2,3 then 3,2,1 (the first ingest of a process pays warm-up).
      const best = new Map<number, { ms: number; stored: number; pages: number }>();
      for (const level of [1, 2, 3, 3, 2, 1]) {
        const root = join(tmp, `level-${level}`);
        const store = await CasStore.open(root, { level });
        const [c, ms] = await timed(() => store.ingest("bench", 1, img));
        await store.close();
        rmSync(root, { recursive: true });
        const prev = best.get(level);
        if (!prev || ms < prev.ms) best.set(level, { ms, stored: c.stats.storedBytes, pages: c.stats.pages });
      }
      for (const [level, b] of [...best].sort((x, y) => x[0] - y[0]))
        rows.push({ case: `own memory ${mib} MiB, zstd ${level}`, bytes, ingestMBps: bytes / MiB / (b.ms / 1000), storedBytes: b.stored, compression: (b.pages * P) / b.stored });
    }
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
  const fmt = (v: unknown) => (typeof v === "number" ? (Number.isInteger(v) ? String(v) : v.toFixed(2)) : typeof v === "object" ? JSON.stringify(v) : String(v));
  for (const r of rows) console.log(Object.entries(r).map(([k, v]) => `${k}=${fmt(v)}`).join("  "));
  mkdirSync(join(here, "..", "..", "bench", "results"), { recursive: true });
  writeFileSync(join(here, "..", "..", "bench", "results", "store.json"), JSON.stringify({ date: new Date().toISOString(), cpus: cpus().length, loadavg: loadavg(), rows }, null, 2) + "\n");
  console.log(`cpus ${cpus().length}, load average ${loadavg().map((l) => l.toFixed(2)).join(" ")} (other processes compete for the same CPUs)`);
}

if (process.argv[1] === fileURLToPath(import.meta.url)) await main();
