// A framed connection over a TCP or TLS socket: sends frames with write
// backpressure, yields received frames one at a time (the socket is only read as
// fast as frames are consumed, which is how the server slows sources down), and
// closes with an Error frame that tells the peer what went wrong.
import type { Socket } from "node:net";
import { DEFAULT_MAX_FRAME, FrameDecoder, FrameType, ProtocolError, encodeFrameParts, encodeJsonFrame, type Frame } from "./frames.js";

export interface FramedConnectionOptions {
  maxFrame?: number;
  /** A frame that has started arriving must finish within this time (ms). */
  frameTimeoutMs?: number;
}

export class FramedConnection {
  readonly decoder: FrameDecoder;
  private closed = false;
  bytesIn = 0;
  bytesOut = 0;
  private readonly frameTimeoutMs: number;

  constructor(
    readonly socket: Socket,
    opts: FramedConnectionOptions = {},
  ) {
    this.decoder = new FrameDecoder(opts.maxFrame ?? DEFAULT_MAX_FRAME);
    this.frameTimeoutMs = opts.frameTimeoutMs ?? 30_000;
    socket.setNoDelay(true);
    socket.on("close", () => {
      this.closed = true;
    });
  }

  get isClosed(): boolean {
    return this.closed || this.socket.destroyed;
  }

  /** Writes a frame; resolves at once unless the socket's buffer is full, then on drain. */
  async send(type: FrameType, parts: Buffer[]): Promise<void> {
    if (this.isClosed) throw new Error(`cannot send ${FrameType[type]}: connection closed`);
    const bufs = encodeFrameParts(type, parts);
    let ok = true;
    for (const b of bufs) {
      this.bytesOut += b.length;
      ok = this.socket.write(b);
    }
    if (!ok) await this.drain();
  }

  /** Writes a frame without waiting; returns false when the caller should waitDrain(). */
  write(type: FrameType, parts: Buffer[]): boolean {
    if (this.isClosed) throw new Error(`cannot send ${FrameType[type]}: connection closed`);
    let ok = true;
    for (const b of encodeFrameParts(type, parts)) {
      this.bytesOut += b.length;
      ok = this.socket.write(b);
    }
    return ok;
  }

  waitDrain(): Promise<void> {
    return this.socket.writableNeedDrain ? this.drain() : Promise.resolve();
  }

  sendJson(type: FrameType, value: unknown): Promise<void> {
    return this.send(type, [Buffer.from(JSON.stringify(value), "utf8")]);
  }

  private drain(): Promise<void> {
    return new Promise((resolve, reject) => {
      const onDrain = (): void => {
        cleanup();
        resolve();
      };
      const onClose = (): void => {
        cleanup();
        reject(new Error("connection closed while waiting to send"));
      };
      const cleanup = (): void => {
        this.socket.off("drain", onDrain);
        this.socket.off("close", onClose);
      };
      this.socket.on("drain", onDrain);
      this.socket.on("close", onClose);
    });
  }

  /**
   * Yields frames in order. Throws ProtocolError for a bad frame, or a truncated one
   * (the peer closed, or stalled longer than frameTimeoutMs, in the middle of a frame).
   * Ends quietly when the peer closes between frames.
   */
  async *frames(): AsyncGenerator<Frame, void, void> {
    // destroyOnReturn: false keeps a half-closed socket writable, so a truncated
    // frame can still be answered with an Error frame after the peer's FIN.
    const it = this.socket.iterator({ destroyOnReturn: false }) as AsyncIterator<Buffer>;
    for (;;) {
      let f: Frame | undefined;
      while ((f = this.decoder.next()) !== undefined) yield f;
      const partial = this.decoder.pendingBytes;
      let timer: NodeJS.Timeout | undefined;
      let timedOut = false;
      if (partial > 0) {
        timer = setTimeout(() => {
          timedOut = true;
          this.fail(this.truncated("stalled for " + this.frameTimeoutMs + " ms"));
        }, this.frameTimeoutMs);
      }
      let r: IteratorResult<Buffer>;
      try {
        r = await it.next();
      } catch (err) {
        if (timedOut) throw this.truncated(`stalled for ${this.frameTimeoutMs} ms`);
        throw err;
      } finally {
        if (timer !== undefined) clearTimeout(timer);
      }
      if (timedOut) throw this.truncated(`stalled for ${this.frameTimeoutMs} ms`);
      if (r.done === true) {
        if (this.decoder.pendingBytes > 0) throw this.truncated("the peer closed the connection");
        return;
      }
      this.bytesIn += r.value.length;
      this.decoder.push(r.value);
    }
  }

  private truncated(why: string): ProtocolError {
    const want = this.decoder.expectedLength();
    const have = this.decoder.pendingBytes;
    return new ProtocolError(
      "truncated-frame",
      `truncated frame: ${why} after ${have} of ${want === undefined ? "at least 12 (header)" : want} bytes`,
    );
  }

  /** Tells the peer why, then closes. Safe to call more than once. */
  fail(err: ProtocolError): void {
    if (this.closed) return;
    this.closed = true;
    const s = this.socket;
    if (!s.destroyed && s.writable) {
      s.end(encodeJsonFrame(FrameType.Error, { code: err.code, message: err.message }));
    }
    // Drop the socket shortly after, whatever the peer does.
    setTimeout(() => s.destroy(), 2000).unref();
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.socket.end();
    setTimeout(() => this.socket.destroy(), 2000).unref();
  }
}

/** Turns a received Error frame's payload into an Error for the local caller. */
export function remoteError(payload: Buffer): MirrorRemoteError {
  try {
    const v = JSON.parse(payload.toString("utf8")) as { code?: unknown; message?: unknown };
    return new MirrorRemoteError(String(v.code ?? "unknown"), String(v.message ?? "no message"));
  } catch {
    return new MirrorRemoteError("unknown", "mirror server sent an unreadable error frame");
  }
}

export class MirrorRemoteError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(`mirror server: ${message} [${code}]`);
    this.name = "MirrorRemoteError";
  }
}
