// The changed ranges of an app's files (issue 14, docs/files.md "Changed ranges"): every process of
// the app notes the byte ranges its writes touch in a table of its own, `ranges.PID.NONCE` in the app's
// directory, mapped shared (native/agent/files-ranges.c). At the cut, with every process parked, the
// daemon reads the half being filled of every table, makes the other (cleared) half current, and
// keeps what it read in `files.pending-ranges.json` until a files image made from it commits: a cut
// whose checkpoint fails leaves its ranges to the next one (which has the same parent). Tables of
// processes that are gone are read one last time and removed.
import { closeSync, openSync, readdirSync, readFileSync, readSync, statSync, unlinkSync, writeFileSync, writeSync } from "node:fs";
import { join } from "node:path";

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
const TABLE_BYTES = ENTRIES_OFF + 2 * CAP * ENTRY;

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
export function tablesOf(hostPids: number[]): Map<number, string> {
  const out = new Map<number, string>();
  for (const pid of hostPids) {
    try {
      for (const line of readFileSync(`/proc/${pid}/maps`, "utf8").split("\n")) {
        const m = /\s(\/\S*\/ranges\.\d+\.[0-9a-f]{16})$/.exec(line);
        if (m) out.set(pid, m[1]!);
      }
    } catch {
      /* gone */
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
function opaqueFiles(hostPids: number[], tables: Map<number, string>, buffers: Map<string, Buffer>): Set<string> {
  const out = new Set<string>();
  for (const pid of hostPids) {
    const tpath = tables.get(pid);
    const b = tpath ? buffers.get(tpath) : undefined;
    const tracked = b ? trackedFds(b) : new Map<number, string>();
    let fds: string[] = [];
    try {
      fds = readdirSync(`/proc/${pid}/fd`);
    } catch {
      continue;
    }
    for (const fd of fds) {
      try {
        const info = readFileSync(`/proc/${pid}/fdinfo/${fd}`, "utf8");
        const flags = parseInt(/flags:\s+([0-7]+)/.exec(info)?.[1] ?? "0", 8);
        if ((flags & 3) === 0) continue;
        const st = statSync(`/proc/${pid}/fd/${fd}`, { bigint: true });
        if (!st.isFile()) continue;
        const key = `${st.dev}:${st.ino}`;
        if (tracked.get(Number(fd)) !== key) out.add(key);
      } catch {
        /* closed meanwhile */
      }
    }
    try {
      for (const line of readFileSync(`/proc/${pid}/maps`, "utf8").split("\n")) {
        const m = /^\S+ (\S{4}) \S+ \S+ (\d+)\s+(\/.*)$/.exec(line);
        if (!m || m[1]![1] !== "w" || m[1]![3] !== "s" || m[2] === "0" || /\/ranges\.\d+\.[0-9a-f]{16}$/.test(m[3]!)) continue;
        try {
          const st = statSync(m[3]!.replace(/ \(deleted\)$/, ""), { bigint: true });
          if (String(st.ino) === m[2]) out.add(`${st.dev}:${st.ino}`);
        } catch {
          /* deleted */
        }
      }
    } catch {
      /* gone */
    }
  }
  return out;
}

function add(byFile: Map<string, Range[]>, key: string, r: Range): void {
  const l = byFile.get(key);
  if (l) l.push(r);
  else byFile.set(key, [r]);
}

/**
 * At the cut, every process of the app parked: takes the ranges noted since the last cut (and
 * those of a cut whose files image never committed, when it had the same parent), and starts the
 * next interval. Sync on purpose: it runs while the app is held.
 */
export function takeRanges(appDir: string, hostPids: number[], parentId: string | null): ChangedRanges {
  const r: ChangedRanges = { byFile: new Map(), overflow: false, opaque: new Set(), inflight: new Map(), unslotted: false, tables: 0 };
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
  let names: string[] = [];
  try {
    names = readdirSync(appDir).filter((n) => /^ranges\.\d+\.[0-9a-f]{16}$/.test(n));
  } catch {
    /* no directory */
  }
  const live = tablesOf(hostPids);
  const liveSet = new Set(live.values());
  const buffers = new Map<string, Buffer>();
  const flips: { path: string; b: Buffer }[] = [];
  for (const n of names) {
    const path = join(appDir, n);
    // the header, the fds and the entries of the half being filled (not the whole table: GC)
    const b = Buffer.allocUnsafe(TABLE_BYTES);
    try {
      const fd = openSync(path, "r");
      try {
        if (readSync(fd, b, 0, ENTRIES_OFF, 0) !== ENTRIES_OFF) continue;
        if (b.readBigUInt64LE(0) !== MAGIC || b.readUInt32LE(8) !== 1) continue;
        const cur = b.readUInt32LE(16) & 1;
        const n = Math.min(b.readUInt32LE(32 + cur * 4), CAP) * ENTRY;
        const at = ENTRIES_OFF + cur * CAP * ENTRY;
        if (n && readSync(fd, b, at, n, at) !== n) continue;
      } finally {
        closeSync(fd);
      }
    } catch {
      continue;
    }
    r.tables++;
    buffers.set(path, b);
    if (b.readUInt32LE(48)) r.unslotted = true;
    for (let i = 0; i < SLOTS; i++) {
      const o = SLOTS_OFF + i * SLOT;
      if (u64(b, o) === 2) add(r.inflight, `${u64(b, o + 8)}:${u64(b, o + 16)}`, [u64(b, o + 24), u64(b, o + 32)]);
    }
    const cur = b.readUInt32LE(16) & 1;
    const count = Math.min(b.readUInt32LE(32 + cur * 4), CAP);
    if (b.readUInt32LE(40 + cur * 4)) r.overflow = true;
    for (let i = 0; i < count; i++) {
      const o = ENTRIES_OFF + (cur * CAP + i) * ENTRY;
      const ino = u64(b, o + 8);
      if (!ino) continue; // being written as the process was parked (its write had not happened) or killed
      add(r.byFile, `${u64(b, o)}:${ino}`, [u64(b, o + 16), u64(b, o + 24)]);
    }
    flips.push({ path, b });
  }
  r.opaque = opaqueFiles(hostPids, live, buffers);
  // kept before any table starts its next interval: a daemon killed from here on loses nothing
  const pending: PendingFile = { parent: parentId, overflow: r.overflow, ranges: [] };
  for (const [k, l] of r.byFile) for (const [s, e] of mergeRanges(l)) pending.ranges.push([k, s, Number.isFinite(e) ? e : null]);
  // (in place: a half-written file reads as "not known", and the next cut copies changed files whole)
  writeFileSync(pendingPath(appDir), JSON.stringify(pending));
  for (const { path, b } of flips) {
    if (!liveSet.has(path)) {
      unlinkSync(path); // its process is gone: what it noted is in the pending ranges now
      continue;
    }
    const cur = b.readUInt32LE(16) & 1;
    const next = cur ^ 1;
    const stale = Math.min(b.readUInt32LE(32 + next * 4), CAP);
    const fd = openSync(path, "r+");
    try {
      if (stale) writeSync(fd, Buffer.alloc(stale * ENTRY), 0, stale * ENTRY, ENTRIES_OFF + next * CAP * ENTRY);
      const h = Buffer.alloc(4);
      h.writeUInt32LE(0);
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
  return r;
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
