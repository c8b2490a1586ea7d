// One-shot requests to a mirror server: flush, list, fetch. Each opens a connection,
// authenticates with role "client", does one request and closes.
import { parseMirrorUrl } from "./address.js";
import { FramedConnection, remoteError } from "./connection.js";
import { dial, type DialOptions } from "./dial.js";
import { FrameType, type Frame } from "./frames.js";
import { decodeCheckpointHeader, decodeChunk, parseJson } from "./messages.js";
import { sha256hex, type CheckpointHeader } from "./objects.js";
import type { FlushOutcome } from "./flusher.js";
import type { ListedCheckpoint } from "./server.js";

export interface AdminOptions {
  url: string;
  token: string;
  /** Without a tokens file on the server, the client names its source. */
  source?: string;
  dial?: DialOptions;
}

export type LeaseReply = { granted: true; holder: string; epoch: number; ttlMs: number } | { granted: false; holder: string; epoch: number; expiresInMs: number; renewedMsAgo: number | null };

export class AdminConnection {
  private constructor(
    private readonly conn: FramedConnection,
    private readonly frames: AsyncGenerator<Frame, void, void>,
    readonly source: string,
  ) {}

  static async open(opts: AdminOptions): Promise<AdminConnection> {
    const sock = await dial(parseMirrorUrl(opts.url), opts.dial);
    const conn = new FramedConnection(sock);
    const frames = conn.frames();
    await conn.sendJson(FrameType.Hello, { token: opts.token, role: "client", ...(opts.source ? { source: opts.source } : {}) });
    const a = new AdminConnection(conn, frames, "");
    const ok = await a.expect(FrameType.HelloOk);
    return new AdminConnection(conn, frames, String(parseJson(FrameType.HelloOk, ok.payload).source));
  }

  async expect(type: FrameType): Promise<Frame> {
    const r = await this.frames.next();
    if (r.done === true) throw new Error(`mirror closed the connection while ${FrameType[type]} was expected`);
    if (r.value.type === FrameType.Error) throw remoteError(r.value.payload);
    if (r.value.type !== type) throw new Error(`mirror sent ${FrameType[r.value.type]} while ${FrameType[type]} was expected`);
    return r.value;
  }

  async flush(): Promise<FlushOutcome> {
    await this.conn.sendJson(FrameType.Flush, {});
    return parseJson(FrameType.Flushed, (await this.expect(FrameType.Flushed)).payload) as unknown as FlushOutcome;
  }

  /**
   * The source's lease (docs/ha.md): `probe` only reports who holds it; else takes it (no
   * epoch) or renews it (its epoch) for `host`.
   */
  async lease(req: { host?: string; epoch?: number; ttlMs?: number; probe?: boolean }): Promise<LeaseReply> {
    await this.conn.sendJson(FrameType.Lease, req);
    const r = await this.frames.next();
    if (r.done === true) throw new Error("mirror closed the connection while answering Lease");
    if (r.value.type === FrameType.Error) throw remoteError(r.value.payload);
    const v = parseJson(r.value.type, r.value.payload);
    if (r.value.type === FrameType.Granted) return { granted: true, holder: String(v.holder), epoch: Number(v.epoch), ttlMs: Number(v.ttlMs) };
    if (r.value.type !== FrameType.Held) throw new Error(`mirror answered Lease with ${FrameType[r.value.type]}`);
    return { granted: false, holder: String(v.holder), epoch: Number(v.epoch), expiresInMs: Number(v.expiresInMs), renewedMsAgo: typeof v.renewedMsAgo === "number" ? v.renewedMsAgo : null };
  }

  async list(): Promise<ListedCheckpoint[]> {
    await this.conn.sendJson(FrameType.List, {});
    const v = parseJson(FrameType.Listing, (await this.expect(FrameType.Listing)).payload);
    return v.checkpoints as ListedCheckpoint[];
  }

  /**
   * Fetches a checkpoint ("latest" for the newest), verifying every chunk's SHA-256.
   * Chunks in `have` are not transferred (the caller already has them).
   */
  async fetch(
    source: string,
    id: string,
    have: Iterable<string> = [],
    onChunk?: (hash: string, data: Buffer) => void,
  ): Promise<{ header: CheckpointHeader; headerBytes: Buffer; chunks: Map<string, Buffer> }> {
    await this.conn.sendJson(FrameType.Fetch, { source, id, have: [...have] });
    const hf = await this.expect(FrameType.FetchHeader);
    const header = decodeCheckpointHeader(FrameType.FetchHeader, hf.payload);
    const needed = new Set(header.chunks.map((c) => c.hash));
    const chunks = new Map<string, Buffer>();
    for (;;) {
      const r = await this.frames.next();
      if (r.done === true) throw new Error(`mirror closed the connection in the middle of checkpoint ${source}/${id}`);
      const f = r.value;
      if (f.type === FrameType.Error) throw remoteError(f.payload);
      if (f.type === FrameType.FetchEnd) break;
      if (f.type !== FrameType.Chunk) throw new Error(`mirror sent ${FrameType[f.type]} inside a fetch`);
      const { hash, data } = decodeChunk(f.payload);
      if (!needed.has(hash)) throw new Error(`mirror sent chunk ${hash}, which checkpoint ${header.id} does not name`);
      const actual = sha256hex(data);
      if (actual !== hash) throw new Error(`chunk ${hash} from the mirror hashes to ${actual}: corrupted in transit or on the mirror's disk`);
      chunks.set(hash, Buffer.from(data));
      onChunk?.(hash, data);
    }
    return { header, headerBytes: hf.payload, chunks };
  }

  /**
   * Streaming fetch: resolves with the header, then `chunks` yields [hash, bytes] in header
   * order, each verified against its SHA-256 (nothing is kept). `want` limits the chunks sent
   * (`[]`: the header alone); `have` excludes some. Consume `chunks` to the end before the
   * next request on this connection.
   */
  async fetchStream(
    source: string,
    id: string,
    opts: { want?: Iterable<string>; have?: Iterable<string> } = {},
  ): Promise<{ header: CheckpointHeader; chunks: AsyncGenerator<[string, Buffer], void, void> }> {
    await this.conn.sendJson(FrameType.Fetch, {
      source,
      id,
      have: [...(opts.have ?? [])],
      ...(opts.want !== undefined ? { want: [...opts.want] } : {}),
    });
    const hf = await this.expect(FrameType.FetchHeader);
    const header = decodeCheckpointHeader(FrameType.FetchHeader, hf.payload);
    const needed = new Set(header.chunks.map((c) => c.hash));
    const frames = this.frames;
    async function* chunks(): AsyncGenerator<[string, Buffer], void, void> {
      for (;;) {
        const r = await frames.next();
        if (r.done === true) throw new Error(`mirror closed the connection in the middle of checkpoint ${source}/${header.id}`);
        const f = r.value;
        if (f.type === FrameType.Error) throw remoteError(f.payload);
        if (f.type === FrameType.FetchEnd) return;
        if (f.type !== FrameType.Chunk) throw new Error(`mirror sent ${FrameType[f.type]} inside a fetch`);
        const { hash, data } = decodeChunk(f.payload);
        if (!needed.has(hash)) throw new Error(`mirror sent chunk ${hash}, which checkpoint ${header.id} does not name`);
        const actual = sha256hex(data);
        if (actual !== hash) throw new Error(`chunk ${hash} from the mirror hashes to ${actual}: corrupted in transit or on the mirror's disk`);
        yield [hash, Buffer.from(data)];
      }
    }
    return { header, chunks: chunks() };
  }

  close(): void {
    this.conn.close();
  }
}

/** Opens, runs `fn`, closes. */
export async function withAdmin<T>(opts: AdminOptions, fn: (a: AdminConnection) => Promise<T>): Promise<T> {
  const a = await AdminConnection.open(opts);
  try {
    return await fn(a);
  } finally {
    a.close();
  }
}
