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
const PROBE_RUN = PAGE;
const PROBE_RUNS = 4;
/**
 * Byte entropy (bits per byte) of the sample above which a block is taken for
 * incompressible. 16 KiB of uniform random bytes measure ~7.99; zstd's entropy stage alone
 * saves 2% below ~7.84, so a sample at 7.9 or more leaves zstd only its matches (repeats
 * of byte strings), which memory that looks random at the byte level seldom has.
 */
const PROBE_ENTROPY = 7.9;
const histogram = new Uint32Array(256);

/**
 * Whether a sample of `pages` (4 runs of 1 page, spread over the block) looks random at the
 * byte level: then the block is stored raw without compressing it. Measured here with
 * @mongodb-js/zstd, one compression call costs ~300 µs before its first byte (a 64 KiB
 * sample took 414 µs, 1 MiB 4.3 ms of CPU): the former probe by compressing a 64 KiB sample
 * cost ~1.7 CPU-s per GiB of random memory, this one ~0.1. A block whose sample misses its
 * compressible part is stored raw (a little space, never correctness).
 */
export function probablyIncompressible(pages: Buffer): boolean {
  if (pages.length < PROBE_MIN) return false;
  const step = Math.floor(pages.length / PAGE / PROBE_RUNS) * PAGE;
  const h = histogram;
  h.fill(0);
  for (let r = 0; r < PROBE_RUNS; r++) {
    const from = r * step;
    for (let i = from; i < from + PROBE_RUN; i++) h[pages[i]!]!++;
  }
  const n = PROBE_RUNS * PROBE_RUN;
  let bits = 0;
  for (let i = 0; i < 256; i++) {
    const c = h[i]!;
    if (c !== 0) bits -= c * Math.log2(c / n);
  }
  return bits / n >= PROBE_ENTROPY;
}

/**
 * Compresses `pages` (npages × 4096 bytes) into an on-disk block: [header, zstd frame].
 * A raw block's data is `pages` itself: keep it unchanged until the block is written.
 * `pagesCrc`: the CRC-32C of `pages` if the caller has it (checked by the image's record CRC).
 */
export async function encodeBlock(pages: Buffer, level: number, pagesCrc?: number): Promise<[Buffer, Buffer]> {
  const packed = probablyIncompressible(pages) ? pages : await zstd.compress(pages, level);
  // under 2% saved: not worth a decompression on every read
  const raw = packed === pages || packed.length >= pages.length * 0.98;
  const z = raw ? pages : packed; // raw: the caller keeps `pages` unchanged until the block is written
  const h = Buffer.alloc(BLOCK_HEADER_SIZE);
  h.writeUInt32LE(raw ? RAW_BLOCK_MAGIC : BLOCK_MAGIC, 0);
  h.writeUInt32LE(pages.length / PAGE, 4);
  h.writeUInt32LE(z.length, 8);
  h.writeUInt32LE(raw && pagesCrc !== undefined ? pagesCrc : crc32c(z), 12);
  return [h, z];
}

/**
 * The CRC-32C of the pages of a raw block decoded by decodeBlock (checked against the bytes
 * read), by the decoded buffer: a reader that passes the whole block on can take it instead
 * of computing it again (export: crc32c-combine.ts).
 */
export const rawBlockCrc = new WeakMap<Buffer, number>();

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
  if (magic === RAW_BLOCK_MAGIC) rawBlockCrc.set(out, buf.readUInt32LE(12));
  return out;
}
