// Blocks: up to 256 pages compressed together with zstd. On disk each block is a 16-byte
// header (u32 magic "TGBK", u32 npages, u32 compressed length, u32 CRC-32C of the
// compressed bytes) followed by one zstd frame. Pages that do not compress (random data,
// already compressed data) are kept as they are, under the magic "TGBR", so that reading
// them back costs no decompression. Decoding checks all of it.
import { createRequire } from "node:module";
import { crc32c } from "@node-rs/crc32";
import { PAGE } from "./util.js";
import { storeCorrupt } from "./util.js";

interface Zstd {
  compress(data: Buffer, level?: number): Promise<Buffer>;
  decompress(data: Buffer): Promise<Buffer>;
}
// @mongodb-js/zstd 1.2.2's index.js drops the level argument (always the library default,
// 3); its native binding, which index.js wraps, takes it. Use the binding directly.
const zstd = createRequire(import.meta.url)("@mongodb-js/zstd/bindings.js") as Zstd;

export const BLOCK_MAGIC = 0x4b424754; // "TGBK" little-endian
export const RAW_BLOCK_MAGIC = 0x52424754; // "TGBR": pages stored uncompressed
export const BLOCK_HEADER_SIZE = 16;
export const MAX_BLOCK_PAGES = 256;

/** Blocks at least this big are first probed with a sample (see `probablyIncompressible`). */
const PROBE_MIN = 64 * PAGE;
const PROBE_RUN = 4 * PAGE;
const PROBE_RUNS = 4;

/**
 * Whether a sample of `pages` (4 runs of 4 pages, spread over the block) saves under 2%
 * with zstd: then the block is stored raw without compressing the rest. Random or already
 * compressed memory costs 1/16 of a full compression (zstd on such data runs at ~1 GB/s
 * here: the main cost of storing it); a block whose sample happens to miss its
 * compressible part is stored raw (a little space, never correctness).
 */
async function probablyIncompressible(pages: Buffer, level: number): Promise<boolean> {
  if (pages.length < PROBE_MIN) return false;
  const step = Math.floor(pages.length / PAGE / PROBE_RUNS) * PAGE;
  const sample = Buffer.allocUnsafe(PROBE_RUNS * PROBE_RUN);
  for (let i = 0; i < PROBE_RUNS; i++) pages.copy(sample, i * PROBE_RUN, i * step, i * step + PROBE_RUN);
  const packed = await zstd.compress(sample, level);
  return packed.length >= sample.length * 0.98;
}

/**
 * Compresses `pages` (npages × 4096 bytes) into an on-disk block: [header, zstd frame].
 * A raw block's data is `pages` itself: keep it unchanged until the block is written.
 */
export async function encodeBlock(pages: Buffer, level: number): Promise<[Buffer, Buffer]> {
  const packed = (await probablyIncompressible(pages, level)) ? pages : await zstd.compress(pages, level);
  // under 2% saved: not worth a decompression on every read
  const raw = packed === pages || packed.length >= pages.length * 0.98;
  const z = raw ? pages : packed; // raw: the caller keeps `pages` unchanged until the block is written
  const h = Buffer.alloc(BLOCK_HEADER_SIZE);
  h.writeUInt32LE(raw ? RAW_BLOCK_MAGIC : BLOCK_MAGIC, 0);
  h.writeUInt32LE(pages.length / PAGE, 4);
  h.writeUInt32LE(z.length, 8);
  h.writeUInt32LE(crc32c(z), 12);
  return [h, z];
}

/** Checks and decompresses an on-disk block; `where` names the pack file and offset for errors. */
export async function decodeBlock(buf: Buffer, npages: number, where: string): Promise<Buffer> {
  const bad = (why: string) => storeCorrupt(`cannot read the block at ${where}`, why);
  const magic = buf.length >= BLOCK_HEADER_SIZE ? buf.readUInt32LE(0) : 0;
  if (magic !== BLOCK_MAGIC && magic !== RAW_BLOCK_MAGIC) throw bad("bad block magic");
  if (buf.readUInt32LE(4) !== npages) throw bad(`block holds ${buf.readUInt32LE(4)} pages, the index says ${npages}`);
  const clen = buf.readUInt32LE(8);
  if (clen !== buf.length - BLOCK_HEADER_SIZE) throw bad(`block length ${clen} does not match the index (${buf.length - BLOCK_HEADER_SIZE})`);
  const z = buf.subarray(BLOCK_HEADER_SIZE);
  if (crc32c(z) !== buf.readUInt32LE(12)) throw bad("block CRC mismatch");
  let out: Buffer;
  try {
    out = magic === RAW_BLOCK_MAGIC ? z : await zstd.decompress(z); // z: a view of the caller's fresh read buffer
  } catch (e) {
    throw bad(`zstd: ${(e as Error).message}`);
  }
  if (out.length !== npages * PAGE) throw bad(`block decompresses to ${out.length} bytes, expected ${npages * PAGE}`);
  return out;
}
