// Frame layer of the mirror protocol: a 12-byte header, then the payload.
//
//   off size field
//   0   2    magic "TG" (0x54 0x47)
//   2   1    protocol version (2)
//   3   1    frame type (FrameType)
//   4   4    payload length, u32 little-endian, <= the receiver's limit
//   8   4    CRC-32 (IEEE, zlib) of the payload, u32 little-endian
//   12  len  payload
//
// See docs/mirror.md for every frame type's payload.
// CRC-32 (IEEE, same values as zlib's) from @node-rs/crc32: hardware-accelerated,
// 2-3x zlib's speed on the chunk data that makes up nearly every byte of a stream.
import { crc32 } from "@node-rs/crc32";

export const FRAME_MAGIC0 = 0x54; // 'T'
export const FRAME_MAGIC1 = 0x47; // 'G'
/** 2: batched Chunks frames (type 17) replace one Chunk frame per chunk from sources. */
export const PROTOCOL_VERSION = 2;
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
  Chunks = 17, // c->s: u32 count | count x (32-byte sha256 | u32 size) | the chunks' bytes, in order
  // 18-29: high availability (docs/ha.md)
  Lease = 18, // c->s JSON {host, epoch?, ttlMs} take (no epoch) or renew (its epoch) the source's lease; {probe: true}: answered Held, taking nothing
  Granted = 19, // s->c JSON {holder, epoch, ttlMs}: the asker holds the lease for ttlMs from now
  Held = 20, // s->c JSON {holder, epoch, expiresInMs, renewedMsAgo}: another host (or epoch) holds it
}



export interface Frame {
  type: FrameType;
  /** The payload (empty for a Chunks frame: see parts). */
  payload: Buffer;
  /**
   * Chunks frames only: the payload as it arrived, views of the receive buffers in
   * order (not joined: the chunks are cut out of them without copying).
   */
  parts?: Buffer[];
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

const EMPTY = Buffer.alloc(0);
const KNOWN_TYPES = new Set<number>(Object.values(FrameType).filter((v): v is number => typeof v === "number"));

/**
 * Incremental decoder: push() bytes as they arrive, next() returns whole frames.
 * Throws ProtocolError on bad magic, unknown version or type, a length over the
 * limit, or a CRC mismatch. Never buffers more than one frame (header + limit).
 */
export class FrameDecoder {
  private bufs: Buffer[] = [];
  private buffered = 0;
  /** Bytes of the stream consumed by the frames returned so far. */
  consumed = 0;

  /** Largest payload accepted (a connection raises it after Hello: frame-budget.ts). */
  constructor(public maxPayload: number = DEFAULT_MAX_FRAME) {}

  /**
   * Header + payload length of the frame now arriving when its header is in and the
   * frame is not complete and within the limit (what a connection reserves: frame-budget.ts); else 0.
   */
  partialFrameLength(): number {
    if (this.buffered < HEADER_SIZE) return 0;
    const len = this.peekHeader().readUInt32LE(4);
    if (len > this.maxPayload) return 0; // refused by next()
    const total = HEADER_SIZE + len;
    return this.buffered < total ? total : 0;
  }

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
    // Join only the few leading pieces that hold the 12 header bytes (not every
    // buffered read: that would copy a whole large frame just to peek at its header).
    let k = 0;
    let n = 0;
    while (n < HEADER_SIZE) n += (this.bufs[k++] as Buffer).length;
    const head = Buffer.concat(this.bufs.slice(0, k), n);
    this.bufs.splice(0, k, head);
    return head;
  }

  /** The next n bytes: a view of the read buffer when they lie in one, else a copy. */
  private take(n: number): Buffer {
    const first = this.bufs[0];
    if (first !== undefined && first.length >= n) {
      const out = first.subarray(0, n);
      if (first.length === n) this.bufs.shift();
      else this.bufs[0] = first.subarray(n);
      this.buffered -= n;
      this.consumed += n;
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
    this.consumed += n;
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
    let payload: Buffer;
    let parts: Buffer[] | undefined;
    let actual: number;
    if (type === FrameType.Chunks) {
      parts = this.takeParts(len);
      payload = EMPTY;
      actual = 0;
      for (const p of parts) actual = crc32(p, actual);
    } else {
      payload = this.take(len);
      actual = crc32(payload);
    }
    if (actual !== crc) {
      throw new ProtocolError(
        "checksum-mismatch",
        `checksum mismatch in ${FrameType[type]} frame: CRC-32 of the ${len}-byte payload is ` +
          `${actual.toString(16)}, header says ${crc.toString(16)}; the stream is corrupt`,
      );
    }
    return parts ? { type: type as FrameType, payload, parts } : { type: type as FrameType, payload };
  }

  /** The next n bytes as views of the buffered reads, without copying. */
  private takeParts(n: number): Buffer[] {
    const out: Buffer[] = [];
    let left = n;
    while (left > 0) {
      const b = this.bufs[0];
      if (b === undefined) throw new Error("FrameDecoder.takeParts: internal error, not enough bytes");
      if (b.length <= left) {
        out.push(b);
        this.bufs.shift();
        left -= b.length;
      } else {
        out.push(b.subarray(0, left));
        this.bufs[0] = b.subarray(left);
        left = 0;
      }
    }
    this.buffered -= n;
    this.consumed += n;
    return out;
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
