// Frame layer of the mirror protocol: a 12-byte header, then the payload.
//
//   off size field
//   0   2    magic "TG" (0x54 0x47)
//   2   1    protocol version (1)
//   3   1    frame type (FrameType)
//   4   4    payload length, u32 little-endian, <= the receiver's limit
//   8   4    CRC-32 (IEEE, zlib) of the payload, u32 little-endian
//   12  len  payload
//
// See docs/mirror.md for every frame type's payload.
import { crc32 } from "node:zlib";

export const FRAME_MAGIC0 = 0x54; // 'T'
export const FRAME_MAGIC1 = 0x47; // 'G'
export const PROTOCOL_VERSION = 1;
export const HEADER_SIZE = 12;
/** Default limit for one frame's payload: a chunk, an offer or a manifest. */
export const DEFAULT_MAX_FRAME = 16 * 1024 * 1024;

export enum FrameType {
  Hello = 1, // c->s JSON {token, source?, role}
  HelloOk = 2, // s->c JSON {source, durableSeq, durableId, receivedSeq}
  Error = 3, // both ways JSON {code, message}
  Offer = 4, // c->s checkpoint header + chunk list + manifest
  Want = 5, // s->c which offered chunks to send
  Chunk = 6, // c->s (and s->c on fetch): 32-byte sha256 + data
  Commit = 7, // c->s JSON {id}: all wanted chunks sent
  Received = 8, // s->c JSON {id, seq}: checkpoint cached and queued
  Durable = 9, // s->c JSON {ids, seqs, generation}: flushed and fsynced
  Flush = 10, // c->s JSON {}: commit everything queued now
  Flushed = 11, // s->c JSON {generation, checkpoints}
  List = 12, // c->s JSON {}
  Listing = 13, // s->c JSON {checkpoints: [...]}
  Fetch = 14, // c->s JSON {source, id}
  FetchHeader = 15, // s->c checkpoint header + chunk list + manifest (same layout as Offer)
  FetchEnd = 16, // s->c JSON {id, chunks}
}

export interface Frame {
  type: FrameType;
  payload: Buffer;
}

/** A protocol violation by the peer: the connection is closed after telling it `code` and `message`. */
export class ProtocolError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = "ProtocolError";
  }
}

export function encodeFrame(type: FrameType, payload: Buffer): Buffer {
  const header = Buffer.allocUnsafe(HEADER_SIZE);
  header[0] = FRAME_MAGIC0;
  header[1] = FRAME_MAGIC1;
  header[2] = PROTOCOL_VERSION;
  header[3] = type;
  header.writeUInt32LE(payload.length, 4);
  header.writeUInt32LE(crc32(payload), 8);
  return Buffer.concat([header, payload]);
}

/** Header and payload as separate buffers (avoids copying big chunk payloads). */
export function encodeFrameParts(type: FrameType, parts: Buffer[]): Buffer[] {
  let len = 0;
  let crc = 0;
  for (const p of parts) {
    len += p.length;
    crc = crc32(p, crc);
  }
  const header = Buffer.allocUnsafe(HEADER_SIZE);
  header[0] = FRAME_MAGIC0;
  header[1] = FRAME_MAGIC1;
  header[2] = PROTOCOL_VERSION;
  header[3] = type;
  header.writeUInt32LE(len, 4);
  header.writeUInt32LE(crc, 8);
  return [header, ...parts];
}

export function encodeJsonFrame(type: FrameType, value: unknown): Buffer {
  return encodeFrame(type, Buffer.from(JSON.stringify(value), "utf8"));
}

const KNOWN_TYPES = new Set<number>(Object.values(FrameType).filter((v): v is number => typeof v === "number"));

/**
 * Incremental decoder: push() bytes as they arrive, next() returns whole frames.
 * Throws ProtocolError on bad magic, unknown version or type, a length over the
 * limit, or a CRC mismatch. Never buffers more than one frame (header + limit).
 */
export class FrameDecoder {
  private bufs: Buffer[] = [];
  private buffered = 0;

  constructor(private readonly maxPayload: number = DEFAULT_MAX_FRAME) {}

  get pendingBytes(): number {
    return this.buffered;
  }

  push(data: Buffer): void {
    this.bufs.push(data);
    this.buffered += data.length;
  }

  /** The length the current partial frame claims (header + payload), or undefined if no header yet. */
  expectedLength(): number | undefined {
    if (this.buffered < HEADER_SIZE) return undefined;
    return HEADER_SIZE + this.peekHeader().readUInt32LE(4);
  }

  private peekHeader(): Buffer {
    const first = this.bufs[0];
    if (first !== undefined && first.length >= HEADER_SIZE) return first;
    const all = Buffer.concat(this.bufs);
    this.bufs = [all];
    return all;
  }

  private take(n: number): Buffer {
    const first = this.bufs[0];
    if (first !== undefined && first.length >= n) {
      const out = first.subarray(0, n);
      if (first.length === n) this.bufs.shift();
      else this.bufs[0] = first.subarray(n);
      this.buffered -= n;
      return out;
    }
    const out = Buffer.allocUnsafe(n);
    let off = 0;
    while (off < n) {
      const b = this.bufs[0];
      if (b === undefined) throw new Error("FrameDecoder.take: internal error, not enough bytes");
      const k = Math.min(b.length, n - off);
      b.copy(out, off, 0, k);
      off += k;
      if (k === b.length) this.bufs.shift();
      else this.bufs[0] = b.subarray(k);
    }
    this.buffered -= n;
    return out;
  }

  next(): Frame | undefined {
    if (this.buffered < 1) return undefined;
    // Check the magic as soon as the bytes are there, so garbage is refused early.
    const first = this.bufs[0];
    if (first !== undefined && first.length >= 1 && first[0] !== FRAME_MAGIC0) this.badMagic();
    if (this.buffered < HEADER_SIZE) return undefined;
    const h = this.peekHeader();
    if (h[0] !== FRAME_MAGIC0 || h[1] !== FRAME_MAGIC1) this.badMagic();
    if (h[2] !== PROTOCOL_VERSION) {
      throw new ProtocolError(
        "bad-version",
        `unsupported protocol version ${h[2]}: this side speaks version ${PROTOCOL_VERSION}; upgrade the older side`,
      );
    }
    const type = h[3] as number;
    if (!KNOWN_TYPES.has(type)) {
      throw new ProtocolError("bad-frame-type", `malformed frame: unknown frame type ${type}`);
    }
    const len = h.readUInt32LE(4);
    if (len > this.maxPayload) {
      throw new ProtocolError(
        "frame-too-large",
        `oversized frame: type ${FrameType[type]} claims ${len} payload bytes, the limit is ${this.maxPayload}`,
      );
    }
    if (this.buffered < HEADER_SIZE + len) return undefined;
    const header = this.take(HEADER_SIZE);
    const crc = header.readUInt32LE(8);
    const payload = this.take(len);
    const actual = crc32(payload);
    if (actual !== crc) {
      throw new ProtocolError(
        "checksum-mismatch",
        `checksum mismatch in ${FrameType[type]} frame: CRC-32 of the ${len}-byte payload is ` +
          `${actual.toString(16)}, header says ${crc.toString(16)}; the stream is corrupt`,
      );
    }
    return { type: type as FrameType, payload };
  }

  private badMagic(): never {
    const b = this.bufs[0];
    const shown = b === undefined ? "" : b.subarray(0, 8).toString("hex");
    throw new ProtocolError(
      "bad-magic",
      `malformed frame: expected magic "TG" (5447), got ${shown}; the peer is not speaking the tardigrade mirror protocol`,
    );
  }
}
