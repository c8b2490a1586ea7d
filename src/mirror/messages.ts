// Payload codecs for the frame types that are not plain JSON (offer, want, chunk),
// and strict validation of the JSON ones. Every decoder throws ProtocolError with a
// message that says which field of which frame was wrong.
import { FrameType, ProtocolError } from "./frames.js";
import {
  HASH_BYTES,
  MAX_CHUNK_SIZE,
  MAX_CHUNKS_PER_CHECKPOINT,
  MAX_MANIFEST_SIZE,
  isValidHash,
  isValidName,
  type CheckpointHeader,
  type ChunkRef,
} from "./objects.js";

function malformed(what: string): never {
  throw new ProtocolError("malformed-frame", `malformed frame: ${what}`);
}

export function parseJson(type: FrameType, payload: Buffer): Record<string, unknown> {
  let v: unknown;
  try {
    v = JSON.parse(payload.toString("utf8"));
  } catch {
    malformed(`${FrameType[type]} payload is not valid JSON`);
  }
  if (typeof v !== "object" || v === null || Array.isArray(v)) malformed(`${FrameType[type]} payload is not a JSON object`);
  return v as Record<string, unknown>;
}

export function str(obj: Record<string, unknown>, key: string, type: FrameType): string {
  const v = obj[key];
  if (typeof v !== "string") malformed(`${FrameType[type]}.${key} must be a string`);
  return v;
}

export function optStr(obj: Record<string, unknown>, key: string, type: FrameType): string | undefined {
  const v = obj[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== "string") malformed(`${FrameType[type]}.${key} must be a string`);
  return v;
}

export function int(obj: Record<string, unknown>, key: string, type: FrameType): number {
  const v = obj[key];
  if (typeof v !== "number" || !Number.isSafeInteger(v) || v < 0) {
    malformed(`${FrameType[type]}.${key} must be a non-negative integer`);
  }
  return v;
}

export function name(obj: Record<string, unknown>, key: string, type: FrameType): string {
  const v = str(obj, key, type);
  if (!isValidName(v)) malformed(`${FrameType[type]}.${key} ${JSON.stringify(String(v).slice(0, 64))} is not a valid name`);
  return v;
}

// Offer / FetchHeader payload:
//   u32 jsonLen | JSON {id, seq, parent?, epoch?, chunkCount, manifestLen}
//   | chunkCount x (32-byte sha256 | u32 size) | manifest bytes
const REF_BYTES = HASH_BYTES + 4;

export function encodeCheckpointHeader(h: CheckpointHeader): Buffer {
  const json = Buffer.from(
    JSON.stringify({
      id: h.id,
      seq: h.seq,
      ...(h.parent !== undefined ? { parent: h.parent } : {}),
      ...(h.epoch !== undefined ? { epoch: h.epoch } : {}),
      chunkCount: h.chunks.length,
      manifestLen: h.manifest.length,
    }),
    "utf8",
  );
  const out = Buffer.allocUnsafe(4 + json.length + h.chunks.length * REF_BYTES + h.manifest.length);
  out.writeUInt32LE(json.length, 0);
  json.copy(out, 4);
  let off = 4 + json.length;
  for (const c of h.chunks) {
    out.write(c.hash, off, "hex");
    out.writeUInt32LE(c.size, off + HASH_BYTES);
    off += REF_BYTES;
  }
  h.manifest.copy(out, off);
  return out;
}

export function decodeCheckpointHeader(type: FrameType, p: Buffer): CheckpointHeader {
  const t = FrameType[type];
  if (p.length < 4) malformed(`${t} payload is ${p.length} bytes, too short for its header`);
  const jsonLen = p.readUInt32LE(0);
  if (jsonLen > p.length - 4) malformed(`${t} JSON length ${jsonLen} runs past the ${p.length}-byte payload`);
  const meta = parseJson(type, p.subarray(4, 4 + jsonLen));
  const id = name(meta, "id", type);
  const seq = int(meta, "seq", type);
  if (seq < 1) malformed(`${t}.seq must be >= 1`);
  const parentRaw = optStr(meta, "parent", type);
  if (parentRaw !== undefined && !isValidName(parentRaw)) malformed(`${t}.parent is not a valid name`);
  const epoch = meta.epoch === undefined ? undefined : int(meta, "epoch", type);
  const chunkCount = int(meta, "chunkCount", type);
  const manifestLen = int(meta, "manifestLen", type);
  if (chunkCount > MAX_CHUNKS_PER_CHECKPOINT) {
    malformed(`${t} names ${chunkCount} chunks, the limit is ${MAX_CHUNKS_PER_CHECKPOINT}`);
  }
  if (manifestLen > MAX_MANIFEST_SIZE) malformed(`${t} manifest is ${manifestLen} bytes, the limit is ${MAX_MANIFEST_SIZE}`);
  const expect = 4 + jsonLen + chunkCount * REF_BYTES + manifestLen;
  if (expect !== p.length) malformed(`${t} payload is ${p.length} bytes but its header describes ${expect}`);
  const chunks: ChunkRef[] = [];
  const seen = new Set<string>();
  let off = 4 + jsonLen;
  for (let i = 0; i < chunkCount; i++) {
    const hash = p.toString("hex", off, off + HASH_BYTES);
    const size = p.readUInt32LE(off + HASH_BYTES);
    if (size > MAX_CHUNK_SIZE) malformed(`${t} chunk ${hash} is ${size} bytes, the limit is ${MAX_CHUNK_SIZE}`);
    if (seen.has(hash)) malformed(`${t} names chunk ${hash} twice`);
    seen.add(hash);
    chunks.push({ hash, size });
    off += REF_BYTES;
  }
  const manifest = Buffer.from(p.subarray(off, off + manifestLen));
  return { id, seq, ...(parentRaw !== undefined ? { parent: parentRaw } : {}), ...(epoch !== undefined ? { epoch } : {}), chunks, manifest };
}

// Want payload: u32 jsonLen | JSON {id, count} | bitmap of ceil(chunkCount/8) bytes,
// bit i (LSB first) set = send chunk i of the offer.
export function encodeWant(id: string, chunkCount: number, wanted: readonly number[]): Buffer {
  const json = Buffer.from(JSON.stringify({ id, count: wanted.length }), "utf8");
  const bitmap = Buffer.alloc(Math.ceil(chunkCount / 8));
  for (const i of wanted) bitmap[i >> 3] = (bitmap[i >> 3] as number) | (1 << (i & 7));
  const head = Buffer.allocUnsafe(4);
  head.writeUInt32LE(json.length, 0);
  return Buffer.concat([head, json, bitmap]);
}

export function decodeWant(p: Buffer, chunkCount: number): { id: string; wanted: number[] } {
  if (p.length < 4) malformed("Want payload too short");
  const jsonLen = p.readUInt32LE(0);
  if (jsonLen > p.length - 4) malformed("Want JSON length runs past the payload");
  const meta = parseJson(FrameType.Want, p.subarray(4, 4 + jsonLen));
  const id = name(meta, "id", FrameType.Want);
  const bitmap = p.subarray(4 + jsonLen);
  if (bitmap.length !== Math.ceil(chunkCount / 8)) {
    malformed(`Want bitmap is ${bitmap.length} bytes, expected ${Math.ceil(chunkCount / 8)} for ${chunkCount} chunks`);
  }
  const wanted: number[] = [];
  for (let i = 0; i < chunkCount; i++) if (((bitmap[i >> 3] as number) >> (i & 7)) & 1) wanted.push(i);
  return { id, wanted };
}

// Chunk payload: 32-byte sha256 | data.
export function chunkParts(hash: string, data: Buffer): Buffer[] {
  return [Buffer.from(hash, "hex"), data];
}

export function decodeChunk(p: Buffer): { hash: string; data: Buffer } {
  if (p.length < HASH_BYTES) malformed(`Chunk payload is ${p.length} bytes, shorter than its ${HASH_BYTES}-byte hash`);
  const hash = p.toString("hex", 0, HASH_BYTES);
  if (!isValidHash(hash)) malformed("Chunk hash is not valid");
  return { hash, data: p.subarray(HASH_BYTES) };
}

// Chunks payload (protocol 2, source -> destination): many chunks of the current
// checkpoint in one frame:
//   u32 count | count x (32-byte sha256 | u32 size) | the chunks' bytes, in table order
/** Most chunks in one Chunks frame (the table is then at most 36 * 65536 bytes). */
export const MAX_CHUNKS_PER_FRAME = 65_536;

/** Bytes per Chunks table entry (32-byte SHA-256, u32 size). */
export const CHUNKS_ENTRY_BYTES = REF_BYTES;

/** The table part of a Chunks frame; the chunks' bytes follow it as separate parts. */
export function encodeChunksTable(hashes: readonly string[], sizes: readonly number[]): Buffer {
  const t = Buffer.allocUnsafe(4 + hashes.length * REF_BYTES);
  t.writeUInt32LE(hashes.length, 0);
  let off = 4;
  for (let i = 0; i < hashes.length; i++) {
    t.write(hashes[i] as string, off, "hex");
    t.writeUInt32LE(sizes[i] as number, off + HASH_BYTES);
    off += REF_BYTES;
  }
  return t;
}

export interface DecodedChunks {
  /** Lowercase hex SHA-256 each chunk claims to have. */
  hashes: string[];
  /** Each chunk's bytes, joined (a view when it lies in one piece, else a copy). */
  data: Buffer[];
}

export interface SplitChunks {
  /** Lowercase hex SHA-256 each chunk claims to have. */
  hashes: string[];
  sizes: number[];
  /** Each chunk's bytes as views of the pieces it lies in (one, or more when it spans them). */
  pieces: Buffer[][];
}

/** Walks a list of buffers as one byte stream, cutting views of them. */
class PartsReader {
  private i = 0;
  private off = 0;
  constructor(private readonly parts: readonly Buffer[]) {}

  /** The next n bytes as views of the parts they lie in. */
  views(n: number): Buffer[] {
    const out: Buffer[] = [];
    let left = n;
    while (left > 0) {
      const p = this.parts[this.i] as Buffer;
      const k = Math.min(p.length - this.off, left);
      if (k > 0) out.push(p.subarray(this.off, this.off + k));
      this.off += k;
      left -= k;
      if (this.off === p.length) {
        this.i++;
        this.off = 0;
      }
    }
    return out;
  }

  /** The next n bytes joined (a view when they lie in one part). */
  read(n: number): Buffer {
    const v = this.views(n);
    return v.length === 1 ? (v[0] as Buffer) : Buffer.concat(v, n);
  }
}

/**
 * Splits a Chunks payload (given as the pieces it arrived in, `total` bytes) without
 * copying chunk bytes; checks the layout, not the hashes (the caller verifies them).
 */
export function splitChunks(parts: readonly Buffer[], total: number): SplitChunks {
  if (total < 4) malformed(`Chunks payload is ${total} bytes, too short for its count`);
  const r = new PartsReader(parts);
  const count = r.read(4).readUInt32LE(0);
  if (count === 0 || count > MAX_CHUNKS_PER_FRAME) malformed(`Chunks frame holds ${count} chunks; 1 to ${MAX_CHUNKS_PER_FRAME} allowed`);
  const tableEnd = 4 + count * REF_BYTES;
  if (tableEnd > total) malformed(`Chunks table of ${count} entries runs past the ${total}-byte payload`);
  const table = r.read(count * REF_BYTES);
  const hashes: string[] = new Array<string>(count);
  const sizes: number[] = new Array<number>(count);
  let at = tableEnd;
  for (let i = 0, off = 0; i < count; i++, off += REF_BYTES) {
    const size = table.readUInt32LE(off + HASH_BYTES);
    if (size > MAX_CHUNK_SIZE) malformed(`Chunks entry ${i} is ${size} bytes, the limit is ${MAX_CHUNK_SIZE}`);
    hashes[i] = table.toString("hex", off, off + HASH_BYTES);
    sizes[i] = size;
    at += size;
  }
  if (at !== total) malformed(`Chunks payload is ${total} bytes but its table describes ${at}`);
  const pieces: Buffer[][] = new Array<Buffer[]>(count);
  for (let i = 0; i < count; i++) pieces[i] = r.views(sizes[i] as number);
  return { hashes, sizes, pieces };
}

/** splitChunks with each chunk's bytes joined (tests, tools). */
export function decodeChunks(parts: readonly Buffer[], total: number): DecodedChunks {
  const { hashes, sizes, pieces } = splitChunks(parts, total);
  const data = pieces.map((p, i) => (p.length === 1 ? (p[0] as Buffer) : Buffer.concat(p, sizes[i] as number)));
  return { hashes, data };
}
