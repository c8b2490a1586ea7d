// The mirror, connected to the content-addressed store (src/store/cas/).
//
// MirrorShipper: ships one app's committed checkpoints, in seq order, to a mirror
// destination with MirrorClient. A checkpoint's chunks are the store's compressed page
// blocks, named by SHA-256 of their bytes and read from the packs only if the destination
// wants them, plus its table (page table, metadata, the blocks' page lists) in parts; the
// manifest is the store's checkpoint row (src/store/cas/mirror.ts). Per-checkpoint state
// (queued | sending | received | durable | failed) is kept in a small JSON file so that
// `tardigrade ls` shows it after a restart, and nothing durable is sent again.
//
// pullFromMirror: fetches a checkpoint (and the ancestors the local store lacks) from a
// mirror into a local CasStore, verifying every block and page, for
// `tardigrade restore NAME --from tg://HOST:PORT` and `tardigrade mirror pull`.
import { EventEmitter } from "node:events";
import { readFileSync } from "node:fs";
import type { Logger } from "pino";
import { writeFileAtomic } from "../store/fsutil.js";
import type { CasStore } from "../store/cas/store.js";
import { decodeTable, type ImportReport, type MirrorManifest, type MirrorTable } from "../store/cas/mirror.js";
import { contentDigest, mirrorIdent } from "../store/cas/lineage.js";
import { checkpointId, parseCheckpointId, parseMemberApp } from "../store/types.js";
import { AdminConnection, type AdminOptions } from "./admin.js";
import { ChunkReadError, MirrorClient, MissingParentError, type AckLevel, type FencedInfo, type MirrorStateEvent } from "./client.js";
import type { DialOptions } from "./dial.js";
import { silentLogger } from "./log.js";
import { isValidName, type LazyChunk, type MirrorCheckpoint } from "./objects.js";
import { encodeMirrorObject, objectIdOf, parseMirrorObject } from "./bundle.js";

export type ShipState = "queued" | "sending" | "received" | "durable" | "failed";

/** A store id `app@seq` as a mirror checkpoint id (`app.seq`: '@' is not allowed in mirror names). */
export function toMirrorId(storeId: string): string {
  const p = parseCheckpointId(storeId);
  if (!p) throw new Error(`${JSON.stringify(storeId)} is not a checkpoint id (APP@SEQ)`);
  return `${p.app}.${p.seq}`;
}

/** Accepts `app@seq`, `app.seq` (mirror form) or "latest"; returns the mirror form. */
export function mirrorIdArg(id: string): string {
  if (id === "latest") return id;
  if (parseCheckpointId(id)) return toMirrorId(id);
  if (isValidName(id)) return id;
  throw new Error(`invalid checkpoint id ${JSON.stringify(id)}`);
}

export interface ShipRecord {
  /** Store id, `app@seq`. */
  id: string;
  seq: number;
  /** Id on the mirror. */
  mirrorId: string;
  state: ShipState;
  updatedAt: string;
  /** Why it failed (state "failed"). */
  error?: string;
  /** Blocks and block bytes the checkpoint names (the destination may have had some). */
  blocks?: number;
  blockBytes?: number;
}

export interface ShipperStateFile {
  format: "tardigrade-mirror-shipper";
  version: 1;
  app: string;
  source: string;
  url: string;
  checkpoints: ShipRecord[];
}

export interface MirrorShipperOptions {
  store: CasStore;
  /** The app whose checkpoints are shipped (one shipper per app). */
  app: string;
  /** tg://HOST:PORT or tgs://HOST:PORT */
  url: string;
  token: string;
  /** Mirror source name; must be what the token names on the server (default: the app name). */
  source?: string;
  /** What a checkpoint waits for before the next one is considered shipped (default "durable"). */
  ack?: AckLevel;
  /** JSON file holding the per-checkpoint state (written atomically). */
  statePath: string;
  /**
   * At start, also queue the app's checkpoints in the store above the highest seq the
   * state file knows (all of them for a new state file). Default true.
   */
  backfill?: boolean;
  dial?: DialOptions;
  backoff?: { initialMs?: number; maxMs?: number };
  logger?: Logger;
  /**
   * Store ids of the checkpoints committed with checkpoint `id` and restored with it (the other
   * processes of its tree, its files image): shipped with it as one mirror checkpoint.
   */
  membersOf?: (id: string) => string[];
  /** Hold the app's lease on the mirror (MirrorClientOptions.lease): events "lease" and "fenced". */
  lease?: { host: string; ttlMs: number; epoch?: number; keep?: () => boolean };
}

export interface ShipperStateEvent {
  id: string;
  seq: number;
  mirrorId: string;
  state: ShipState;
  error?: string;
}

/** Times a checkpoint whose blocks moved (gc) under a send is described and offered again. */
const MAX_ATTEMPTS = 3;
/** Times the chain under a checkpoint is sent again because the mirror lacked its parent. */
const MAX_RESENDS = 2;

/** Sends dropped because the mirror lost checkpoints: the shipper sends them again (not a failure). */
class MirrorLostError extends Error {}

/** Reads a shipper's state file (for `ls` without a running shipper); [] if there is none. */
export function readShipperState(path: string): ShipRecord[] {
  try {
    const f = JSON.parse(readFileSync(path, "utf8")) as ShipperStateFile;
    return Array.isArray(f.checkpoints) ? f.checkpoints : [];
  } catch {
    return [];
  }
}

/**
 * Ships an app's checkpoints to a mirror. Events: "state" (ShipperStateEvent), "error"
 * is never emitted (failures are states); "fatal" (Error) when the mirror refuses the source
 * for good (wrong token...): every queued checkpoint is then failed.
 */
export class MirrorShipper extends EventEmitter {
  private readonly client: MirrorClient;
  private readonly log: Logger;
  private readonly source: string;
  private readonly records = new Map<string, ShipRecord>();
  private readonly queue: string[] = [];
  private running: Promise<void> | undefined;
  private closed = false;
  private saving: Promise<void> = Promise.resolve();
  private dirty = false;
  private lastHandedSeq = 0;
  private idleWaiters: (() => void)[] = [];
  private fatalError: Error | undefined;
  /** Bumped when the queue is rebuilt after the mirror lost checkpoints (see rewind). */
  private epoch = 0;
  /** Chain resends per checkpoint refused for a missing parent. */
  private readonly resends = new Map<string, number>();

  private constructor(private readonly opts: MirrorShipperOptions) {
    super();
    this.source = opts.source ?? opts.app;
    this.log = (opts.logger ?? silentLogger()).child({ shipper: opts.app, mirror: opts.url });
    this.client = new MirrorClient({
      url: opts.url,
      token: opts.token,
      source: this.source,
      ack: opts.ack ?? "durable",
      ...(opts.dial ? { dial: opts.dial } : {}),
      ...(opts.backoff ? { backoff: opts.backoff } : {}),
      ...(opts.lease ? { lease: opts.lease } : {}),
      logger: this.log,
    });
    this.client.on("lease", (l: unknown) => this.emit("lease", l));
    this.client.on("fenced", (f: unknown) => this.emit("fenced", f));
    this.client.on("state", (e: MirrorStateEvent) => this.onClientState(e));
    this.client.on("connected", (pos: { durableSeq: number }) => this.onConnected(pos.durableSeq));
    this.client.on("fatal", (e: Error) => {
      this.fatalError = e;
      for (const id of this.queue.splice(0)) this.set(id, "failed", e.message);
      this.emit("fatal", e);
      this.wakeIdle();
    });
  }

  /**
   * Loads the state file, queues every checkpoint not yet durable (and, with backfill, the
   * store's newer ones), and starts shipping in the background.
   */
  /** Connects now (not at the first checkpoint): with a lease, takes it (attach "lease"/"fenced" listeners first). */
  connect(): void {
    this.client.start();
  }

  /** Why this shipper lost the app's lease, if it did. */
  get fenced(): FencedInfo | undefined {
    return this.client.fenced;
  }

  /** The lease epoch held (undefined before the first grant or without a lease). */
  get leaseEpoch(): number | undefined {
    return this.client.epoch;
  }

  static async open(opts: MirrorShipperOptions): Promise<MirrorShipper> {
    const s = new MirrorShipper(opts);
    await s.load();
    return s;
  }

  private async load(): Promise<void> {
    let file: ShipperStateFile | undefined;
    try {
      file = JSON.parse(readFileSync(this.opts.statePath, "utf8")) as ShipperStateFile;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "ENOENT") this.log.warn({ err: (e as Error).message }, "mirror state file unreadable; starting afresh");
    }
    if (file && (file.url !== this.opts.url || file.source !== this.source || file.app !== this.opts.app)) {
      this.log.info({ was: { url: file.url, source: file.source } }, "mirror destination changed; previous mirror states forgotten");
      file = undefined;
    }
    const inStore = new Map(this.opts.store.list(this.opts.app).map((c) => [c.id, c]));
    for (const r of file?.checkpoints ?? []) {
      if (!inStore.has(r.id) && r.state !== "durable") continue; // gone from the store: can no longer be sent
      this.records.set(r.id, r);
    }
    const known = [...this.records.values()];
    const maxKnown = Math.max(0, ...known.map((r) => r.seq));
    const resend = known.filter((r) => r.state === "queued" || r.state === "sending" || r.state === "received").sort((a, b) => a.seq - b.seq);
    for (const r of resend) this.enqueue(r.id, true);
    if (this.opts.backfill !== false) {
      for (const c of [...inStore.values()].sort((a, b) => a.seq - b.seq)) if (c.seq > maxKnown) this.enqueue(c.id);
    }
    this.dirty = true;
    await this.save();
  }

  /** Mirror state of a store checkpoint this shipper knows. */
  state(id: string): ShipRecord | undefined {
    const r = this.records.get(id);
    return r ? { ...r } : undefined;
  }

  /** Every checkpoint this shipper knows, by seq (what `ls` shows). */
  states(): ShipRecord[] {
    return [...this.records.values()].sort((a, b) => a.seq - b.seq).map((r) => ({ ...r }));
  }

  /** Checkpoints not yet durable on the mirror (and not failed): pin them against gc. */
  unshipped(): string[] {
    return this.states()
      .filter((r) => r.state !== "durable" && r.state !== "failed")
      .map((r) => r.id);
  }

  /** Client statistics (bytes and chunks sent, chunks skipped, connects). */
  get stats(): MirrorClient["stats"] {
    return this.client.stats;
  }

  /**
   * Queues committed checkpoint `id` (of this shipper's app) for shipping. Call after each
   * commit, in seq order; an id already shipped or queued is ignored; an id whose seq is not
   * above the last one shipped is marked failed.
   */
  enqueue(id: string, resume = false): void {
    if (this.closed) throw new Error("mirror shipper is closed");
    const p = parseCheckpointId(id);
    if (!p || p.app !== this.opts.app) throw new Error(`checkpoint ${id} is not of app ${this.opts.app}`);
    const r = this.records.get(id);
    if (r && !resume) return;
    if (this.queue.includes(id)) return;
    if (p.seq <= Math.max(this.lastHandedSeq, ...this.queue.map((q) => parseCheckpointId(q)!.seq))) {
      this.set(id, "failed", `queued after a later checkpoint (seq ${p.seq} is not above the last queued)`);
      return;
    }
    if (this.fatalError) {
      this.set(id, "failed", this.fatalError.message);
      return;
    }
    this.queue.push(id);
    if (!r || r.state !== "received") this.set(id, "queued");
    this.running ??= this.run().finally(() => {
      this.running = undefined;
      if (this.queue.length > 0 && !this.closed) this.running ??= this.run();
    });
  }

  /** Resolves when every queued checkpoint has reached the ack level (or failed). */
  idle(): Promise<void> {
    if (this.isIdle()) return Promise.resolve();
    return new Promise((r) => this.idleWaiters.push(r));
  }

  private isIdle(): boolean {
    const ack = this.opts.ack ?? "durable";
    return (
      this.queue.length === 0 &&
      [...this.records.values()].every((r) => r.state === "durable" || r.state === "failed" || (ack === "received" && r.state === "received"))
    );
  }

  private wakeIdle(): void {
    if (!this.isIdle()) return;
    for (const w of this.idleWaiters.splice(0)) w();
  }

  /** Stops shipping (what is not yet acknowledged is sent again by the next shipper) and saves the state. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.emit("closed");
    await this.client.close();
    await this.running?.catch(() => undefined);
    this.dirty = true;
    await this.save();
    for (const w of this.idleWaiters.splice(0)) w();
  }

  private async run(): Promise<void> {
    while (!this.closed && this.queue.length > 0) {
      const id = this.queue[0] as string;
      const epoch = this.epoch;
      await this.shipOne(id);
      if (this.epoch === epoch) this.queue.shift(); // (else the queue was rebuilt: see rewind)
      this.wakeIdle();
    }
  }

  /**
   * The destination's Hello answer: a durable position below what it acknowledged
   * durable before means it lost checkpoints (its store was replaced, or restored from
   * an older copy). Those are not durable any more: send them again.
   */
  private onConnected(durableSeq: number): void {
    const lost = [...this.records.values()].filter((r) => r.state === "durable" && r.seq > durableSeq).sort((a, b) => a.seq - b.seq);
    if (lost.length === 0 || this.closed) return;
    this.rewind(
      durableSeq,
      `the mirror no longer has ${lost.map((r) => r.id).join(", ")} (it acknowledged them durable, now its newest durable seq is ${durableSeq}: its store was replaced or lost data); sending again`,
    );
  }

  /**
   * Sends again, in order, every checkpoint of the app still in the store above
   * `fromSeq` (a chain the destination can hold: its first one is a full checkpoint
   * or an increment on one the destination has). Ones no longer in the store are failed.
   */
  private rewind(fromSeq: number, why: string): void {
    this.epoch++;
    this.log.warn({ fromSeq, why }, "mirror lost checkpoints; sending the chain again");
    this.client.reset(new MirrorLostError(why));
    const inStore = this.opts.store
      .list(this.opts.app)
      .filter((c) => c.seq > fromSeq)
      .sort((a, b) => a.seq - b.seq);
    const ids = new Set(inStore.map((c) => c.id));
    this.queue.splice(0);
    this.lastHandedSeq = fromSeq;
    for (const r of [...this.records.values()]) {
      if (r.seq > fromSeq && !ids.has(r.id) && r.state !== "failed") this.set(r.id, "failed", `${why}; it is no longer in the local store, so it cannot be sent again`, true);
    }
    for (const c of inStore) {
      this.queue.push(c.id);
      this.set(c.id, "queued", undefined, true);
    }
    this.running ??= this.run().finally(() => {
      this.running = undefined;
      if (this.queue.length > 0 && !this.closed) this.running ??= this.run();
    });
  }

  /** Seq of the full checkpoint at the root of `id`'s chain in the store (undefined: broken chain). */
  private chainRootSeq(id: string): number | undefined {
    const byId = new Map(this.opts.store.list(this.opts.app).map((c) => [c.id, c]));
    let c = byId.get(id);
    for (let n = 0; c && n < 1_000_000; n++) {
      if (c.kind !== "incremental" || c.parent === null) return c.seq;
      c = byId.get(c.parent);
    }
    return undefined;
  }

  /** Hands one checkpoint to the client and waits until the destination has at least received it. */
  private async shipOne(id: string): Promise<void> {
    const seq = parseCheckpointId(id)!.seq;
    const resumeReceived = this.records.get(id)?.state === "received";
    for (let attempt = 1; !this.closed; attempt++) {
      if (!resumeReceived) this.set(id, "sending");
      let ck: MirrorCheckpoint<Buffer | LazyChunk>;
      let shipped: MirrorManifest[] = [];
      let blocks = 0;
      let blockBytes = 0;
      try {
        // The checkpoint and the members committed with it (other processes of its tree, its
        // files image): one mirror checkpoint (bundle.ts).
        const members = this.opts.membersOf?.(id) ?? [];
        const parts = [];
        for (const p of [...members, id]) parts.push(await this.opts.store.blocksOf(p));
        const d = parts[parts.length - 1]!;
        const m = d.manifest;
        shipped = parts.map((x) => x.manifest);
        const chunks = new Map<string, Buffer | LazyChunk>();
        for (const x of parts) {
          for (const p of x.tableParts) chunks.set(p.hash, p.data);
          for (const b of x.blocks) {
            if (!chunks.has(b.name)) blocks++;
            chunks.set(b.name, { size: b.size, read: b.read });
          }
          blockBytes += x.manifest.blockBytes;
        }
        ck = {
          source: this.source,
          id: toMirrorId(id),
          seq: m.seq,
          ...(m.parent !== null ? { parent: toMirrorId(m.parent) } : {}),
          manifest: parts.length > 1 ? encodeMirrorObject(m, parts.slice(0, -1).map((x) => x.manifest)) : d.manifestBytes,
          chunks,
        };
      } catch (e) {
        this.set(id, "failed", `cannot read it from the store: ${(e as Error).message}`);
        return;
      }
      const rec = this.records.get(id);
      if (rec) Object.assign(rec, { blocks, blockBytes });
      this.lastHandedSeq = seq;
      const sent = this.client.send(ck);
      // Wait for "received" (events update the record) or a failure; durable follows later.
      const outcome = await new Promise<{ ok: true } | { ok: false; err: Error }>((resolve) => {
        const check = (e: MirrorStateEvent): void => {
          if (e.id === ck.id && (e.state === "received" || e.state === "durable")) {
            this.client.off("state", check);
            resolve({ ok: true });
          }
        };
        this.client.on("state", check);
        sent.then(
          () => {
            this.client.off("state", check);
            resolve({ ok: true });
          },
          (err: Error) => {
            this.client.off("state", check);
            resolve({ ok: false, err });
          },
        );
      });
      sent.catch(() => undefined);
      if (outcome.ok) {
        // each part is now that mirror checkpoint (lineage.ts, mirrorIdent): a pull on this host
        // later (a failback) stops its walk down the mirror's chain here, merged since or not
        try {
          for (const x of shipped) this.opts.store.setMirrorOrigin(x.id, mirrorIdent(x));
        } catch (e) {
          // (the store closing under a last send: only a later pull's shortcut is lost)
          this.log.warn({ id, err: (e as Error).message }, "cannot record the mirror checkpoint it is");
        }
        return;
      }
      if (this.closed) return;
      if (outcome.err instanceof MirrorLostError) return; // the queue was rebuilt (rewind)
      if (outcome.err instanceof MissingParentError) {
        const n = (this.resends.get(id) ?? 0) + 1;
        this.resends.set(id, n);
        const root = this.chainRootSeq(id);
        if (n <= MAX_RESENDS && root !== undefined) {
          this.rewind(root - 1, `the mirror refused ${id}: ${outcome.err.message}; sending its chain again from ${checkpointId(this.opts.app, root)}`);
          return;
        }
        this.set(id, "failed", outcome.err.message);
        return;
      }
      if (outcome.err instanceof ChunkReadError && attempt < MAX_ATTEMPTS) {
        this.log.warn({ id, attempt, err: outcome.err.message }, "blocks moved under the send; describing the checkpoint again");
        this.lastHandedSeq = seq - 1;
        continue;
      }
      this.set(id, "failed", outcome.err.message);
      return;
    }
  }

  private onClientState(e: MirrorStateEvent): void {
    const id = checkpointId(this.opts.app, e.seq);
    const r = this.records.get(id);
    if (!r || r.mirrorId !== e.id) return;
    if (e.state === "received" || e.state === "durable") this.set(id, e.state);
    else if (e.state === "queued" && r.state === "received") this.set(id, "queued"); // lost from the mirror's cache
  }

  /** `force`: also out of "durable" (the mirror lost it). */
  private set(id: string, state: ShipState, error?: string, force = false): void {
    const seq = parseCheckpointId(id)!.seq;
    let r = this.records.get(id);
    if (r?.state === "durable" && state !== "durable" && !force) return;
    if (!r) {
      r = { id, seq, mirrorId: toMirrorId(id), state, updatedAt: "" };
      this.records.set(id, r);
    }
    r.state = state;
    r.updatedAt = new Date().toISOString();
    if (error !== undefined) r.error = error;
    else delete r.error;
    const ev: ShipperStateEvent = { id, seq, mirrorId: r.mirrorId, state, ...(error !== undefined ? { error } : {}) };
    this.emit("state", ev);
    this.dirty = true;
    void this.save();
    this.wakeIdle();
  }

  /** Writes the state file (atomically; writes coalesce). */
  private save(): Promise<void> {
    this.saving = this.saving.then(async () => {
      if (!this.dirty) return;
      this.dirty = false;
      const file: ShipperStateFile = {
        format: "tardigrade-mirror-shipper",
        version: 1,
        app: this.opts.app,
        source: this.source,
        url: this.opts.url,
        checkpoints: this.states(),
      };
      try {
        await writeFileAtomic(this.opts.statePath, JSON.stringify(file, null, 1) + "\n");
      } catch (e) {
        this.log.error({ err: (e as Error).message, path: this.opts.statePath }, "cannot write the mirror state file");
      }
    });
    return this.saving;
  }
}

// ---- restore side ----

export interface PullFromMirrorOptions {
  dial?: DialOptions;
  /** Only without a tokens file on the server: the source this client acts as. */
  helloSource?: string;
  logger?: Logger;
}

export interface PullFromMirrorResult {
  /** Store id of the checkpoint asked for. */
  id: string;
  /** Checkpoints imported, oldest first (ancestors the store lacked, then the one asked for). */
  imported: (ImportReport & { id: string })[];
  /** True if the checkpoint and its whole chain were already in the store, same content (nothing imported). */
  alreadyPresent: boolean;
  /** Local checkpoints of another lineage that had ids of the mirror's chain: renamed to app `app` (old id -> new id). */
  setAside?: { app: string; renamed: Record<string, string> };
  blocksFetched: number;
  bytesFetched: number;
}

/** One checkpoint's manifest, and the mirror checkpoint that carries it (with its chunks). */
interface Fetched {
  mirrorId: string;
  manifest: MirrorManifest;
}

/** A mirror checkpoint's parts (bundle.ts), fetched once each. */
class MirrorObjects {
  private readonly cache = new Map<string, { mirrorId: string; main: MirrorManifest; members: MirrorManifest[] }>();

  constructor(
    private readonly a: AdminConnection,
    private readonly source: string,
  ) {}

  /** Mirror checkpoint `mirrorId` (or "latest"): its main checkpoint and its members. */
  async object(mirrorId: string): Promise<{ mirrorId: string; main: MirrorManifest; members: MirrorManifest[] }> {
    const hit = this.cache.get(mirrorId);
    if (hit) return hit;
    const { header, chunks } = await this.a.fetchStream(this.source, mirrorId, { want: [] });
    for await (const _ of chunks) {
      // none: want is empty
    }
    const o = parseMirrorObject(header.manifest);
    if (header.id !== toMirrorId(o.main.id) || header.seq !== o.main.seq) {
      throw new Error(`mirror checkpoint ${this.source}/${header.id} (seq ${header.seq}) carries the manifest of ${o.main.id}`);
    }
    const names = new Set(header.chunks.map((c) => c.hash));
    for (const m of [...o.members, o.main]) {
      for (const p of m.table) if (!names.has(p.hash)) throw new Error(`mirror checkpoint ${this.source}/${header.id} does not name table part ${p.hash} of ${m.id}`);
    }
    const r = { mirrorId: header.id, ...o };
    this.cache.set(header.id, r);
    if (mirrorId !== header.id) this.cache.set(mirrorId, r);
    return r;
  }

  /** Store checkpoint `storeId` (a main checkpoint or a member) from the mirror checkpoint holding it. */
  async part(storeId: string): Promise<Fetched> {
    const o = await this.object(objectIdOf(storeId));
    const m = [...o.members, o.main].find((x) => x.id === storeId);
    if (!m) throw new Error(`mirror checkpoint ${this.source}/${o.mirrorId} does not hold ${storeId}`);
    return { mirrorId: o.mirrorId, manifest: m };
  }

  /** `f`'s chain on the mirror, oldest (its full checkpoint, or the first link `stop` accepts, walking down) first. */
  async chain(f: Fetched, stop: (f: Fetched) => boolean = () => false): Promise<Fetched[]> {
    const chain: Fetched[] = [f];
    for (;;) {
      const last = chain[chain.length - 1] as Fetched;
      const m = last.manifest;
      if (m.kind !== "incremental" || m.parent === null || stop(last)) break;
      if (chain.length > 100_000) throw new Error("checkpoint chain too long");
      chain.push(await this.part(m.parent));
    }
    return chain.reverse();
  }
}

/** The table (page table, metadata, blocks' page lists) of a mirrored checkpoint. */
async function fetchTable(a: AdminConnection, source: string, f: Fetched): Promise<MirrorTable> {
  const m = f.manifest;
  const parts = new Map<string, Buffer>();
  const t = await a.fetchStream(source, f.mirrorId, { want: m.table.map((p) => p.hash) });
  for await (const [h, data] of t.chunks) parts.set(h, data);
  const tableBufs = m.table.map((p) => {
    const b = parts.get(p.hash);
    if (!b) throw new Error(`mirror did not send table part ${p.hash} of ${m.id}`);
    return b;
  });
  const tableBytes = Buffer.concat(tableBufs);
  if (tableBytes.length !== m.tableBytes) throw new Error(`table of ${m.id} is ${tableBytes.length} bytes, the manifest says ${m.tableBytes}`);
  return decodeTable(tableBytes, m.id);
}

/**
 * Fetches checkpoint `id` (a store id `app@seq`, its mirror form `app.seq`, or "latest") of
 * mirror source `source` into `store`, with every ancestor the store lacks, oldest first.
 * A local checkpoint counts as one of the chain only if it has the same content (image
 * header, metadata, page table: lineage.ts) on the same parent, every link down to the
 * full checkpoint; local ones of another lineage with the chain's ids are renamed to
 * another app first (result.setAside), so the chain restored is the mirror's, never mixed.
 * Only blocks holding pages the store lacks are transferred; every block is checked
 * (SHA-256, CRC, decompressed length, each page's hash) before it is stored; each
 * checkpoint is committed atomically.
 */
export async function pullFromMirror(
  url: string,
  token: string,
  source: string,
  id: string,
  store: CasStore,
  opts: PullFromMirrorOptions = {},
): Promise<PullFromMirrorResult> {
  if (!isValidName(source)) throw new Error(`invalid source name ${JSON.stringify(source)}`);
  const admin: AdminOptions = { url, token, ...(opts.helloSource ? { source: opts.helloSource } : {}), ...(opts.dial ? { dial: opts.dial } : {}) };
  const a = await AdminConnection.open(admin);
  try {
    const objects = new MirrorObjects(a, source);
    const top = await objects.object(mirrorIdArg(id));
    const target = top.main.id;
    const result: PullFromMirrorResult = { id: target, imported: [], alreadyPresent: false, blocksFetched: 0, bytesFetched: 0 };
    // Every part of the mirror checkpoint (the tree's other processes and the files image,
    // then the main process) on its own chain, down to its full checkpoint (manifests are
    // small). Ids alone say nothing about content: a local APP@5 may be of another lineage
    // (lineage.ts). Walk up from the full: a link matches if the store holds that id with the
    // same content on the same (matching) parent. From the first link that does not match,
    // everything above is imported; local checkpoints with those ids are another lineage.
    const plans: { chain: Fetched[]; firstImport: number; diverged: string[] }[] = [];
    const tables = new Map<string, MirrorTable>();
    // A link the store already knows to be this mirror checkpoint (imported from it, or matched
    // before: its mirror origin, lineage.ts) ends the walk down: it and its chain below are the
    // mirror's, checked when it was recorded; a merge since kept its content. So a pull costs
    // the links since the last one, not the whole chain (a standby pulls every second, for days).
    const known = (f: Fetched): boolean => store.mirrorOrigin(f.manifest.id) === mirrorIdent(f.manifest);
    for (const m of [...top.members, top.main]) {
      const chain = await objects.chain({ mirrorId: top.mirrorId, manifest: m }, known);
      const base = known(chain[0] as Fetched);
      const diverged: string[] = [];
      let matched = true;
      let firstImport = chain.length;
      for (let i = 0; i < chain.length; i++) {
        const f = chain[i] as Fetched;
        if (i === 0 && base) continue;
        const mine = store.identity(f.manifest.id);
        if (matched && mine !== undefined) {
          const table = await fetchTable(a, source, f);
          const digest = contentDigest(Buffer.from(f.manifest.header, "base64"), table.meta, table.extents);
          const parentOk = (f.manifest.kind === "incremental" ? f.manifest.parent : null) === (mine.kind === "incremental" ? mine.parent : null);
          if (digest === mine.digest && mine.kind === f.manifest.kind && parentOk) {
            store.setMirrorOrigin(f.manifest.id, mirrorIdent(f.manifest));
            continue;
          }
          tables.set(f.manifest.id, table);
        }
        if (matched) firstImport = i;
        matched = false;
        if (mine !== undefined) diverged.push(f.manifest.id);
      }
      plans.push({ chain, firstImport, diverged });
    }
    if (plans.every((p) => p.firstImport === p.chain.length)) {
      result.alreadyPresent = true;
      return result;
    }
    // Local checkpoints of another lineage are set aside, the members under the main's new name.
    if (plans.some((p) => p.diverged.length > 0)) {
      const mainApp = top.main.app;
      const base = store.divergedName(mainApp);
      const renamed: Record<string, string> = {};
      for (const p of plans) {
        if (p.diverged.length === 0) continue;
        const app = (p.chain[0] as Fetched).manifest.app;
        const member = parseMemberApp(app);
        const aside = await store.setAside(p.diverged, member ? `${base}~${member.pid === 0 ? "files" : member.pid}` : base);
        Object.assign(renamed, Object.fromEntries(aside.moved));
      }
      result.setAside = { app: base, renamed };
      opts.logger?.warn({ app: mainApp, renamed }, `local checkpoints of another lineage had the mirror's ids; kept as app ${base}`);
    }
    for (const p of plans) {
      for (const f of p.chain.slice(p.firstImport)) {
        const m = f.manifest;
        const table = tables.get(m.id) ?? (await fetchTable(a, source, f));
        tables.delete(m.id);
        // The blocks this store lacks, streamed straight into the import.
        const need = store.blocksNeeded(table).map((b) => b.name);
        let stream: AsyncGenerator<[string, Buffer], void, void> | undefined;
        if (need.length > 0) stream = (await a.fetchStream(source, f.mirrorId, { want: need })).chunks;
        const getBlock = async (name: string): Promise<Buffer> => {
          const r = await stream?.next();
          if (!r || r.done === true) throw new Error(`mirror ended the fetch of ${m.id} before block ${name}`);
          const [h, data] = r.value;
          if (h !== name) throw new Error(`mirror sent block ${h} where ${name} was expected`);
          result.blocksFetched++;
          result.bytesFetched += data.length;
          return data;
        };
        const rep = await store.importCheckpoint(m, table, getBlock);
        store.setMirrorOrigin(m.id, mirrorIdent(m));
        // Drain what the import did not take (a page stored meanwhile): the connection serves the next request.
        if (stream) for await (const _ of stream);
        result.imported.push({ ...rep, id: m.id });
        opts.logger?.info({ id: m.id, blocksStored: rep.blocksStored, bytesStored: rep.bytesStored }, "imported from mirror");
      }
    }
    return result;
  } finally {
    a.close();
  }
}
