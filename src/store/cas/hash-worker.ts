// Worker thread: SHA-256 of each 4 KiB page of a PAGES payload, zero pages marked with
// 32 zero bytes. Runs beside the ingest loop so hashing overlaps reading, indexing and
// compressing. Message in: { id, data: Uint8Array, crcFrom? }; out: { id, data, hashes: Uint8Array, crc?, pagesCrc? }
// (data handed back so the caller can pack the new pages).
import { hash } from "node:crypto";
import koffi from "koffi";
import { nativeBinary } from "../../native/paths.js";
import { crc32c } from "@node-rs/crc32";
import { crc32cCombine } from "./crc-combine.js";
import { getPriority, setPriority } from "node:os";
import { parentPort } from "node:worker_threads";

/** How much lower than the daemon's this thread runs (see below). */
const HASH_NICE = Number(process.env.TG_HASH_NICE ?? 10);

const PAGE = 4096;
const ZERO = Buffer.alloc(PAGE);

type HashPagesFn = (data: Uint8Array, npages: number, out: Uint8Array) => number;

/**
 * SHA-256 of every page of a payload in one call (native/hash/pages.c, SHA extensions), or
 * null: then node's crypto, one call per page (~0.4-0.6 CPU-s more per GiB here, measured
 * in the same run: bench/results and docs/store.md). TG_HASH_NATIVE=0 turns it off (to compare).
 */
function loadNative(): HashPagesFn | null {
  if (process.env.TG_HASH_NATIVE === "0") return null;
  try {
    const lib = koffi.load(nativeBinary("libtardigrade-hash.so"));
    if ((lib.func("int tg_hash_pages_ok(void)") as () => number)() !== 1) return null;
    return lib.func("uint32_t tg_hash_pages(const uint8_t *data, uint32_t npages, _Out_ uint8_t *out)") as HashPagesFn;
  } catch {
    return null; // not built, or a CPU without the SHA extensions: node's crypto
  }
}
const nativeHash = loadNative();

export function hashPages(data: Buffer): Buffer {
  const n = data.length / PAGE;
  const hashes = Buffer.alloc(n * 32);
  if (nativeHash && data.byteOffset % 8 === 0 && Number.isInteger(n)) {
    nativeHash(data, n, hashes);
    return hashes;
  }
  for (let i = 0; i < n; i++) {
    const page = data.subarray(i * PAGE, (i + 1) * PAGE);
    if (page.equals(ZERO)) continue;
    hash("sha256", page, "buffer").copy(hashes, i * 32); // one call: ~15% faster than createHash per page
  }
  return hashes;
}

if (parentPort) {
  // Hashing is background work: on Linux a thread's nice value is its own, so this lowers
  // only this thread's priority below the application's (raising nice needs no privilege).
  try {
    setPriority(0, Math.min(19, getPriority(0) + HASH_NICE));
  } catch {
    // not permitted or not supported: hash at normal priority
  }
}

parentPort?.on("message", (m: { id: number; data: Uint8Array; crcFrom?: number }) => {
  const data = Buffer.from(m.data.buffer, m.data.byteOffset, m.data.byteLength);
  // the record's payload CRC, continued from its 16-byte prefix's, when the reader left it to us:
  // from the pages' own CRC, which is also the CRC of a raw block made of exactly these pages
  const pagesCrc = m.crcFrom === undefined ? undefined : crc32c(data);
  const crc = pagesCrc === undefined ? undefined : crc32cCombine(m.crcFrom!, pagesCrc, data.length);
  const hashes = hashPages(data);
  parentPort!.postMessage({ id: m.id, data: m.data, hashes, crc, pagesCrc }, [m.data.buffer as ArrayBuffer, hashes.buffer as ArrayBuffer]);
});
