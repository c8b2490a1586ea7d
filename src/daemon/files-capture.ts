// The file half of a checkpoint's cut (issue 14, docs/files.md): with every process of the app
// parked, each file of the set is looked at (size, mtime, ctime, inode against the parent
// checkpoint's files) and those that changed are copied (in the kernel: copy_file_range or
// sendfile, no bytes through the daemon) into a staging directory, so that the files belong to
// the same instant as the memory; the image is then made from the copies after the app resumed.
import { closeSync, copyFileSync, lstatSync, openSync, readSync, statSync } from "node:fs";
import { join } from "node:path";
import { SLOT_BYTES, type FileContent, type FileEntry } from "./files-image.js";
import { mergeRanges, type ChangedRanges, type Range } from "./files-ranges.js";

const PAGE = 4096;
/** Ranges closer than this are read as one (fewer reads; the pages between are deduplicated by the store). */
const RANGE_GAP = 16 * 1024;
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
}

/**
 * Captures the set: paths that are regular files are present (their contents read when new or
 * changed), paths that do not exist are recorded absent, anything else (directories, symlinks,
 * devices) is left out. Sync on purpose: it runs while the app is parked.
 */
export function cutFiles(paths: string[], parent: FilesManifest | null, staging: string, ranges: ChangedRanges | null = null): FilesCut {
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
  for (const path of paths) {
    let st;
    try {
      st = lstatSync(path, { bigint: true });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === "ENOENT" || (e as NodeJS.ErrnoException).code === "ENOTDIR")
        contents.push({ entry: { path, present: false, base: 0, size: 0, mtimeNs: 0n, atimeNs: 0n, ctimeNs: 0n, mode: 0, uid: 0, gid: 0, dev: 0, ino: 0 }, copy: null });
      continue;
    }
    if (!st.isFile()) continue;
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
    if (unchanged || !entry.size) {
      contents.push({ entry, copy: null });
      if (!unchanged) changed.push(path);
      continue;
    }
    // only the ranges the agents noted, when they are known to be all of what changed
    const key = `${entry.dev}:${entry.ino}`;
    const noted = prev && ranges && !ranges.overflow && !ranges.opaque.has(key) ? ranges.byFile.get(key) : undefined;
    if (prev && noted && entry.base === prev.base) {
      const pieces = readRanges(path, noted, prev.size, entry.size, RANGES_MEMORY - inMemory);
      if (pieces) {
        const n = pieces.reduce((t, p) => t + p.data.length, 0);
        inMemory += n;
        bytesRead += n;
        changed.push(path);
        ranged.push(path);
        contents.push({ entry, copy: null, pieces });
        continue;
      }
    }
    const copy = join(staging, String(contents.length));
    try {
      copyFileSync(path, copy);
      const size = statSync(copy).size;
      if (size !== entry.size) throw new Error(`it changed size while copied (${entry.size} -> ${size} bytes): something outside the app writes it`);
    } catch (e) {
      throw new Error(`cannot copy ${path}: ${(e as Error).message}`);
    }
    bytesRead += entry.size;
    changed.push(path);
    contents.push({ entry, copy });
  }
  const manifest: FilesManifest = { version: 1, cutNs: String(BigInt(Date.now()) * 1_000_000n), nextSlot, files: contents.map((c) => toStored(c.entry)) };
  return { contents, manifest, changed, ranged, bytesRead, cutNs: Number(process.hrtime.bigint() - t0) };
}

/**
 * The pages of the noted ranges (page-aligned, within the file's size now), plus the page at the
 * old end when the size changed (its tail was zeros or is now). null when they add up to half the
 * file or more, or past `budget` bytes: the whole file is copied instead.
 */
function readRanges(path: string, noted: Range[], oldSize: number, size: number, budget: number): { off: number; data: Buffer }[] | null {
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
  const out: { off: number; data: Buffer }[] = [];
  const fd = openSync(path, "r");
  try {
    for (const [a, b] of merged) {
      const data = Buffer.allocUnsafe(b - a);
      let got = 0;
      while (got < data.length) {
        const n = readSync(fd, data, got, data.length - got, a + got);
        if (n === 0) break;
        got += n;
      }
      data.fill(0, got); // zeros past the end of the file
      out.push({ off: a, data });
    }
  } finally {
    closeSync(fd);
  }
  return out;
}
