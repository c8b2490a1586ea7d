// Pack files: packs/pack-NNNNNN.dat, append-only. A 16-byte header ("TGPACK\0\0", u32
// version, u32 0), then blocks back to back. Only the index says which bytes are
// committed; repair() cuts uncommitted tails and removes packs the index records as pending (never others).
import { open, readdir, rm, stat, truncate, type FileHandle } from "node:fs/promises";
import { join } from "node:path";
import { fsyncPath } from "../fsutil.js";
import { TgError } from "../../errors.js";
import { storeCorrupt } from "./util.js";

export const PACK_MAGIC = Buffer.from("TGPACK\0\0", "latin1");
export const PACK_HEADER_SIZE = 16;
const PACK_RE = /^pack-([0-9]{6,})\.dat$/;

export function packName(id: number): string {
  return `pack-${String(id).padStart(6, "0")}.dat`;
}

function packHeader(): Buffer {
  const b = Buffer.alloc(PACK_HEADER_SIZE);
  PACK_MAGIC.copy(b, 0);
  b.writeUInt32LE(1, 8);
  return b;
}

/** Appends blocks to one pack at known offsets (positional writes: the file position never matters). */
export class PackWriter {
  private constructor(
    readonly id: number,
    readonly path: string,
    private readonly fh: FileHandle,
    public size: number,
    /** Size the index has committed (to roll back to on failure). */
    readonly committedSize: number,
    readonly created: boolean,
  ) {}

  static async create(dir: string, id: number): Promise<PackWriter> {
    const path = join(dir, packName(id));
    const fh = await open(path, "wx", 0o644);
    await fh.write(packHeader(), 0, PACK_HEADER_SIZE, 0);
    return new PackWriter(id, path, fh, PACK_HEADER_SIZE, 0, true);
  }

  static async append(dir: string, id: number, committedSize: number): Promise<PackWriter> {
    const path = join(dir, packName(id));
    const fh = await open(path, "r+");
    return new PackWriter(id, path, fh, committedSize, committedSize, false);
  }

  /** Writes `bufs` back to back at the end; returns their offset. */
  async write(bufs: Buffer[]): Promise<number> {
    const at = this.size;
    const len = bufs.reduce((n, b) => n + b.length, 0);
    this.size += len;
    let done = 0;
    while (done < len) {
      let skip = done;
      const rest: Buffer[] = [];
      for (const b of bufs) {
        if (skip >= b.length) skip -= b.length;
        else {
          rest.push(skip > 0 ? b.subarray(skip) : b);
          skip = 0;
        }
      }
      const { bytesWritten } = await this.fh.writev(rest, at + done);
      done += bytesWritten;
    }
    return at;
  }

  async sync(): Promise<void> {
    await this.fh.sync();
  }

  async close(): Promise<void> {
    await this.fh.close();
  }

  /** Undoes uncommitted appends: truncates back, or removes a pack this writer created. */
  async rollback(): Promise<void> {
    await this.fh.close().catch(() => undefined);
    if (this.created) await rm(this.path, { force: true });
    else await truncate(this.path, this.committedSize);
  }
}

/** Random-access reads of committed blocks, with a small cache of open handles. */
export class PackReaders {
  private readonly handles = new Map<number, Promise<FileHandle>>();
  constructor(
    private readonly dir: string,
    private readonly maxOpen = 16,
  ) {}

  private handle(id: number): Promise<FileHandle> {
    let h = this.handles.get(id);
    if (h) {
      this.handles.delete(id);
      this.handles.set(id, h);
      return h;
    }
    h = open(join(this.dir, packName(id)), "r");
    h.catch(() => this.handles.delete(id));
    this.handles.set(id, h);
    // Evicted handles are closed after a grace period so that a read in flight on them finishes
    // (an unlinked pack stays readable through an open handle).
    if (this.handles.size > this.maxOpen) {
      const [oldId, old] = this.handles.entries().next().value as [number, Promise<FileHandle>];
      this.handles.delete(oldId);
      setTimeout(() => void old.then((f) => f.close()).catch(() => undefined), 5000).unref();
    }
    return h;
  }

  async read(pack: number, offset: number, len: number): Promise<Buffer> {
    const fh = await this.handle(pack);
    const buf = Buffer.allocUnsafe(len);
    let done = 0;
    while (done < len) {
      const { bytesRead } = await fh.read(buf, done, len - done, offset + done);
      if (bytesRead === 0) {
        const size = await fh.stat().then((s) => s.size, () => offset + done);
        throw storeCorrupt(`cannot read block at offset ${offset} of ${join(this.dir, packName(pack))}`, `the file ends at ${size}, the index says the block is ${len} bytes (to ${offset + len})`);
      }
      done += bytesRead;
    }
    return buf;
  }

  /** Forgets a pack's handle (after gc removed it); open reads finish on the unlinked file. */
  forget(pack: number): void {
    const h = this.handles.get(pack);
    if (!h) return;
    this.handles.delete(pack);
    setTimeout(() => void h.then((f) => f.close()).catch(() => undefined), 5000).unref();
  }

  async closeAll(): Promise<void> {
    const all = [...this.handles.values()];
    this.handles.clear();
    await Promise.all(all.map((h) => h.then((f) => f.close()).catch(() => undefined)));
  }
}

export interface RepairReport {
  /** Pack files deleted because the index records them as pending (crash before their commit, or after gc's switch). */
  removedPacks: string[];
  /** Packs cut back to their committed length: [file, bytes cut]. */
  truncated: [string, number][];
  /** Packs shorter than the index says, or missing (data lost outside our control). */
  damaged: string[];
}

/** Pack file names in `dir` (pack-NNNNNN.dat), with their ids. */
export async function packFiles(dir: string): Promise<{ name: string; id: number }[]> {
  const out: { name: string; id: number }[] = [];
  for (const name of await readdir(dir).catch(() => [] as string[])) {
    const m = PACK_RE.exec(name);
    if (m) out.push({ name, id: Number(m[1]) });
  }
  return out;
}

/** Refusal to open a store whose pack files the index does not know (never deleted: they may be all the data). */
export function unknownPacksError(root: string, names: string[], indexMissing: boolean): TgError {
  const list = names.slice(0, 5).join(", ") + (names.length > 5 ? ", ..." : "");
  return new TgError(
    `cannot open the store ${root}`,
    indexMissing
      ? `store index missing; ${names.length} pack file(s) present (${list}) that only index.sqlite can make sense of`
      : `the store index does not know ${names.length} pack file(s) (${list}): it is not the index these packs were written with`,
    `Put back the index.sqlite that goes with these packs (the packs alone cannot be re-indexed); nothing was deleted. To start an empty store instead, move ${root} away`,
    "store-corrupt",
  );
}

/**
 * Brings the pack directory in line with the index: the open() half of crash safety.
 * A pack file the index does not know is deleted only if the index records it as pending
 * (created by an ingest/merge/gc that did not commit, or switched away from by gc);
 * any other unknown pack makes open() refuse (see unknownPacksError).
 */
export async function repairPacks(dir: string, known: { id: number; size: number }[], pending: number[], root: string): Promise<RepairReport> {
  const report: RepairReport = { removedPacks: [], truncated: [], damaged: [] };
  const byId = new Map(known.map((p) => [p.id, p.size]));
  const pend = new Set(pending);
  const unknown: string[] = [];
  for (const name of await readdir(dir)) {
    const m = PACK_RE.exec(name);
    const path = join(dir, name);
    if (!m) {
      if (name.includes(".tmp")) await rm(path, { force: true });
      continue;
    }
    const committed = byId.get(Number(m[1]));
    if (committed === undefined) {
      if (pend.has(Number(m[1]))) {
        await rm(path, { force: true });
        report.removedPacks.push(name);
      } else unknown.push(name);
      continue;
    }
    const { size } = await stat(path);
    if (size > committed) {
      await truncate(path, committed);
      await fsyncPath(path);
      report.truncated.push([name, size - committed]);
    } else if (size < committed) report.damaged.push(name);
  }
  if (unknown.length > 0) throw unknownPacksError(root, unknown.sort(), false);
  for (const p of known) {
    const name = packName(p.id);
    try {
      await stat(join(dir, name));
    } catch {
      report.damaged.push(name);
    }
  }
  if (report.removedPacks.length > 0) await fsyncPath(dir);
  return report;
}
