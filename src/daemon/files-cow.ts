// Copy-before-write of the app's changed file ranges (issue 14, docs/files.md "Changed ranges"):
// at the cut, with the app held, the daemon sets `files.cow` (mapped shared by every agent of the
// app: native/agent/files-ranges.c) to "every page" and empties `files.cow-log`; after the app
// resumed it publishes there the pages it reads ("the set"). Until the daemon turns it off, an
// agent about to change such a page appends the page's bytes to the log first. The daemon reads the pages from the files (through fds opened at
// the cut: a file renamed over or unlinked since is still the one read), then the log: the first
// record of a page holds its bytes at the cut, and wins over what the file holds now.
import { closeSync, existsSync, ftruncateSync, openSync, readFileSync, readSync, writeSync } from "node:fs";
import { read } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import type { Range } from "./files-ranges.js";
import { grantDirUsers } from "./private-acl.js";

const MAGIC = 0x315745434741475fn;
export const COW_CAP = 16384;
const ENTRIES_OFF = 64;
const ENTRY = 32;
const REC = 40;
const PAGE = 4096;
const readAsync = promisify(read);

const cowPath = (appDir: string): string => join(appDir, "files.cow");
const logPath = (appDir: string): string => join(appDir, "files.cow-log");

export interface CowFile {
  dev: bigint;
  ino: bigint;
  /** Page-aligned, sorted, disjoint. */
  ranges: Range[];
}

/**
 * With the app held: the agents save every page of a tracked file before they change it ("every
 * page", active 2), under a new generation, until publishSet says which pages the daemon reads, or
 * until `deadlineNs` (CLOCK_MONOTONIC: process.hrtime), past which they stop and say the save was
 * lost. Empties the log. Returns the generation. Nothing here grows with the changed ranges.
 */
export function startCowAll(appDir: string, deadlineNs: bigint): bigint {
  const fd = openSync(cowPath(appDir), existsSync(cowPath(appDir)) ? "r+" : "w+", 0o600);
  try {
    const head = Buffer.alloc(ENTRIES_OFF);
    if (readSync(fd, head, 0, ENTRIES_OFF, 0) < 32) head.fill(0);
    const gen = (head.readBigUInt64LE(0) === MAGIC ? head.readBigUInt64LE(8) : 0n) + 1n;
    // off while the log is emptied (in place: the agents made it, and the grants to the app's
    // other users are on its inode)
    writeSync(fd, Buffer.alloc(4), 0, 4, 16);
    const lfd = openSync(logPath(appDir), "w", 0o600);
    ftruncateSync(lfd, 0);
    closeSync(lfd);
    // a process of the app that gave up root (nginx's workers) appends its saved pages too: every
    // user the app's directory names may write the log (a log the agents could not make before
    // their setuid, or made again by the line above, is granted here)
    grantDirUsers(appDir, logPath(appDir));
    const h = Buffer.alloc(40);
    h.writeBigUInt64LE(MAGIC, 0);
    h.writeBigUInt64LE(gen, 8);
    h.writeUInt32LE(0, 16); // active: last
    h.writeUInt32LE(0, 20); // count
    h.writeUInt32LE(0, 24); // lost
    h.writeBigUInt64LE(deadlineNs, 32);
    writeSync(fd, h, 0, 40, 0);
    const on = Buffer.alloc(4);
    on.writeUInt32LE(2);
    writeSync(fd, on, 0, 4, 16);
    return gen;
  } finally {
    closeSync(fd);
  }
}

/**
 * After the app resumed: the pages the daemon reads (the set), under the same generation; from now
 * on the agents save only those (active 1). False when there are more than COW_CAP ranges: the
 * agents then go on saving every page (active 2) until endCow.
 */
export function publishSet(appDir: string, gen: bigint, files: CowFile[]): boolean {
  const sorted = [...files].sort((a, b) => (a.dev !== b.dev ? (a.dev < b.dev ? -1 : 1) : a.ino < b.ino ? -1 : a.ino > b.ino ? 1 : 0));
  const n = sorted.reduce((t, f) => t + f.ranges.length, 0);
  if (n > COW_CAP) return false;
  const fd = openSync(cowPath(appDir), "r+");
  try {
    const head = Buffer.alloc(32);
    if (readSync(fd, head, 0, 32, 0) !== 32 || head.readBigUInt64LE(8) !== gen || head.readUInt32LE(16) !== 2) return false; // (ended meanwhile)
    const body = Buffer.alloc(n * ENTRY);
    const put = (v: number, o: number): void => {
      body.writeUInt32LE(v % 0x100000000, o);
      body.writeUInt32LE(Math.floor(v / 0x100000000), o + 4);
    };
    let i = 0;
    for (const f of sorted) {
      const dev = Number(f.dev);
      const ino = Number(f.ino);
      for (const [a, b] of f.ranges) {
        put(dev, i * ENTRY);
        put(ino, i * ENTRY + 8);
        put(a, i * ENTRY + 16);
        put(b, i * ENTRY + 24);
        i++;
      }
    }
    // the entries and their count first; an agent reads them only once it sees active 1
    if (n) writeSync(fd, body, 0, body.length, ENTRIES_OFF);
    const c = Buffer.alloc(4);
    c.writeUInt32LE(n);
    writeSync(fd, c, 0, 4, 20);
    c.writeUInt32LE(1);
    writeSync(fd, c, 0, 4, 16);
    return true;
  } finally {
    closeSync(fd);
  }
}

/** Why an agent could not save a page (`lost` of files.cow: a code of files-ranges.c, the errno << 8). */
export interface CowLost {
  why: string;
  fix: string;
}

const ERRNO: Record<number, string> = { 1: "EPERM", 2: "ENOENT", 5: "EIO", 12: "ENOMEM", 13: "EACCES", 24: "EMFILE", 27: "EFBIG", 28: "ENOSPC", 30: "EROFS", 122: "EDQUOT" };

export function cowLost(appDir: string, v: number): CowLost {
  const code = v & 0xff;
  const errno = v >>> 8;
  const e = errno ? ` (${ERRNO[errno] ?? `errno ${errno}`})` : "";
  const log = logPath(appDir);
  switch (code) {
    case 1:
      return { why: `it could not open ${log}${e}`, fix: `Let every user the app's processes run as write ${log} (the daemon grants the users named in the ACL of ${appDir}; its file system needs POSIX ACLs).` };
    case 2:
      return { why: `it had no memory for the copy${e}`, fix: "Give the app more memory, or try again." };
    case 3:
      return { why: `it could not read the file${e}`, fix: "Check the file system of the app's files, then try again." };
    case 4:
      return { why: `it could not append to ${log}${e}`, fix: `Free space where ${appDir} is, then try again.` };
    case 5:
      return { why: `the app changed more than 256 MiB of its files before the daemon had read them (${log} is full)`, fix: "Try again when the app writes less, or leave its busiest files out (run --files-exclude)." };
    case 6:
      return { why: "the daemon took more than 30 s to publish the pages it reads after the cut", fix: "Try again: the next checkpoint starts anew (a loaded machine or a daemon killed in that window)." };
    case 7:
      return {
        why: `it could not open the file it was writing for reading${e}`,
        fix: "A process of another user writing a file it may not read (opened write-only by root) cannot save it: make the file readable by that user, open it read-write, or leave it out (run --files-exclude).",
      };
    case 8:
      return { why: `it could not stat the file it was writing${e}`, fix: "Try again." };
    default:
      return { why: `reason ${v}`, fix: "Try again." };
  }
}

/** The agents stop saving; the reason when one of them could not save a page (the pages read are then not the cut's), else 0. */
export function endCow(appDir: string): number {
  let lost = 0;
  try {
    const fd = openSync(cowPath(appDir), "r+");
    try {
      const h = Buffer.alloc(32);
      readSync(fd, h, 0, 32, 0);
      lost = h.readUInt32LE(24);
      writeSync(fd, Buffer.alloc(4), 0, 4, 16);
    } finally {
      closeSync(fd);
    }
  } catch {
    /* none */
  }
  return lost;
}

export interface Piece {
  off: number;
  data: Buffer;
}

/** Reads [a, b) ranges of an open file (async: the app runs meanwhile). */
export async function readPieces(fd: number, ranges: Range[]): Promise<Piece[]> {
  const out: Piece[] = [];
  for (const [a, b] of ranges) {
    const data = Buffer.allocUnsafe(b - a);
    let got = 0;
    while (got < data.length) {
      const { bytesRead } = await readAsync(fd, data, got, data.length - got, a + got);
      if (bytesRead === 0) break;
      got += bytesRead;
    }
    data.fill(0, got);
    out.push({ off: a, data });
  }
  return out;
}

/** Sync variant, with the app held. */
export function readPiecesSync(fd: number, ranges: Range[]): Piece[] {
  const out: Piece[] = [];
  for (const [a, b] of ranges) {
    const data = Buffer.allocUnsafe(b - a);
    let got = 0;
    while (got < data.length) {
      const n = readSync(fd, data, got, data.length - got, a + got);
      if (n === 0) break;
      got += n;
    }
    data.fill(0, got);
    out.push({ off: a, data });
  }
  return out;
}

/** The saved pages of a generation: "dev:ino" -> page offset -> bytes (the first record of each page). */
export function readCowLog(appDir: string, gen: bigint): Map<string, Map<number, Buffer>> {
  const out = new Map<string, Map<number, Buffer>>();
  let b: Buffer;
  try {
    b = readFileSync(logPath(appDir));
  } catch {
    return out;
  }
  let o = 0;
  while (o + REC <= b.length) {
    const g = b.readBigUInt64LE(o);
    const key = `${b.readBigUInt64LE(o + 8)}:${b.readBigUInt64LE(o + 16)}`;
    const off = Number(b.readBigUInt64LE(o + 24));
    const len = Number(b.readBigUInt64LE(o + 32));
    if (o + REC + len > b.length || len % PAGE || off % PAGE) break; // (a record being written)
    if (g === gen) {
      let m = out.get(key);
      if (!m) out.set(key, (m = new Map()));
      for (let p = 0; p < len; p += PAGE) if (!m.has(off + p)) m.set(off + p, b.subarray(o + REC + p, o + REC + p + PAGE));
    }
    o += REC + len;
  }
  return out;
}

/** Overwrites pieces' pages with these (page offset -> bytes). */
export function patchPieces(pieces: Piece[], pages: Map<number, Buffer>): void {
  for (const p of pieces)
    for (let x = 0; x < p.data.length; x += PAGE) {
      const v = pages.get(p.off + x);
      if (v) v.copy(p.data, x);
    }
}

/** The pages of pieces, by offset. */
export function pagesOf(pieces: Piece[]): Map<number, Buffer> {
  const m = new Map<number, Buffer>();
  for (const p of pieces) for (let x = 0; x < p.data.length; x += PAGE) m.set(p.off + x, p.data.subarray(x, x + PAGE));
  return m;
}

/** Intersection of two sorted disjoint range lists (page-aligned outward). */
export function intersect(a: Range[], b: Range[]): Range[] {
  const out: Range[] = [];
  for (const [s, e] of b) {
    const ps = Math.floor(s / PAGE) * PAGE;
    const pe = Number.isFinite(e) ? Math.ceil(e / PAGE) * PAGE : Infinity;
    for (const [x, y] of a) {
      const lo = Math.max(x, ps);
      const hi = Math.min(y, pe);
      if (lo < hi) out.push([lo, hi]);
    }
  }
  return out;
}
