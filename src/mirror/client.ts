// The source side: streams checkpoints, in seq order, to one mirror destination.
// Per checkpoint: Offer (header + chunk list + manifest) -> Want (the chunks the
// destination lacks) -> those Chunks -> Commit. The destination answers Received
// when the checkpoint is cached and queued, Durable when a flush committed it.
// Offers run ahead of chunks, up to the window the destination's Hello answer gives
// (none given: one at a time): the next checkpoint is offered before the current
// one's chunks are sent, so its Want comes back while they stream and the connection
// never idles for an Offer/Want round trip.
// After a disconnect the client reconnects with exponential backoff; the Hello
// answer says what the destination already has, so durable data is never resent.
import { EventEmitter } from "node:events";
import type { Logger } from "pino";
import { parseMirrorUrl, type MirrorAddress } from "./address.js";
import { FramedConnection, MirrorRemoteError, remoteError } from "./connection.js";
import { dial, type DialOptions } from "./dial.js";
import { FrameType, ProtocolError, type Frame } from "./frames.js";
import { MAX_CHUNKS_PER_FRAME, decodeWant, encodeCheckpointHeader, encodeChunksTable, parseJson } from "./messages.js";
import { checkCheckpoint, chunkBytes, headerOf, type CheckpointHeader, type LazyChunk, type MirrorCheckpoint } from "./objects.js";
import { silentLogger } from "./log.js";

export type AckLevel = "received" | "durable";
export type MirrorState = "queued" | "received" | "durable";

export interface MirrorClientOptions {
  /** tg://HOST:PORT or tgs://HOST:PORT */
  url: string;
  token: string;
  /** Source name; must match what the token names on the server. */
  source: string;
  /** What send() waits for (default "durable"). */
  ack?: AckLevel;
  dial?: DialOptions;
  backoff?: { initialMs?: number; maxMs?: number };
  logger?: Logger;
  /** Chunk bytes per Chunks frame (default 1 MiB; a chunk bigger than this goes alone). */
  frameBytes?: number;
  /**
   * Hold the source's lease (docs/ha.md): taken right after each Hello (renewed with
   * `epoch` when given: a restarted daemon, or a standby that took it over), renewed every
   * ttlMs/6, and every Offer carries its epoch. Losing it (Held, a `fenced` refusal, or no
   * renewal answered before expiry minus a margin, by this process's monotonic clock)
   * emits "fenced" once and stops the client for good.
   */
  lease?: { host: string; ttlMs: number; epoch?: number; /** renew only while this holds (the app runs): else the lease lapses */ keep?: () => boolean };
}

/** Why a leased source must stop running its app (event "fenced"). */
export interface FencedInfo {
  /** Who holds the lease now ("?" when unknown: the lease expired unrenewed). */
  holder: string;
  /** The lease's current epoch (this client's own when it expired unrenewed). */
  epoch: number;
  reason: string;
}

export class FencedError extends Error {
  constructor(readonly info: FencedInfo) {
    super(`fenced: ${info.reason}`);
    this.name = "FencedError";
  }
}

/** Default chunk bytes per Chunks frame: big enough that per-frame costs vanish. */
export const DEFAULT_FRAME_BYTES = 1024 * 1024;

export interface MirrorStateEvent {
  source: string;
  id: string;
  seq: number;
  state: MirrorState;
}

export interface MirrorClientStats {
  connects: number;
  bytesSent: number;
  chunksSent: number;
  chunkBytesSent: number;
  chunksSkipped: number;
  checkpointsOffered: number;
  /** Time spent with nothing to send but a Want to wait for (ms): what offering ahead saves. */
  wantWaitMs: number;
}

interface Entry {
  ckpt: MirrorCheckpoint<Buffer | LazyChunk>;
  state: MirrorState;
  waiters: { level: AckLevel; resolve: (s: MirrorState) => void; reject: (e: Error) => void }[];
}

/**
 * A LazyChunk of a checkpoint could not be read (e.g. the store's gc rewrote the block):
 * that checkpoint's send is rejected with this error (event "failed"), the connection is
 * dropped (the destination discards the partial offer) and the client goes on with the next.
 * The caller may describe the checkpoint again and send it with the same seq.
 */
export class ChunkReadError extends Error {
  constructor(
    readonly id: string,
    readonly seq: number,
    readonly reason: Error,
  ) {
    super(`cannot read a chunk of checkpoint ${id}: ${reason.message}`);
    this.name = "ChunkReadError";
  }
}

/**
 * The destination refused one checkpoint (retrying the same offer cannot help): its send
 * is rejected with this error instead of reconnecting forever; the client goes on with
 * the next ones.
 */
export class CheckpointRefusedError extends Error {
  constructor(
    readonly id: string,
    readonly seq: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = "CheckpointRefusedError";
  }
}

/**
 * The destination does not hold the parent of an offered checkpoint (its store lost it):
 * the caller sends the chain again (bridge.ts).
 */
export class MissingParentError extends CheckpointRefusedError {
  constructor(id: string, seq: number, message: string) {
    super(id, seq, "missing-parent", message);
    this.name = "MissingParentError";
  }
}

/** Error codes that refuse one checkpoint, not the source. */
const REFUSAL_CODES = new Set(["missing-parent", "too-large"]);

/** Chunk reads started ahead of the one being sent (LazyChunks). */
const READ_AHEAD = 4;

/** Errors after which retrying cannot help: reported and the client stops. */
const FATAL_CODES = new Set(["auth-failed", "bad-version", "forbidden", "fenced"]);

const RANK: Record<MirrorState, number> = { queued: 0, received: 1, durable: 2 };

export class MirrorClient extends EventEmitter {
  private readonly addr: MirrorAddress;
  private readonly log: Logger;
  private readonly entries: Entry[] = [];
  private readonly byId = new Map<string, Entry>();
  private lastSeq = 0;
  private conn: FramedConnection | undefined;
  private stopped = false;
  private loop: Promise<void> | undefined;
  private wake: (() => void) | undefined;
  /** Offers sent whose Want has not arrived, oldest first (Wants come in offer order). */
  private wantWaiters: { resolve: (f: Buffer) => void; reject: (e: Error) => void }[] = [];
  /** Checkpoints offered ahead of the one being sent, at most this many in all (from HelloOk). */
  private offerWindow = 1;
  private backoffMs: number;
  private fatal: Error | undefined;
  /** What the destination said it had at the last Hello (seqs at or below are not offered again). */
  private remote = { durableSeq: 0, receivedSeq: 0 };
  /** The lease epoch this client holds (undefined before the first grant, or without a lease). */
  epoch: number | undefined;
  /** performance.now() when the lease runs out unless renewed (the renewal's send time + ttl). */
  leaseExpiresAt = 0;
  /** Send times of renewals not yet answered (answers come in order). */
  private leaseSent: number[] = [];
  private leaseTimer: NodeJS.Timeout | undefined;
  private expiryTimer: NodeJS.Timeout | undefined;
  fenced: FencedInfo | undefined;
  readonly stats: MirrorClientStats = {
    connects: 0,
    bytesSent: 0,
    chunksSent: 0,
    chunkBytesSent: 0,
    chunksSkipped: 0,
    checkpointsOffered: 0,
    wantWaitMs: 0,
  };

  constructor(private readonly opts: MirrorClientOptions) {
    super();
    this.addr = parseMirrorUrl(opts.url);
    this.log = (opts.logger ?? silentLogger()).child({ mirror: opts.url, source: opts.source });
    this.backoffMs = opts.backoff?.initialMs ?? 100;
    this.epoch = opts.lease?.epoch;
  }

  /** Starts connecting (and reconnecting) in the background. */
  start(): this {
    this.loop ??= this.run();
    return this;
  }

  /**
   * Queues a checkpoint; resolves when it reaches `ack` (default: the client's level).
   * Checkpoints must be sent in increasing seq order.
   */
  send(ckpt: MirrorCheckpoint<Buffer | LazyChunk>, ack: AckLevel = this.opts.ack ?? "durable"): Promise<MirrorState> {
    if (this.fatal) return Promise.reject(this.fatal);
    if (ckpt.source !== this.opts.source) {
      return Promise.reject(new Error(`checkpoint ${ckpt.id} is of source ${ckpt.source}, this client streams ${this.opts.source}`));
    }
    try {
      checkCheckpoint(ckpt);
    } catch (err) {
      return Promise.reject(err as Error);
    }
    if (ckpt.seq <= this.lastSeq) {
      return Promise.reject(
        new Error(`checkpoint ${ckpt.id} has seq ${ckpt.seq}, not above the last queued seq ${this.lastSeq}; send in seq order`),
      );
    }
    this.lastSeq = ckpt.seq;
    const e: Entry = { ckpt, state: "queued", waiters: [] };
    this.entries.push(e);
    this.byId.set(ckpt.id, e);
    const p = new Promise<MirrorState>((resolve, reject) => e.waiters.push({ level: ack, resolve, reject }));
    this.emitState(e);
    this.start();
    this.wake?.();
    return p;
  }

  /** Mirror state of a checkpoint this client was given (undefined once forgotten after durable). */
  state(id: string): MirrorState | undefined {
    return this.byId.get(id)?.state;
  }

  /** Checkpoints not yet durable on the destination. */
  get pending(): number {
    return this.entries.length;
  }

  /** Stops: closes the connection; unacknowledged sends are rejected. */
  async close(): Promise<void> {
    this.stopped = true;
    clearInterval(this.leaseTimer);
    clearTimeout(this.expiryTimer);
    this.wake?.();
    this.conn?.close();
    this.conn?.socket.destroy();
    const err = new Error("mirror client closed before the checkpoint was acknowledged");
    this.rejectWants(err);
    await this.loop?.catch(() => undefined);
    for (const e of this.entries.splice(0)) for (const w of e.waiters.splice(0)) w.reject(err);
  }

  private emitState(e: Entry): void {
    const ev: MirrorStateEvent = { source: e.ckpt.source, id: e.ckpt.id, seq: e.ckpt.seq, state: e.state };
    this.emit("state", ev);
  }

  private setState(e: Entry, state: MirrorState): void {
    if (RANK[state] <= RANK[e.state] && !(state === "queued" && e.state === "received")) return;
    e.state = state;
    this.emitState(e);
    e.waiters = e.waiters.filter((w) => {
      if (RANK[state] >= RANK[w.level]) {
        w.resolve(state);
        return false;
      }
      return true;
    });
    if (state === "durable") {
      const i = this.entries.indexOf(e);
      if (i >= 0) this.entries.splice(i, 1);
      // Forget soon: the daemon records durable states in its own store.
      setTimeout(() => this.byId.get(e.ckpt.id) === e && this.byId.delete(e.ckpt.id), 60_000).unref();
    }
  }

  /**
   * Forgets every checkpoint not yet durable, rejecting its send with `err`, so that the
   * caller can send checkpoints again from any seq (after the destination lost some:
   * bridge.ts). Safe to call from a "connected" listener (nothing is offered yet then).
   */
  reset(err: Error): void {
    for (const e of this.entries.splice(0)) {
      if (this.byId.get(e.ckpt.id) === e) this.byId.delete(e.ckpt.id);
      for (const w of e.waiters.splice(0)) w.reject(err);
    }
    this.lastSeq = 0;
    if (this.wantWaiters.length > 0) this.conn?.socket.destroy();
  }

  /** Gives up on one checkpoint (its chunks cannot be read); the caller may send it again. */
  private failEntry(e: Entry, err: ChunkReadError | CheckpointRefusedError): void {
    const i = this.entries.indexOf(e);
    if (i >= 0) this.entries.splice(i, 1);
    if (this.byId.get(e.ckpt.id) === e) this.byId.delete(e.ckpt.id);
    // Let the same seq be sent again if nothing later was queued meanwhile.
    if (this.lastSeq === e.ckpt.seq) this.lastSeq = Math.max(0, ...this.entries.map((x) => x.ckpt.seq));
    this.log.warn({ id: e.ckpt.id, err: err.message }, err instanceof ChunkReadError ? "checkpoint dropped: a chunk cannot be read" : "checkpoint refused by the mirror");
    this.emit("failed", { source: e.ckpt.source, id: e.ckpt.id, seq: e.ckpt.seq, error: err });
    for (const w of e.waiters.splice(0)) w.reject(err);
  }

  private async run(): Promise<void> {
    while (!this.stopped) {
      try {
        await this.session();
      } catch (err) {
        if (this.stopped) break;
        const e = err as Error;
        if (e instanceof MirrorRemoteError && REFUSAL_CODES.has(e.code)) {
          // The first checkpoint not yet received is the one refused (offers are checked in order).
          const refused = this.entries.find((x) => x.state === "queued");
          if (refused) {
            const { id, seq } = refused.ckpt;
            this.failEntry(refused, e.code === "missing-parent" ? new MissingParentError(id, seq, e.message) : new CheckpointRefusedError(id, seq, e.code, e.message));
          }
        }
        if (e instanceof FencedError || (e instanceof MirrorRemoteError && e.code === "fenced")) {
          const m = /at epoch (\d+), held by (\S+);/.exec(e.message);
          this.fence(e instanceof FencedError ? e.info : { holder: m?.[2] ?? "?", epoch: Number(m?.[1] ?? 0), reason: e.message });
          return;
        }
        if (e instanceof MirrorRemoteError && FATAL_CODES.has(e.code)) {
          this.fatal = e;
          this.log.error({ err: e.message }, "mirror refused this source; not retrying");
          this.emit("fatal", e);
          for (const en of this.entries) for (const w of en.waiters.splice(0)) w.reject(e);
          return;
        }
        this.log.warn({ err: e.message, retryInMs: this.backoffMs }, "mirror connection lost; reconnecting");
        this.emit("disconnected", e);
      }
      if (this.stopped) break;
      await new Promise((r) => setTimeout(r, this.backoffMs * (0.5 + Math.random() / 2)));
      this.backoffMs = Math.min(this.backoffMs * 2, this.opts.backoff?.maxMs ?? 30_000);
    }
  }

  private async session(): Promise<void> {
    const sock = await dial(this.addr, this.opts.dial);
    const conn = new FramedConnection(sock);
    this.conn = conn;
    this.stats.connects++;
    const frames = conn.frames();
    try {
      await conn.sendJson(FrameType.Hello, { token: this.opts.token, source: this.opts.source, role: "source" });
      const first = await frames.next();
      if (first.done === true) throw new Error("mirror closed the connection during the handshake");
      if (first.value.type === FrameType.Error) throw remoteError(first.value.payload);
      if (first.value.type !== FrameType.HelloOk) throw new Error(`mirror answered Hello with ${FrameType[first.value.type]}`);
      const pos = parseJson(FrameType.HelloOk, first.value.payload);
      const durableSeq = Number(pos.durableSeq ?? 0);
      const receivedSeq = Number(pos.receivedSeq ?? 0);
      this.backoffMs = this.opts.backoff?.initialMs ?? 100;
      this.remote = { durableSeq, receivedSeq };
      const w = Number(pos.offerWindow ?? 1);
      this.offerWindow = Number.isSafeInteger(w) && w >= 1 ? Math.min(w, 64) : 1;
      this.log.info({ durableSeq, receivedSeq }, "connected to mirror");
      for (const e of [...this.entries]) {
        if (e.ckpt.seq <= durableSeq) this.setState(e, "durable");
        else if (e.ckpt.seq <= receivedSeq) this.setState(e, "received");
        else if (e.state === "received") this.setState(e, "queued"); // lost from the mirror's cache (it restarted)
      }
      if (this.opts.lease) await this.takeLease(conn, frames);
      this.emit("connected", { durableSeq, receivedSeq });
      const reader = this.readLoop(frames);
      const sender = this.sendLoop(conn);
      reader.catch(() => undefined);
      sender.catch(() => undefined);
      // Whichever ends first ends the session; the other is unblocked by the socket closing.
      await Promise.race([reader, sender]);
    } finally {
      clearInterval(this.leaseTimer);
      this.leaseSent = [];
      conn.socket.destroy();
      this.conn = undefined;
      this.rejectWants(new Error("connection closed"));
      this.stats.bytesSent += conn.bytesOut;
    }
  }

  /** Takes (or renews, with its epoch) the lease right after Hello; then renews it every ttl/6 on this connection. */
  private async takeLease(conn: FramedConnection, frames: AsyncGenerator<Frame, void, void>): Promise<void> {
    const lease = this.opts.lease!;
    // Not running (a daemon restarted after its app died): no lease taken; checkpoints still
    // shipped go under the epoch it had, refused `fenced` if another host took the lease since.
    if (lease.keep && !lease.keep()) return;
    const sentAt = performance.now();
    await conn.sendJson(FrameType.Lease, { host: lease.host, ...(this.epoch !== undefined ? { epoch: this.epoch } : {}), ttlMs: lease.ttlMs });
    const r = await frames.next();
    if (r.done === true) throw new Error("mirror closed the connection while answering Lease");
    if (r.value.type === FrameType.Error) throw remoteError(r.value.payload);
    if (r.value.type === FrameType.Held) throw new FencedError(this.heldInfo(r.value.payload));
    if (r.value.type !== FrameType.Granted) throw new Error(`mirror answered Lease with ${FrameType[r.value.type]}`);
    this.onGranted(r.value.payload, sentAt);
    this.leaseTimer = setInterval(() => {
      if (conn.isClosed || (lease.keep && !lease.keep())) return;
      this.leaseSent.push(performance.now());
      conn.sendJson(FrameType.Lease, { host: lease.host, epoch: this.epoch, ttlMs: lease.ttlMs }).catch(() => undefined);
    }, Math.max(20, Math.floor(lease.ttlMs / 6)));
  }

  private heldInfo(payload: Buffer): FencedInfo {
    const v = parseJson(FrameType.Held, payload);
    const holder = String(v.holder);
    const epoch = Number(v.epoch);
    const mine = this.epoch === undefined ? "" : ` (this host had epoch ${this.epoch})`;
    return { holder, epoch, reason: `the lease of ${this.opts.source} is held by ${holder} at epoch ${epoch}${mine}` };
  }

  private onGranted(payload: Buffer, sentAt: number): void {
    const v = parseJson(FrameType.Granted, payload);
    const epoch = Number(v.epoch);
    const ttlMs = Number(v.ttlMs);
    const first = this.epoch !== epoch;
    this.epoch = epoch;
    // From the request's send time: this side's expiry always comes before the mirror's.
    this.leaseExpiresAt = sentAt + ttlMs;
    if (first) this.log.info({ epoch, ttlMs }, "lease granted");
    this.emit("lease", { epoch, holder: String(v.holder), ttlMs, expiresAt: this.leaseExpiresAt });
    const margin = Math.min(ttlMs / 5, 500);
    clearTimeout(this.expiryTimer);
    const check = (): void => {
      if (this.fenced || this.stopped) return;
      const left = this.leaseExpiresAt - margin - performance.now();
      if (left > 0) {
        this.expiryTimer = setTimeout(check, left);
        return;
      }
      this.fence({ holder: "?", epoch, reason: `the lease of ${this.opts.source} (epoch ${epoch}) expired: not renewed for ${ttlMs} ms (the mirror is unreachable)` });
    };
    this.expiryTimer = setTimeout(check, Math.max(0, this.leaseExpiresAt - margin - performance.now()));
  }

  /** This host lost the lease: told once ("fenced"), then the client stops for good. */
  private fence(info: FencedInfo): void {
    if (this.fenced) return;
    this.fenced = info;
    const err = new FencedError(info);
    this.fatal = err;
    this.stopped = true;
    clearInterval(this.leaseTimer);
    clearTimeout(this.expiryTimer);
    this.log.error({ holder: info.holder, epoch: info.epoch }, err.message);
    this.emit("fenced", info);
    this.wake?.();
    this.conn?.socket.destroy();
    this.rejectWants(err);
    for (const en of this.entries) for (const w of en.waiters.splice(0)) w.reject(err);
  }

  private async readLoop(frames: AsyncGenerator<Frame, void, void>): Promise<void> {
    try {
      for (;;) {
        const r = await frames.next();
        if (r.done === true) throw new Error("mirror closed the connection");
        this.onFrame(r.value);
      }
    } catch (err) {
      const e = err instanceof ProtocolError ? new Error(`bad frame from mirror: ${err.message}`) : (err as Error);
      this.rejectWants(e);
      this.wake?.();
      this.conn?.socket.destroy();
      throw e;
    }
  }

  private onFrame(f: Frame): void {
    switch (f.type) {
      case FrameType.Want: {
        const w = this.wantWaiters.shift();
        if (!w) throw new ProtocolError("out-of-order", "Want without an Offer");
        w.resolve(f.payload);
        return;
      }
      case FrameType.Received: {
        const v = parseJson(f.type, f.payload);
        const e = this.byId.get(String(v.id));
        if (e) this.setState(e, "received");
        return;
      }
      case FrameType.Durable: {
        const v = parseJson(f.type, f.payload);
        const ids = Array.isArray(v.ids) ? v.ids : [];
        for (const id of ids) {
          const e = this.byId.get(String(id));
          if (e) this.setState(e, "durable");
        }
        return;
      }
      case FrameType.Granted: {
        const sentAt = this.leaseSent.shift() ?? performance.now();
        this.onGranted(f.payload, sentAt);
        return;
      }
      case FrameType.Held:
        throw new FencedError(this.heldInfo(f.payload));
      case FrameType.Error:
        throw remoteError(f.payload);
      default:
        throw new ProtocolError("out-of-order", `unexpected ${FrameType[f.type]} frame from the mirror`);
    }
  }

  private rejectWants(err: Error): void {
    for (const w of this.wantWaiters.splice(0)) w.reject(err);
  }

  private nextToSend(after: number): Entry | undefined {
    return this.entries.find((e) => e.state === "queued" && e.ckpt.seq > after);
  }

  private async sendLoop(conn: FramedConnection): Promise<void> {
    let offeredSeq = 0;
    /** Offered on this connection, chunks not yet sent, oldest first. */
    const offered: { e: Entry; header: CheckpointHeader; want: Promise<Buffer> }[] = [];
    while (!this.stopped && !conn.isClosed) {
      // Offer ahead, up to the window, before sending the oldest one's chunks.
      let e: Entry | undefined;
      while (offered.length < this.offerWindow && (e = this.nextToSend(offeredSeq)) !== undefined) {
        offeredSeq = e.ckpt.seq;
        // Queued after the Hello answer but already on the destination (a restarted source).
        if (e.ckpt.seq <= this.remote.durableSeq) {
          this.setState(e, "durable");
          continue;
        }
        if (e.ckpt.seq <= this.remote.receivedSeq) {
          this.setState(e, "received");
          continue;
        }
        offered.push(await this.offer(conn, e));
      }
      const next = offered.shift();
      if (!next) {
        await new Promise<void>((r) => (this.wake = r));
        this.wake = undefined;
        continue;
      }
      const t0 = performance.now();
      const want = await next.want;
      this.stats.wantWaitMs += performance.now() - t0;
      await this.sendChunks(conn, next.e, next.header, want);
    }
  }

  /** Sends an Offer; the promise is its Want. */
  private async offer(conn: FramedConnection, e: Entry): Promise<{ e: Entry; header: CheckpointHeader; want: Promise<Buffer> }> {
    const header = headerOf(e.ckpt);
    if (this.epoch !== undefined) header.epoch = this.epoch;
    const want = new Promise<Buffer>((resolve, reject) => this.wantWaiters.push({ resolve, reject }));
    want.catch(() => undefined); // (awaited by sendLoop unless the connection fails first)
    await conn.send(FrameType.Offer, [encodeCheckpointHeader(header)]);
    this.stats.checkpointsOffered++;
    return { e, header, want };
  }

  /** Sends the chunks a Want asks for, then Commit. */
  private async sendChunks(conn: FramedConnection, e: Entry, header: CheckpointHeader, wantFrame: Buffer): Promise<void> {
    const c = e.ckpt;
    const { id, wanted } = decodeWant(wantFrame, header.chunks.length);
    if (id !== c.id) throw new Error(`mirror sent Want for ${id} while ${c.id} was offered`);
    this.stats.chunksSkipped += header.chunks.length - wanted.length;
    // The wanted chunks go in Chunks frames of about frameBytes each (one table, then
    // the chunks' own buffers: nothing is copied), corked so each frame is one writev.
    const limit = this.opts.frameBytes ?? DEFAULT_FRAME_BYTES;
    const sock = conn.socket;
    let hashes: string[] = [];
    let sizes: number[] = [];
    let parts: Buffer[] = [];
    let bytes = 0;
    const sendFrame = async (): Promise<void> => {
      if (hashes.length === 0) return;
      const table = encodeChunksTable(hashes, sizes);
      parts.unshift(table);
      sock.cork();
      const ok = conn.write(FrameType.Chunks, parts);
      sock.uncork();
      this.stats.chunksSent += hashes.length;
      this.stats.chunkBytesSent += bytes;
      hashes = [];
      sizes = [];
      parts = [];
      bytes = 0;
      if (!ok) await conn.waitDrain();
    };
    const reads: (Promise<Buffer> | undefined)[] = [];
    const startRead = (k: number): void => {
      const i = wanted[k];
      const ref = i === undefined ? undefined : header.chunks[i];
      if (!ref) return;
      const p = chunkBytes(c.chunks.get(ref.hash)!);
      p.catch(() => undefined);
      reads[k] = p;
    };
    for (let k = 0; k < READ_AHEAD; k++) startRead(k);
    for (let k = 0; k < wanted.length; k++) {
      const i = wanted[k] as number;
      const ref = header.chunks[i];
      if (!ref) throw new Error(`mirror asked for chunk #${i} of ${c.id}, which has ${header.chunks.length}`);
      startRead(k + READ_AHEAD);
      let data: Buffer;
      try {
        data = await (reads[k] as Promise<Buffer>);
      } catch (err) {
        this.failEntry(e, new ChunkReadError(c.id, c.seq, err as Error));
        throw err;
      } finally {
        reads[k] = undefined;
      }
      if (hashes.length > 0 && (bytes + data.length > limit || hashes.length >= MAX_CHUNKS_PER_FRAME)) await sendFrame();
      hashes.push(ref.hash);
      sizes.push(data.length);
      parts.push(data);
      bytes += data.length;
    }
    await sendFrame();
    await conn.sendJson(FrameType.Commit, { id: c.id });
  }
}
