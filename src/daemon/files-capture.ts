// The file half of a checkpoint's cut (issue 14, docs/files.md): with every process of the app
// parked, each file of the set is looked at (size, mtime, ctime, inode against the parent
// checkpoint's files) and those that changed are opened; after the app resumed (finishCut) their
// changed ranges, or whole copies (in the kernel: copy_file_range, into a staging directory), are
// read while the agents save each page before changing it (copy-before-write), so that the files
// belong to the same instant as the memory. A file written where no agent sees is copied while
// the app is held.
import { closeSync, copyFileSync, ftruncateSync, lstatSync, openSync, statSync, writeSync } from "node:fs";
import { copyFile } from "node:fs/promises";
import { basename, join } from "node:path";
import { TgError } from "../errors.js";
import { SLOT_BYTES, type FileContent, type FileEntry } from "./files-image.js";
import { cowLost, endCow, intersect, pagesOf, patchPieces, publishSet, readCowLog, readPieces, readPiecesSync, startCowAll, type Piece } from "./files-cow.js";
import { testDelay } from "./test-hooks.js";
import { readUserXattrs } from "./files-xattr.js";
import { consumeRanges, mergeRanges, type ChangedRanges, type Flip, type Range } from "./files-ranges.js";

const PAGE = 4096;
/** Ranges closer than this are read as one (fewer reads; the pages between are deduplicated by the store, but are read and saved too). */
const RANGE_GAP = 4096;
/** At most this many bytes of ranges are read into memory at a cut; past it, files are copied whole. */
const RANGES_MEMORY = 256 * 2 ** 20;
/** The agents save every page they change for at most this long after the cut (a daemon killed meanwhile). */
const COW_ALL_MS = 30_000;

/** A files checkpoint's manifest (its stats.extra): every file of the set, bigints as strings. */
export interface FilesManifest {
  version: 1;
  /** CLOCK_REALTIME of the cut, ns. */
  cutNs: string;
  /** Next free slot (a file's base is slot × 1 TiB). */
  nextSlot: number;
  files: StoredEntry[];
}

export type StoredEntry = Omit<FileEntry, "mtimeNs" | "atimeNs" | "ctimeNs"> & { mtimeNs: string; atimeNs: string; ctimeNs: string };

export const toStored = (e: FileEntry): StoredEntry => ({ ...e, mtimeNs: String(e.mtimeNs), atimeNs: String(e.atimeNs), ctimeNs: String(e.ctimeNs) });
export const fromStored = (e: StoredEntry): FileEntry => ({ ...e, mtimeNs: BigInt(e.mtimeNs), atimeNs: BigInt(e.atimeNs), ctimeNs: BigInt(e.ctimeNs) });

/** The manifest in a files checkpoint's stats.extra, or null. */
export function filesManifest(extra: unknown): FilesManifest | null {
  const m = extra as Partial<FilesManifest> | null | undefined;
  return m && m.version === 1 && Array.isArray(m.files) ? (m as FilesManifest) : null;
}

export interface FilesCut {
  contents: FileContent[];
  manifest: FilesManifest;
  /** Files whose contents were read (new or changed since the parent). */
  changed: string[];
  /** Of those, files of which only the changed ranges were read. */
  ranged: string[];
  bytesRead: number;
  /** Time spent with the app held, ns. */
  cutNs: number;
  /** Ranges read after the app resumed (copy-before-write: finishCut), or null. */
  deferred: Deferred | null;
}

interface DeferredFile {
  content: FileContent;
  key: string;
  fd: number;
  /** The parent's entry of the same file (same inode and region): it may be taken by ranges. */
  prev: FileEntry | null;
  /** Pages a write in flight at the cut was changing: read while the app was held. */
  early: Piece[];
  /** Decided after the cut: the ranges read (null: the whole file, copied to `copy`). */
  ranges?: Range[] | null;
}

/** Where the changed ranges come from: the tables the cut flipped (read after the app resumed). */
export interface RangeSource {
  appDir: string;
  parentId: string | null;
  flip: Flip;
}

/** The second half of a cut, once the app runs again (finishCut). */
export interface Deferred {
  src: RangeSource;
  staging: string;
  /** The copy-before-write generation (0n: none started, no file to read). */
  gen: bigint;
  files: DeferredFile[];
  /** The flipped tables were read (consumeRanges runs once). */
  consumed: ChangedRanges | null;
  aborted: boolean;
}

/**
 * Captures the set: paths that are regular files are present (their contents read when new or
 * changed), paths that do not exist are recorded absent, anything else (directories, symlinks,
 * devices) is left out. Sync on purpose: it runs while the app is parked.
 */
export function cutFiles(
  paths: string[],
  parent: FilesManifest | null,
  staging: string,
  rsrc: RangeSource | null = null,
  sources: ReadonlyMap<string, string> = new Map(),
): FilesCut {
  const t0 = process.hrtime.bigint();
  const byPath = new Map<string, FileEntry>();
  const byIno = new Map<string, FileEntry>();
  for (const s of parent?.files ?? []) {
    const e = fromStored(s);
    byPath.set(e.path, e);
    if (e.present && e.base) byIno.set(`${e.dev}:${e.ino}`, e);
  }
  let nextSlot = parent?.nextSlot ?? 1;
  const usedBases = new Set<number>();
  const contents: FileContent[] = [];
  const changed: string[] = [];
  const ranged: string[] = [];
  let bytesRead = 0;
  const later: DeferredFile[] = [];
  const linked = new Map<string, string>(); // dev:ino -> the first path of the set with it
  try {
  for (const path of paths) {
    // a deleted file held open: recorded under its staging name, read through /proc/PID/fd/N
    const src = sources.get(path) ?? path;
    let st;
    try {
      st = src === path ? lstatSync(path, { bigint: true }) : statSync(src, { bigint: true });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === "ENOENT" || (e as NodeJS.ErrnoException).code === "ENOTDIR")
        contents.push({ entry: { path, present: false, base: 0, size: 0, mtimeNs: 0n, atimeNs: 0n, ctimeNs: 0n, mode: 0, uid: 0, gid: 0, dev: 0, ino: 0 }, copy: null });
      continue;
    }
    if (!st.isFile() && !st.isDirectory()) continue;
    const entry: FileEntry = {
      path,
      present: true,
      base: 0,
      size: Number(st.size),
      mtimeNs: st.mtimeNs,
      atimeNs: st.atimeNs,
      ctimeNs: st.ctimeNs,
      mode: Number(st.mode),
      uid: Number(st.uid),
      gid: Number(st.gid),
      dev: Number(st.dev),
      ino: Number(st.ino),
    };
    // a directory: its mode, owner and times (restore makes it again, or removes it)
    if (st.isDirectory()) {
      const xa = readUserXattrs(path);
      contents.push({ entry: { ...entry, size: 0, ...(xa ? { xattrs: xa } : {}) }, copy: null });
      continue;
    }
    // a second name of a file already in the set (a hard link): no contents of its own
    const key0 = `${entry.dev}:${entry.ino}`;
    const first = st.nlink > 1n ? linked.get(key0) : undefined;
    if (first !== undefined) {
      contents.push({ entry: { ...entry, link: first }, copy: null });
      continue;
    }
    if (st.nlink > 1n) linked.set(key0, path);
    if (entry.size >= SLOT_BYTES) throw new Error(`${path} is ${entry.size} bytes: files of 1 TiB or more are not supported`);
    // the same file (inode) as in the parent, under this path or another one (renamed): its region
    const same = byPath.get(path);
    const prev = same && same.present && same.base && same.dev === entry.dev && same.ino === entry.ino ? same : byIno.get(`${entry.dev}:${entry.ino}`);
    let unchanged = false;
    if (prev && !usedBases.has(prev.base)) {
      entry.base = prev.base;
      // renamed: its ctime changed with the rename, its contents did not (size and mtime say so)
      unchanged = prev.size === entry.size && prev.mtimeNs === entry.mtimeNs && (prev.path !== path || prev.ctimeNs === entry.ctimeNs);
    } else if (entry.size) entry.base = nextSlot++ * SLOT_BYTES;
    if (!entry.size) entry.base = 0;
    if (entry.base) usedBases.add(entry.base);
    // user.* extended attributes: the parent's when nothing changed (setting one changes the ctime)
    const xa = unchanged ? prev?.xattrs : src === path ? readUserXattrs(path) : undefined;
    if (xa) entry.xattrs = xa;
    if (unchanged || !entry.size) {
      contents.push({ entry, copy: null });
      if (!unchanged) changed.push(path);
      continue;
    }
    // read after the app resumed, by the ranges the agents noted or whole (copy-before-write saves
    // what the app changes first), unless some process writes it where no agent sees
    const key = `${entry.dev}:${entry.ino}`;
    if (rsrc && !rsrc.flip.opaque.has(key)) {
      changed.push(path);
      const content: FileContent = { entry, copy: null };
      contents.push(content);
      // opened now: a file renamed over or removed after the cut is still the one read
      later.push({ content, key, fd: openSync(src, "r"), prev: prev && entry.base === prev.base ? prev : null, early: [] });
      continue;
    }
    const copy = join(staging, String(contents.length));
    try {
      copyFileSync(src, copy);
      const size = statSync(copy).size;
      if (size !== entry.size) throw new Error(`it changed size while copied (${entry.size} -> ${size} bytes): something outside the app writes it`);
    } catch (e) {
      throw new Error(`cannot copy ${path}: ${(e as Error).message}`);
    }
    bytesRead += entry.size;
    changed.push(path);
    contents.push({ entry, copy });
  }
  // the pages of writes in flight now; the rest after the app resumed (copy-before-write), or now
  let deferred: Deferred | null = null;
  if (rsrc) {
    deferred = { src: rsrc, staging, gen: 0n, files: later, consumed: null, aborted: false };
    for (const f of later) f.early = readPiecesSync(f.fd, intersect([[0, span(f.content.entry.size)]], rsrc.flip.inflight.get(f.key) ?? []));
    if (!rsrc.flip.unslotted) {
      if (later.length) deferred.gen = startCowAll(rsrc.appDir, process.hrtime.bigint() + BigInt(COW_ALL_MS) * 1_000_000n);
    } else {
      // a write was in flight with no slot to say where: nothing may be read after the app resumes
      const r = consumeDeferred(deferred);
      const budget = { left: RANGES_MEMORY };
      later.forEach((f, i) => {
        f.ranges = decide(f, r, budget);
        if (f.ranges) f.content.pieces = readPiecesSync(f.fd, f.ranges);
        else {
          f.content.copy = join(staging, `w${i}`);
          copyFileSync(`/proc/self/fd/${f.fd}`, f.content.copy);
          patchCopy(f.content.copy, f.content.entry.size, new Map(), []);
        }
        bytesRead += f.ranges ? f.ranges.reduce((t, [a, b]) => t + b - a, 0) : f.content.entry.size;
        if (f.ranges) ranged.push(f.content.entry.path);
        closeSync(f.fd);
      });
      deferred = null;
    }
  }
  const manifest: FilesManifest = { version: 1, cutNs: String(BigInt(Date.now()) * 1_000_000n), nextSlot, files: contents.map((c) => toStored(c.entry)) };
  return { contents, manifest, changed, ranged, bytesRead, cutNs: Number(process.hrtime.bigint() - t0), deferred };
  } catch (e) {
    for (const f of later) {
      try {
        closeSync(f.fd);
      } catch {
        /* closed */
      }
    }
    throw e;
  }
}

const span = (size: number): number => Math.ceil(size / PAGE) * PAGE;

/** The flipped tables read, once (also when the checkpoint is abandoned: their ranges go to the pending ones). */
export function consumeDeferred(d: Deferred): ChangedRanges {
  d.consumed ??= consumeRanges(d.src.appDir, d.src.flip, d.src.parentId);
  return d.consumed;
}

/** A file's ranges to read (when the agents noted all of what changed and that is under half of it), or null: the whole file. */
function decide(f: DeferredFile, r: ChangedRanges, budget: { left: number }): Range[] | null {
  const noted = f.prev && !r.overflow && !r.opaque.has(f.key) ? r.byFile.get(f.key) : undefined;
  if (!f.prev || !noted) return null;
  const plan = planRanges(noted, f.prev.size, f.content.entry.size, budget.left);
  if (plan) budget.left -= plan.reduce((t, [a, b]) => t + b - a, 0);
  return plan;
}

/** What the second half of a cut read. */
export interface FinishStats {
  ranged: number;
  bytesRead: number;
  /** From the app's resume to the end of the reads, ns. */
  ns: number;
  /** Of it, until the set was published (the agents saved every page they changed until then), ns. */
  everyPageNs: number;
}

/**
 * After the app resumed, the agents saving every page they change: reads the tables the cut
 * flipped, decides each file's ranges (or the whole file), publishes them (from then on the agents
 * save only those pages), reads them from the files, then puts over them the first saved copy of
 * each page and the pages of writes in flight at the cut (read then).
 */
export async function finishCut(d: Deferred): Promise<FinishStats> {
  const t0 = process.hrtime.bigint();
  const stats: FinishStats = { ranged: 0, bytesRead: 0, ns: 0, everyPageNs: 0 };
  let ended = false;
  try {
    await testDelay("files-deferred-read"); // (tests: the app writes meanwhile, every page saved)
    if (d.aborted) throw new Error("the checkpoint was abandoned");
    const r = consumeDeferred(d);
    if (!d.files.length) return stats;
    const budget = { left: RANGES_MEMORY };
    for (const f of d.files) f.ranges = decide(f, r, budget);
    publishSet(
      d.src.appDir,
      d.gen,
      d.files.map((f) => ({ dev: BigInt(f.content.entry.dev), ino: BigInt(f.content.entry.ino), ranges: f.ranges ?? [[0, span(f.content.entry.size)]] })),
    );
    stats.everyPageNs = Number(process.hrtime.bigint() - t0);
    await testDelay("files-set-read"); // (tests: the app writes meanwhile, the set's pages saved)
    for (const [i, f] of d.files.entries()) {
      if (f.ranges) {
        f.content.pieces = await readPieces(f.fd, f.ranges);
        stats.ranged++;
        stats.bytesRead += f.ranges.reduce((t, [a, b]) => t + b - a, 0);
      } else {
        f.content.copy = join(d.staging, `d${i}`);
        await copyFile(`/proc/self/fd/${f.fd}`, f.content.copy); // (in the kernel: copy_file_range)
        stats.bytesRead += f.content.entry.size;
      }
    }
    const saved = readCowLog(d.src.appDir, d.gen);
    ended = true;
    const lost = endCow(d.src.appDir);
    if (lost) {
      const l = cowLost(d.src.appDir, lost);
      throw new TgError(
        `checkpoint of ${basename(d.src.appDir)}'s files`,
        `a process of the app could not save a page of a file before changing it after the cut: ${l.why}; the files' state at the cut is not known`,
        `Nothing was committed; the app keeps running. ${l.fix}`,
        "files-save-lost",
      );
    }
    for (const f of d.files) {
      const pages = saved.get(f.key) ?? new Map<number, Buffer>();
      if (f.content.pieces) {
        patchPieces(f.content.pieces, pages);
        patchPieces(f.content.pieces, pagesOf(f.early));
      } else patchCopy(f.content.copy!, f.content.entry.size, pages, f.early);
    }
  } finally {
    if (!ended && d.gen) endCow(d.src.appDir);
    for (const f of d.files) {
      try {
        closeSync(f.fd);
      } catch {
        /* closed */
      }
    }
    stats.ns = Number(process.hrtime.bigint() - t0);
  }
  return stats;
}

/** A whole file's copy made after the cut: the saved pages and those of writes in flight put back, its size the cut's. */
function patchCopy(copy: string, size: number, saved: Map<number, Buffer>, early: Piece[]): void {
  const fd = openSync(copy, "r+");
  try {
    for (const [off, b] of saved) if (off < size) writeSync(fd, b, 0, b.length, off);
    for (const p of early) writeSync(fd, p.data, 0, p.data.length, p.off);
    ftruncateSync(fd, size);
  } finally {
    closeSync(fd);
  }
}

/**
 * The pages of the noted ranges (page-aligned, within the file's size now), plus the page at the
 * old end when the size changed (its tail was zeros or is now). null when they add up to half the
 * file or more, or past `budget` bytes: the whole file is copied instead.
 */
function planRanges(noted: Range[], oldSize: number, size: number, budget: number): Range[] | null {
  const span = Math.ceil(size / PAGE) * PAGE;
  const want: Range[] = [];
  for (const [s, e] of noted) {
    const a = Math.floor(s / PAGE) * PAGE;
    const b = Math.min(span, Math.ceil(Math.min(e, span) / PAGE) * PAGE);
    if (b > a) want.push([a, b]);
  }
  if (oldSize !== size) {
    const a = Math.floor(Math.min(oldSize, size) / PAGE) * PAGE;
    if (a < span) want.push([a, a + PAGE]);
  }
  const merged = mergeRanges(want, RANGE_GAP);
  const total = merged.reduce((t, [a, b]) => t + b - a, 0);
  if (total * 2 >= span || total > budget) return null;
  return merged;
}
