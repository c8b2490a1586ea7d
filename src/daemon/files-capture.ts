// The file half of a checkpoint's cut (issue 14, docs/files.md): with every process of the app
// parked, each file of the set is looked at (size, mtime, ctime, inode against the parent
// checkpoint's files) and those that changed are copied (in the kernel: copy_file_range or
// sendfile, no bytes through the daemon) into a staging directory, so that the files belong to
// the same instant as the memory; the image is then made from the copies after the app resumed.
import { closeSync, copyFileSync, lstatSync, openSync, statSync } from "node:fs";
import { join } from "node:path";
import { SLOT_BYTES, type FileContent, type FileEntry } from "./files-image.js";
import { COW_CAP, endCow, intersect, pagesOf, patchPieces, publishCow, readCowLog, readPieces, readPiecesSync, type Piece } from "./files-cow.js";
import { testDelay } from "./test-hooks.js";
import { readUserXattrs } from "./files-xattr.js";
import { mergeRanges, type ChangedRanges, type Range } from "./files-ranges.js";

const PAGE = 4096;
/** Ranges closer than this are read as one (fewer reads; the pages between are deduplicated by the store, but are read and saved too). */
const RANGE_GAP = 4096;
/** At most this many bytes of ranges are read into memory at a cut; past it, files are copied whole. */
const RANGES_MEMORY = 256 * 2 ** 20;

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
  ranges: Range[];
  /** Pages a write in flight at the cut was changing: read while the app was held. */
  early: Piece[];
}

export interface Deferred {
  appDir: string;
  gen: bigint;
  files: DeferredFile[];
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
  ranges: ChangedRanges | null = null,
  cowDir: string | null = null,
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
  let inMemory = 0;
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
    // only the ranges the agents noted, when they are known to be all of what changed
    const key = `${entry.dev}:${entry.ino}`;
    const noted = prev && ranges && !ranges.overflow && !ranges.opaque.has(key) ? ranges.byFile.get(key) : undefined;
    if (prev && noted && entry.base === prev.base) {
      const plan = planRanges(noted, prev.size, entry.size, RANGES_MEMORY - inMemory);
      if (plan) {
        const n = plan.reduce((t, [a, b]) => t + b - a, 0);
        inMemory += n;
        bytesRead += n;
        changed.push(path);
        ranged.push(path);
        const content: FileContent = { entry, copy: null, pieces: [] };
        contents.push(content);
        // opened now: a file renamed over or removed after the cut is still the one read
        later.push({ content, key, fd: openSync(src, "r"), ranges: plan, early: [] });
        continue;
      }
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
  // the ranges: read after the app resumed (copy-before-write), or now
  let deferred: Deferred | null = null;
  const n = later.reduce((t, f) => t + f.ranges.length, 0);
  if (later.length && cowDir && ranges && !ranges.unslotted && n <= COW_CAP) {
    for (const f of later) f.early = readPiecesSync(f.fd, intersect(f.ranges, ranges.inflight.get(f.key) ?? []));
    const gen = publishCow(
      cowDir,
      later.map((f) => ({ dev: BigInt(f.content.entry.dev), ino: BigInt(f.content.entry.ino), ranges: f.ranges })),
    );
    deferred = { appDir: cowDir, gen, files: later };
  } else {
    for (const f of later) {
      f.content.pieces = readPiecesSync(f.fd, f.ranges);
      closeSync(f.fd);
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

/**
 * After the app resumed: the deferred ranges read from the files, then the pages the agents saved
 * before changing them put over them (and the pages of writes in flight at the cut, read then).
 */
export async function finishCut(d: Deferred): Promise<void> {
  let ended = false;
  try {
    await testDelay("files-deferred-read"); // (tests: the app writes meanwhile)
    for (const f of d.files) f.content.pieces = await readPieces(f.fd, f.ranges);
    const saved = readCowLog(d.appDir, d.gen);
    ended = true;
    if (endCow(d.appDir)) throw new Error("an agent of the app could not save a file's page before changing it (files.cow-log): the files' state at the cut is not known");
    for (const f of d.files) {
      patchPieces(f.content.pieces!, saved.get(f.key) ?? new Map());
      patchPieces(f.content.pieces!, pagesOf(f.early));
    }
  } finally {
    if (!ended) endCow(d.appDir);
    for (const f of d.files) {
      try {
        closeSync(f.fd);
      } catch {
        /* closed */
      }
    }
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
