// The mirror's object model. A checkpoint, as far as mirroring is concerned, is a
// manifest (opaque bytes, JSON by convention, that the engine's store writes) plus
// the content-addressed chunks it names. The engine's store will hand these to
// MirrorClient; until it exists, synthetic.ts makes them.
import { hash } from "node:crypto";

export const HASH_BYTES = 32;
/** Largest chunk the mirror accepts (a chunk is one page or a small run of pages). */
export const MAX_CHUNK_SIZE = 4 * 1024 * 1024;
/** Largest manifest the mirror accepts. */
export const MAX_MANIFEST_SIZE = 8 * 1024 * 1024;
/** Most chunks one checkpoint may name (bounded by the offer frame's size). */
export const MAX_CHUNKS_PER_CHECKPOINT = 256 * 1024;

/** `C`: Buffer for checkpoints held in memory; `Buffer | LazyChunk` where chunks may be read on demand. */
export interface MirrorCheckpoint<C extends Buffer | LazyChunk = Buffer> {
  /** Source (application/host) name; on the server it must match the token. */
  source: string;
  /** Checkpoint id, unique within the source. */
  id: string;
  /** Id of the checkpoint this one is incremental on, if any (informational for the mirror). */
  parent?: string;
  /** Position in the source's sequence: strictly increasing, starting at 1. */
  seq: number;
  /** Opaque manifest bytes (the store's own JSON). */
  manifest: Buffer;
  /**
   * Every chunk the checkpoint needs, keyed by lowercase SHA-256 hex of its bytes: the bytes,
   * or a LazyChunk read only if the destination wants it (a store's blocks).
   */
  chunks: ReadonlyMap<string, C>;
}

/** A chunk whose bytes are read when they are sent. */
export interface LazyChunk {
  size: number;
  /** The chunk's bytes; a rejection fails this checkpoint's send (see MirrorClient). */
  read(): Promise<Buffer>;
}

export function chunkSize(c: Buffer | LazyChunk): number {
  return Buffer.isBuffer(c) ? c.length : c.size;
}

export async function chunkBytes(c: Buffer | LazyChunk): Promise<Buffer> {
  return Buffer.isBuffer(c) ? c : c.read();
}

/** What a checkpoint is made of, without the chunk bytes: what an offer carries. */
export interface CheckpointHeader {
  id: string;
  seq: number;
  parent?: string;
  /** The sender's lease epoch (docs/ha.md): the mirror refuses an Offer whose epoch is not the current one (`fenced`). */
  epoch?: number;
  chunks: ChunkRef[];
  manifest: Buffer;
}

export interface ChunkRef {
  hash: string;
  size: number;
}

export function sha256hex(data: Buffer): string {
  // One-shot hash (Node >= 20.12): much cheaper than createHash() per 4 KiB chunk.
  return hash("sha256", data, "hex");
}

const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;
const HASH_RE = /^[0-9a-f]{64}$/;

export function isValidName(s: unknown): s is string {
  return typeof s === "string" && NAME_RE.test(s);
}

export function isValidHash(s: unknown): s is string {
  return typeof s === "string" && HASH_RE.test(s);
}

/** Throws an Error naming the field that is wrong. Used by the client before sending. */
export function checkCheckpoint(c: MirrorCheckpoint<Buffer | LazyChunk>, verifyHashes = false): void {
  const where = `checkpoint ${JSON.stringify(c.id)} of source ${JSON.stringify(c.source)}`;
  if (!isValidName(c.source)) throw new Error(`${where}: source name must match ${NAME_RE}`);
  if (!isValidName(c.id)) throw new Error(`${where}: id must match ${NAME_RE}`);
  if (c.parent !== undefined && !isValidName(c.parent)) throw new Error(`${where}: parent must match ${NAME_RE}`);
  if (!Number.isSafeInteger(c.seq) || c.seq < 1) throw new Error(`${where}: seq must be an integer >= 1`);
  if (c.manifest.length > MAX_MANIFEST_SIZE) {
    throw new Error(`${where}: manifest is ${c.manifest.length} bytes, the limit is ${MAX_MANIFEST_SIZE}`);
  }
  if (c.chunks.size > MAX_CHUNKS_PER_CHECKPOINT) {
    throw new Error(`${where}: ${c.chunks.size} chunks, the limit is ${MAX_CHUNKS_PER_CHECKPOINT}`);
  }
  for (const [h, data] of c.chunks) {
    if (!isValidHash(h)) throw new Error(`${where}: chunk key ${JSON.stringify(h)} is not a lowercase SHA-256 hex`);
    if (chunkSize(data) > MAX_CHUNK_SIZE) {
      throw new Error(`${where}: chunk ${h} is ${chunkSize(data)} bytes, the limit is ${MAX_CHUNK_SIZE}`);
    }
    if (verifyHashes && Buffer.isBuffer(data) && sha256hex(data) !== h) throw new Error(`${where}: chunk ${h} does not hash to its key`);
  }
}

export function headerOf(c: MirrorCheckpoint<Buffer | LazyChunk>): CheckpointHeader {
  const chunks: ChunkRef[] = [];
  for (const [hash, data] of c.chunks) chunks.push({ hash, size: chunkSize(data) });
  return { id: c.id, seq: c.seq, ...(c.parent !== undefined ? { parent: c.parent } : {}), chunks, manifest: c.manifest };
}

export function totalChunkBytes(c: MirrorCheckpoint<Buffer | LazyChunk>): number {
  let n = 0;
  for (const d of c.chunks.values()) n += chunkSize(d);
  return n;
}
