// The index: one SQLite database (WAL, synchronous=FULL) holding packs, blocks, the page
// hash → block map and the checkpoints (manifests, metadata blobs, page tables).
// All statements are synchronous (better-sqlite3); every multi-row change is one
// transaction, so a crash leaves the index either before or after it.
import Database from "better-sqlite3";
import { TgError } from "../../errors.js";

export const SCHEMA_VERSION = 1;
/** Rows per multi-row INSERT of `insertPages`. */
const PAGE_ROWS_PER_INSERT = 64;

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
CREATE TABLE IF NOT EXISTS pending_packs (id INTEGER PRIMARY KEY, why TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS bad_blocks (id INTEGER PRIMARY KEY, pack INTEGER NOT NULL, offset INTEGER NOT NULL, len INTEGER NOT NULL, npages INTEGER NOT NULL, pages INTEGER NOT NULL, why TEXT NOT NULL, found_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS damaged_packs (id INTEGER PRIMARY KEY, why TEXT NOT NULL, found_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS mirror_origin (cid INTEGER PRIMARY KEY, id TEXT NOT NULL, created_at TEXT NOT NULL, ident TEXT NOT NULL);
`;

const CK_COLS = "cid, id, app, seq, kind, parent, synthetic, created_at, pid, stats";

/** A block that failed verification (moved out of `blocks`; its pages were forgotten). */
export interface BadBlockRow extends BlockRow {
  /** Pages of the index that pointed into it when it was found bad. */
  pages: number;
  why: string;
  found_at: string;
}

export class Catalog {
  readonly db: Database.Database;
  private readonly st;

  constructor(readonly file: string) {
    try {
      this.db = new Database(file);
    } catch (e) {
      throw new TgError(`cannot open the store index ${file}`, (e as Error).message, "Check the path and its permissions. Do not delete or move the index away: the packs alone cannot be re-indexed, and the store refuses to start without it; put back a copy of this file (from a backup), or move the whole store directory away to start an empty one", "store-open");
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
      addPending: db.prepare("INSERT OR REPLACE INTO pending_packs (id, why) VALUES (?, ?)"),
      clearPending: db.prepare("DELETE FROM pending_packs WHERE id = ?"),
      pending: db.prepare("SELECT id FROM pending_packs ORDER BY id").pluck(),
      pagesOfBlock: db.prepare("SELECT hash FROM pages WHERE block = ?").pluck(),
      insertBad: db.prepare("INSERT OR REPLACE INTO bad_blocks (id, pack, offset, len, npages, pages, why, found_at) VALUES (@id, @pack, @offset, @len, @npages, @pages, @why, @found_at)"),
      badBlock: db.prepare("SELECT id, pack, offset, len, npages, pages, why, found_at FROM bad_blocks WHERE id = ?"),
      badBlocks: db.prepare("SELECT id, pack, offset, len, npages, pages, why, found_at FROM bad_blocks ORDER BY id"),
      deleteDamagedPack: db.prepare("DELETE FROM damaged_packs WHERE id = ?"),
      addDamagedPack: db.prepare("INSERT OR IGNORE INTO damaged_packs (id, why, found_at) VALUES (?, ?, ?)"),
      damagedPacks: db.prepare("SELECT id, why, found_at FROM damaged_packs ORDER BY id"),
      insertBlock: db.prepare("INSERT INTO blocks (pack, offset, len, npages) VALUES (?, ?, ?, ?)"),
      block: db.prepare("SELECT id, pack, offset, len, npages FROM blocks WHERE id = ?"),
      blocksOfPack: db.prepare("SELECT id, pack, offset, len, npages FROM blocks WHERE pack = ? ORDER BY offset"),
      allBlocks: db.prepare("SELECT id, pack, offset, len, npages FROM blocks"),
      deleteBlock: db.prepare("DELETE FROM blocks WHERE id = ?"),
      hasPage: db.prepare("SELECT 1 FROM pages WHERE hash = ?").pluck(),
      pageLoc: db.prepare("SELECT block, idx FROM pages WHERE hash = ?").raw(),
      insertPage: db.prepare("INSERT OR IGNORE INTO pages (hash, block, idx) VALUES (?, ?, ?)"),
      insertPages: db.prepare(`INSERT OR IGNORE INTO pages (hash, block, idx) VALUES ${Array<string>(PAGE_ROWS_PER_INSERT).fill("(?, ?, ?)").join(", ")}`),
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
      deleteOrigin: db.prepare("DELETE FROM mirror_origin WHERE cid = ?"),
      setOrigin: db.prepare("INSERT OR REPLACE INTO mirror_origin (cid, id, created_at, ident) SELECT cid, id, created_at, ? FROM checkpoints WHERE id = ?"),
      origin: db.prepare("SELECT o.ident FROM mirror_origin o JOIN checkpoints c ON c.cid = o.cid AND c.id = o.id AND c.created_at = o.created_at WHERE c.id = ?").pluck(),
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
  /** Commits a pack's size (inside the commit transaction): it is no longer pending. */
  upsertPack(id: number, size: number): void {
    this.st.upsertPack.run(id, size);
    this.st.clearPending.run(id);
  }
  /**
   * Forgets a committed pack whose file is about to be unlinked (gc's switch): it is
   * recorded as pending deletion in the same transaction, so that open() may remove it.
   */
  deletePack(id: number): void {
    this.st.deletePack.run(id);
    this.st.deleteDamagedPack.run(id);
    this.st.addPending.run(id, "gc-unlink");
  }
  /**
   * Records a pack id as pending before its file is created (autocommitted: durable
   * before the file exists). open() deletes a pack file only if it is pending here.
   */
  addPending(id: number, why: string): void {
    this.st.addPending.run(id, why);
  }
  clearPending(id: number): void {
    this.st.clearPending.run(id);
  }
  pendingPacks(): number[] {
    return this.st.pending.all() as number[];
  }
  /**
   * Moves blocks that failed verification out of `blocks` into `bad_blocks` and forgets
   * the pages stored in them: dedup stops using them (the next ingest of such a page stores
   * it again), location hints into the block miss, and gc no longer reads it.
   * Returns the number of pages forgotten. Call inside a transaction.
   */
  markBlocksBad(bad: { block: BlockRow; why: string }[], at = new Date()): number {
    if (bad.length === 0) return 0;
    // pages has no index on block (one scan per call: this happens only on damage)
    const byBlock = new Map<number, Buffer[]>(bad.map((b) => [b.block.id, []]));
    if (bad.length === 1) byBlock.set(bad[0]!.block.id, this.st.pagesOfBlock.all(bad[0]!.block.id) as Buffer[]);
    else for (const [hash, block] of this.allPages()) byBlock.get(block)?.push(hash);
    let n = 0;
    for (const { block: b, why } of bad) {
      const hashes = byBlock.get(b.id)!;
      for (const h of hashes) this.st.deletePage.run(h);
      this.st.insertBad.run({ id: b.id, pack: b.pack, offset: b.offset, len: b.len, npages: b.npages, pages: hashes.length, why, found_at: at.toISOString() });
      this.st.deleteBlock.run(b.id);
      n += hashes.length;
    }
    return n;
  }
  badBlock(id: number): BadBlockRow | undefined {
    return this.st.badBlock.get(id) as BadBlockRow | undefined;
  }
  badBlocks(): BadBlockRow[] {
    return this.st.badBlocks.all() as BadBlockRow[];
  }
  /** A pack found shorter than committed, or missing: never appended to again. */
  addDamagedPack(id: number, why: string, at = new Date()): void {
    this.st.addDamagedPack.run(id, why, at.toISOString());
  }
  damagedPacks(): { id: number; why: string; found_at: string }[] {
    return this.st.damagedPacks.all() as { id: number; why: string; found_at: string }[];
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
  /**
   * Inserts `n` pages (as insertPage), `at(i)` giving the i-th one's [hash, block, idx]:
   * 64 rows per statement (one call into SQLite instead of 64: a third less CPU per row).
   */
  insertPages(n: number, at: (i: number) => [Buffer, number, number]): void {
    const R = PAGE_ROWS_PER_INSERT;
    const args: unknown[] = new Array(R * 3);
    let i = 0;
    for (; i + R <= n; i += R) {
      for (let r = 0; r < R; r++) {
        const [h, b, x] = at(i + r);
        args[r * 3] = h;
        args[r * 3 + 1] = b;
        args[r * 3 + 2] = x;
      }
      this.st.insertPages.run(...args);
    }
    for (; i < n; i++) this.st.insertPage.run(...at(i));
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
    this.st.deleteOrigin.run(cid);
    this.st.deleteCk.run(cid);
  }
  /**
   * The mirror checkpoint local checkpoint `id` is known to be (lineage.ts, mirrorIdent): set
   * when it was imported from the mirror or found the same as the mirror's, kept through a merge
   * (same row), dropped when the checkpoint is deleted or set aside. Checked against the row's
   * id and creation time, so a row left by an older tardigrade never vouches for another one.
   */
  setMirrorOrigin(id: string, ident: string): void {
    this.st.setOrigin.run(ident, id);
  }
  mirrorOrigin(id: string): string | undefined {
    return this.st.origin.get(id) as string | undefined;
  }
  clearMirrorOrigin(cid: number): void {
    this.st.deleteOrigin.run(cid);
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
