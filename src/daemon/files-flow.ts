// The daemon's part of issue 14 (docs/files.md): a checkpoint's files are one more image, stored as
// the checkpoint `<app>~files@SEQ` at the checkpoint's seq, queued in the store before the
// processes' images and committed before the main process's checkpoint (whose commit waits for it,
// and whose stats.extra.files names it): a kill -9 at any moment leaves either both or neither
// visible (an orphan files checkpoint is what gc removes, like a failed tree's members).
import { mkdirSync, rmSync } from "node:fs";
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import { PassThrough, Readable } from "node:stream";
import { errMessage } from "../errors.js";
import type { CasStore } from "../store/cas/store.js";
import type { CasCheckpoint } from "../store/cas/types.js";
import { checkpointId, parseCheckpointId, parseMemberApp } from "../store/types.js";
import { consumeDeferred, cutFiles, filesManifest, finishCut, type Deferred, type FilesManifest } from "./files-capture.js";
import { endCow } from "./files-cow.js";
import { deletedOpenFiles, refuseExcludedDeleted } from "./files-deleted.js";
import { filesImageChunks, isDirMode } from "./files-image.js";
import { rollbackFiles, type FilesRollback } from "./files-restore.js";
import { flipTables } from "./files-ranges.js";
import { scanProcesses } from "./files-procscan.js";
import { fileFilter, fileSet, readJournal, walkDir, type FilesConfig } from "./files-set.js";

/** The store name of an app's files images. */
export const filesApp = (app: string): string => `${app}~files`;

/** What a checkpoint's stats.extra.files says (the main process's checkpoint). */
export interface FilesRef {
  id: string;
  files: number;
  /** Files read at the cut (new or changed since the parent files image). */
  changed: number;
  bytesRead: number;
  /** Of the changed files, those of which only the ranges the agents noted were read. */
  ranged?: number;
  /** Time the app was held for the file cut (ns), and its parts: the set, the agents' tables, the files. */
  cutNs: number;
  setNs?: number;
  rangesNs?: number;
  filesNs?: number;
  /** After the app resumed: from then to the end of the reads (the agents' tables, the ranges or whole files), ns. */
  afterNs?: number;
  /** Of it, until the pages read were published (the agents saved every page they changed until then), ns. */
  everyPageNs?: number;
}

/** The files image a checkpoint names; with `ownId` (the checkpoint's id), the one of its app and seq (see treeOf). */
export function filesRefOf(extra: unknown, ownId?: string): FilesRef | null {
  const f = (extra as { files?: unknown } | null | undefined)?.files as Partial<FilesRef> | undefined;
  if (!f || typeof f.id !== "string") return null;
  const own = ownId === undefined ? null : parseCheckpointId(ownId);
  return own ? { ...(f as FilesRef), id: checkpointId(filesApp(own.app), own.seq) } : (f as FilesRef);
}

/** The next seq of an app's checkpoints (its own, its tree members', its files images'). */
export function nextSeq(cas: CasStore, app: string): number {
  const seqs = cas
    .list()
    .filter((c) => c.app === app || parseMemberApp(c.app)?.app === app || c.app === filesApp(app))
    .map((c) => c.seq);
  return (seqs.length ? Math.max(...seqs) : 0) + 1;
}

export interface FilesCaptureArgs {
  cas: CasStore;
  app: string;
  seq: number;
  appDir: string;
  cfg: FilesConfig;
  /** The last committed files checkpoint (its next incremental's base), if any. */
  parentId: string | null;
  /** Paths never in the set (the app's log, tardigrade's home). */
  never: string[];
  /** Where the copies made at the cut wait for the store (the store's staging directory). */
  stagingRoot: string;
}

/** One checkpoint's file capture: queued in the store at once, filled at the cut. */
export class FilesCapture {
  private readonly stream = new PassThrough();
  private readonly extra: Partial<FilesManifest> = {};
  readonly committed: Promise<CasCheckpoint>;
  ref: FilesRef | null = null;
  private readonly parent: FilesManifest | null;
  private readonly parentId: string | null;

  constructor(private readonly a: FilesCaptureArgs) {
    let parent: FilesManifest | null = null;
    let parentId = a.parentId;
    if (parentId) {
      try {
        parent = filesManifest(a.cas.get(parentId).stats.extra);
      } catch {
        parent = null; // collected: this one is full
      }
      if (!parent) parentId = null;
    }
    this.parent = parent;
    this.parentId = parentId;
    this.staging = join(a.stagingRoot, `files.${a.app}.${randomBytes(6).toString("hex")}`);
    this.committed = a.cas.ingest(filesApp(a.app), a.seq, this.stream, { threads: 0, extra: this.extra, ...(parentId ? { parent: parentId } : {}) });
    const clean = (): void => rmSync(this.staging, { recursive: true, force: true });
    this.committed.then(clean, clean); // (also awaited by the main checkpoint's commit)
  }

  private readonly staging: string;

  /**
   * With every process of the app parked: copies what changed, hands the image to the store. A
   * failure ends the image at once: the store holds its lock for it, and the processes' images
   * queued behind it must not wait for an image that never comes.
   */
  cut(hostPids: number[]): FilesRef {
    try {
      return this.cutOnce(hostPids);
    } catch (e) {
      this.abort(e);
      throw e;
    }
  }

  private cutOnce(hostPids: number[]): FilesRef {
    const t0 = process.hrtime.bigint();
    const keep = fileFilter(this.a.cfg, this.a.never);
    const scan = scanProcesses(hostPids); // (every fd and map of the app, read once)
    const deleted = deletedOpenFiles(hostPids, scan);
    refuseExcludedDeleted(this.a.app, deleted, keep);
    const paths = fileSet(this.a.cfg, this.a.appDir, hostPids, (this.parent?.files ?? []).map((f) => f.path), keep, deleted, scan);
    mkdirSync(this.staging, { recursive: true });
    const t1 = process.hrtime.bigint();
    // the agents' tables flipped (their entries are read after the app resumed)
    const flip = flipTables(this.a.appDir, hostPids, scan);
    const t2 = process.hrtime.bigint();
    let c;
    try {
      c = cutFiles(paths, this.parent, this.staging, { appDir: this.a.appDir, parentId: this.parentId, flip }, deleted);
    } catch (e) {
      consumeDeferred({ src: { appDir: this.a.appDir, parentId: this.parentId, flip }, staging: this.staging, gen: 0n, files: [], consumed: null, aborted: true }); // (their ranges kept for the next cut)
      throw e;
    }
    const t3 = process.hrtime.bigint();
    c.cutNs = Number(t3 - t0); // (the set's walk and the ranges count as held time too)
    const split = { setNs: Number(t1 - t0), rangesNs: Number(t2 - t1), filesNs: Number(t3 - t2) };
    Object.assign(this.extra, c.manifest);
    const parentSeq = this.parentId ? (parseCheckpointId(this.parentId)?.seq ?? 0) : 0;
    // made from the copies once the app runs again
    const h = { seq: this.a.seq, parentSeq, createdNs: BigInt(c.manifest.cutNs) };
    const deferred = c.deferred;
    this.deferred = deferred;
    if (deferred) setTimeout(this.resume, 5000).unref(); // (a caller that never says)
    const ref: FilesRef = { id: `${filesApp(this.a.app)}@${this.a.seq}`, files: c.manifest.files.filter((f) => f.present && !isDirMode(f.mode)).length, changed: c.changed.length, ranged: c.ranged.length, bytesRead: c.bytesRead, cutNs: c.cutNs, ...split };
    this.ref = ref;
    // the second half, as soon as the app runs again (the agents save every page they change until it has published the set)
    const finished = deferred
      ? this.resumed.then(async () => {
          const st = await finishCut(deferred);
          ref.ranged = (ref.ranged ?? 0) + st.ranged;
          ref.bytesRead += st.bytesRead;
          ref.afterNs = st.ns;
          ref.everyPageNs = st.everyPageNs;
        })
      : Promise.resolve();
    finished.catch(() => undefined); // (thrown into the image below)
    const img = Readable.from(
      (async function* () {
        await finished;
        yield* filesImageChunks(c.contents, h);
      })(),
    );
    img.on("error", (e) => this.stream.destroy(e));
    img.pipe(this.stream);
    return this.ref;
  }

  private deferred: Deferred | null = null;
  private resume: () => void = () => undefined;
  /** Resolved by released() (or 5 s after the cut, for callers that do not say). */
  private readonly resumed = new Promise<void>((r) => {
    this.resume = r;
  });

  /** The app runs again (the daemon answered RESUME): the ranges left for after the cut are read now. */
  released(): void {
    setImmediate(this.resume);
  }

  /** The checkpoint failed: nothing of the files may be committed. */
  abort(why: unknown): void {
    const d = this.deferred;
    if (d) {
      d.aborted = true;
      try {
        consumeDeferred(d); // (what the agents noted goes to the pending ranges, for the next cut)
      } catch {
        /* the next cut finds the tables' marker: it copies changed files whole */
      }
      if (d.gen) endCow(d.src.appDir);
    }
    if (!this.stream.destroyed) this.stream.destroy(new Error(`the checkpoint was abandoned: ${errMessage(why)}`));
  }
}

/** Restore's part: rolls the files back to the checkpoint's files image. */
export async function restoreFiles(cas: CasStore, ref: FilesRef, appDir: string, cfg: FilesConfig, never: string[], keepChanged: string[] = []): Promise<FilesRollback> {
  const manifest = filesManifest(cas.get(ref.id).stats.extra);
  if (!manifest) throw new Error(`${ref.id} has no files manifest`);
  const keep = fileFilter(cfg, never);
  const touched = [...readJournal(appDir)];
  for (const d of cfg.dirs) touched.push(...walkDir(d, [], 1_000_000, true));
  // the image as the store's chunks, not its Readable: the stream's joining of small chunks was the
  // top of the profile (docs/files.md, "Rollback speed")
  const image = cas.exportChunks(ref.id);
  try {
    return await rollbackFiles(manifest, image, touched, keep, ref.id, keepChanged);
  } finally {
    await image.return(undefined); // unpins it when left before its end
  }
}
