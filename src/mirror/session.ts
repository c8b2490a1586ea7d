// One connection on the destination: authenticates, then runs the per-source
// protocol (offer -> want -> chunks -> commit), admin requests (flush, list) and
// fetches. A ProtocolError closes only this connection, after telling the peer.
//
// Offers are pipelined: a source may offer up to OFFER_WINDOW checkpoints before
// committing the first (HelloOk tells it the window), so that the Want of the next
// checkpoint is on its way back while the chunks of the current one still stream in.
// The offers are answered in order, each once its cache room is reserved; the frame
// loop never waits for that (it keeps reading the current checkpoint's chunks, which
// is what frees room). A chunk of a later offer that an earlier one of this session is
// still waiting for is not asked for again: it is pinned for the later checkpoint when
// it arrives for the earlier one ("deferred").
import type { Logger } from "pino";
import type { FramedConnection } from "./connection.js";
import { FrameType, ProtocolError, type Frame } from "./frames.js";
import type { FlushOutcome, FlushReason } from "./flusher.js";
import { createHash } from "node:crypto";
import { chunkParts, decodeCheckpointHeader, decodeChunk, encodeWant, int, optStr, parseJson, splitChunks, str } from "./messages.js";
import { sha256hex, type CheckpointHeader } from "./objects.js";
import type { ChunkCache } from "./cache.js";
import type { ListedCheckpoint, QueuedCheckpoint } from "./server.js";
import type { LeaseAnswer, LeaseAnswerHeld } from "./lease.js";

export interface SourcePosition {
  durableSeq: number;
  durableId: string | null;
  receivedSeq: number;
  receivedId: string | null;
}

/** What a session needs from the server. */
export interface SessionHost {
  readonly cache: ChunkCache;
  readonly log: Logger;
  readonly handshakeTimeoutMs: number;
  /** Largest frame payload once authenticated (before Hello: frame-budget.ts's PRE_AUTH_MAX_FRAME). */
  readonly maxFrame: number;
  authenticate(token: string, claimedSource: string | undefined): string;
  position(source: string): SourcePosition;
  attachSource(source: string, s: Session): void;
  detachSource(source: string, s: Session): void;
  lastSeq(source: string): number;
  hasCheckpoint(source: string, id: string): boolean;
  /** On disk and usable by `source`'s checkpoints (checked, or its own bytes). */
  onDiskFor(hash: string, source: string): boolean;
  /** Some copy is cached or on disk, usable by `source` or not. */
  anyCopy(hash: string): boolean;
  /**
   * Another source's unchecked copy is cached or on disk: checks it against its name
   * now; resolves true if it matched (and is now usable by every source). Undefined
   * when there is no such copy.
   */
  shareForeign(hash: string, source: string): Promise<boolean> | undefined;
  enqueue(q: QueuedCheckpoint): void;
  flush(reason: FlushReason): Promise<FlushOutcome>;
  list(source: string): Promise<ListedCheckpoint[]>;
  fetch(source: string, id: string): Promise<{ header: Buffer; chunks: string[]; readChunk(hash: string): Promise<Buffer> }>;
  /** Writes these cached chunks of `source` (pinned by the caller) to disk now, ahead of their checkpoint. */
  spill(source: string, hashes: string[]): Promise<void>;
  /** The lease of `source` (lease.ts): taken or renewed by `host`. */
  lease(source: string, host: string, epoch: number | undefined, ttlMs: number): Promise<LeaseAnswer>;
  /** The epoch an Offer of `source` must carry (undefined: no lease was ever granted, any Offer goes). */
  epochOf(source: string): number | undefined;
  holderOf(source: string): string | undefined;
  /** The lease of `source` as it stands, not asking for it (Lease {probe: true}). */
  peekLease(source: string): LeaseAnswerHeld | null;
}

/** Checkpoints a source may offer before committing the first (told to it in HelloOk). */
export const OFFER_WINDOW = 4;

interface InProgress {
  header: CheckpointHeader;
  headerBytes: Buffer;
  /** Wanted chunks not yet arrived: hash -> size (still reserved). */
  missing: Map<string, number>;
  /** Chunks an earlier offer of this session is still waiting for (pinned when they arrive for it). */
  deferred: Set<string>;
  /** Chunks this checkpoint holds a cache reference on. */
  pinned: string[];
  /** Bytes of reservation still held for missing chunks. */
  reservedChunks: number;
  /**
   * Its chunks need more than the whole cache: they are reserved as they arrive and,
   * when the cache is full, written to disk ahead of the checkpoint (spilled: see spillFor).
   */
  streaming: boolean;
  /** Streaming: chunks it stored in the cache that are not on disk yet. */
  spillable: string[];
  /** Want sent: its chunks may arrive (and its cache reservation is held, this checkpoint's to release). */
  answered: boolean;
  /** The connection closed (or failed) before it was committed. */
  aborted: boolean;
  bytes: number;
}

let nextSessionId = 1;

export class Session {
  readonly id = nextSessionId++;
  source: string | undefined;
  role: "source" | "client" = "client";
  /** Offered, not yet committed, in offer order: [0] is the one whose chunks arrive. */
  private readonly pipeline: InProgress[] = [];
  /** Answers the offers one at a time, in order (see prepareOffer). */
  private offers: Promise<void> = Promise.resolve();
  private readonly log: Logger;

  constructor(
    private readonly conn: FramedConnection,
    private readonly host: SessionHost,
    remote: string,
  ) {
    this.log = host.log.child({ session: this.id, remote });
  }

  get closed(): boolean {
    return this.conn.isClosed;
  }

  async run(): Promise<void> {
    const hs = setTimeout(() => {
      if (this.source === undefined) {
        this.fail(new ProtocolError("handshake-timeout", `no Hello within ${this.host.handshakeTimeoutMs} ms; closing`));
      }
    }, this.host.handshakeTimeoutMs);
    hs.unref();
    try {
      for await (const f of this.conn.frames()) {
        if (this.conn.isClosed) break;
        await this.handle(f);
      }
    } catch (err) {
      if (err instanceof ProtocolError) this.fail(err);
      else if (!this.conn.isClosed) {
        this.log.warn({ err: (err as Error).message }, "connection error");
        this.conn.close();
      }
    } finally {
      clearTimeout(hs);
      this.abortAll("connection closed");
      if (this.source !== undefined && this.role === "source") this.host.detachSource(this.source, this);
      this.conn.close();
      this.log.debug({ bytesIn: this.conn.bytesIn, bytesOut: this.conn.bytesOut }, "connection closed");
    }
  }

  fail(err: ProtocolError): void {
    if (this.conn.isClosed) return;
    this.log.warn({ code: err.code, source: this.source }, err.message);
    this.conn.fail(err);
    // Now, not when the read loop notices: the partial checkpoint's cache references go at once.
    this.abortAll(`connection closed: ${err.code}`);
  }

  /** Sent by the server when a flush made some of this source's checkpoints durable. */
  notifyDurable(ids: string[], seqs: number[], generation: number): void {
    if (this.conn.isClosed) return;
    this.conn.sendJson(FrameType.Durable, { ids, seqs, generation }).catch(() => undefined);
  }

  private async handle(f: Frame): Promise<void> {
    if (this.source === undefined) {
      if (f.type !== FrameType.Hello) {
        throw new ProtocolError("out-of-order", `expected Hello as the first frame, got ${FrameType[f.type]}`);
      }
      return this.hello(f.payload);
    }
    switch (f.type) {
      case FrameType.Offer:
        return this.offer(f.payload);
      case FrameType.Chunks:
        return this.chunks(f.parts ?? [f.payload]);
      case FrameType.Chunk:
        return this.chunk(f.payload);
      case FrameType.Commit:
        return this.commit(f.payload);
      case FrameType.Flush:
        return this.flush();
      case FrameType.List:
        return this.conn.sendJson(FrameType.Listing, { source: this.source, checkpoints: await this.host.list(this.source) });
      case FrameType.Fetch:
        return this.fetch(f.payload);
      case FrameType.Lease:
        return this.lease(f.payload);
      case FrameType.Error: {
        this.log.warn({ source: this.source, peerError: f.payload.toString("utf8").slice(0, 500) }, "peer reported an error");
        this.conn.close();
        return;
      }
      default:
        throw new ProtocolError("out-of-order", `unexpected ${FrameType[f.type]} frame from a client`);
    }
  }

  private async hello(payload: Buffer): Promise<void> {
    const h = parseJson(FrameType.Hello, payload);
    const token = str(h, "token", FrameType.Hello);
    const claimed = optStr(h, "source", FrameType.Hello);
    const role = optStr(h, "role", FrameType.Hello) ?? "client";
    if (role !== "source" && role !== "client") {
      throw new ProtocolError("malformed-frame", `malformed frame: Hello.role must be "source" or "client"`);
    }
    const source = this.host.authenticate(token, claimed);
    this.conn.setMaxFrame(this.host.maxFrame);
    this.source = source;
    this.role = role;
    if (role === "source") this.host.attachSource(source, this);
    this.log.info({ source, role }, "authenticated");
    await this.conn.sendJson(FrameType.HelloOk, { source, ...this.host.position(source), offerWindow: OFFER_WINDOW });
  }

  /**
   * An Offer: checked and placed in the pipeline at once; its Want is sent by
   * prepareOffer, after the earlier offers' (the frame loop does not wait for it).
   */
  private offer(payload: Buffer): void {
    const source = this.source as string;
    if (this.role !== "source") throw new ProtocolError("out-of-order", `Offer on a connection that said Hello with role "client"`);
    if (this.pipeline.length >= OFFER_WINDOW) {
      throw new ProtocolError(
        "out-of-order",
        `Offer for a new checkpoint while ${OFFER_WINDOW} offered ones are not committed (the window is ${OFFER_WINDOW})`,
      );
    }
    const header = decodeCheckpointHeader(FrameType.Offer, payload);
    // Fencing (docs/ha.md): once a lease was granted for the source, only its current epoch may add checkpoints.
    const epoch = this.host.epochOf(source);
    if (epoch !== undefined && header.epoch !== epoch) {
      throw new ProtocolError(
        "fenced",
        `fenced: ${source}/${header.id} was offered under ${header.epoch === undefined ? "no lease epoch" : `lease epoch ${header.epoch}`}, ` +
          `but the lease of ${source} is at epoch ${epoch}, held by ${this.host.holderOf(source) ?? "?"}; ` +
          `this host lost the lease: its app must stay stopped (the holder runs it)`,
      );
    }
    const prev = this.pipeline[this.pipeline.length - 1];
    const last = prev?.header.seq ?? this.host.lastSeq(source);
    if (header.seq <= last) {
      throw new ProtocolError(
        "out-of-order",
        `out-of-order checkpoint: ${source}/${header.id} has seq ${header.seq} but the mirror already has seq ${last}; seqs must increase`,
      );
    }
    if (this.host.hasCheckpoint(source, header.id) || this.pipeline.some((p) => p.header.id === header.id)) {
      throw new ProtocolError("duplicate", `checkpoint ${source}/${header.id} already exists on the mirror`);
    }
    // An incremental is only as good as its parent: acknowledging it without one would
    // promise a checkpoint nobody can restore (the store lost the parent, or was replaced).
    const parent = header.parent;
    if (parent !== undefined && !this.host.hasCheckpoint(source, parent) && !this.pipeline.some((p) => p.header.id === parent)) {
      throw new ProtocolError(
        "missing-parent",
        `checkpoint ${source}/${header.id} is an increment on ${parent}, which this mirror does not hold (its store lost it or was replaced); ` +
          `send the chain again from a full checkpoint`,
      );
    }
    const e: InProgress = {
      header,
      headerBytes: payload,
      missing: new Map(),
      deferred: new Set(),
      pinned: [],
      reservedChunks: 0,
      streaming: false,
      spillable: [],
      answered: false,
      aborted: false,
      bytes: 0,
    };
    this.pipeline.push(e);
    this.offers = this.offers.then(() => this.prepareOffer(e)).catch((err: unknown) => {
      if (err instanceof ProtocolError) this.fail(err);
      else if (!this.conn.isClosed) {
        this.log.warn({ err: (err as Error).message }, "connection error while answering an offer");
        this.conn.close();
        this.abortAll("connection error");
      }
    });
  }

  /**
   * Works out which chunks of an offered checkpoint to ask for, reserves cache room
   * for them (waiting, under backpressure, until there is room), pins the rest, and
   * sends the Want. Runs for one offer at a time, in offer order.
   */
  private async prepareOffer(e: InProgress): Promise<void> {
    if (e.aborted) return;
    const source = this.source as string;
    const { header, headerBytes } = e;
    const cache = this.host.cache;
    const wanted: number[] = [];
    const missing = e.missing;
    let reservedChunks = 0;
    for (let i = 0; i < header.chunks.length; i++) {
      const c = header.chunks[i] as { hash: string; size: number };
      e.bytes += c.size;
      if (missing.has(c.hash) || e.deferred.has(c.hash)) continue;
      if (this.host.onDiskFor(c.hash, source) || cache.usable(c.hash, source)) continue;
      if (this.earlierMissing(e, c.hash)) {
        e.deferred.add(c.hash);
        continue;
      }
      // Another source sent these bytes and nobody checked them yet: check them now
      // (only chunks two sources share are ever hashed by the destination).
      const shared = this.host.shareForeign(c.hash, source);
      if (shared !== undefined && (await shared)) continue;
      wanted.push(i);
      missing.set(c.hash, c.size);
      reservedChunks += c.size;
    }
    // A checkpoint bigger than the whole cache streams through it to disk: its chunks
    // are reserved as they arrive (chunks()), not all before the Want.
    if (reservedChunks + headerBytes.length > cache.maxBytes && headerBytes.length <= cache.maxBytes / 2) {
      e.streaming = true;
      this.log.info({ source, id: header.id, bytes: reservedChunks, cacheMax: cache.maxBytes }, "checkpoint larger than the cache: streaming it to disk");
      reservedChunks = 0;
    }
    // Admission: wait until the cache has room (the source's chunks for this
    // checkpoint wait for the Want, which is how a source is slowed down).
    try {
      await cache.reserve(reservedChunks + headerBytes.length);
    } catch (err) {
      throw new ProtocolError("too-large", `checkpoint ${source}/${header.id} ${(err as Error).message}`);
    }
    if (e.aborted || this.conn.isClosed) {
      cache.release(reservedChunks + headerBytes.length);
      return;
    }
    e.reservedChunks = reservedChunks;
    // Pin what the cache has now (it may have changed while we waited for room);
    // deferred chunks that arrived meanwhile were pinned when they did.
    const arrived = new Set(e.pinned);
    for (let i = 0; i < header.chunks.length; i++) {
      const c = header.chunks[i] as { hash: string; size: number };
      if (missing.has(c.hash) || arrived.has(c.hash)) continue;
      if (e.deferred.has(c.hash)) {
        // Arrived for the earlier checkpoint meanwhile: pin it now.
        if (this.earlierMissing(e, c.hash)) continue;
        e.deferred.delete(c.hash);
      }
      if (cache.pin(c.hash, source)) e.pinned.push(c.hash);
      else if (!this.host.onDiskFor(c.hash, source)) {
        // Was cached at offer time but got flushed meanwhile: it is on disk now, unless
        // its owner aborted; then ask for it after all (reservation may overshoot a bit).
        missing.set(c.hash, c.size);
        wanted.push(i);
      }
    }
    wanted.sort((a, b) => a - b);
    e.answered = true;
    await this.conn.send(FrameType.Want, [encodeWant(header.id, header.chunks.length, wanted)]);
  }

  /** An offer before `e` in this session is still waiting for chunk `hash`. */
  private earlierMissing(e: InProgress, hash: string): boolean {
    for (const p of this.pipeline) {
      if (p === e) return false;
      if (p.missing.has(hash)) return true;
    }
    return false;
  }

  /** A single-chunk frame (protocol 1's way; still accepted): verified on arrival. */
  private async chunk(payload: Buffer): Promise<void> {
    const cur = this.inProgress("Chunk");
    const { hash, data } = decodeChunk(payload);
    if (cur.streaming) await this.roomFor(cur, data.length);
    this.claim(cur, hash, data.length);
    this.verify(hash, data);
    this.store(cur, hash, [data], data.length, true);
  }

  /**
   * A Chunks frame: many chunks of the current checkpoint, each copied once from the
   * receive buffers into the cache's slab memory. Their names and sizes are checked
   * here, their bytes by the frame's CRC; they are cached unchecked, usable only by
   * this source (see cache.ts). A chunk that was wanted although some copy of it
   * exists (another source's that failed its check, or bad bytes) is hashed on
   * arrival, so that it can replace that copy.
   */
  private async chunks(parts: Buffer[]): Promise<void> {
    const cur = this.inProgress("Chunks");
    let total = 0;
    for (const p of parts) total += p.length;
    const { hashes, sizes, pieces } = splitChunks(parts, total);
    for (let i = 0; i < hashes.length; i++) {
      const hash = hashes[i] as string;
      const size = sizes[i] as number;
      // (The frame's views stay valid while it is handled, also across this wait.)
      if (cur.streaming) await this.roomFor(cur, size);
      if (cur.aborted || this.conn.isClosed) return;
      this.claim(cur, hash, size);
      const check = this.host.anyCopy(hash) && !this.host.cache.usable(hash, this.source as string);
      if (check) this.verify(hash, pieces[i] as Buffer[]);
      this.store(cur, hash, pieces[i] as Buffer[], size, check);
    }
  }

  /** The checkpoint whose chunks arrive now: the oldest offered one, once its Want was sent. */
  private inProgress(what: string): InProgress {
    const cur = this.pipeline[0];
    if (!cur) throw new ProtocolError("out-of-order", `out-of-order frame: ${what} before any Offer`);
    if (!cur.answered) throw new ProtocolError("out-of-order", `out-of-order frame: ${what} for ${cur.header.id} before its Want`);
    return cur;
  }

  private verify(hash: string, data: Buffer | readonly Buffer[]): void {
    let actual: string;
    if (Buffer.isBuffer(data)) actual = sha256hex(data);
    else {
      const h = createHash("sha256");
      for (const p of data) h.update(p);
      actual = h.digest("hex");
    }
    if (actual !== hash) {
      throw new ProtocolError("checksum-mismatch", `checksum mismatch: chunk announced as ${hash} hashes to ${actual}`);
    }
  }

  /** Checks that a chunk is wanted and of the offered size, and marks it as arrived. */
  private claim(cur: InProgress, hash: string, length: number): number {
    const size = cur.missing.get(hash);
    if (size === undefined) {
      throw new ProtocolError("out-of-order", `out-of-order frame: chunk ${hash} was not asked for in checkpoint ${cur.header.id}`);
    }
    if (length !== size) {
      throw new ProtocolError("checksum-mismatch", `chunk ${hash} is ${length} bytes, the offer said ${size}`);
    }
    cur.missing.delete(hash);
    return size;
  }

  /**
   * Caches a chunk (given as the pieces it lies in, `size` bytes), turning its
   * reservation into data; its bytes are copied only if the cache does not already
   * have a copy this source may use. True if its bytes were stored.
   */
  private store(cur: InProgress, hash: string, pieces: readonly Buffer[], size: number, verified: boolean): boolean {
    const cache = this.host.cache;
    const source = this.source as string;
    const reserved = Math.min(size, cur.reservedChunks);
    cur.reservedChunks -= reserved;
    let stored = false;
    if (cache.pin(hash, source)) cache.release(reserved);
    else stored = cache.insert(hash, cache.slabs.copyOf(pieces, size), reserved, source, verified);
    cur.pinned.push(hash);
    if (cur.streaming) cur.spillable.push(hash);
    // Later offers of this session that were not asked for this chunk because this one was.
    for (let i = 1; i < this.pipeline.length; i++) {
      const later = this.pipeline[i] as InProgress;
      if (!later.deferred.delete(hash)) continue;
      if (!cache.pin(hash, source)) throw new Error(`internal error: chunk ${hash} just cached is not usable by its own source`);
      later.pinned.push(hash);
    }
    return stored;
  }

  /**
   * A streaming checkpoint's next chunk needs `size` bytes of cache: reserves them,
   * first writing the chunks it has cached to disk (a flush of chunks only) and dropping
   * them from the cache when it is full. Reading this connection waits meanwhile.
   */
  private async roomFor(cur: InProgress, size: number): Promise<void> {
    const cache = this.host.cache;
    if (cur.reservedChunks >= size) return;
    if (cache.used + size > cache.maxBytes && cur.spillable.length > 0) {
      const hashes = cur.spillable.splice(0);
      await this.host.spill(this.source as string, hashes);
      if (cur.aborted) return;
      // On disk now (usable by this source): neither this checkpoint nor a later offer
      // that shares them (pinned when they arrived: store()) needs them cached.
      const written = new Set(hashes);
      for (const p of this.pipeline) {
        p.pinned = p.pinned.filter((h) => {
          if (!written.has(h)) return true;
          cache.unpin(h);
          return false;
        });
      }
    }
    try {
      await cache.reserve(size);
    } catch (err) {
      throw new ProtocolError("too-large", `checkpoint ${this.source as string}/${cur.header.id} ${(err as Error).message}`);
    }
    if (cur.aborted) {
      cache.release(size);
      return;
    }
    cur.reservedChunks += size;
  }

  private commit(payload: Buffer): void {
    const cur = this.pipeline[0];
    const source = this.source as string;
    const id = str(parseJson(FrameType.Commit, payload), "id", FrameType.Commit);
    if (!cur || cur.header.id !== id) {
      throw new ProtocolError("out-of-order", `out-of-order frame: Commit for ${id} without a matching Offer`);
    }
    if (!cur.answered) throw new ProtocolError("out-of-order", `out-of-order frame: Commit of ${id} before its Want`);
    if (cur.missing.size > 0) {
      throw new ProtocolError(
        "out-of-order",
        `out-of-order frame: Commit of ${id} before all chunks arrived (${cur.missing.size} still missing)`,
      );
    }
    if (cur.deferred.size > 0) throw new Error(`internal error: ${id} committed with chunks of an earlier offer still missing`);
    this.pipeline.shift();
    if (cur.reservedChunks > 0) this.host.cache.release(cur.reservedChunks);
    this.host.enqueue({
      source,
      id,
      seq: cur.header.seq,
      ...(cur.header.parent !== undefined ? { parent: cur.header.parent } : {}),
      header: cur.headerBytes,
      chunkHashes: cur.pinned,
      chunkCount: cur.header.chunks.length,
      bytes: cur.bytes,
      receivedAt: new Date(),
      queuedAtMs: Date.now(),
    });
    this.conn.sendJson(FrameType.Received, { id, seq: cur.header.seq }).catch(() => undefined);
  }

  /** Drops every offered checkpoint not committed (their pins and cache reservations). */
  private abortAll(why: string): void {
    for (const cur of this.pipeline.splice(0)) {
      cur.aborted = true;
      for (const h of cur.pinned) this.host.cache.unpin(h);
      if (cur.answered) this.host.cache.release(cur.reservedChunks + cur.headerBytes.length);
      this.log.info({ source: this.source, id: cur.header.id }, `partial checkpoint discarded: ${why}`);
    }
  }

  /** Lease {host, epoch?, ttlMs}: answered Granted or Held (lease.ts). */
  private async lease(payload: Buffer): Promise<void> {
    const req = parseJson(FrameType.Lease, payload);
    if (req.probe === true) {
      // A standby watching: who holds it and when it was last renewed (holder "" and epoch 0: never granted).
      const p = this.host.peekLease(this.source as string);
      await this.conn.sendJson(FrameType.Held, p ? { holder: p.holder, epoch: p.epoch, expiresInMs: p.expiresInMs, renewedMsAgo: p.renewedMsAgo } : { holder: "", epoch: 0, expiresInMs: 0, renewedMsAgo: null });
      return;
    }
    const host = str(req, "host", FrameType.Lease);
    if (host.length === 0 || host.length > 256) throw new ProtocolError("malformed-frame", "malformed frame: Lease.host must be 1 to 256 characters");
    const epoch = req.epoch === undefined || req.epoch === null ? undefined : int(req, "epoch", FrameType.Lease);
    const ttlMs = int(req, "ttlMs", FrameType.Lease);
    const source = this.source as string;
    const a = await this.host.lease(source, host, epoch, ttlMs);
    if (a.granted) {
      if (epoch === undefined) this.log.info({ source, host, epoch: a.epoch, ttlMs: a.ttlMs }, "lease granted");
      await this.conn.sendJson(FrameType.Granted, { holder: a.holder, epoch: a.epoch, ttlMs: a.ttlMs });
    } else {
      if (epoch !== undefined) this.log.warn({ source, host, epoch, current: a.epoch, holder: a.holder }, "lease renewal refused: stale epoch");
      await this.conn.sendJson(FrameType.Held, { holder: a.holder, epoch: a.epoch, expiresInMs: a.expiresInMs, renewedMsAgo: a.renewedMsAgo });
    }
  }

  private async flush(): Promise<void> {
    const r = await this.host.flush("explicit");
    await this.conn.sendJson(FrameType.Flushed, r);
  }

  private async fetch(payload: Buffer): Promise<void> {
    const own = this.source as string;
    const req = parseJson(FrameType.Fetch, payload);
    const source = str(req, "source", FrameType.Fetch);
    const id = str(req, "id", FrameType.Fetch);
    if (source !== own) {
      throw new ProtocolError(
        "forbidden",
        `forbidden: this token belongs to source "${own}" and may not read checkpoints of source "${source}"`,
      );
    }
    const have = new Set<string>();
    const haveList = req.have;
    if (Array.isArray(haveList)) for (const h of haveList) if (typeof h === "string") have.add(h);
    let got;
    try {
      got = await this.host.fetch(source, id);
    } catch (err) {
      throw new ProtocolError("not-found", (err as Error).message);
    }
    // `want` (optional): send only these chunks (none for an empty list: the header alone).
    const wantList = req.want;
    const want = Array.isArray(wantList) ? new Set(wantList.filter((h): h is string => typeof h === "string")) : undefined;
    await this.conn.send(FrameType.FetchHeader, [got.header]);
    let sent = 0;
    for (const h of got.chunks) {
      if (have.has(h) || (want !== undefined && !want.has(h))) continue;
      let data: Buffer;
      try {
        data = await got.readChunk(h);
      } catch (err) {
        throw new ProtocolError("damaged", `checkpoint ${source}/${id}: ${(err as Error).message}`);
      }
      await this.conn.send(FrameType.Chunk, chunkParts(h, data));
      sent++;
    }
    await this.conn.sendJson(FrameType.FetchEnd, { id, chunks: sent });
  }
}

