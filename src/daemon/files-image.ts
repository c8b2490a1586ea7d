// A checkpoint's data files as one raw image (issue 14; docs/format.md, "Files images"): every file
// of the set gets a FILE record and, when not empty, a region of its own in a synthetic address
// space (one TiB per file) whose pages are the file's contents. The store then treats file
// contents exactly as memory pages: content-addressed by 4 KiB page, compressed, incremental on
// the parent's files image (PAGES_CLEAR + PAGES of what changed), composed, merged, collected,
// verified and shipped with the rest. This module encodes and decodes that image.
import { crc32c } from "@node-rs/crc32";
import { open } from "node:fs/promises";
import { FILE_HEADER_SIZE, MAX_PAGES_PER_RECORD, PAGE_SIZE, RECORD_HEADER_SIZE, RecordType } from "../image/format.js";
import { fileHeader, procRecord, recordBytes, vmaRecord, type RawRecord } from "../image/writer.js";

/** Each file's contents live at base = slot × SLOT_BYTES (slot ≥ 1): files up to 1 TiB. */
export const SLOT_BYTES = 2 ** 40;
/** FILE flags: bit 0 the file existed at the cut (else: a path of the set that did not). */
export const FILE_PRESENT = 1;
/** FILE flags: bit 1 a hard link of an earlier present path of the set (same device and inode; no contents of its own). */
export const FILE_LINK = 2;

/** One file of a checkpoint's set, as its FILE record and the files manifest say. */
export interface FileEntry {
  path: string;
  present: boolean;
  /** Start of its contents in the files image (0: none, an absent or empty file). */
  base: number;
  size: number;
  mtimeNs: bigint;
  atimeNs: bigint;
  ctimeNs: bigint;
  mode: number;
  uid: number;
  gid: number;
  dev: number;
  ino: number;
  /** A hard link: the earlier path of the set with the same inode (whose contents it shares). */
  link?: string;
  /** Extended attributes of the user namespace (`user.*`), name -> value in base64. */
  xattrs?: Record<string, string>;
}

/** A directory's entry (its mode's file type). */
export const isDirMode = (mode: number): boolean => (mode & 0o170000) === 0o040000;

export function encodeFile(f: FileEntry): Buffer {
  const b = Buffer.alloc(72);
  b.writeBigUInt64LE(BigInt(f.base), 0);
  b.writeBigUInt64LE(BigInt(f.size), 8);
  b.writeBigUInt64LE(f.mtimeNs, 16);
  b.writeBigUInt64LE(f.atimeNs, 24);
  b.writeUInt32LE(f.mode >>> 0, 32);
  b.writeUInt32LE(f.uid >>> 0, 36);
  b.writeUInt32LE(f.gid >>> 0, 40);
  b.writeUInt32LE((f.present ? FILE_PRESENT : 0) | (f.link ? FILE_LINK : 0), 44);
  b.writeBigUInt64LE(BigInt(f.dev), 48);
  b.writeBigUInt64LE(BigInt(f.ino), 56);
  b.writeBigUInt64LE(f.ctimeNs, 64);
  return Buffer.concat([b, Buffer.from(f.path)]);
}

export function decodeFile(p: Buffer): FileEntry {
  return {
    base: Number(p.readBigUInt64LE(0)),
    size: Number(p.readBigUInt64LE(8)),
    mtimeNs: p.readBigUInt64LE(16),
    atimeNs: p.readBigUInt64LE(24),
    mode: p.readUInt32LE(32),
    uid: p.readUInt32LE(36),
    gid: p.readUInt32LE(40),
    present: (p.readUInt32LE(44) & FILE_PRESENT) !== 0,
    dev: Number(p.readBigUInt64LE(48)),
    ino: Number(p.readBigUInt64LE(56)),
    ctimeNs: p.readBigUInt64LE(64),
    path: p.subarray(72).toString(),
  };
}

const pageUp = (n: number): number => Math.ceil(n / PAGE_SIZE) * PAGE_SIZE;

/** What the image stores for one file: nothing new (unchanged since the parent), or its contents. */
export interface FileContent {
  entry: FileEntry;
  /** A copy of the file's bytes at the cut (a staging file), or null when the parent's pages stand. */
  copy: string | null;
  /** Or only these pages (page-aligned offsets in the file) changed since the parent: read at the cut, the parent's pages stand for the rest. */
  pieces?: { off: number; data: Buffer }[];
}

/** Page data read from the staging copies this many bytes at a time (one PAGES record). */
const PAGES_BYTES = MAX_PAGES_PER_RECORD * PAGE_SIZE;
const pagesRecordBytes = (np: number): number => RECORD_HEADER_SIZE + 16 + np * PAGE_SIZE;

function pagesHeader(addr: number, np: number): Buffer {
  const b = Buffer.alloc(16);
  b.writeBigUInt64LE(BigInt(addr), 0);
  b.writeBigUInt64LE(BigInt(np), 8);
  return b;
}

/**
 * The files image as a stream of chunks: FILE records (in base order), one VMA per non-empty
 * file, then for each file with a copy a PAGES_CLEAR over its region (incremental) and its pages,
 * read from the copy. Sizes are known from the entries, so the END record is right without a
 * second pass.
 */
export async function* filesImageChunks(files: FileContent[], h: { seq: number; parentSeq: number; createdNs: bigint }): AsyncGenerator<Buffer> {
  const sorted = [...files].sort((a, b) => a.entry.base - b.entry.base);
  const meta: RawRecord[] = [procRecord({ pid: 0, nthreads: 0 })];
  for (const f of sorted) meta.push({ type: RecordType.FILE, payload: encodeFile(f.entry) });
  for (const f of sorted) {
    if (!f.entry.present || f.entry.base === 0 || f.entry.size === 0) continue;
    meta.push(vmaRecord({ start: BigInt(f.entry.base), end: BigInt(f.entry.base + pageUp(f.entry.size)) }));
  }
  const withData = sorted.filter((f) => f.copy && f.entry.present && f.entry.base !== 0 && f.entry.size > 0);
  const head = [fileHeader({ pid: 0, seq: BigInt(h.seq), parentSeq: BigInt(h.parentSeq), flags: h.parentSeq ? 1 : 0, createdNs: h.createdNs }), ...meta.map(recordBytes)];
  let records = meta.length;
  let bytes = head.reduce((n, c) => n + c.length, 0);
  let pages = 0;
  const withPieces = sorted.filter((f) => !f.copy && f.pieces?.length && f.entry.present && f.entry.base !== 0);
  for (const f of withPieces)
    for (const p of f.pieces!)
      for (let off = 0; off < p.data.length; off += PAGES_BYTES) {
        const np = Math.min(PAGES_BYTES, p.data.length - off) / PAGE_SIZE;
        records++;
        pages += np;
        bytes += pagesRecordBytes(np);
      }
  for (const f of withData) {
    const span = pageUp(f.entry.size);
    if (h.parentSeq) {
      records++;
      bytes += RECORD_HEADER_SIZE + 16;
    }
    for (let off = 0; off < span; off += PAGES_BYTES) {
      const np = Math.min(PAGES_BYTES, span - off) / PAGE_SIZE;
      records++;
      pages += np;
      bytes += pagesRecordBytes(np);
    }
  }
  bytes += RECORD_HEADER_SIZE + 24;
  const pieceSet = new Set(withPieces);
  const dataSet = new Set(withData);
  yield* head;
  // in address order: the store wants PAGES records ascending
  for (const f of sorted) {
    if (pieceSet.has(f)) {
      for (const p of f.pieces!)
        for (let off = 0; off < p.data.length; off += PAGES_BYTES) {
          const len = Math.min(PAGES_BYTES, p.data.length - off);
          yield recordBytes({ type: RecordType.PAGES, payload: Buffer.concat([pagesHeader(f.entry.base + p.off + off, len / PAGE_SIZE), p.data.subarray(off, off + len)]) });
        }
      continue;
    }
    if (!dataSet.has(f)) continue;
    const span = pageUp(f.entry.size);
    if (h.parentSeq) {
      const c = Buffer.alloc(16);
      c.writeBigUInt64LE(BigInt(f.entry.base), 0);
      c.writeBigUInt64LE(BigInt(span / PAGE_SIZE), 8);
      yield recordBytes({ type: RecordType.PAGES_CLEAR, payload: c });
    }
    const fh = await open(f.copy!, "r");
    try {
      for (let off = 0; off < span; off += PAGES_BYTES) {
        const len = Math.min(PAGES_BYTES, span - off);
        const body = Buffer.alloc(16 + len); // zeros past the end of the copy
        pagesHeader(f.entry.base + off, len / PAGE_SIZE).copy(body, 0);
        let got = 0;
        while (got < len) {
          const { bytesRead } = await fh.read(body, 16 + got, len - got, off + got);
          if (bytesRead === 0) break;
          got += bytesRead;
        }
        yield recordBytes({ type: RecordType.PAGES, payload: body });
      }
    } finally {
      await fh.close();
    }
  }
  const end = Buffer.alloc(24);
  end.writeBigUInt64LE(BigInt(records), 0);
  end.writeBigUInt64LE(BigInt(pages), 8);
  end.writeBigUInt64LE(BigInt(bytes), 16);
  yield recordBytes({ type: RecordType.END, payload: end });
}

/** A record of a composed files image as the reader yields it. */
export type FilesRecord = { type: "file"; entry: FileEntry } | { type: "pages"; addr: number; data: Buffer };

/** Reads a (composed, full) files image record by record, checking every CRC. */
export async function* readFilesImage(src: AsyncIterable<Buffer>, what: string): AsyncGenerator<FilesRecord> {
  let buf: Buffer = Buffer.alloc(0);
  const pending: Buffer[] = []; // read, not yet joined into buf (joined once per record, not per chunk)
  let pendingLen = 0;
  let off = 0; // of buf[0] in the stream
  const it = src[Symbol.asyncIterator]();
  const need = async (n: number): Promise<boolean> => {
    while (buf.length + pendingLen < n) {
      const r = await it.next();
      if (r.done) return false;
      pending.push(r.value);
      pendingLen += r.value.length;
    }
    if (buf.length < n) {
      buf = Buffer.concat([buf, ...pending.splice(0)]);
      pendingLen = 0;
    }
    return true;
  };
  const take = (n: number): Buffer => {
    const b = buf.subarray(0, n);
    buf = buf.subarray(n);
    off += n;
    return b;
  };
  const bad = (why: string): Error => new Error(`the files image of ${what} is damaged at byte ${off}: ${why}`);
  if (!(await need(FILE_HEADER_SIZE))) throw bad("no header");
  take(FILE_HEADER_SIZE);
  for (;;) {
    if (!(await need(RECORD_HEADER_SIZE))) throw bad("no END record");
    const h = take(RECORD_HEADER_SIZE);
    if (crc32c(h.subarray(0, 28)) !== h.readUInt32LE(28)) throw bad("record header CRC mismatch");
    const type = h.readUInt32LE(0);
    const len = Number(h.readBigUInt64LE(8));
    const padded = Math.ceil(len / 8) * 8;
    if (!(await need(padded))) throw bad("truncated record");
    const p = Buffer.from(take(padded).subarray(0, len));
    if (crc32c(p) !== h.readUInt32LE(16)) throw bad("payload CRC mismatch");
    if (type === RecordType.END) return;
    if (type === RecordType.FILE) yield { type: "file", entry: decodeFile(p) };
    else if (type === RecordType.PAGES) yield { type: "pages", addr: Number(p.readBigUInt64LE(0)), data: p.subarray(16) };
  }
}
