// Content-addressed store benchmark: ingest and export throughput of N MiB of random pages
// (incompressible, all new), re-ingest of the same image (all pages deduplicated), and
// zstd levels 1–3 on real memory (this process's own heap); each against a plain copy of the same file
// (read + write + fsync) measured in the same run.
// TG_BENCH_STORE_MIB=256,1024 picks the sizes (default 256).
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
import { cwdRecord, fileHeader, procRecord, recordBytes, threadRecord, vmaRecord } from "../src/image/writer.js";
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

export async function main(): Promise<void> {
  const sizes = (process.env.TG_BENCH_STORE_MIB ?? "256").split(",").map(Number);
  const own = ownMemoryPages(); // first, before the random images leave garbage in our heap
  const tmp = mkdtempSync(join(process.env.TG_BENCH_TMP ?? tmpdir(), "tg-store-bench-"));
  const rows: Record<string, unknown>[] = [];
  try {
    for (const mib of sizes) {
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
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
  const fmt = (v: unknown) => (typeof v === "number" ? (Number.isInteger(v) ? String(v) : v.toFixed(2)) : String(v));
  for (const r of rows) console.log(Object.entries(r).map(([k, v]) => `${k}=${fmt(v)}`).join("  "));
  mkdirSync(join(here, "..", "..", "bench", "results"), { recursive: true });
  writeFileSync(join(here, "..", "..", "bench", "results", "store.json"), JSON.stringify({ date: new Date().toISOString(), cpus: cpus().length, loadavg: loadavg(), rows }, null, 2) + "\n");
  console.log(`cpus ${cpus().length}, load average ${loadavg().map((l) => l.toFixed(2)).join(" ")} (other processes compete for the same CPUs)`);
}

if (process.argv[1] === fileURLToPath(import.meta.url)) await main();
