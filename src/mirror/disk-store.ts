// The destination's durable store. Layout (see docs/mirror.md):
//
//   STORE/COMMITTED                the last committed generation: "tardigrade-mirror 1 <N>\n"
//   STORE/gen/<N>.pack             chunk bytes and checkpoint headers written by flush N
//   STORE/gen/<N>.meta.json        what flush N committed: chunk index + checkpoint records
//
// One flush = one generation: write the pack and the meta file, fsync both, fsync
// gen/, then replace COMMITTED atomically (write tmp, fsync, rename, fsync STORE/).
// Generations above COMMITTED are leftovers of an interrupted flush: deleted at open.
import { createHash } from "node:crypto";
import { chmod, mkdir, open, readFile, readdir, rename, rm, type FileHandle } from "node:fs/promises";
import { join } from "node:path";
import { FrameType } from "./frames.js";
import { decodeCheckpointHeader } from "./messages.js";
import { sha256hex } from "./objects.js";
import { PackWriter } from "./pack-writer.js";
import { lockMirrorStore, type StoreLock } from "./store-lock.js";

/** The store holds sources' process memory: only the server's user may read it, whatever the umask. */
export const STORE_DIR_MODE = 0o700;
export const STORE_FILE_MODE = 0o600;

export interface CheckpointRecord {
  source: string;
  id: string;
  seq: number;
  parent?: string;
  generation: number;
  /** Offset and length, in the generation's pack, of the encoded checkpoint header (Offer layout). */
  header: [number, number];
  headerSha256: string;
  chunkCount: number;
  /** Total bytes of the checkpoint's chunks (before dedup). */
  bytes: number;
  receivedAt: string;
  committedAt: string;
}

interface ChunkLocation {
  generation: number;
  offset: number;
  length: number;
  /** The source whose bytes these are, not checked against the name yet (undefined: checked). */
  owner?: string;
  /** Checked, and the bytes do not match the name: usable by nobody. */
  bad?: boolean;
}

interface MetaFile {
  format: "tardigrade-mirror-meta";
  /** 1: every chunk checked; 2: adds owners of unchecked chunks, `verified` and `bad`. */
  version: 1 | 2;
  generation: number;
  /** New chunks; `owner`: the source that sent them, unchecked (usable only by it). */
  chunks: ([hash: string, offset: number, length: number] | [hash: string, offset: number, length: number, owner: string])[];
  checkpoints: CheckpointRecord[];
  /** Chunks of earlier generations found, since, to match their names. */
  verified?: string[];
  /** Chunks of earlier generations found not to match their names. */
  bad?: string[];
}

/** A new chunk for commit(): name, bytes, and the source whose unchecked bytes they are (undefined: checked). */
export type NewChunk = [hash: string, data: Buffer, owner: string | undefined];

/** What one flush hands to the store. */
export interface PendingCheckpoint {
  source: string;
  id: string;
  seq: number;
  parent?: string;
  /** Encoded checkpoint header (Offer payload layout): id, seq, chunk list, manifest. */
  header: Buffer;
  chunkCount: number;
  bytes: number;
  receivedAt: Date;
}

export interface CommitResult {
  generation: number;
  records: CheckpointRecord[];
  newChunks: number;
  bytesWritten: number;
  fsyncs: number;
}

export interface DiskStoreHooks {
  /** Test hook: sleep this long at the start of every commit (a slow disk). */
  commitDelayMs?: number;
  /** Test hook: sleep this long after the data is durable and before COMMITTED is replaced. */
  pauseBeforeCommitMs?: number;
  /** Called between writing the data and replacing COMMITTED. */
  beforeCommit?: (generation: number) => void;
}

const COMMITTED = "COMMITTED";
const COMMITTED_PREFIX = "tardigrade-mirror 1 ";

export class DiskStore {
  private generation = 0;
  private readonly chunkIndex = new Map<string, ChunkLocation>();
  private readonly bySource = new Map<string, CheckpointRecord[]>();
  private readonly packs = new Map<number, FileHandle>();
  /** Chunks checked on disk since the last commit (recorded by the next one). */
  private readonly newlyVerified = new Set<string>();
  private readonly newlyBad = new Set<string>();
  /** Every chunk whose copy on disk is bad (kept in step with the index). */
  private readonly bad = new Set<string>();
  /** Every chunk whose copy on disk is some source's, unchecked (kept in step with the index). */
  private readonly uncheckedSet = new Set<string>();
  fsyncCount = 0;
  private lock: StoreLock | undefined;

  private constructor(
    readonly dir: string,
    private readonly hooks: DiskStoreHooks,
  ) {}

  static async open(dir: string, hooks: DiskStoreHooks = {}): Promise<{ store: DiskStore; removed: string[] }> {
    const s = new DiskStore(dir, hooks);
    await mkdir(dir, { recursive: true, mode: STORE_DIR_MODE });
    s.lock = await lockMirrorStore(dir);
    try {
      const removed = await s.load();
      return { store: s, removed };
    } catch (err) {
      await s.lock.release();
      throw err;
    }
  }

  get committedGeneration(): number {
    return this.generation;
  }

  get chunkCount(): number {
    return this.chunkIndex.size;
  }

  /** Some copy of the chunk is on disk (usable or not). */
  hasChunk(hash: string): boolean {
    return this.chunkIndex.has(hash);
  }

  /** On disk and usable by `source`'s checkpoints: checked, or that source's own bytes. */
  usableBy(hash: string, source: string): boolean {
    const l = this.chunkIndex.get(hash);
    return l !== undefined && !l.bad && (l.owner === undefined || l.owner === source);
  }

  /** On disk as another source's unchecked bytes (verify() can make them usable). */
  foreign(hash: string, source: string): boolean {
    const l = this.chunkIndex.get(hash);
    return l !== undefined && !l.bad && l.owner !== undefined && l.owner !== source;
  }

  /** Names of the chunks on disk that no one has checked yet (a live view: chunks added while iterating are included). */
  unchecked(): IterableIterator<string> {
    return this.uncheckedSet.values();
  }

  get uncheckedCount(): number {
    return this.uncheckedSet.size;
  }

  /** The source whose unchecked bytes a chunk on disk holds (undefined: checked, bad, or absent). */
  ownerOf(hash: string): string | undefined {
    const l = this.chunkIndex.get(hash);
    return l && !l.bad ? l.owner : undefined;
  }

  /** Chunks found not to match their names and not replaced since. */
  get badChunks(): ReadonlySet<string> {
    return this.bad;
  }

  /** verify() found something the next commit must record. */
  get hasNotes(): boolean {
    return this.newlyVerified.size > 0 || this.newlyBad.size > 0;
  }

  /** Whether a flush must write this cached copy (`checked`: its bytes match the name). */
  needsWrite(hash: string, checked: boolean): boolean {
    const l = this.chunkIndex.get(hash);
    return l === undefined || l.bad === true || (checked && l.owner !== undefined);
  }

  /**
   * Checks an on-disk chunk's bytes against its name (read back and hashed, once:
   * only chunks another source wants to share). A match makes it usable by every
   * source, a mismatch by none; either is recorded by the next commit. Returns the
   * digest.
   */
  async verify(hash: string): Promise<string> {
    const l = this.chunkIndex.get(hash);
    if (!l) throw new Error(`internal error: chunk ${hash} is not in the mirror store`);
    if (l.owner === undefined && !l.bad) return hash;
    const actual = createHash("sha256").update(await this.readPack(l.generation, l.offset, l.length)).digest("hex");
    // (The index may have moved on while reading: record the result only for this copy.)
    if (this.chunkIndex.get(hash) === l && l.owner !== undefined && !l.bad) {
      this.uncheckedSet.delete(hash);
      if (actual === hash) {
        delete l.owner;
        this.newlyVerified.add(hash);
      } else {
        l.bad = true;
        this.bad.add(hash);
        this.newlyBad.add(hash);
      }
    }
    return actual;
  }

  checkpoints(source: string): readonly CheckpointRecord[] {
    return this.bySource.get(source) ?? [];
  }

  sources(): string[] {
    return [...this.bySource.keys()];
  }

  latest(source: string): CheckpointRecord | undefined {
    const l = this.bySource.get(source);
    return l?.[l.length - 1];
  }

  find(source: string, id: string): CheckpointRecord | undefined {
    return this.bySource.get(source)?.find((r) => r.id === id);
  }

  private async load(): Promise<string[]> {
    await mkdir(join(this.dir, "gen"), { recursive: true, mode: STORE_DIR_MODE });
    // Modes are set explicitly (mkdir's mode is masked by the umask, and older stores were 0755/0644).
    await chmod(this.dir, STORE_DIR_MODE);
    await chmod(join(this.dir, "gen"), STORE_DIR_MODE);
    let committed = 0;
    try {
      const text = await readFile(join(this.dir, COMMITTED), "utf8");
      await chmod(join(this.dir, COMMITTED), STORE_FILE_MODE);
      if (!text.startsWith(COMMITTED_PREFIX)) throw new Error("unrecognised content");
      committed = Number(text.slice(COMMITTED_PREFIX.length).trim());
      if (!Number.isSafeInteger(committed) || committed < 0) throw new Error("bad generation number");
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "ENOENT") {
        throw new Error(
          `mirror store ${this.dir}: ${COMMITTED} is unreadable (${(err as Error).message}); ` +
            `it is not a tardigrade mirror store or it was damaged outside tardigrade`,
        );
      }
    }
    const removed: string[] = [];
    for (const name of await readdir(join(this.dir, "gen"))) {
      const m = /^(\d+)\.(pack|meta\.json)$/.exec(name);
      if (!m || Number(m[1]) > committed) {
        await rm(join(this.dir, "gen", name), { force: true });
        removed.push(name);
      } else await chmod(join(this.dir, "gen", name), STORE_FILE_MODE);
    }
    await rm(join(this.dir, COMMITTED + ".tmp"), { force: true });
    for (let g = 1; g <= committed; g++) {
      const path = join(this.dir, "gen", `${g}.meta.json`);
      let meta: MetaFile;
      try {
        meta = JSON.parse(await readFile(path, "utf8")) as MetaFile;
      } catch (err) {
        throw new Error(
          `mirror store ${this.dir}: generation ${g} is committed but ${path} is unreadable ` +
            `(${(err as Error).message}); restore the store from a backup`,
        );
      }
      if (meta.format !== "tardigrade-mirror-meta" || (meta.version !== 1 && meta.version !== 2)) {
        throw new Error(
          `mirror store ${this.dir}: ${path} is not a mirror meta file of version 1 or 2 ` +
            `(format ${String(meta.format)}, version ${String(meta.version)}); a newer tardigrade wrote it`,
        );
      }
      this.apply(meta);
    }
    this.generation = committed;
    return removed;
  }

  private apply(meta: MetaFile): void {
    for (const h of meta.bad ?? []) {
      const l = this.chunkIndex.get(h);
      if (l) {
        l.bad = true;
        this.bad.add(h);
        this.uncheckedSet.delete(h);
      }
    }
    for (const h of meta.verified ?? []) {
      const l = this.chunkIndex.get(h);
      if (l && !l.bad) {
        delete l.owner;
        this.uncheckedSet.delete(h);
      }
    }
    for (const [hash, offset, length, owner] of meta.chunks) {
      const old = this.chunkIndex.get(hash);
      // A new copy replaces a bad one, and a checked copy replaces an unchecked one.
      if (old === undefined || old.bad || (owner === undefined && old.owner !== undefined)) {
        this.chunkIndex.set(hash, { generation: meta.generation, offset, length, ...(owner !== undefined ? { owner } : {}) });
        this.bad.delete(hash);
        if (owner !== undefined) this.uncheckedSet.add(hash);
        else this.uncheckedSet.delete(hash);
      }
    }
    for (const r of meta.checkpoints) {
      let l = this.bySource.get(r.source);
      if (!l) this.bySource.set(r.source, (l = []));
      l.push(r);
    }
    for (const l of this.bySource.values()) l.sort((a, b) => a.seq - b.seq);
  }

  /**
   * Marks an unchecked chunk that generation `generation` wrote as bad (its cached
   * bytes were found so while that flush was writing them); recorded by the next commit.
   */
  markBad(hash: string, generation: number): void {
    const l = this.chunkIndex.get(hash);
    if (!l || l.generation !== generation || l.owner === undefined || l.bad) return;
    this.uncheckedSet.delete(hash);
    l.bad = true;
    this.bad.add(hash);
    this.newlyBad.add(hash);
  }

  /**
   * Commits checkpoints and the chunks they need that are not yet on disk (or only as
   * copies a flush must replace: see needsWrite), in one generation, with what
   * verify() found since the last commit.
   */
  async commit(pending: PendingCheckpoint[], newChunks: Iterable<NewChunk>): Promise<CommitResult> {
    if (this.hooks.commitDelayMs) await sleep(this.hooks.commitDelayMs);
    const gen = this.generation + 1;
    const genDir = join(this.dir, "gen");
    const packPath = join(genDir, `${gen}.pack`);
    const metaPath = join(genDir, `${gen}.meta.json`);
    const fsyncs0 = this.fsyncCount;
    const chunks: MetaFile["chunks"] = [];
    const written = new Set<string>();
    const verified = [...this.newlyVerified];
    const bad = [...this.newlyBad];
    const records: CheckpointRecord[] = [];
    let offset = 0;
    // Written around the page cache where the filesystem allows (pack-writer.ts).
    const pack = await PackWriter.create(packPath);
    try {
      for (const [hash, data, owner] of newChunks) {
        if (written.has(hash) || !this.needsWrite(hash, owner === undefined)) continue;
        written.add(hash);
        const at = await pack.add(data);
        chunks.push(owner === undefined ? [hash, at, data.length] : [hash, at, data.length, owner]);
      }
      const now = new Date().toISOString();
      for (const p of pending) {
        const at = await pack.add(p.header);
        records.push({
          source: p.source,
          id: p.id,
          seq: p.seq,
          ...(p.parent !== undefined ? { parent: p.parent } : {}),
          generation: gen,
          header: [at, p.header.length],
          headerSha256: sha256hex(p.header),
          chunkCount: p.chunkCount,
          bytes: p.bytes,
          receivedAt: p.receivedAt.toISOString(),
          committedAt: now,
        });
      }
      offset = await pack.finish(); // (includes the pack's fsync)
      this.fsyncCount++;
    } finally {
      await pack.close();
    }
    const meta: MetaFile = {
      format: "tardigrade-mirror-meta",
      version: 2,
      generation: gen,
      chunks,
      checkpoints: records,
      ...(verified.length > 0 ? { verified } : {}),
      ...(bad.length > 0 ? { bad } : {}),
    };
    await this.writeDurable(metaPath, Buffer.from(JSON.stringify(meta)));
    await this.fsyncDir(genDir);
    this.hooks.beforeCommit?.(gen);
    if (this.hooks.pauseBeforeCommitMs) await sleep(this.hooks.pauseBeforeCommitMs);
    // The commit point: COMMITTED names the new generation.
    const tmp = join(this.dir, COMMITTED + ".tmp");
    await this.writeDurable(tmp, Buffer.from(`${COMMITTED_PREFIX}${gen}\n`));
    await rename(tmp, join(this.dir, COMMITTED));
    await this.fsyncDir(this.dir);
    this.generation = gen;
    for (const h of verified) this.newlyVerified.delete(h);
    for (const h of bad) this.newlyBad.delete(h);
    this.apply(meta);
    return { generation: gen, records, newChunks: chunks.length, bytesWritten: offset, fsyncs: this.fsyncCount - fsyncs0 };
  }

  /** Ids of `source`'s checkpoints on disk that use any of `hashes` (reads their headers). */
  async checkpointsUsing(source: string, hashes: ReadonlySet<string>): Promise<string[]> {
    const out: string[] = [];
    if (hashes.size === 0) return out;
    for (const r of this.checkpoints(source)) {
      const h = decodeCheckpointHeader(FrameType.FetchHeader, await this.readHeader(r));
      if (h.chunks.some((c) => hashes.has(c.hash))) out.push(r.id);
    }
    return out;
  }

  async readChunk(hash: string): Promise<Buffer> {
    const loc = this.chunkIndex.get(hash);
    if (!loc) throw new Error(`chunk ${hash} is not in the mirror store ${this.dir}`);
    if (loc.bad) {
      throw new Error(
        `chunk ${hash} on this mirror does not match its name (the source that sent it sent wrong bytes); ` +
          `the checkpoints that use it are damaged until a source sends the chunk again`,
      );
    }
    return this.readPack(loc.generation, loc.offset, loc.length);
  }

  async readHeader(r: CheckpointRecord): Promise<Buffer> {
    const b = await this.readPack(r.generation, r.header[0], r.header[1]);
    if (sha256hex(b) !== r.headerSha256) {
      throw new Error(`mirror store ${this.dir}: checkpoint ${r.source}/${r.id} header fails its SHA-256 check; the pack is damaged`);
    }
    return b;
  }

  private async readPack(generation: number, offset: number, length: number): Promise<Buffer> {
    let fh = this.packs.get(generation);
    if (!fh) {
      fh = await open(join(this.dir, "gen", `${generation}.pack`), "r");
      this.packs.set(generation, fh);
    }
    const buf = Buffer.allocUnsafe(length);
    const { bytesRead } = await fh.read(buf, 0, length, offset);
    if (bytesRead !== length) {
      throw new Error(`mirror store ${this.dir}: pack ${generation} is short (${bytesRead} of ${length} bytes at ${offset})`);
    }
    return buf;
  }

  async close(): Promise<void> {
    for (const fh of this.packs.values()) await fh.close();
    this.packs.clear();
    await this.lock?.release();
    this.lock = undefined;
  }

  private async writeDurable(path: string, data: Buffer): Promise<void> {
    const fh = await open(path, "w", STORE_FILE_MODE);
    try {
      await fh.writeFile(data);
      await this.fsync(fh);
    } finally {
      await fh.close();
    }
  }

  private async fsync(fh: FileHandle): Promise<void> {
    await fh.sync();
    this.fsyncCount++;
  }

  private async fsyncDir(path: string): Promise<void> {
    const fh = await open(path, "r");
    try {
      await this.fsync(fh);
    } finally {
      await fh.close();
    }
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
