// The mirror destination: accepts many sources at once, caches what they send,
// queues complete checkpoints and commits them to the DiskStore when a flush
// trigger fires. Durable acknowledgements go out only after the commit.
import { createServer as createTcpServer, type AddressInfo, type Server as NetServer, type Socket } from "node:net";
import { createServer as createTlsServer } from "node:tls";
import type { Logger } from "pino";
import { ChunkCache, type CacheStats } from "./cache.js";
import { FramedConnection } from "./connection.js";
import { DiskStore, type DiskStoreHooks, type NewChunk, type PendingCheckpoint } from "./disk-store.js";
import { ProtocolError, DEFAULT_MAX_FRAME } from "./frames.js";
import { Flusher, type FlushOutcome, type FlushReason } from "./flusher.js";
import { FrameBudget, PRE_AUTH_MAX_FRAME } from "./frame-budget.js";
import { decodeCheckpointHeader } from "./messages.js";
import { FrameType } from "./frames.js";
import { Scrubber, type ScrubStats } from "./scrubber.js";
import { Session, type SessionHost, type SourcePosition } from "./session.js";
import { silentLogger } from "./log.js";
import type { TokenTable } from "./tokens.js";
import { isValidName } from "./objects.js";
import { LeaseTable, type LeaseAnswer, type LeaseAnswerHeld } from "./lease.js";

export interface MirrorServerOptions {
  host?: string;
  port?: number;
  storeDir: string;
  /** Without tokens, any client may name any source (logged as a warning). */
  tokens?: TokenTable;
  tls?: { cert: Buffer; key: Buffer };
  /** Hard bound on cached bytes; sources are slowed down when it is reached. */
  cacheMaxBytes?: number;
  /** Flush when the cache holds more than this fraction of cacheMaxBytes. */
  highWaterRatio?: number;
  maxDelayMs?: number;
  maxQueued?: number;
  maxFrame?: number;
  /** Memory for partially received frames, all connections together (default: max(2 x maxFrame, cacheMaxBytes / 4)). */
  frameBudgetBytes?: number;
  frameTimeoutMs?: number;
  handshakeTimeoutMs?: number;
  /** Check unchecked chunks on disk after this long without any source sending (0: never; see scrubber.ts). */
  scrubIdleMs?: number;
  logger?: Logger;
  hooks?: DiskStoreHooks;
}

export interface QueuedCheckpoint {
  source: string;
  id: string;
  seq: number;
  parent?: string;
  header: Buffer;
  /** Chunks this checkpoint holds cache references on. */
  chunkHashes: string[];
  chunkCount: number;
  bytes: number;
  receivedAt: Date;
  queuedAtMs: number;
}

export interface ListedCheckpoint {
  id: string;
  seq: number;
  parent?: string;
  state: "received" | "durable";
  /** A chunk it uses was found not to match its name, and no correct copy has arrived since. */
  damaged?: true;
  chunks: number;
  bytes: number;
  receivedAt: string;
  committedAt?: string;
  generation?: number;
}

export interface MirrorMetrics {
  flushes: number;
  flushesByReason: Record<string, number>;
  checkpointsCommitted: number;
  fsyncs: number;
  bytesWritten: number;
  chunksWritten: number;
  chunksDeduplicated: number;
  connections: number;
  protocolErrors: number;
  queued: number;
  cache: CacheStats;
  generation: number;
  scrub: ScrubStats;
}

export const DEFAULTS = {
  cacheMaxBytes: 256 * 1024 * 1024,
  highWaterRatio: 0.5,
  maxDelayMs: 5_000,
  maxQueued: 64,
  frameTimeoutMs: 30_000,
  handshakeTimeoutMs: 10_000,
  scrubIdleMs: 60_000,
};

export class MirrorServer implements SessionHost {
  readonly cache: ChunkCache;
  readonly log: Logger;
  readonly handshakeTimeoutMs: number;
  readonly maxFrame: number;
  readonly frameBudget: FrameBudget;
  private readonly queue: QueuedCheckpoint[] = [];
  private inFlight: QueuedCheckpoint[] = [];
  /** Cached chunks of checkpoints larger than the cache, to write ahead of them (session.ts, roomFor). */
  private spillQueue: { source: string; hashes: string[] }[] = [];
  private readonly sources = new Map<string, Session>();
  private readonly sessions = new Set<Session>();
  private readonly flusher: Flusher;
  readonly scrubber: Scrubber;
  private net: NetServer | undefined;
  private closing: Promise<void> | undefined;
  private readonly highWater: number;
  private readonly maxQueued: number;
  private readonly m = {
    flushes: 0,
    flushesByReason: {} as Record<string, number>,
    checkpointsCommitted: 0,
    fsyncs: 0,
    bytesWritten: 0,
    chunksWritten: 0,
    chunksDeduplicated: 0,
    connections: 0,
    protocolErrors: 0,
  };

  /** Each source's lease: which host may run the app, under which epoch (lease.ts). */
  readonly leases: LeaseTable;

  private constructor(
    private readonly opts: MirrorServerOptions,
    readonly store: DiskStore,
  ) {
    this.leases = new LeaseTable(opts.storeDir);
    this.log = opts.logger ?? silentLogger();
    this.handshakeTimeoutMs = opts.handshakeTimeoutMs ?? DEFAULTS.handshakeTimeoutMs;
    const max = opts.cacheMaxBytes ?? DEFAULTS.cacheMaxBytes;
    this.cache = new ChunkCache(max);
    this.maxFrame = opts.maxFrame ?? DEFAULT_MAX_FRAME;
    this.frameBudget = new FrameBudget(opts.frameBudgetBytes ?? Math.max(2 * this.maxFrame, Math.floor(max / 4)));
    this.highWater = Math.floor(max * (opts.highWaterRatio ?? DEFAULTS.highWaterRatio));
    this.maxQueued = opts.maxQueued ?? DEFAULTS.maxQueued;
    this.flusher = new Flusher(
      (reasons) => this.runFlush(reasons),
      opts.maxDelayMs ?? DEFAULTS.maxDelayMs,
      () => this.queue[0]?.queuedAtMs,
    );
    this.cache.onPressure = () => {
      if (this.queue.length > 0) this.flusher.trigger("cache");
    };
    this.scrubber = new Scrubber(
      store,
      {
        busy: () => this.cache.used > 0 || this.queue.length > 0 || this.inFlight.length > 0,
        commitNotes: () => this.flusher.request("scrub"),
      },
      this.log,
      opts.scrubIdleMs ?? DEFAULTS.scrubIdleMs,
    );
  }

  /** Opens the store (recovering from an interrupted flush) and starts listening. */
  static async start(opts: MirrorServerOptions): Promise<MirrorServer> {
    const log = opts.logger ?? silentLogger();
    const { store, removed } = await DiskStore.open(opts.storeDir, opts.hooks);
    if (removed.length > 0) {
      log.warn({ removed }, "removed files of an interrupted flush (never committed, never acknowledged durable)");
    }
    const s = new MirrorServer(opts, store);
    await s.listen();
    s.scrubber.start();
    return s;
  }

  private listen(): Promise<void> {
    const onConn = (sock: Socket): void => this.accept(sock);
    const srv = this.opts.tls
      ? createTlsServer({ cert: this.opts.tls.cert, key: this.opts.tls.key, allowHalfOpen: true }, onConn)
      : // Paused: the connection is read into a RecvArena, by a socket made from this one (connection.ts).
        createTcpServer({ allowHalfOpen: true, pauseOnConnect: true }, onConn);
    this.net = srv;
    if (!this.opts.tokens) {
      this.log.warn("no --tokens file: any client may act as any source; use this only on a trusted network");
    }
    return new Promise((resolve, reject) => {
      srv.once("error", reject);
      srv.listen(this.opts.port ?? 0, this.opts.host ?? "127.0.0.1", () => {
        srv.off("error", reject);
        srv.on("error", (err) => this.log.error({ err: err.message }, "listener error"));
        const a = srv.address() as AddressInfo;
        this.log.info(
          {
            host: a.address,
            port: a.port,
            store: this.opts.storeDir,
            generation: this.store.committedGeneration,
            cacheMaxBytes: this.cache.maxBytes,
            highWaterBytes: this.highWater,
            maxDelayMs: this.opts.maxDelayMs ?? DEFAULTS.maxDelayMs,
            maxQueued: this.maxQueued,
            tls: !!this.opts.tls,
          },
          "mirror server listening",
        );
        resolve();
      });
    });
  }

  address(): AddressInfo {
    if (!this.net) throw new Error("mirror server is not listening");
    return this.net.address() as AddressInfo;
  }

  private accept(sock: Socket): void {
    if (this.closing) {
      sock.destroy();
      return;
    }
    this.m.connections++;
    const remote = `${sock.remoteAddress}:${sock.remotePort}`;
    sock.on("error", () => undefined);
    const conn = new FramedConnection(sock, {
      // Until Hello: a few KiB (session.ts raises it to maxFrame once authenticated).
      maxFrame: Math.min(PRE_AUTH_MAX_FRAME, this.maxFrame),
      budget: this.frameBudget,
      frameTimeoutMs: this.opts.frameTimeoutMs ?? DEFAULTS.frameTimeoutMs,
      arena: true,
    });
    conn.socket.on("error", () => undefined);
    conn.socket.setKeepAlive(true, 30_000);
    const session = new Session(conn, this, remote);
    const origFail = session.fail.bind(session);
    session.fail = (err: ProtocolError) => {
      if (!session.closed) this.m.protocolErrors++;
      origFail(err);
    };
    this.sessions.add(session);
    session.run().finally(() => this.sessions.delete(session));
  }

  // ---- SessionHost ----

  authenticate(token: string, claimed: string | undefined): string {
    const tokens = this.opts.tokens;
    if (!tokens) {
      if (!isValidName(claimed)) {
        throw new ProtocolError("auth-failed", "authentication failed: this server has no tokens file, so Hello must name a valid source");
      }
      return claimed;
    }
    const source = tokens.sourceFor(token);
    if (source === undefined) {
      throw new ProtocolError(
        "auth-failed",
        "authentication failed: wrong token (not in the server's --tokens file); check --token-file or TARDIGRADE_MIRROR_TOKEN",
      );
    }
    if (claimed !== undefined && claimed !== source) {
      throw new ProtocolError(
        "auth-failed",
        `authentication failed: this token belongs to source "${source}", not "${claimed}"`,
      );
    }
    return source;
  }

  position(source: string): SourcePosition {
    const d = this.store.latest(source);
    const pending = [...this.inFlight, ...this.queue].filter((q) => q.source === source);
    const r = pending[pending.length - 1];
    return {
      durableSeq: d?.seq ?? 0,
      durableId: d?.id ?? null,
      receivedSeq: r?.seq ?? d?.seq ?? 0,
      receivedId: r?.id ?? d?.id ?? null,
    };
  }

  lease(source: string, host: string, epoch: number | undefined, ttlMs: number): Promise<LeaseAnswer> {
    return this.leases.request(source, host, epoch, ttlMs);
  }

  epochOf(source: string): number | undefined {
    return this.leases.epochOf(source);
  }

  peekLease(source: string): LeaseAnswerHeld | null {
    return this.leases.peek(source);
  }

  holderOf(source: string): string | undefined {
    return this.leases.holderOf(source);
  }

  attachSource(source: string, s: Session): void {
    const old = this.sources.get(source);
    if (old && old !== s) {
      old.fail(new ProtocolError("superseded", `source ${source} connected again from elsewhere; closing this older connection`));
    }
    this.sources.set(source, s);
  }

  detachSource(source: string, s: Session): void {
    if (this.sources.get(source) === s) this.sources.delete(source);
  }

  lastSeq(source: string): number {
    return this.position(source).receivedSeq;
  }

  hasCheckpoint(source: string, id: string): boolean {
    if (this.store.find(source, id)) return true;
    return [...this.inFlight, ...this.queue].some((q) => q.source === source && q.id === id);
  }

  onDiskFor(hash: string, source: string): boolean {
    return this.store.usableBy(hash, source);
  }

  anyCopy(hash: string): boolean {
    return this.cache.has(hash) || this.store.hasChunk(hash);
  }

  shareForeign(hash: string, source: string): Promise<boolean> | undefined {
    if (this.cache.foreign(hash, source)) {
      const owner = this.cache.owner(hash);
      const actual = this.cache.verifyNow(hash);
      if (actual !== hash) this.reportBad(hash, owner, actual, "cached");
      return Promise.resolve(actual === hash);
    }
    if (this.store.foreign(hash, source)) {
      return this.store.verify(hash).then((actual) => {
        if (actual !== hash) this.reportBad(hash, undefined, actual, "on disk");
        return actual === hash;
      });
    }
    return undefined;
  }

  /** A source's bytes failed their check when another source wanted to share them. */
  private reportBad(hash: string, owner: string | undefined, actual: string | undefined, where: string): void {
    this.log.warn(
      { chunk: hash, actual, owner, where },
      `chunk ${hash} ${where} does not match its name (hashes to ${actual ?? "?"}): ` +
        `the source that sent it sent wrong bytes; it is used by nobody else, and a correct copy replaces it`,
    );
  }

  enqueue(q: QueuedCheckpoint): void {
    if (this.closing) {
      // Shutdown already took its last snapshot: keep it queued for the final flush.
      this.log.warn({ source: q.source, id: q.id }, "checkpoint received during shutdown");
    }
    this.queue.push(q);
    this.log.debug({ source: q.source, id: q.id, seq: q.seq, queued: this.queue.length }, "checkpoint received and queued");
    // Triggers are checked here but the flush runs later, never on this packet's path.
    if (this.queue.length >= this.maxQueued) this.flusher.trigger("queue");
    else if (this.cache.used >= this.highWater) this.flusher.trigger("cache");
    this.flusher.armDelay();
  }

  flush(reason: FlushReason): Promise<FlushOutcome> {
    return this.flusher.request(reason);
  }

  async spill(source: string, hashes: string[]): Promise<void> {
    this.spillQueue.push({ source, hashes });
    await this.flusher.request("spill");
  }

  async list(source: string): Promise<ListedCheckpoint[]> {
    const damaged = new Set(await this.store.checkpointsUsing(source, this.store.badChunks));
    const out: ListedCheckpoint[] = this.store.checkpoints(source).map((r) => ({
      id: r.id,
      seq: r.seq,
      ...(r.parent !== undefined ? { parent: r.parent } : {}),
      state: "durable" as const,
      ...(damaged.has(r.id) ? { damaged: true as const } : {}),
      chunks: r.chunkCount,
      bytes: r.bytes,
      receivedAt: r.receivedAt,
      committedAt: r.committedAt,
      generation: r.generation,
    }));
    for (const q of [...this.inFlight, ...this.queue]) {
      if (q.source !== source) continue;
      out.push({
        id: q.id,
        seq: q.seq,
        ...(q.parent !== undefined ? { parent: q.parent } : {}),
        state: "received",
        chunks: q.chunkCount,
        bytes: q.bytes,
        receivedAt: q.receivedAt.toISOString(),
      });
    }
    return out;
  }

  async fetch(source: string, id: string): Promise<{ header: Buffer; chunks: string[]; readChunk(hash: string): Promise<Buffer> }> {
    const pending = [...this.inFlight, ...this.queue].filter((q) => q.source === source);
    const wantLatest = id === "latest";
    if (pending.some((q) => wantLatest || q.id === id)) {
      // A restore needs a checkpoint that is only cached: make it durable first.
      await this.flusher.request("restore");
    }
    const rec = wantLatest ? this.store.latest(source) : this.store.find(source, id);
    if (!rec) {
      throw new Error(
        wantLatest
          ? `source ${source} has no checkpoints on this mirror`
          : `checkpoint ${source}/${id} is not on this mirror; run "tardigrade mirror ls" to see what is`,
      );
    }
    const header = await this.store.readHeader(rec);
    const h = decodeCheckpointHeader(FrameType.FetchHeader, header);
    return { header, chunks: h.chunks.map((c) => c.hash), readChunk: (hash) => this.store.readChunk(hash) };
  }

  // ---- flushing ----

  private async runFlush(reasons: FlushReason[]): Promise<FlushOutcome> {
    const batch = this.queue.splice(0);
    // Chunks of checkpoints still arriving that are larger than the cache: written in
    // this generation, with no checkpoint record (their checkpoint's generation follows).
    const spill = this.spillQueue.splice(0);
    if (batch.length === 0 && !this.store.hasNotes && spill.length === 0) {
      return { generation: this.store.committedGeneration, checkpoints: 0, sources: 0, reasons };
    }
    this.inFlight = batch;
    const t0 = Date.now();
    this.dropBad(batch);
    if (batch.length === 0 && !this.store.hasNotes && spill.length === 0) {
      this.inFlight = [];
      this.flusher.armDelay();
      return { generation: this.store.committedGeneration, checkpoints: 0, sources: 0, reasons };
    }
    const seen = new Set<string>();
    const cache = this.cache;
    const store = this.store;
    let refs = 0;
    function* newChunks(): Generator<NewChunk> {
      for (const sp of spill) {
        for (const h of sp.hashes) {
          refs++;
          if (seen.has(h)) continue;
          seen.add(h);
          const data = cache.get(h);
          if (!data) throw new Error(`internal error: chunk ${h} of a checkpoint of ${sp.source} being streamed is not cached`);
          yield [h, data, cache.owner(h)];
        }
      }
      for (const q of batch) {
        for (const h of q.chunkHashes) {
          refs++;
          if (seen.has(h)) continue;
          seen.add(h);
          const data = cache.get(h);
          if (!data) throw new Error(`internal error: chunk ${h} of ${q.source}/${q.id} is not cached`);
          yield [h, data, cache.owner(h)];
        }
      }
    }
    const pending: PendingCheckpoint[] = batch.map((q) => ({
      source: q.source,
      id: q.id,
      seq: q.seq,
      ...(q.parent !== undefined ? { parent: q.parent } : {}),
      header: q.header,
      chunkCount: q.chunkCount,
      bytes: q.bytes,
      receivedAt: q.receivedAt,
    }));
    let result;
    try {
      result = await store.commit(pending, newChunks());
    } catch (err) {
      this.requeue(batch, reasons, err as Error);
      throw err;
    }
    this.inFlight = [];
    for (const q of batch) {
      for (const h of q.chunkHashes) {
        // Found bad (by another source's offer) while this flush was writing it.
        if (cache.badDigest(h) !== undefined) store.markBad(h, result.generation);
        cache.unpin(h);
      }
      cache.release(q.header.length);
    }
    const bySource = new Map<string, QueuedCheckpoint[]>();
    for (const q of batch) {
      let l = bySource.get(q.source);
      if (!l) bySource.set(q.source, (l = []));
      l.push(q);
    }
    this.m.flushes++;
    for (const r of reasons) this.m.flushesByReason[r] = (this.m.flushesByReason[r] ?? 0) + 1;
    this.m.checkpointsCommitted += batch.length;
    this.m.fsyncs += result.fsyncs;
    this.m.bytesWritten += result.bytesWritten;
    this.m.chunksWritten += result.newChunks;
    this.m.chunksDeduplicated += refs - result.newChunks;
    this.log.info(
      {
        reasons,
        generation: result.generation,
        checkpoints: batch.length,
        sources: bySource.size,
        newChunks: result.newChunks,
        bytesWritten: result.bytesWritten,
        fsyncs: result.fsyncs,
        ms: Date.now() - t0,
        cache: cache.stats(),
      },
      `flush committed (${reasons.join("+")})`,
    );
    for (const [source, l] of bySource) {
      this.sources.get(source)?.notifyDurable(
        l.map((q) => q.id),
        l.map((q) => q.seq),
        result.generation,
      );
    }
    this.flusher.armDelay();
    return { generation: result.generation, checkpoints: batch.length, sources: bySource.size, reasons };
  }

  /** A flush failed: nothing was acknowledged durable; put the batch back and try again later. */
  private requeue(batch: QueuedCheckpoint[], reasons: FlushReason[], err: Error): void {
    this.queue.unshift(...batch);
    this.inFlight = [];
    this.log.error(
      { err: err.message, reasons, checkpoints: batch.length },
      "flush failed; the checkpoints stay cached and queued, retrying in 1 s (check the store's disk: space, permissions)",
    );
    setTimeout(() => this.flusher.trigger("retry"), 1000).unref();
  }

  /**
   * Takes out of the batch the checkpoints that hold a chunk found bad (by another
   * source's offer: see shareForeign) and that no correct copy has replaced since. Such
   * a source loses that checkpoint and every later one it has queued (none becomes
   * durable; its seq order is kept): its connection is closed with checksum-mismatch,
   * and its client sends them again after reconnecting (the Hello answer no longer
   * lists them).
   */
  private dropBad(batch: QueuedCheckpoint[]): void {
    const cache = this.cache;
    const bad = new Map<string, string>();
    for (const q of batch) {
      for (const h of q.chunkHashes) {
        const actual = cache.badDigest(h);
        if (actual !== undefined) bad.set(h, actual);
      }
    }
    if (bad.size === 0) return;
    const firstBad = new Map<string, { seq: number; id: string; hash: string; actual: string }>();
    for (const q of batch) {
      if (firstBad.has(q.source)) continue;
      for (const h of q.chunkHashes) {
        const actual = bad.get(h);
        if (actual !== undefined) {
          firstBad.set(q.source, { seq: q.seq, id: q.id, hash: h, actual });
          break;
        }
      }
    }
    const dropped: QueuedCheckpoint[] = [];
    for (const list of [batch, this.queue]) {
      for (let i = list.length - 1; i >= 0; i--) {
        const q = list[i] as QueuedCheckpoint;
        const f = firstBad.get(q.source);
        if (f && q.seq >= f.seq) dropped.unshift(...list.splice(i, 1));
      }
    }
    for (const [source, f] of firstBad) {
      const ids = dropped.filter((q) => q.source === source).map((q) => q.id);
      const err = new ProtocolError(
        "checksum-mismatch",
        `checksum mismatch: chunk ${f.hash} of checkpoint ${source}/${f.id} hashes to ${f.actual}; ` +
          `checkpoint(s) ${ids.join(", ")} were not made durable and must be sent again`,
      );
      this.log.warn({ code: err.code, source, dropped: ids }, err.message);
      // Closing the connection also drops the checkpoint it has in progress.
      this.sources.get(source)?.fail(err);
    }
    for (const q of dropped) {
      for (const h of q.chunkHashes) cache.unpin(h);
      cache.release(q.header.length);
    }
  }

  metrics(): MirrorMetrics {
    return {
      ...this.m,
      flushesByReason: { ...this.m.flushesByReason },
      queued: this.queue.length + this.inFlight.length,
      cache: this.cache.stats(),
      generation: this.store.committedGeneration,
      scrub: { ...this.scrubber.stats },
    };
  }

  /**
   * Shutdown: stop accepting, close every connection (partial checkpoints are
   * discarded), flush everything queued, close the store.
   */
  close(): Promise<void> {
    if (!this.closing) this.closing = this.doClose();
    return this.closing;
  }

  private async doClose(): Promise<void> {
    this.log.info({ queued: this.queue.length }, "shutting down: flushing queued checkpoints");
    this.net?.close();
    for (const s of this.sessions) s.fail(new ProtocolError("shutdown", "mirror server is shutting down; reconnect later"));
    await this.scrubber.stop();
    this.flusher.stop();
    this.cache.rejectWaiters(new Error("mirror server is shutting down"));
    await this.flusher.idle();
    if (this.queue.length > 0) {
      try {
        await this.flusher.request("shutdown");
      } catch (err) {
        this.log.error({ err: (err as Error).message }, "final flush failed; queued checkpoints were not made durable");
      }
    }
    await this.store.close();
    this.log.info({ generation: this.store.committedGeneration }, "mirror server stopped");
  }
}
