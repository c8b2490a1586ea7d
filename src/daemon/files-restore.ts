// Rolls an app's file set back to a checkpoint (issue 14, docs/files.md), before its processes are
// restored: every file present at the cut gets its contents, size, mode, owner and times back (in
// place when the path still holds the same inode, by renaming it back when the app renamed it,
// else written anew), paths absent at the cut are removed, and files the app touched first after
// the checkpoint are removed when they were created after it. Nothing outside the set is touched.
import { chmodSync, chownSync, closeSync, fdatasyncSync, ftruncateSync, linkSync, lstatSync, mkdirSync, openSync, readSync, renameSync, rmdirSync, unlinkSync, utimesSync, writeSync, type BigIntStats } from "node:fs";
import { dirname } from "node:path";
import { fromStored, type FilesManifest } from "./files-capture.js";
import { walkDir } from "./files-set.js";
import { writeUserXattrs } from "./files-xattr.js";
import { isDirMode, readFilesImage, SLOT_BYTES, type FileEntry } from "./files-image.js";

export interface FilesRollback {
  /** Files whose contents were written back (in place, renamed back or recreated). */
  rewritten: string[];
  renamedBack: string[];
  recreated: string[];
  /** Created after the checkpoint (or absent at it): removed. */
  removed: string[];
  /** Touched by the app after the checkpoint, existing before it, not in its set: left as they are. */
  leftAsIs: string[];
  /** Directories made again (removed or renamed away since) and removed (made after the checkpoint). */
  dirsMade: string[];
  dirsRemoved: string[];
  /** Second names of hard links made again (a link to the first name). */
  relinked: string[];
  /** Paths under `restore --keep-file-changes` that differ from the checkpoint: left as they are. */
  kept: string[];
  unchanged: number;
  /** Bytes written back: only the pages that differ, in a file rewritten in place. */
  bytesWritten: number;
  /** Bytes of files rewritten in place read and compared with the checkpoint's. */
  bytesCompared: number;
  ns: number;
}

const PAGE = 4096;
const ZERO = Buffer.alloc(1 << 20);

/** A file being given its checkpoint contents: written whole (new), or in place (compared first). */
interface Target {
  e: FileEntry;
  fd: number;
  /** In place: the file already holds something; each page is read and written only if it differs. */
  inPlace: boolean;
  /** In place: the ranges of the image's pages seen, [from, to) (the rest must read as zeros). */
  covered: Array<[number, number]>;
}

/** Writes data[0, len) at off, all of it. */
function writeAll(fd: number, data: Buffer, len: number, off: number): void {
  let w = 0;
  while (w < len) w += writeSync(fd, data, w, len - w, off + w);
}

/** Reads [off, off+len) of fd into buf (shorter at the end of the file: the rest zeroed). */
function readAll(fd: number, buf: Buffer, len: number, off: number): void {
  let r = 0;
  while (r < len) {
    const n = readSync(fd, buf, r, len - r, off + r);
    if (n === 0) break;
    r += n;
  }
  if (r < len) buf.fill(0, r, len);
}

/**
 * In place: want[0, len) goes at off, written page by page where the file differs (a rollback of
 * 1% of a big file writes 1% of it, and the fdatasync after it flushes that much). Returns the bytes written.
 */
function writeDiff(fd: number, want: Buffer, len: number, off: number, scratch: Buffer): number {
  readAll(fd, scratch, len, off);
  let written = 0;
  for (let a = 0; a < len; ) {
    const b = Math.min(len, a + PAGE);
    if (want.compare(scratch, a, b, a, b) !== 0) {
      // a run of differing pages in one write
      let c = b;
      while (c < len && want.compare(scratch, c, Math.min(len, c + PAGE), c, Math.min(len, c + PAGE)) !== 0) c = Math.min(len, c + PAGE);
      writeAll(fd, want.subarray(a, c), c - a, off + a);
      written += c - a;
      a = c;
    } else {
      a = b;
    }
  }
  return written;
}

/** In place: every byte of [0, size) no page of the image covered must read as zero (a hole at the cut). */
function zeroGaps(t: Target, size: number, scratch: Buffer): { compared: number; written: number } {
  const cov = t.covered.sort((x, y) => x[0] - y[0]);
  let compared = 0;
  let written = 0;
  let at = 0;
  const gap = (from: number, to: number): void => {
    for (let o = from; o < to; o += ZERO.length) {
      const n = Math.min(ZERO.length, to - o);
      compared += n;
      written += writeDiff(t.fd, ZERO, n, o, scratch);
    }
  };
  for (const [a, b] of cov) {
    if (a > at) gap(at, Math.min(a, size));
    at = Math.max(at, b);
    if (at >= size) break;
  }
  if (at < size) gap(at, size);
  return { compared, written };
}

const lstat = (p: string): BigIntStats | null => {
  try {
    return lstatSync(p, { bigint: true });
  } catch {
    return null;
  }
};

const sameState = (st: BigIntStats, e: FileEntry): boolean =>
  Number(st.dev) === e.dev && Number(st.ino) === e.ino && Number(st.size) === e.size && st.mtimeNs === e.mtimeNs && st.ctimeNs === e.ctimeNs && Number(st.mode) === e.mode;

/** Mode, owner (when root) and times of a path as the entry says. */
function setMeta(e: FileEntry): void {
  try {
    chownSync(e.path, e.uid, e.gid); // (before chmod: chown clears set-user-ID bits)
  } catch {
    /* not root: the owner stays */
  }
  chmodSync(e.path, e.mode & 0o7777);
  writeUserXattrs(e.path, e.xattrs);
  const s = (ns: bigint): number => Number(ns) / 1e9;
  utimesSync(e.path, s(e.atimeNs), s(e.mtimeNs));
}

/**
 * Rolls back. `image` is the composed files image of the checkpoint; `touched` every path the app
 * may have touched since (its journal, its --files trees); `keep` says which paths are in the set.
 */
export async function rollbackFiles(manifest: FilesManifest, image: AsyncIterable<Buffer>, touched: string[], inSetNow: (p: string) => boolean, what: string, keepChanged: string[] = []): Promise<FilesRollback> {
  const t0 = process.hrtime.bigint();
  // `--keep-file-changes`: those paths (and what is under them) are left out of the rollback
  const isKept = (p: string): boolean => keepChanged.some((k) => p === k || p.startsWith(k.endsWith("/") ? k : `${k}/`));
  const keep = (p: string): boolean => inSetNow(p) && !isKept(p);
  const keptSeen = new Set<string>();
  for (const s of manifest.files) {
    if (!inSetNow(s.path) || !isKept(s.path)) continue;
    const e = fromStored(s);
    const st = lstat(e.path);
    const same = e.present ? st !== null && (isDirMode(e.mode) ? st.isDirectory() && Number(st.ino) === e.ino && Number(st.mode) === e.mode : sameState(st, e)) : st === null;
    if (!same) keptSeen.add(e.path);
  }
  for (const p of touched) if (inSetNow(p) && isKept(p) && !manifest.files.some((f) => f.path === p) && lstat(p)) keptSeen.add(p);
  const r: FilesRollback = { rewritten: [], renamedBack: [], recreated: [], removed: [], leftAsIs: [], dirsMade: [], dirsRemoved: [], relinked: [], kept: [], unchanged: 0, bytesWritten: 0, bytesCompared: 0, ns: 0 };
  const entries = manifest.files.map(fromStored).filter((e) => keep(e.path));
  const dirs = entries.filter((e) => e.present && isDirMode(e.mode)).sort((a, b) => a.path.length - b.path.length);
  const links = entries.filter((e) => e.present && e.link !== undefined);
  const present = entries.filter((e) => e.present && !isDirMode(e.mode) && e.link === undefined);
  const dirPaths = new Set(dirs.map((e) => e.path));
  const inSet = new Set(entries.map((e) => e.path));
  const cutNs = BigInt(manifest.cutNs);
  // made after the cut (birth time, where the file system keeps one): not a file of the checkpoint
  const bornAfter = (st: BigIntStats): boolean => st.birthtimeNs > 0n && st.birthtimeNs > cutNs;
  // where each inode of the set is now (a file the app renamed away is found by its inode). An inode
  // number freed since the cut can be given to a file made after it (a log rotator: the new log gets
  // the number of the backup it dropped), so a file born after the cut is no candidate.
  const candidates = [...new Set([...entries.map((e) => e.path), ...touched])].filter(keep);
  const now = new Map<string, string>();
  const nowDirs = new Map<string, string>();
  for (const p of candidates) {
    const st = lstat(p);
    if (st?.isFile() && !bornAfter(st)) now.set(`${st.dev}:${st.ino}`, p);
    else if (st?.isDirectory() && !bornAfter(st)) nowDirs.set(`${st.dev}:${st.ino}`, p);
  }
  // 0. directories of the checkpoint, parents first: renamed back (found by inode) or made again
  for (const e of dirs) {
    const cur = lstat(e.path);
    if (cur?.isDirectory()) continue;
    if (cur) {
      unlinkSync(e.path); // a file (or symlink) of the set where the directory was
      r.removed.push(e.path);
    }
    const at = nowDirs.get(`${e.dev}:${e.ino}`);
    if (at && at !== e.path && !dirPaths.has(at) && lstat(at)?.isDirectory()) {
      mkdirSync(dirname(e.path), { recursive: true });
      renameSync(at, e.path);
      r.renamedBack.push(`${at} -> ${e.path}`);
      // what the app made in it since is now under this path: to be judged like the rest
      for (const p of walkDir(e.path, [], 100_000, true)) if (keep(p) && !candidates.includes(p)) candidates.push(p);
    } else {
      mkdirSync(e.path, { recursive: true, mode: e.mode & 0o7777 });
      r.dirsMade.push(e.path);
    }
  }
  // 1. files to write, by base: opened in place (renamed back first where the app renamed them) or created
  const open = new Map<number, Target>();
  const skip = new Set<string>();
  // paths already given their checkpoint file: never renamed away again
  const settled = new Set<string>();
  try {
    for (const e of present) {
      let st = lstat(e.path);
      settled.add(e.path);
      if (st?.isFile() && sameState(st, e)) {
        r.unchanged++;
        skip.add(e.path);
        continue;
      }
      if (!st || !st.isFile() || Number(st.dev) !== e.dev || Number(st.ino) !== e.ino) {
        const key = `${e.dev}:${e.ino}`;
        const at = now.get(key);
        if (at && at !== e.path && !settled.has(at) && !present.some((o) => o.path === at && o.dev === e.dev && o.ino === e.ino)) {
          now.delete(key);
          renameSync(at, e.path);
          r.renamedBack.push(`${at} -> ${e.path}`);
          st = lstat(e.path);
        } else {
          st = null;
        }
      }
      let fd: number;
      if (st) {
        fd = openSync(e.path, "r+");
      } else {
        // written beside it, then renamed over the path: a crash leaves the old file or the new one
        const tmp = `${e.path}.tg-restore-${process.pid}`;
        mkdirSync(dirname(e.path), { recursive: true }); // (a directory outside the set's directories)
        fd = openSync(tmp, "w+", e.mode & 0o7777);
        open.set(e.base || -open.size - 1, { e: { ...e, path: tmp, present: true }, fd, inPlace: false, covered: [] });
        r.recreated.push(e.path);
        continue;
      }
      // in place: cut to (or grown to) the checkpoint's size; its pages are compared below. A
      // mostly sparse file is emptied and written whole instead (comparing would read its holes).
      const inPlace = Number(st.blocks) * 512 >= Number(st.size) / 2;
      if (!inPlace) ftruncateSync(fd, 0);
      open.set(e.base || -open.size - 1, { e, fd, inPlace, covered: [] });
      r.rewritten.push(e.path);
    }
    for (const { fd, e } of open.values()) ftruncateSync(fd, e.size);
    // 2. the contents, from the composed image (pages of files not being written are skipped); in
    // place, only the pages that differ are written
    const scratch = Buffer.allocUnsafe(ZERO.length);
    for await (const rec of readFilesImage(image, what)) {
      if (rec.type !== "pages") continue;
      const base = Math.floor(rec.addr / SLOT_BYTES) * SLOT_BYTES;
      const o = open.get(base);
      if (!o) continue;
      const off = rec.addr - base;
      const len = Math.min(rec.data.length, o.e.size - off);
      if (len <= 0) continue;
      if (o.inPlace) {
        o.covered.push([off, off + len]);
        for (let d = 0; d < len; d += scratch.length) {
          const n = Math.min(scratch.length, len - d);
          r.bytesWritten += writeDiff(o.fd, rec.data.subarray(d, d + n), n, off + d, scratch);
        }
        r.bytesCompared += len;
      } else {
        writeAll(o.fd, rec.data, len, off); // a new file: what the image does not hold stays a hole
        r.bytesWritten += len;
      }
    }
    // what no page of the image covers was a hole at the cut: zeros, in place too
    for (const t of open.values()) {
      if (!t.inPlace) continue;
      const z = zeroGaps(t, t.e.size, scratch);
      r.bytesCompared += z.compared;
      r.bytesWritten += z.written;
    }
    // 3. mode, owner, times; durable before the renames that make recreated files visible
    for (const { e, fd } of open.values()) {
      fdatasyncSync(fd);
      closeSync(fd);
      setMeta(e);
    }
    for (const { e } of open.values()) {
      if (!e.path.includes(".tg-restore-")) continue;
      renameSync(e.path, e.path.replace(/\.tg-restore-\d+$/, ""));
    }
    open.clear();
  } finally {
    for (const { fd } of open.values()) {
      try {
        closeSync(fd);
      } catch {
        /* closed */
      }
    }
  }
  // 4. second names of hard links: a link to the first name again (made beside it, renamed over it)
  for (const e of links) {
    const to = lstat(e.link!);
    const st = lstat(e.path);
    if (!to || (st && st.dev === to.dev && st.ino === to.ino)) continue;
    const tmp = `${e.path}.tg-restore-${process.pid}`;
    mkdirSync(dirname(e.path), { recursive: true });
    try {
      unlinkSync(tmp);
    } catch {
      /* none */
    }
    linkSync(e.link!, tmp);
    renameSync(tmp, e.path);
    r.relinked.push(`${e.path} -> ${e.link!}`);
  }
  // 5. paths that did not exist at the cut, and files first touched after it
  const linkPaths = new Set(links.map((e) => e.path));
  // the inodes of the set's files now: another name of one is a link the app made after the cut
  const setInodes = new Set<string>();
  for (const e of present) {
    const st = lstat(e.path);
    if (st) setInodes.add(`${st.dev}:${st.ino}`);
  }
  for (const p of candidates) {
    if (skip.has(p) || linkPaths.has(p) || present.some((e) => e.path === p)) continue;
    const st = lstat(p);
    if (!st?.isFile()) continue;
    if (inSet.has(p) || (st.birthtimeNs > 0n && st.birthtimeNs > cutNs) || (st.nlink > 1n && setInodes.has(`${st.dev}:${st.ino}`))) {
      unlinkSync(p);
      r.removed.push(p);
    } else {
      r.leftAsIs.push(p);
    }
  }
  // 6. directories that did not exist at the cut (or were made after it), deepest first: removed when
  // empty now (what is left in one is not the app's: it stays, and so does the directory)
  const extraDirs = candidates.filter((p) => !dirPaths.has(p)).sort((a, b) => b.length - a.length);
  for (const p of extraDirs) {
    const st = lstat(p);
    if (!st?.isDirectory()) continue;
    if (!inSet.has(p) && !(st.birthtimeNs > 0n && st.birthtimeNs > cutNs)) continue;
    try {
      rmdirSync(p);
      r.dirsRemoved.push(p);
    } catch {
      r.leftAsIs.push(p);
    }
  }
  // 7. the directories' mode, owner and times, deepest first (after everything made or removed in them)
  for (const e of [...dirs].reverse()) setMeta(e);
  r.kept = [...keptSeen].sort();
  r.ns = Number(process.hrtime.bigint() - t0);
  return r;
}
