// The changed ranges of an app's files (issue 14, docs/files.md "Changed ranges"): every process of
// the app notes the byte ranges its writes touch in a table of its own, `ranges.PID.NONCE` in the app's
// directory, mapped shared (native/agent/files-ranges.c). At the cut, with every process parked, the
// daemon makes the other (cleared) half of every table current (flipTables: no entry read); once the
// app runs again it reads the halves it flipped away, keeps what it read in
// `files.pending-ranges.json` until a files image made from it commits (a cut whose checkpoint fails
// leaves its ranges to the next one, which has the same parent), and clears them (consumeRanges).
// Tables of processes that are gone are read one last time and removed.
import { closeSync, existsSync, openSync, readdirSync, readFileSync, readSync, statSync, unlinkSync, writeFileSync, writeSync } from "node:fs";
import { join } from "node:path";
import { scanProcesses, type ProcScan } from "./files-procscan.js";

const MAGIC = 0x314e52474152475fn;
const FDS = 4096;
const CAP = 8192;
const HEAD = 4096;
const FDS_OFF = HEAD;
const ENTRIES_OFF = HEAD + FDS * 16;
const ENTRY = 32;
const SLOTS_OFF = 512;
const SLOTS = 64;
const SLOT = 40;

/** [start, end) byte ranges; end Infinity: to the end of the file. */
export type Range = [number, number];

export interface ChangedRanges {
  /** By "dev:ino". */
  byFile: Map<string, Range[]>;
  /** A table overflowed (or a cut's ranges were lost): every changed file is copied whole. */
  overflow: boolean;
  /** Files written where the agent does not see (untracked fds open for writing, shared writable mappings): copied whole. */
  opaque: Set<string>;
  /** Writes in flight at the cut (a thread parked inside a write): by "dev:ino"; their pages are read while the app is held. */
  inflight: Map<string, Range[]>;
  /** A write was in flight without a slot to say where: nothing is left for after the app resumes. */
  unslotted: boolean;
  tables: number;
}

interface PendingFile {
  parent: string | null;
  overflow: boolean;
  ranges: [string, number, number | null][];
}

const pendingPath = (appDir: string): string => join(appDir, "files.pending-ranges.json");

/** A u64 as a number without a BigInt (dev, ino, offsets: below 2^53); all ones: Infinity. */
const u64 = (b: Buffer, off: number): number => {
  const lo = b.readUInt32LE(off);
  const hi = b.readUInt32LE(off + 4);
  return lo === 0xffffffff && hi === 0xffffffff ? Infinity : hi * 0x100000000 + lo;
};

/** Table files mapped by each live process (host pid -> table path). */
export function tablesOf(hostPids: number[], scan?: ProcScan): Map<number, string> {
  const out = new Map<number, string>();
  for (const pid of hostPids) {
    let text: string | undefined;
    try {
      text = scan ? scan.maps.get(pid) : readFileSync(`/proc/${pid}/maps`, "utf8");
    } catch {
      /* gone */
    }
    for (const line of text?.split("\n") ?? []) {
      const m = /\s(\/\S*\/ranges\.\d+\.[0-9a-f]{16})$/.exec(line);
      if (m) out.set(pid, m[1]!);
    }
  }
  return out;
}

/**
 * A table file in which nothing was noted (nor is being noted): a process that ended without
 * writing leaves one; one killed while making its table leaves it short or without its magic
 * (the magic is stored last), never to be used.
 */
export function tableIsEmpty(path: string): boolean {
  const b = Buffer.alloc(SLOTS_OFF + SLOTS * SLOT);
  try {
    const fd = openSync(path, "r");
    try {
      if (readSync(fd, b, 0, b.length, 0) !== b.length) return true; // (cut short before its ftruncate)
    } finally {
      closeSync(fd);
    }
  } catch {
    return false;
  }
  const magic = b.readBigUInt64LE(0);
  if (magic === 0n) return true; // (never made ready)
  if (magic !== MAGIC) return false;
  // counts and overflow of both halves, writes in flight without a slot
  for (const off of [32, 36, 40, 44, 48]) if (b.readUInt32LE(off)) return false;
  for (let i = 0; i < SLOTS; i++) if (u64(b, SLOTS_OFF + i * SLOT)) return false;
  return true;
}

/** Tracked fds of a table: fd -> "dev:ino". */
function trackedFds(b: Buffer): Map<number, string> {
  const out = new Map<number, string>();
  for (let fd = 0; fd < FDS; fd++) {
    const ino = u64(b, FDS_OFF + fd * 16 + 8);
    if (ino) out.set(fd, `${u64(b, FDS_OFF + fd * 16)}:${ino}`);
  }
  return out;
}

/** Files some process writes where its agent does not see: an fd open for writing that its table does not track, a shared writable mapping. */
function opaqueFiles(scan: ProcScan, tables: Map<number, string>, buffers: Map<string, Buffer>): Set<string> {
  const out = new Set<string>();
  const trackedBy = new Map<number, Map<number, string>>();
  for (const f of scan.fds) {
    if ((f.flags & 3) === 0 || f.ino === null) continue;
    let tracked = trackedBy.get(f.hostPid);
    if (!tracked) {
      const tpath = tables.get(f.hostPid);
      const b = tpath ? buffers.get(tpath) : undefined;
      trackedBy.set(f.hostPid, (tracked = b ? trackedFds(b) : new Map<number, string>()));
    }
    const key = `${f.dev}:${f.ino}`;
    if (tracked.get(f.fd) !== key) out.add(key);
  }
  for (const text of scan.maps.values())
    for (const line of text.split("\n")) {
      const m = /^\S+ (\S{4}) \S+ \S+ (\d+)\s+(\/.*)$/.exec(line);
      if (!m || m[1]![1] !== "w" || m[1]![3] !== "s" || m[2] === "0" || /\/ranges\.\d+\.[0-9a-f]{16}$/.test(m[3]!)) continue;
      try {
        const st = statSync(m[3]!.replace(/ \(deleted\)$/, ""), { bigint: true });
        if (String(st.ino) === m[2]) out.add(`${st.dev}:${st.ino}`);
      } catch {
        /* deleted */
      }
    }
  return out;
}

function add(byFile: Map<string, Range[]>, key: string, r: Range): void {
  const l = byFile.get(key);
  if (l) l.push(r);
  else byFile.set(key, [r]);
}

/** What the cut did to the tables, for consumeRanges after the app resumed. */
export interface Flip {
  /** Each table read: its path, the half to read after the app resumed, whether its process lives (flipped) or not (removed once read). */
  tables: { path: string; half: number; live: boolean }[];
  /** The last cut's flipped halves were never read (a daemon killed meanwhile): what changed then is not known. */
  stale: boolean;
  /** As in ChangedRanges, read at the cut. */
  opaque: Set<string>;
  inflight: Map<string, Range[]>;
  unslotted: boolean;
}

const flippedPath = (appDir: string): string => join(appDir, "files.pending-ranges.flipped");
const HEAD_READ = SLOTS_OFF + SLOTS * SLOT;

/**
 * At the cut, every process of the app parked: makes the other half of every live table current
 * (the agents note the next interval there) and reads no entry: what each table noted is read by
 * consumeRanges once the app runs again, so the time the app is held does not grow with the ranges.
 * Read now: the writes in flight (slots), the fds the agents track (for the files written where no
 * agent sees). A marker file says the flipped halves are not read yet: a daemon killed before they
 * are leaves it, and the next cut then knows nothing of that interval (every changed file whole).
 * Sync on purpose: it runs while the app is held.
 */
export function flipTables(appDir: string, hostPids: number[], scan: ProcScan = scanProcesses(hostPids)): Flip {
  const f: Flip = { tables: [], stale: false, opaque: new Set(), inflight: new Map(), unslotted: false };
  f.stale = existsSync(flippedPath(appDir));
  let names: string[] = [];
  try {
    names = readdirSync(appDir).filter((n) => /^ranges\.\d+\.[0-9a-f]{16}$/.test(n));
  } catch {
    /* no directory */
  }
  const live = tablesOf(hostPids, scan);
  const liveSet = new Set(live.values());
  const buffers = new Map<string, Buffer>();
  if (names.length) closeSync(openSync(flippedPath(appDir), "w", 0o600)); // (before any flip)
  for (const n of names) {
    const path = join(appDir, n);
    const isLive = liveSet.has(path);
    // the header and slots; the tracked fds of a live process's table
    const b = Buffer.allocUnsafe(isLive ? ENTRIES_OFF : HEAD_READ);
    let fd: number;
    try {
      fd = openSync(path, isLive ? "r+" : "r");
    } catch {
      continue;
    }
    try {
      if (readSync(fd, b, 0, b.length, 0) !== b.length) continue;
      if (b.readBigUInt64LE(0) !== MAGIC || b.readUInt32LE(8) !== 1) continue;
      if (b.readUInt32LE(48)) f.unslotted = true;
      for (let i = 0; i < SLOTS; i++) {
        const o = SLOTS_OFF + i * SLOT;
        if (u64(b, o) === 2) add(f.inflight, `${u64(b, o + 8)}:${u64(b, o + 16)}`, [u64(b, o + 24), u64(b, o + 32)]);
      }
      const cur = b.readUInt32LE(16) & 1;
      f.tables.push({ path, half: cur, live: isLive });
      if (!isLive) continue; // (its process is gone: read whole after the app resumed, then removed)
      buffers.set(path, b);
      const next = cur ^ 1;
      // (its entries were cleared when it was read, one cut ago: the agents fill it from 0)
      const h = Buffer.alloc(4);
      writeSync(fd, h, 0, 4, 32 + next * 4); // count
      writeSync(fd, h, 0, 4, 40 + next * 4); // overflow
      const g = Buffer.alloc(8);
      g.writeBigUInt64LE(b.readBigUInt64LE(24) + 1n);
      writeSync(fd, g, 0, 8, 24); // gen: the agents' per-interval notes start again
      h.writeUInt32LE(next);
      writeSync(fd, h, 0, 4, 16); // cur
    } finally {
      closeSync(fd);
    }
  }
  f.opaque = opaqueFiles(scan, live, buffers);
  return f;
}

/**
 * After the cut (the app may run): reads the halves the cut flipped away (and the tables of
 * processes that were gone), adds the ranges of a cut whose files image never committed (when it
 * had the same parent), keeps them all in `files.pending-ranges.json`, then clears those halves for
 * their next turn and removes the tables of the processes gone. The app's writes meanwhile go to
 * the other halves. Sync: a table is read and cleared in one go on the daemon's thread.
 */
export function consumeRanges(appDir: string, flip: Flip, parentId: string | null): ChangedRanges {
  const r: ChangedRanges = { byFile: new Map(), overflow: flip.stale, opaque: flip.opaque, inflight: flip.inflight, unslotted: flip.unslotted, tables: 0 };
  let text: string | null = null;
  try {
    text = readFileSync(pendingPath(appDir), "utf8");
  } catch {
    /* none */
  }
  if (text !== null) {
    let p: PendingFile | null = null;
    try {
      p = JSON.parse(text) as PendingFile;
    } catch {
      r.overflow = true; // written in place by a daemon killed meanwhile: what it held is not known
    }
    if (p && p.parent === parentId) {
      r.overflow ||= p.overflow;
      for (const [k, s, e] of p.ranges) add(r.byFile, k, [s, e ?? Infinity]);
    }
  }
  const read: { path: string; half: number; live: boolean; count: number }[] = [];
  for (const t of flip.tables) {
    const head = Buffer.allocUnsafe(64);
    let b: Buffer;
    let count: number;
    try {
      const fd = openSync(t.path, "r");
      try {
        if (readSync(fd, head, 0, 64, 0) !== 64) continue;
        count = Math.min(head.readUInt32LE(32 + t.half * 4), CAP);
        if (head.readUInt32LE(40 + t.half * 4)) r.overflow = true;
        b = Buffer.allocUnsafe(count * ENTRY);
        if (count && readSync(fd, b, 0, b.length, ENTRIES_OFF + t.half * CAP * ENTRY) !== b.length) {
          r.overflow = true; // (cut short: not known)
          continue;
        }
      } finally {
        closeSync(fd);
      }
    } catch {
      r.overflow = true; // (removed by someone else: what it held is not known)
      continue;
    }
    r.tables++;
    for (let i = 0; i < count; i++) {
      const o = i * ENTRY;
      const ino = u64(b, o + 8);
      if (!ino) continue; // being written as the process was parked (its write in flight: a slot) or killed
      add(r.byFile, `${u64(b, o)}:${ino}`, [u64(b, o + 16), u64(b, o + 24)]);
    }
    read.push({ ...t, count });
  }
  // kept before any half is cleared: a daemon killed from here on loses nothing
  const pending: PendingFile = { parent: parentId, overflow: r.overflow, ranges: [] };
  for (const [k, l] of r.byFile) for (const [s, e] of mergeRanges(l)) pending.ranges.push([k, s, Number.isFinite(e) ? e : null]);
  // (in place: a half-written file reads as "not known", and the next cut copies changed files whole)
  writeFileSync(pendingPath(appDir), JSON.stringify(pending));
  for (const t of read) {
    try {
      if (!t.live) {
        unlinkSync(t.path); // its process is gone: what it noted is in the pending ranges now
        continue;
      }
      const fd = openSync(t.path, "r+");
      try {
        const h = Buffer.alloc(4);
        writeSync(fd, h, 0, 4, 32 + t.half * 4); // count first: no agent writes this half until the next cut
        writeSync(fd, h, 0, 4, 40 + t.half * 4);
        if (t.count) writeSync(fd, Buffer.alloc(t.count * ENTRY), 0, t.count * ENTRY, ENTRIES_OFF + t.half * CAP * ENTRY);
      } finally {
        closeSync(fd);
      }
    } catch {
      /* gone */
    }
  }
  try {
    unlinkSync(flippedPath(appDir));
  } catch {
    /* none */
  }
  return r;
}

/** Both at once, with the app held (a write in flight without a slot: nothing may be left for later). */
export function takeRanges(appDir: string, hostPids: number[], parentId: string | null): ChangedRanges {
  return consumeRanges(appDir, flipTables(appDir, hostPids), parentId);
}

/** Sorted, merged; gaps of less than `gap` bytes are merged too. */
export function mergeRanges(l: Range[], gap = 0): Range[] {
  const s = [...l].sort((a, b) => a[0] - b[0]);
  const out: Range[] = [];
  for (const [a, b] of s) {
    const last = out[out.length - 1];
    if (last && a <= last[1] + gap) last[1] = Math.max(last[1], b);
    else out.push([a, b]);
  }
  return out;
}

/** The path of a live process's table (tests, inspect). */
export const tableOf = (hostPid: number): string | undefined => tablesOf([hostPid]).get(hostPid);

/** A new run of the app: the tables and pending ranges of an earlier run are not this one's. */
export function clearRanges(appDir: string): void {
  let names: string[] = [];
  try {
    names = readdirSync(appDir).filter((n) => /^ranges\.\d+\.[0-9a-f]{16}$/.test(n) || n.startsWith("files.pending-ranges"));
  } catch {
    return;
  }
  for (const n of names) {
    try {
      unlinkSync(join(appDir, n));
    } catch {
      /* gone */
    }
  }
}
