// The index: one SQLite database (WAL, synchronous=FULL) holding packs, blocks, the page
// hash → block map and the checkpoints (manifests, metadata blobs, page tables).
// All statements are synchronous (better-sqlite3); every multi-row change is one
// transaction, so a crash leaves the index either before or after it.
import Database from "better-sqlite3";
import { TgError } from "../../errors.js";

export const SCHEMA_VERSION = 1;

export interface PackRow {
  id: number;
  /** Committed length: bytes past it are uncommitted leftovers of a crash. */
  size: number;
}

export interface BlockRow {
  id: number;
  pack: number;
  offset: number;
  /** Length on disk (block header + compressed frame). */
  len: number;
  npages: number;
}

export interface CheckpointRow {
  cid: number;
  id: string;
  app: string;
  seq: number;
  kind: "full" | "incremental";
  parent: string | null;
  synthetic: number;
  created_at: string;
  pid: number;
  stats: string;
}

/**
 * One entry of a page table: PAGES (hashes = npages × 32 bytes, zero pages = 32 zero bytes)
 * or PAGES_CLEAR (hashes = null). `locs` (PAGES only, may be null): npages × { u32 block,
 * u32 idx } where each page was when the row was written, a hint that saves an index
 * lookup per page on export: blocks are immutable and their ids never reused, so a hint
 * is right as long as its block exists (gc moves pages to new blocks; then the hash is
 * looked up). Block 0 = zero page.
 */
export interface ExtentRow {
  ord: number;
  page: number;
  npages: number;
  hashes: Buffer | null;
  locs: Buffer | null;
}

const SCHEMA = `
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS packs (id INTEGER PRIMARY KEY, size INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS blocks (id INTEGER PRIMARY KEY AUTOINCREMENT, pack INTEGER NOT NULL, offset INTEGER NOT NULL, len INTEGER NOT NULL, npages INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS blocks_pack ON blocks(pack);
CREATE TABLE IF NOT EXISTS pages (hash BLOB PRIMARY KEY, block INTEGER NOT NULL, idx INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS checkpoints (
  cid INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, app TEXT NOT NULL, seq INTEGER NOT NULL,
  kind TEXT NOT NULL, parent TEXT, synthetic INTEGER NOT NULL, created_at TEXT NOT NULL, pid INTEGER NOT NULL,
  stats TEXT NOT NULL, header BLOB NOT NULL, meta BLOB NOT NULL, UNIQUE (app, seq));
CREATE TABLE IF NOT EXISTS extents (cid INTEGER NOT NULL, ord INTEGER NOT NULL, page INTEGER NOT NULL, npages INTEGER NOT NULL, hashes BLOB, locs BLOB, PRIMARY KEY (cid, ord));
`;

const CK_COLS = "cid, id, app, seq, kind, parent, synthetic, created_at, pid, stats";

export class Catalog {
  readonly db: Database.Database;
  private readonly st;

  constructor(readonly file: string) {
    try {
      this.db = new Database(file);
    } catch (e) {
      throw new TgError(`cannot open the store index ${file}`, (e as Error).message, "Check the path and its permissions; if the file is damaged, move it away (the packs alone cannot be re-indexed)", "store-open");
    }
    const db = this.db;
    db.pragma("auto_vacuum = INCREMENTAL"); // only takes effect on a new database
    db.pragma("journal_mode = WAL");
    db.pragma("synchronous = FULL");
    db.pragma("busy_timeout = 5000");
    // Page hashes are random keys: a B-tree of 32-byte keys gets touched all over by every
    // ingest. A 64 MiB page cache (instead of 2 MiB) roughly halves insert time at 500k pages.
    db.pragma("cache_size = -65536");
    db.exec(SCHEMA);
    const v = db.prepare("SELECT value FROM kv WHERE key = 'schema'").pluck().get() as string | undefined;
    if (v === undefined) db.prepare("INSERT INTO kv (key, value) VALUES ('schema', ?)").run(String(SCHEMA_VERSION));
    else if (Number(v) !== SCHEMA_VERSION)
      throw new TgError(`cannot open the store index ${file}`, `schema version ${v}, this tardigrade knows ${SCHEMA_VERSION}`, "Use the tardigrade version that wrote this store", "store-open");
    this.st = {
      packs: db.prepare("SELECT id, size FROM packs ORDER BY id"),
      upsertPack: db.prepare("INSERT INTO packs (id, size) VALUES (?, ?) ON CONFLICT(id) DO UPDATE SET size = excluded.size"),
      deletePack: db.prepare("DELETE FROM packs WHERE id = ?"),
      insertBlock: db.prepare("INSERT INTO blocks (pack, offset, len, npages) VALUES (?, ?, ?, ?)"),
      block: db.prepare("SELECT id, pack, offset, len, npages FROM blocks WHERE id = ?"),
      blocksOfPack: db.prepare("SELECT id, pack, offset, len, npages FROM blocks WHERE pack = ? ORDER BY offset"),
      allBlocks: db.prepare("SELECT id, pack, offset, len, npages FROM blocks"),
      deleteBlock: db.prepare("DELETE FROM blocks WHERE id = ?"),
      hasPage: db.prepare("SELECT 1 FROM pages WHERE hash = ?").pluck(),
      pageLoc: db.prepare("SELECT block, idx FROM pages WHERE hash = ?").raw(),
      insertPage: db.prepare("INSERT OR IGNORE INTO pages (hash, block, idx) VALUES (?, ?, ?)"),
      movePage: db.prepare("UPDATE pages SET block = ?, idx = ? WHERE hash = ?"),
      placePage: db.prepare("INSERT INTO pages (hash, block, idx) VALUES (?, ?, ?) ON CONFLICT(hash) DO UPDATE SET block = excluded.block, idx = excluded.idx"),
      deletePage: db.prepare("DELETE FROM pages WHERE hash = ?"),
      allPages: db.prepare("SELECT hash, block, idx FROM pages").raw(),
      pageCount: db.prepare("SELECT count(*) FROM pages").pluck(),
      insertCk: db.prepare(
        "INSERT INTO checkpoints (id, app, seq, kind, parent, synthetic, created_at, pid, stats, header, meta) VALUES (@id, @app, @seq, @kind, @parent, @synthetic, @created_at, @pid, @stats, @header, @meta)",
      ),
      ck: db.prepare(`SELECT ${CK_COLS} FROM checkpoints WHERE id = ?`),
      ckMeta: db.prepare("SELECT header, meta FROM checkpoints WHERE cid = ?"),
      listAll: db.prepare(`SELECT ${CK_COLS} FROM checkpoints ORDER BY app, seq`),
      listApp: db.prepare(`SELECT ${CK_COLS} FROM checkpoints WHERE app = ? ORDER BY seq`),
      children: db.prepare("SELECT id FROM checkpoints WHERE parent = ? AND synthetic = 0 AND kind = 'incremental'").pluck(),
      updateMerged: db.prepare("UPDATE checkpoints SET kind = 'full', synthetic = 1, stats = ? WHERE cid = ?"),
      deleteCk: db.prepare("DELETE FROM checkpoints WHERE cid = ?"),
      insertExtent: db.prepare("INSERT INTO extents (cid, ord, page, npages, hashes, locs) VALUES (?, ?, ?, ?, ?, ?)"),
      extents: db.prepare("SELECT ord, page, npages, hashes, locs FROM extents WHERE cid = ? ORDER BY ord"),
      blockExists: db.prepare("SELECT 1 FROM blocks WHERE id = ?").pluck(),
      extentHashes: db.prepare("SELECT hashes FROM extents WHERE hashes IS NOT NULL").pluck(),
      deleteExtents: db.prepare("DELETE FROM extents WHERE cid = ?"),
    };
  }

  packs(): PackRow[] {
    return this.st.packs.all() as PackRow[];
  }
  upsertPack(id: number, size: number): void {
    this.st.upsertPack.run(id, size);
  }
  deletePack(id: number): void {
    this.st.deletePack.run(id);
  }
  insertBlock(pack: number, offset: number, len: number, npages: number): number {
    return Number(this.st.insertBlock.run(pack, offset, len, npages).lastInsertRowid);
  }
  blockExists(id: number): boolean {
    return this.st.blockExists.get(id) !== undefined;
  }
  block(id: number): BlockRow | undefined {
    return this.st.block.get(id) as BlockRow | undefined;
  }
  blocksOfPack(pack: number): BlockRow[] {
    return this.st.blocksOfPack.all(pack) as BlockRow[];
  }
  allBlocks(): BlockRow[] {
    return this.st.allBlocks.all() as BlockRow[];
  }
  deleteBlock(id: number): void {
    this.st.deleteBlock.run(id);
  }
  hasPage(hash: Buffer): boolean {
    return this.st.hasPage.get(hash) !== undefined;
  }
  /** [block, idx] of a stored page. */
  pageLoc(hash: Buffer): [number, number] | undefined {
    return this.st.pageLoc.get(hash) as [number, number] | undefined;
  }
  insertPage(hash: Buffer, block: number, idx: number): void {
    this.st.insertPage.run(hash, block, idx);
  }
  movePage(hash: Buffer, block: number, idx: number): void {
    this.st.movePage.run(block, idx, hash);
  }
  /** Points `hash` at (block, idx), inserting its row if absent (merge's relayout). */
  placePage(hash: Buffer, block: number, idx: number): void {
    this.st.placePage.run(hash, block, idx);
  }
  deletePage(hash: Buffer): void {
    this.st.deletePage.run(hash);
  }
  /** Iterates [hash, block, idx] over every stored page. */
  allPages(): IterableIterator<[Buffer, number, number]> {
    return this.st.allPages.iterate() as IterableIterator<[Buffer, number, number]>;
  }
  pageCount(): number {
    return this.st.pageCount.get() as number;
  }
  insertCheckpoint(r: Omit<CheckpointRow, "cid"> & { header: Buffer; meta: Buffer }): number {
    return Number(this.st.insertCk.run(r).lastInsertRowid);
  }
  checkpoint(id: string): CheckpointRow | undefined {
    return this.st.ck.get(id) as CheckpointRow | undefined;
  }
  headerAndMeta(cid: number): { header: Buffer; meta: Buffer } {
    return this.st.ckMeta.get(cid) as { header: Buffer; meta: Buffer };
  }
  list(app?: string): CheckpointRow[] {
    return (app === undefined ? this.st.listAll.all() : this.st.listApp.all(app)) as CheckpointRow[];
  }
  /** Unmerged incremental checkpoints whose parent is `id`. */
  children(id: string): string[] {
    return this.st.children.all(id) as string[];
  }
  markMerged(cid: number, stats: string): void {
    this.st.updateMerged.run(stats, cid);
  }
  deleteCheckpoint(cid: number): void {
    this.st.deleteExtents.run(cid);
    this.st.deleteCk.run(cid);
  }
  insertExtent(cid: number, e: ExtentRow): void {
    this.st.insertExtent.run(cid, e.ord, e.page, e.npages, e.hashes, e.locs);
  }
  extents(cid: number): ExtentRow[] {
    return this.st.extents.all(cid) as ExtentRow[];
  }
  deleteExtents(cid: number): void {
    this.st.deleteExtents.run(cid);
  }
  /** Every PAGES hash list of every checkpoint (for gc's live set). */
  allExtentHashes(): IterableIterator<Buffer> {
    return this.st.extentHashes.iterate() as IterableIterator<Buffer>;
  }
  transaction<T>(fn: () => T): T {
    return this.db.transaction(fn)();
  }
  close(): void {
    if (this.db.open) this.db.close();
  }
}
