// Mirroring support: a checkpoint as the mirror carries it, and back.
//
// Sender (describeForMirror): a checkpoint's row (header, metadata blob, page table,
// kind/parent/seq/stats) plus the compressed page BLOCKS that hold the pages of its page
// table, each named by the SHA-256 of its on-disk bytes (16-byte block header + zstd
// frame, exactly as in the pack). The blocks' page hashes are listed too, so a receiver
// can index the pages of a block it stores.
//
// Receiver (importMirrored): stores the blocks it lacks verbatim in its packs, after
// checking each block's SHA-256, its header/CRC/decompressed length and that every page
// hashes to the listed hash; then commits the checkpoint in one SQLite transaction,
// exactly like ingest (packs fsynced first; on any error the packs are cut back).
//
// The page table and the blocks' page lists can be large (32 bytes per page each: 8 MiB
// per GiB of memory), bigger than a mirror manifest may be, so they travel as a binary
// "table" split in parts of at most 1 MiB, which are chunks of the checkpoint too (named
// by SHA-256). The manifest (small JSON) names the parts.
import { hash } from "node:crypto";
import { TgError } from "../../errors.js";
import { checkpointId, validAppName, validStoreAppName } from "../types.js";
import type { CheckpointRow, ExtentRow } from "./catalog.js";
import { decodeBlock, BLOCK_HEADER_SIZE, MAX_BLOCK_PAGES } from "./codec.js";
import { toCheckpoint, requireCheckpoint, type StoreContext } from "./context.js";
import { PackAppender } from "./block-writer.js";
import type { CasCheckpoint } from "./types.js";
import { HASH_LEN, LOC_LEN, PAGE, ZERO_HASH, putLoc, storeCorrupt } from "./util.js";

export const MIRROR_MANIFEST_FORMAT = "tardigrade-cas-checkpoint";
export const MIRROR_MANIFEST_VERSION = 1;
const TABLE_MAGIC = 0x544d4754; // "TGMT" little-endian
/** Bytes per table part (a chunk of the mirrored checkpoint). */
export const TABLE_PART_BYTES = 1024 * 1024;

/** The mirror manifest of a CasStore checkpoint (JSON; the bytes the mirror stores as "manifest"). */
export interface MirrorManifest extends CasCheckpoint {
  format: typeof MIRROR_MANIFEST_FORMAT;
  version: number;
  /** The image's 64-byte file header, base64. */
  header: string;
  /** The table's parts in order: SHA-256 hex and size. */
  table: { hash: string; size: number }[];
  tableBytes: number;
  /** Number of blocks the table lists and their total bytes. */
  blocks: number;
  blockBytes: number;
}

/** One block of a mirrored checkpoint. */
export interface MirrorBlock {
  /** SHA-256 hex of the block's bytes (header + zstd frame). */
  name: string;
  /** Bytes on disk (= the chunk's size). */
  size: number;
  npages: number;
  /** npages × 32 bytes: the SHA-256 of each page the block holds, in block order. */
  pages: Buffer;
}

/** The parsed table of a mirrored checkpoint. */
export interface MirrorTable {
  meta: Buffer;
  extents: ExtentRow[];
  blocks: MirrorBlock[];
}

/** What the sender needs to offer a checkpoint: manifest, table parts, blocks (read lazily). */
export interface MirrorExport {
  manifest: MirrorManifest;
  manifestBytes: Buffer;
  tableParts: { hash: string; data: Buffer }[];
  blocks: (MirrorBlock & { read(): Promise<Buffer> })[];
}

export function sha256(data: Buffer): Buffer {
  return hash("sha256", data, "buffer") as unknown as Buffer;
}

// ---- table encoding ----

export function encodeTable(t: MirrorTable): Buffer {
  const parts: Buffer[] = [];
  const head = Buffer.alloc(12);
  head.writeUInt32LE(TABLE_MAGIC, 0);
  head.writeUInt32LE(1, 4);
  head.writeUInt32LE(t.meta.length, 8);
  parts.push(head, t.meta);
  const n = Buffer.alloc(4);
  n.writeUInt32LE(t.extents.length, 0);
  parts.push(n);
  for (const e of t.extents) {
    const h = Buffer.alloc(13);
    h.writeUInt32LE(e.npages, 0);
    h.writeUInt32LE(e.page % 2 ** 32, 4);
    h.writeUInt32LE(Math.floor(e.page / 2 ** 32), 8);
    h.writeUInt8(e.hashes ? 1 : 0, 12);
    parts.push(h);
    if (e.hashes) parts.push(e.hashes);
  }
  const nb = Buffer.alloc(4);
  nb.writeUInt32LE(t.blocks.length, 0);
  parts.push(nb);
  for (const b of t.blocks) {
    const h = Buffer.alloc(HASH_LEN + 8);
    Buffer.from(b.name, "hex").copy(h, 0);
    h.writeUInt32LE(b.size, HASH_LEN);
    h.writeUInt32LE(b.npages, HASH_LEN + 4);
    parts.push(h, b.pages);
  }
  return Buffer.concat(parts);
}

function badManifest(id: string, why: string): TgError {
  return new TgError(`cannot import mirrored checkpoint ${id}`, why, "The mirror sent inconsistent data; pull again or check the mirror's store", "bad-mirror-data");
}

export function decodeTable(buf: Buffer, id: string): MirrorTable {
  let o = 0;
  const need = (n: number): void => {
    if (o + n > buf.length) throw badManifest(id, `table truncated at byte ${o}`);
  };
  need(12);
  if (buf.readUInt32LE(0) !== TABLE_MAGIC || buf.readUInt32LE(4) !== 1) throw badManifest(id, "bad table magic or version");
  const metaLen = buf.readUInt32LE(8);
  o = 12;
  need(metaLen);
  const meta = buf.subarray(o, o + metaLen);
  o += metaLen;
  need(4);
  const nExt = buf.readUInt32LE(o);
  o += 4;
  const extents: ExtentRow[] = [];
  for (let i = 0; i < nExt; i++) {
    need(13);
    const npages = buf.readUInt32LE(o);
    const page = buf.readUInt32LE(o + 4) + buf.readUInt32LE(o + 8) * 2 ** 32;
    const hasHashes = buf.readUInt8(o + 12) === 1;
    o += 13;
    let hashes: Buffer | null = null;
    if (hasHashes) {
      need(npages * HASH_LEN);
      hashes = buf.subarray(o, o + npages * HASH_LEN);
      o += npages * HASH_LEN;
    }
    extents.push({ ord: i, page, npages, hashes, locs: null });
  }
  need(4);
  const nBlk = buf.readUInt32LE(o);
  o += 4;
  const blocks: MirrorBlock[] = [];
  for (let i = 0; i < nBlk; i++) {
    need(HASH_LEN + 8);
    const name = buf.subarray(o, o + HASH_LEN).toString("hex");
    const size = buf.readUInt32LE(o + HASH_LEN);
    const npages = buf.readUInt32LE(o + HASH_LEN + 4);
    o += HASH_LEN + 8;
    if (npages < 1 || npages > MAX_BLOCK_PAGES) throw badManifest(id, `block ${name} claims ${npages} pages`);
    need(npages * HASH_LEN);
    blocks.push({ name, size, npages, pages: buf.subarray(o, o + npages * HASH_LEN) });
    o += npages * HASH_LEN;
  }
  if (o !== buf.length) throw badManifest(id, `${buf.length - o} stray bytes after the table`);
  return { meta, extents, blocks };
}

/**
 * Parses and checks a mirror manifest (JSON bytes). `member`: a checkpoint of another process
 * of a tree, or a files image (`APP~PID`, `APP~files`), carried in a bundle (src/mirror/bundle.ts).
 */
export function parseMirrorManifest(bytes: Buffer, member = false): MirrorManifest {
  let m: MirrorManifest;
  try {
    m = JSON.parse(bytes.toString("utf8")) as MirrorManifest;
  } catch (e) {
    throw badManifest("?", `manifest is not JSON: ${(e as Error).message}`);
  }
  const id = typeof m?.id === "string" ? m.id : "?";
  if (m.format !== MIRROR_MANIFEST_FORMAT) throw badManifest(id, `manifest format ${JSON.stringify(m.format)} is not ${MIRROR_MANIFEST_FORMAT}`);
  if (m.version !== MIRROR_MANIFEST_VERSION) throw badManifest(id, `manifest version ${m.version}, this tardigrade knows ${MIRROR_MANIFEST_VERSION}`);
  if (typeof m.app !== "string" || !(member ? validStoreAppName(m.app) : validAppName(m.app))) throw badManifest(id, "bad app name");
  if (!Number.isSafeInteger(m.seq) || m.seq < 1 || m.id !== checkpointId(m.app, m.seq)) throw badManifest(id, "bad id/seq");
  if (m.kind !== "full" && m.kind !== "incremental") throw badManifest(id, "bad kind");
  if (m.kind === "incremental" && typeof m.parent !== "string") throw badManifest(id, "incremental without a parent");
  if (!Array.isArray(m.table) || m.table.some((p) => typeof p?.hash !== "string" || !/^[0-9a-f]{64}$/.test(p.hash))) throw badManifest(id, "bad table part list");
  if (typeof m.header !== "string") throw badManifest(id, "no image header");
  return m;
}

// ---- sender ----

/**
 * Cache of block names and page lists (a side table in the index; rows of blocks gc removed
 * are stale but never wrong, since block ids are never reused; they are pruned here).
 */
function sideTable(ctx: StoreContext): {
  get(block: number): { name: Buffer; pages: Buffer } | undefined;
  put(block: number, name: Buffer, pages: Buffer): void;
} {
  const db = ctx.catalog.db;
  db.exec("CREATE TABLE IF NOT EXISTS mirror_blocks (block INTEGER PRIMARY KEY, name BLOB NOT NULL, pages BLOB NOT NULL)");
  const get = db.prepare("SELECT name, pages FROM mirror_blocks WHERE block = ?");
  const put = db.prepare("INSERT OR REPLACE INTO mirror_blocks (block, name, pages) VALUES (?, ?, ?)");
  return {
    get: (block) => get.get(block) as { name: Buffer; pages: Buffer } | undefined,
    put: (block, name, pages) => void put.run(block, name, pages),
  };
}

export function pruneSideTable(ctx: StoreContext): void {
  const db = ctx.catalog.db;
  db.exec("CREATE TABLE IF NOT EXISTS mirror_blocks (block INTEGER PRIMARY KEY, name BLOB NOT NULL, pages BLOB NOT NULL)");
  db.exec("DELETE FROM mirror_blocks WHERE block NOT IN (SELECT id FROM blocks)");
}

function readBlockBytes(ctx: StoreContext, block: number): Promise<Buffer> {
  const row = ctx.catalog.block(block);
  if (!row) throw chunkUnavailable(`block ${block}`, "the block is no longer in the store (a gc rewrote its pack)");
  return ctx.readers.read(row.pack, row.offset, row.len);
}

export function chunkUnavailable(what: string, why: string): TgError {
  return new TgError(`cannot read ${what} for the mirror`, why, "Describe the checkpoint again", "chunk-unavailable");
}

/**
 * Everything the mirror needs to carry checkpoint `id`: the manifest, the table, and the
 * blocks holding the pages of its page table (for an incremental: the pages it changed;
 * the parent's blocks go with the parent, and the destination's have/want handshake skips
 * blocks it already has). Call under the store's lock (reads blocks whose name is unknown).
 */
export async function describeForMirror(ctx: StoreContext, id: string): Promise<MirrorExport> {
  const row: CheckpointRow = requireCheckpoint(ctx, id);
  const cat = ctx.catalog;
  const { header, meta } = cat.headerAndMeta(row.cid);
  const extents = cat.extents(row.cid);
  const side = sideTable(ctx);
  // Which block holds each needed page (location hint if its block still exists, else the index).
  const exists = new Map<number, boolean>();
  const byBlock = new Map<number, Map<number, Buffer>>();
  for (const e of extents) {
    if (!e.hashes) continue;
    for (let i = 0; i < e.npages; i++) {
      const h = e.hashes.subarray(i * HASH_LEN, (i + 1) * HASH_LEN);
      if (h.equals(ZERO_HASH)) continue;
      let block = 0;
      let idx = 0;
      if (e.locs) {
        block = e.locs.readUInt32LE(i * LOC_LEN);
        idx = e.locs.readUInt32LE(i * LOC_LEN + 4);
        if (block !== 0) {
          let ok = exists.get(block);
          if (ok === undefined) exists.set(block, (ok = cat.blockExists(block)));
          if (!ok) block = 0;
        }
      }
      if (block === 0) {
        const loc = cat.pageLoc(h);
        if (!loc) throw storeCorrupt(`cannot describe checkpoint ${id} for the mirror`, `page ${h.toString("hex")} is not in the store`);
        [block, idx] = loc;
      }
      let m = byBlock.get(block);
      if (!m) byBlock.set(block, (m = new Map()));
      m.set(idx, h);
    }
  }
  const blocks: MirrorExport["blocks"] = [];
  for (const block of [...byBlock.keys()].sort((a, b) => a - b)) {
    const brow = cat.block(block);
    if (!brow) throw storeCorrupt(`cannot describe checkpoint ${id} for the mirror`, `block ${block} is not in the index`);
    let cached = side.get(block);
    if (!cached) {
      const bytes = await readBlockBytes(ctx, block);
      const name = sha256(bytes);
      const known = byBlock.get(block)!;
      let pages: Buffer;
      if (known.size === brow.npages) {
        pages = Buffer.alloc(brow.npages * HASH_LEN);
        for (const [i, h] of known) h.copy(pages, i * HASH_LEN);
      } else {
        // The block also holds pages this checkpoint does not use: hash them all.
        const data = await decodeBlock(bytes, brow.npages, `block ${block}`);
        pages = Buffer.alloc(brow.npages * HASH_LEN);
        for (let i = 0; i < brow.npages; i++) sha256(data.subarray(i * PAGE, (i + 1) * PAGE)).copy(pages, i * HASH_LEN);
      }
      side.put(block, name, pages);
      cached = { name, pages };
    }
    const name = cached.name.toString("hex");
    blocks.push({
      name,
      size: brow.len,
      npages: brow.npages,
      pages: cached.pages,
      read: async () => {
        const bytes = await readBlockBytes(ctx, block);
        if (sha256(bytes).toString("hex") !== name) throw chunkUnavailable(`block ${block}`, "its bytes no longer match the name recorded for it");
        return bytes;
      },
    });
  }
  const table = encodeTable({ meta, extents, blocks });
  const tableParts: MirrorExport["tableParts"] = [];
  for (let o = 0; o < table.length; o += TABLE_PART_BYTES) {
    const data = table.subarray(o, Math.min(table.length, o + TABLE_PART_BYTES));
    tableParts.push({ hash: sha256(data).toString("hex"), data });
  }
  const c = toCheckpoint(row);
  const manifest: MirrorManifest = {
    format: MIRROR_MANIFEST_FORMAT,
    version: MIRROR_MANIFEST_VERSION,
    id: c.id,
    app: c.app,
    seq: c.seq,
    kind: c.kind,
    parent: c.parent,
    synthetic: c.synthetic,
    createdAt: c.createdAt,
    pid: c.pid,
    stats: c.stats,
    header: header.toString("base64"),
    table: tableParts.map((p) => ({ hash: p.hash, size: p.data.length })),
    tableBytes: table.length,
    blocks: blocks.length,
    blockBytes: blocks.reduce((n, b) => n + b.size, 0),
  };
  return { manifest, manifestBytes: Buffer.from(JSON.stringify(manifest)), tableParts, blocks };
}

// ---- receiver ----

/** Blocks of `table` that hold at least one page this store lacks (the ones to fetch). */
export function blocksNeeded(ctx: StoreContext, table: MirrorTable): MirrorBlock[] {
  const cat = ctx.catalog;
  return table.blocks.filter((b) => {
    for (let i = 0; i < b.npages; i++) if (!cat.hasPage(b.pages.subarray(i * HASH_LEN, (i + 1) * HASH_LEN))) return true;
    return false;
  });
}

export interface ImportReport {
  checkpoint: CasCheckpoint;
  /** Blocks fetched and stored. */
  blocksStored: number;
  bytesStored: number;
  /** Blocks skipped: every page already in the store. */
  blocksSkipped: number;
}

/**
 * Stores a mirrored checkpoint. `getBlock(name)` is called once per needed block, in table
 * order, and must return its bytes (they are verified here). Atomic like ingest. Call under
 * the store's lock.
 */
export async function importMirrored(
  ctx: StoreContext,
  manifest: MirrorManifest,
  table: MirrorTable,
  getBlock: (name: string) => Promise<Buffer>,
): Promise<ImportReport> {
  const cat = ctx.catalog;
  const id = manifest.id;
  if (cat.checkpoint(id)) throw new TgError(`cannot import checkpoint ${id}`, "a checkpoint with this id is already in the store", "", "exists");
  if (manifest.kind === "incremental") {
    const p = manifest.parent === null ? undefined : cat.checkpoint(manifest.parent);
    if (!p) throw new TgError(`cannot import incremental checkpoint ${id}`, `its parent ${manifest.parent} is not in the store`, "Import the parent first", "missing-parent");
  }
  const header = Buffer.from(manifest.header, "base64");
  if (header.length !== 64) throw badManifest(id, `image header is ${header.length} bytes, not 64`);
  const needed = new Set(blocksNeeded(ctx, table).map((b) => b.name));
  const appender = new PackAppender(ctx);
  /** page hash (latin1 key) → [local block slot, idx] for pages of blocks stored here. */
  const pending = new Map<string, [number, number]>();
  const stored: { pack: number; offset: number; len: number; npages: number; name: Buffer; pages: Buffer }[] = [];
  let bytesStored = 0;
  let committed = false;
  try {
    for (const b of table.blocks) {
      if (!needed.has(b.name)) continue;
      needed.delete(b.name);
      const bytes = await getBlock(b.name);
      const name = sha256(bytes);
      if (name.toString("hex") !== b.name) throw badManifest(id, `block ${b.name} hashes to ${name.toString("hex")}: corrupted in transit or on the mirror`);
      if (bytes.length !== b.size || bytes.length < BLOCK_HEADER_SIZE) throw badManifest(id, `block ${b.name} is ${bytes.length} bytes, the table says ${b.size}`);
      let data: Buffer;
      try {
        data = await decodeBlock(bytes, b.npages, `mirrored block ${b.name}`);
      } catch (e) {
        throw badManifest(id, (e as Error).message);
      }
      for (let i = 0; i < b.npages; i++) {
        const h = sha256(data.subarray(i * PAGE, (i + 1) * PAGE));
        if (!h.equals(b.pages.subarray(i * HASH_LEN, (i + 1) * HASH_LEN))) throw badManifest(id, `page ${i} of block ${b.name} does not hash to the listed hash`);
      }
      const at = await appender.write([bytes], b.npages);
      const slot = stored.length;
      stored.push({ ...at, name, pages: b.pages });
      bytesStored += bytes.length;
      for (let i = 0; i < b.npages; i++) {
        const key = b.pages.subarray(i * HASH_LEN, (i + 1) * HASH_LEN).toString("latin1");
        if (!pending.has(key)) pending.set(key, [slot, i]);
      }
    }
    // Every page of the page table must now be resolvable.
    const extents: ExtentRow[] = table.extents.map((e) => ({ ...e, locs: e.hashes ? Buffer.alloc(e.npages * LOC_LEN) : null }));
    const fixups: { locs: Buffer; i: number; at: [number, number] }[] = [];
    for (const e of extents) {
      if (!e.hashes) continue;
      for (let i = 0; i < e.npages; i++) {
        const h = e.hashes.subarray(i * HASH_LEN, (i + 1) * HASH_LEN);
        if (h.equals(ZERO_HASH)) continue;
        const mine = pending.get(h.toString("latin1"));
        if (mine) {
          fixups.push({ locs: e.locs!, i, at: mine });
          continue;
        }
        const loc = cat.pageLoc(h);
        if (!loc) throw badManifest(id, `page ${h.toString("hex")} of the page table is in no block listed and not in this store`);
        putLoc(e.locs!, i, loc[0], loc[1]);
      }
    }
    await appender.sync();
    const stats = { ...manifest.stats };
    const side = sideTable(ctx);
    const row = cat.transaction(() => {
      if (manifest.parent !== null && manifest.kind === "incremental" && !cat.checkpoint(manifest.parent)) {
        throw new TgError(`cannot import incremental checkpoint ${id}`, `its parent ${manifest.parent} was removed meanwhile`, "", "missing-parent");
      }
      for (const w of appender.writers) cat.upsertPack(w.id, w.size);
      const ids = stored.map((b) => cat.insertBlock(b.pack, b.offset, b.len, b.npages));
      stored.forEach((b, slot) => {
        for (let i = 0; i < b.npages; i++) cat.insertPage(b.pages.subarray(i * HASH_LEN, (i + 1) * HASH_LEN), ids[slot]!, i);
        side.put(ids[slot]!, b.name, b.pages);
      });
      // A page already in the index (INSERT OR IGNORE kept the old location) is found there too.
      for (const f of fixups) putLoc(f.locs, f.i, ids[f.at[0]]!, f.at[1]);
      const cid = cat.insertCheckpoint({
        id,
        app: manifest.app,
        seq: manifest.seq,
        kind: manifest.kind,
        parent: manifest.parent,
        synthetic: manifest.synthetic ? 1 : 0,
        created_at: manifest.createdAt,
        pid: manifest.pid,
        stats: JSON.stringify(stats),
        header,
        meta: Buffer.from(table.meta),
      });
      for (const e of extents) cat.insertExtent(cid, { ...e, hashes: e.hashes ? Buffer.from(e.hashes) : null });
      return cat.checkpoint(id)!;
    });
    committed = true;
    if (ctx.filter) for (const b of stored) for (let i = 0; i < b.npages; i++) ctx.filter.add(b.pages.subarray(i * HASH_LEN, (i + 1) * HASH_LEN));
    await appender.close();
    return { checkpoint: toCheckpoint(row), blocksStored: stored.length, bytesStored, blocksSkipped: table.blocks.length - stored.length };
  } catch (e) {
    if (committed) throw e;
    await appender.rollback();
    throw e;
  }
}
