// CasStore: the content-addressed checkpoint store (docs/store.md).
//   <root>/index.sqlite       index (WAL)
//   <root>/packs/pack-NNNNNN.dat  append-only packs of compressed page blocks
// One process opens a store at a time (<root>/lock); inside it, ingest, merge and gc are
// serialised by a mutex; list/get/stats/exportImage run at any time.
import { existsSync } from "node:fs";
import { mkdir, open, readdir, rm, stat } from "node:fs/promises";
import { join } from "node:path";
import { Readable } from "node:stream";
import { collectGarbage, retention } from "./gc.js";
import { Catalog } from "./catalog.js";
import { toCheckpoint, requireCheckpoint, type StoreContext } from "./context.js";
import { exportChunks, exportStream, imageChunks } from "./export.js";
import { planRestore, type RestorePlan } from "./restore-plan.js";
import { ingestImage } from "./ingest.js";
import { chainInfo, mergeCheckpoint, shouldMerge } from "./merge.js";
import { composeRecords } from "./compose.js";
import { locateRecords, readCost } from "./relayout.js";
import { Hasher } from "./hasher.js";
import { lockStore } from "./lock.js";
import { PackReaders, packFiles, packName, repairPacks, unknownPacksError, type RepairReport } from "./pack.js";
import { checkBlock, isDamageError, setAsideBlocks, setAsideDamagedPacks, type DamageEvent } from "./damage.js";
export type { DamageEvent } from "./damage.js";
export type { VerifyReport } from "./verify.js";
import { scrub, type VerifyReport } from "./verify.js";
import type { CasCheckpoint, CasOptions, CheckpointStats, GcOptions, GcReport, IngestInfo, MergePolicy, ReadCost, StoreStats } from "./types.js";
import { HASH_LEN, Mutex, PAGE, ZERO_HASH, storeCorrupt } from "./util.js";
import { MAX_BLOCK_PAGES } from "./codec.js";
import { TgError } from "../../errors.js";
import { divergedAppName, localIdentity, setAside } from "./lineage.js";
import { parseCheckpointId } from "../types.js";
import { describeForMirror, importMirrored, blocksNeeded, type ImportReport, type MirrorExport, type MirrorManifest, type MirrorTable, type MirrorBlock } from "./mirror.js";

const DEFAULTS: Required<CasOptions> = { level: 1, blockPages: MAX_BLOCK_PAGES, packMaxBytes: 256 << 20, inflight: 4, cacheBlocks: 64, hashWorker: true };

export class CasStore {
  private readonly lock = new Mutex();
  /** Merges run one at a time; a merge holds `lock` only for its commit (see merge.ts). */
  private readonly mergeLock = new Mutex();
  private nextPack: number;
  private closed = false;

  /**
   * Called when the store sets damaged data aside: blocks found bad by a reader (export,
   * merge, gc, verify) and, at open, packs found short or missing (see `damage`).
   */
  onDamage: ((e: DamageEvent) => void) | null = null;
  /** Blocks reported bad whose re-check is queued (one re-check per block). */
  private readonly recheck = new Set<number>();

  private constructor(
    private readonly ctx: StoreContext,
    /** What open() repaired (crash leftovers). */
    readonly repairs: RepairReport,
    private readonly unlock: () => Promise<void>,
    /** Damage open() found and set aside (packs short or missing); also in `verify()`. */
    readonly damage: DamageEvent[],
    highestPackFile: number,
  ) {
    this.nextPack = Math.max(0, highestPackFile, ...ctx.catalog.packs().map((p) => p.id), ...ctx.catalog.pendingPacks()) + 1;
  }

  /** Opens (creating if needed) the store at `root` and repairs crash leftovers. */
  static async open(root: string, options: CasOptions = {}): Promise<CasStore> {
    const opts = { ...DEFAULTS, ...options };
    if (!(opts.blockPages >= 1 && opts.blockPages <= MAX_BLOCK_PAGES)) throw new TgError("cannot open the store", `blockPages must be 1..${MAX_BLOCK_PAGES}`, "", "bad-request");
    const packDir = join(root, "packs");
    await mkdir(packDir, { recursive: true, mode: 0o755 });
    const unlock = await lockStore(root);
    let catalog: Catalog;
    try {
      // Without its index the packs are unusable, but they are the data: never start over
      // on an empty index (it would take them for crash leftovers).
      const files = await packFiles(packDir);
      if (!existsSync(join(root, "index.sqlite")) && files.length > 0) throw unknownPacksError(root, files.map((f) => f.name).sort(), true);
      catalog = new Catalog(join(root, "index.sqlite"));
    } catch (e) {
      await unlock();
      throw e;
    }
    try {
      const files = await packFiles(packDir);
      const repairs = await repairPacks(packDir, catalog.packs(), catalog.pendingPacks(), root);
      for (const id of catalog.pendingPacks()) catalog.clearPending(id); // their files are gone now
      const damage = await setAsideDamagedPacks(catalog, packDir, repairs.damaged);
      const ctx: StoreContext = { root, packDir, catalog, readers: new PackReaders(packDir), opts, allocPackId: () => 0, filter: null, hasher: () => new Hasher(false), reportBad: () => undefined, heldPacks: new Map(), deferredUnlinks: new Set() };
      const store = new CasStore(ctx, repairs, unlock, damage, Math.max(0, ...files.map((f) => f.id)));
      ctx.allocPackId = () => {
        const id = store.nextPack++;
        catalog.addPending(id, "new"); // durable before the file exists: open() may delete it
        return id;
      };
      ctx.hasher = () => store.getHasher();
      ctx.reportBad = (id, e) => store.reportBad(id, e);
      return store;
    } catch (e) {
      catalog.close();
      await unlock();
      throw e;
    }
  }

  /** A reader found block `id` bad: re-check it under the lock and set it aside if it still is. */
  private reportBad(id: number, e: unknown): void {
    if (!isDamageError(e) || this.recheck.has(id) || this.closed) return;
    this.recheck.add(id);
    this.lock
      .run(async () => {
        const row = this.ctx.catalog.block(id);
        if (!row) return; // moved by a gc meanwhile
        const why = await checkBlock(this.ctx, row);
        if (why !== null) this.damaged(setAsideBlocks(this.ctx.catalog, [{ id, why }]));
      })
      .catch(() => undefined)
      .finally(() => this.recheck.delete(id));
  }

  private damaged(events: DamageEvent[]): void {
    for (const ev of events) this.onDamage?.(ev);
  }

  private hasherInstance: Hasher | null = null;
  /** @internal */
  getHasher(): Hasher {
    if (!this.hasherInstance || this.hasherInstance.broken) this.hasherInstance = new Hasher(this.ctx.opts.hashWorker);
    return this.hasherInstance;
  }

  get root(): string {
    return this.ctx.root;
  }

  /**
   * Stores the raw image at `source` (a file or FIFO path, or a stream) as checkpoint
   * `<app>@<seq>`. Incremental images need their parent in the store. Atomic: on any
   * error (bad image, crash) nothing is visible and the uncommitted pack bytes are undone.
   */
  ingest(app: string, seq: number, source: string | Readable, info: IngestInfo = {}): Promise<CasCheckpoint> {
    return this.lock.run(() => ingestImage(this.ctx, app, seq, source, info));
  }

  /** Like ingest, with the next seq of `app` (1 + the highest stored), chosen under the store's lock. */
  ingestNext(app: string, source: string | Readable, info: IngestInfo = {}): Promise<CasCheckpoint> {
    return this.lock.run(() => {
      const seqs = this.ctx.catalog.list(app).map((c) => c.seq);
      return ingestImage(this.ctx, app, seqs.length === 0 ? 1 : Math.max(...seqs) + 1, source, info);
    });
  }

  /** Checkpoints being exported or merged: gc keeps them (and their chains) until done. */
  private readonly exporting = new Map<string, number>();

  private pinExport(id: string): () => void {
    this.exporting.set(id, (this.exporting.get(id) ?? 0) + 1);
    let done = false;
    return () => {
      if (done) return;
      done = true;
      const n = (this.exporting.get(id) ?? 1) - 1;
      if (n === 0) this.exporting.delete(id);
      else this.exporting.set(id, n);
    };
  }

  /**
   * Keeps `id` (and its chain) from gc until the returned function is called, e.g. from a
   * restore's pre-read until the restorer has consumed the image. Resolves once any gc that
   * was already running has finished, with `id` still there (else it throws unknown-checkpoint).
   */
  async hold(id: string): Promise<() => void> {
    const unpin = this.pinExport(id);
    try {
      await this.lock.run(async () => requireCheckpoint(this.ctx, id));
    } catch (e) {
      unpin();
      throw e;
    }
    return unpin;
  }

  /**
   * The full image of any checkpoint, composed from its chain; a pull-based stream (the
   * image is produced as fast as the consumer reads). gc keeps `id` until the stream closes.
   */
  exportImage(id: string): Readable {
    requireCheckpoint(this.ctx, id);
    const unpin = this.pinExport(id);
    const s = exportStream(this.ctx, id);
    s.once("close", unpin);
    return s;
  }

  /**
   * A restore of `id` with a plan (restore-plan.ts): the plan file for `tardigrade-restore
   * --direct` and the image of what the plan does not read. gc keeps `id`, its chain and
   * the plan's pack files until `release()` (call it once the restorer has read them).
   */
  restoreWithPlan(id: string): { plan: RestorePlan; image: Readable; release(): void } {
    requireCheckpoint(this.ctx, id);
    const unpin = this.pinExport(id);
    let plan: RestorePlan;
    try {
      plan = planRestore(this.ctx, id);
    } catch (e) {
      unpin();
      throw e;
    }
    // synchronous since the plan's first lookup: no gc step ran in between
    const unhold = this.holdPacks(plan.packs);
    const image = Readable.from(imageChunks(this.ctx, id, plan.cid, plan.records, plan.locs), { objectMode: false, highWaterMark: 4 << 20 });
    let released = false;
    return {
      plan,
      image,
      release: () => {
        if (released) return;
        released = true;
        unhold();
        unpin();
      },
    };
  }

  /** The metadata of `id` as an image without pages (header, records before the pages, END): what the file check reads. */
  exportMeta(id: string): Readable {
    const row = requireCheckpoint(this.ctx, id);
    const unpin = this.pinExport(id);
    const s = Readable.from(imageChunks(this.ctx, id, row.cid, []), { objectMode: false });
    s.once("close", unpin);
    return s;
  }

  /** Path of pack `id`'s file. */
  packPath(id: number): string {
    return join(this.ctx.packDir, packName(id));
  }

  /** A reader outside the store (the restorer) found block `id` bad: re-check it and set it aside if it is. */
  suspectBlock(id: number, why: string): void {
    this.reportBad(id, storeCorrupt(`cannot read block ${id}`, why));
  }

  private holdPacks(packs: number[]): () => void {
    const held = this.ctx.heldPacks;
    for (const p of packs) held.set(p, (held.get(p) ?? 0) + 1);
    return () => {
      for (const p of packs) {
        const n = (held.get(p) ?? 1) - 1;
        if (n > 0) {
          held.set(p, n);
          continue;
        }
        held.delete(p);
        if (!this.ctx.deferredUnlinks.delete(p) || this.closed) continue;
        // gc dropped it meanwhile: unlink now; until then it stayed pending (open() removes it after a crash)
        void rm(join(this.ctx.packDir, packName(p)), { force: true })
          .then(() => {
            if (!this.closed) this.ctx.catalog.clearPending(p);
          })
          .catch(() => undefined);
      }
    };
  }

  /** Same as exportImage, as an async iterable of Buffers (pinned against gc while iterated). */
  async *exportChunks(id: string): AsyncGenerator<Buffer> {
    requireCheckpoint(this.ctx, id);
    const unpin = this.pinExport(id);
    try {
      yield* exportChunks(this.ctx, id);
    } finally {
      unpin();
    }
  }

  /** Writes the full image of `id` to `path` (fsynced), e.g. for a restorer that wants a file. */
  async exportToFile(id: string, path: string): Promise<{ bytes: number }> {
    const src = this.exportImage(id);
    const fh = await open(path, "w", 0o600);
    let bytes = 0;
    try {
      for await (const chunk of src as AsyncIterable<Buffer>) {
        await fh.write(chunk, 0, chunk.length, bytes);
        bytes += chunk.length;
      }
      await fh.sync();
    } finally {
      await fh.close();
    }
    return { bytes };
  }

  /**
   * Makes `id` a synthetic full checkpoint (same id) if it is incremental; if its pages are
   * scattered (read amplification above `policy.maxReadAmplification`), rewrites them into
   * new blocks in address order first. The rewrite runs beside ingests (only the commit
   * takes the store's lock); merges run one at a time.
   */
  merge(id: string, policy: MergePolicy = {}): Promise<CasCheckpoint> {
    return this.mergeLock.run(() => {
      if (this.closed) throw new TgError(`cannot merge ${id}`, "the store is closed", "Open the store again", "bad-request");
      return mergeCheckpoint(this.ctx, id, policy, { locked: (fn) => this.lock.run(fn), pin: (c) => this.pinExport(c) });
    });
  }

  /** What exporting `id` reads, from where its pages are now (the measure merge's rewrite decision uses). */
  readCost(id: string): ReadCost {
    const { records } = composeRecords(this.ctx, id);
    return readCost(this.ctx, records, locateRecords(this.ctx, id, records), this.ctx.opts.blockPages, this.ctx.opts.cacheBlocks);
  }

  /** Chain length (incrementals back to the base) and bytes of `id`'s chain, and its base's bytes. */
  chainInfo(id: string): { chainLength: number; chainBytes: number; baseBytes: number } {
    return chainInfo(this.ctx, id);
  }

  /** Merges `id` if the policy says its chain is too long or too big; returns whether it did. */
  async mergeIfNeeded(id: string, policy: MergePolicy = {}): Promise<boolean> {
    const c = this.chainInfo(id);
    if (!shouldMerge(c.chainLength, c.chainBytes, c.baseBytes, policy)) return false;
    await this.merge(id, policy);
    return true;
  }

  /** The checkpoints retention would drop with these options (nothing is changed): lets a caller
   * skip gc's live-page scan when there is nothing to drop. */
  wouldDrop(opts: Pick<GcOptions, "keep" | "keepPerApp" | "pin">): string[] {
    const rows = this.ctx.catalog.list();
    const { kept } = retention(rows, opts.keep, opts.pin, opts.keepPerApp);
    return rows.filter((r) => !kept.has(r.id)).map((r) => r.id);
  }

  /** Retention + space reclaim (see docs/store.md); checkpoints being exported count as pinned. */
  gc(opts: GcOptions): Promise<GcReport> {
    // Pins are read once gc holds the lock: an export or merge that started before counts.
    return this.lock.run(async () => {
      const r = await collectGarbage(this.ctx, { ...opts, pin: [...(opts.pin ?? []), ...this.exporting.keys()] });
      this.damaged(r.damaged ?? []);
      return r;
    });
  }

  /**
   * Mirroring (src/store/cas/mirror.ts, docs/mirror.md): the manifest, table and blocks
   * (compressed as in the packs, named by SHA-256, read lazily) that carry checkpoint `id`.
   */
  blocksOf(id: string): Promise<MirrorExport> {
    return this.lock.run(() => describeForMirror(this.ctx, id));
  }

  /** Blocks of a mirrored checkpoint's table that hold a page this store lacks. */
  blocksNeeded(table: MirrorTable): MirrorBlock[] {
    return blocksNeeded(this.ctx, table);
  }

  /**
   * Stores a checkpoint received from a mirror: `getBlock(name)` is called, in table order,
   * for each block holding a page this store lacks; every block and page is verified; the
   * checkpoint is committed atomically like ingest. Its parent must be in the store.
   */
  importCheckpoint(manifest: MirrorManifest, table: MirrorTable, getBlock: (name: string) => Promise<Buffer>): Promise<ImportReport> {
    return this.lock.run(() => importMirrored(this.ctx, manifest, table, getBlock));
  }

  /**
   * Full scrub on demand: reads and checks every block the chosen checkpoints need (all
   * checkpoints, those of `app`, or checkpoint `id` with what its chain needs), sets aside
   * the blocks found bad, and reports which checkpoints depend on damaged data. The chosen
   * checkpoints are pinned against gc meanwhile; ingests go on (only setting blocks aside
   * takes the lock).
   */
  async verify(target: { app?: string; id?: string } = {}): Promise<VerifyReport> {
    const ids = target.id !== undefined ? [this.get(target.id).id] : this.list(target.app).map((c) => c.id);
    const unpins = ids.map((id) => this.pinExport(id));
    try {
      const { report, bad } = await scrub(this.ctx, ids);
      if (bad.length > 0) await this.lock.run(async () => this.damaged(setAsideBlocks(this.ctx.catalog, bad)));
      return report;
    } finally {
      for (const u of unpins) u();
    }
  }

  /** Damaged data the index records (blocks set aside, packs found short): cheap, for warnings in `ls`. */
  damageSummary(): { badBlocks: number; damagedPacks: string[] } {
    return { badBlocks: this.ctx.catalog.badBlocks().length, damagedPacks: this.ctx.catalog.damagedPacks().map((p) => packName(p.id)) };
  }

  /** A local checkpoint's content digest, kind and parent (lineage.ts); undefined if absent. */
  /** The mirror checkpoint (lineage.ts, mirrorIdent) local checkpoint `id` is known to be, if any. */
  mirrorOrigin(id: string): string | undefined {
    return this.ctx.catalog.mirrorOrigin(id);
  }
  setMirrorOrigin(id: string, ident: string): void {
    this.ctx.catalog.setMirrorOrigin(id, ident);
  }

  identity(id: string): { digest: string; kind: string; parent: string | null } | undefined {
    return localIdentity(this.ctx, id);
  }

  /** Renames `ids` (of one app) and their descendants to a new app name (lineage.ts: a diverged lineage). */
  setAside(ids: string[], to?: string): Promise<{ app: string; moved: Map<string, string> }> {
    return this.lock.run(async () => {
      const app = to ?? divergedAppName(this.ctx, parseCheckpointId(ids[0] ?? "")?.app ?? "app");
      return Promise.resolve({ app, moved: setAside(this.ctx, ids, app) });
    });
  }

  /** An app name no checkpoint uses yet, for `app`'s checkpoints of another lineage (setAside). */
  divergedName(app: string): string {
    return divergedAppName(this.ctx, app);
  }

  /** Checkpoints, by app then seq. */
  list(app?: string): CasCheckpoint[] {
    return this.ctx.catalog.list(app).map(toCheckpoint);
  }

  /** Throws TgError code "unknown-checkpoint" if absent. */
  get(id: string): CasCheckpoint {
    return toCheckpoint(requireCheckpoint(this.ctx, id));
  }

  async stats(): Promise<StoreStats> {
    const cat = this.ctx.catalog;
    let packBytes = 0;
    let packs = 0;
    for (const name of await readdir(this.ctx.packDir)) {
      packBytes += (await stat(join(this.ctx.packDir, name))).size;
      packs++;
    }
    let indexBytes = 0;
    for (const f of ["index.sqlite", "index.sqlite-wal", "index.sqlite-shm"]) indexBytes += await stat(join(this.ctx.root, f)).then((s) => s.size, () => 0);
    const rows = cat.list();
    const logicalBytes = rows.reduce((n, r) => n + (JSON.parse(r.stats) as CheckpointStats).imageBytes, 0);
    let logicalPages = 0;
    for (const hashes of cat.allExtentHashes()) {
      for (let o = 0; o < hashes.length; o += HASH_LEN) if (!hashes.subarray(o, o + HASH_LEN).equals(ZERO_HASH)) logicalPages++;
    }
    const uniquePages = cat.pageCount();
    return {
      checkpoints: rows.length,
      packs,
      packBytes,
      indexBytes,
      bytesOnDisk: packBytes + indexBytes,
      logicalBytes,
      logicalPageBytes: logicalPages * PAGE,
      uniquePages,
      dedupRatio: uniquePages > 0 ? logicalPages / uniquePages : 1,
      compressionRatio: packBytes > 0 ? (uniquePages * PAGE) / packBytes : 1,
    };
  }

  /** Waits for a running ingest/merge/gc, then closes the index and pack handles. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.mergeLock.run(async () => undefined); // a merge's rewrite does not hold `lock`
    await this.lock.run(async () => {
      await this.hasherInstance?.close();
      await this.ctx.readers.closeAll();
      this.ctx.catalog.close();
      await this.unlock();
    });
  }
}
