// A framed connection over a TCP or TLS socket: sends frames with write
// backpressure, yields received frames one at a time (the socket is only read as
// fast as frames are consumed, which is how the server slows sources down), and
// closes with an Error frame that tells the peer what went wrong.
//
// Received bytes come either from the socket's 'data' events (a stream socket) or,
// for the server's plain TCP connections, from reads straight into a RecvArena (see
// readInto() and recv-arena.ts). Either way a yielded frame's `parts` are views that
// are valid until the next frame is asked for; `payload` is the frame's own.
import { Socket } from "node:net";
import { RecvArena } from "./recv-arena.js";
import { SMALL_FRAME, type FrameBudget } from "./frame-budget.js";
import { DEFAULT_MAX_FRAME, FrameDecoder, FrameType, ProtocolError, encodeFrameParts, encodeJsonFrame, type Frame } from "./frames.js";

export interface FramedConnectionOptions {
  maxFrame?: number;
  /** A frame that has started arriving must finish within this time (ms). */
  frameTimeoutMs?: number;
  /** Server side: memory for partially received frames, shared with the other connections. */
  budget?: FrameBudget;
}

/** The decoder holds this much unconsumed input before the socket is paused. */
const PAUSE_BYTES = 2 * 1024 * 1024;

/**
 * A plain TCP socket the server accepted, re-wrapped so that the kernel reads into a
 * RecvArena (net's `onread`, which Node offers only for sockets it creates: the
 * accepted socket's handle is moved to a new Socket). Undefined if that is not
 * possible (TLS, or a Node whose net internals differ): use the socket as it is.
 */
export function readInto(sock: Socket, arena: RecvArena, onData: (b: Buffer) => boolean): Socket | undefined {
  // (`_handle` is net.Socket's documented-by-use private field holding the libuv handle.)
  const holder = sock as unknown as { _handle?: object | null; encrypted?: boolean };
  const handle = holder._handle;
  if (holder.encrypted === true || handle === undefined || handle === null) return undefined;
  try {
    const fast = new Socket({
      handle,
      allowHalfOpen: true,
      readable: true,
      writable: true,
      onread: { buffer: () => arena.room(), callback: (n: number) => onData(arena.take(n)) },
    } as ConstructorParameters<typeof Socket>[0]);
    holder._handle = null; // the old object must never close the handle
    return fast;
  } catch {
    return undefined;
  }
}

export class FramedConnection {
  readonly decoder: FrameDecoder;
  readonly socket: Socket;
  private closed = false;
  bytesIn = 0;
  bytesOut = 0;
  private readonly frameTimeoutMs: number;
  private readonly arena: RecvArena | undefined;
  /** The peer closed its side (or the socket closed). */
  private ended = false;
  private readError: Error | undefined;
  /** frames() is waiting for bytes. */
  private wake: (() => void) | undefined;
  private readonly budget: FrameBudget | undefined;
  /** Bytes of the budget this connection holds for the frame now arriving. */
  private held = 0;
  /** Arena reads were stopped by feed() returning false. */
  private readStopped = false;
  /** Waiting for budget (reading is paused): cancels the wait. */
  private cancelWait: (() => void) | undefined;

  /**
   * @param accepted a socket the server accepted with pauseOnConnect (plain TCP ones
   *   are moved to arena reads, see readInto), or any connected socket
   */
  constructor(accepted: Socket, opts: FramedConnectionOptions & { arena?: boolean } = {}) {
    this.decoder = new FrameDecoder(opts.maxFrame ?? DEFAULT_MAX_FRAME);
    this.frameTimeoutMs = opts.frameTimeoutMs ?? 30_000;
    this.budget = opts.budget;
    const arena = opts.arena === true ? new RecvArena() : undefined;
    const fast = arena
      ? readInto(accepted, arena, (b) => {
          const ok = this.feed(b);
          // (Returning false stops the handle's reads without marking the stream paused: see resumeReading.)
          if (!ok) this.readStopped = true;
          return ok;
        })
      : undefined;
    this.arena = fast ? arena : undefined;
    const socket = (this.socket = fast ?? accepted);
    if (!fast) {
      socket.on("data", (b: Buffer) => {
        if (!this.feed(b)) socket.pause();
      });
      if (socket.isPaused()) socket.resume();
    }
    socket.setNoDelay(true);
    socket.on("end", () => this.onEnd());
    socket.on("error", (err) => {
      this.readError ??= err;
      this.onEnd();
    });
    socket.on("close", () => {
      this.closed = true;
      this.releaseBudget();
      this.onEnd();
    });
  }

  /** Largest frame payload accepted from now on (raised after Hello). */
  setMaxFrame(n: number): void {
    this.decoder.maxPayload = n;
  }

  /** Takes received bytes; false when the socket should pause (the consumer is behind, or no budget). */
  private feed(b: Buffer): boolean {
    this.bytesIn += b.length;
    // Closed (failed): nothing more is read, nor kept.
    if (this.closed) return false;
    this.decoder.push(b);
    const ok = this.account();
    const w = this.wake;
    if (w) {
      this.wake = undefined;
      w();
      return ok;
    }
    return ok && this.decoder.pendingBytes < PAUSE_BYTES;
  }

  /**
   * Holds budget for the frame now arriving if it is large (frame-budget.ts); false if
   * reading must stop until the budget grants it (the socket is resumed then).
   */
  private account(): boolean {
    const b = this.budget;
    if (!b || this.closed) return true;
    if (this.cancelWait) return false;
    const total = this.decoder.partialFrameLength();
    const need = total > SMALL_FRAME ? total : 0;
    if (need <= this.held) {
      if (need < this.held) b.give(this.held - need);
      this.held = need;
      return true;
    }
    const more = need - this.held;
    if (b.tryTake(more)) {
      this.held = need;
      return true;
    }
    this.cancelWait = b.wait(more, () => {
      this.cancelWait = undefined;
      this.held += more;
      if (this.isClosed) {
        this.releaseBudget();
        return;
      }
      this.resumeReading();
      // frames() arms the frame timeout again.
      const w = this.wake;
      this.wake = undefined;
      w?.();
    });
    return false;
  }

  /**
   * Reads again after feed() asked to stop. A socket read through `onread` whose callback
   * returned false has its handle's reads stopped but is not "paused" (isPaused() is
   * false and resume() does nothing): its _read() starts the handle reading again.
   */
  private resumeReading(): void {
    if (this.arena) {
      if (!this.readStopped || this.socket.destroyed) return;
      this.readStopped = false;
      (this.socket as unknown as { _read(n: number): void })._read(0);
    } else if (this.socket.isPaused()) this.socket.resume();
  }

  private releaseBudget(): void {
    this.cancelWait?.();
    this.cancelWait = undefined;
    if (this.held > 0) this.budget?.give(this.held);
    this.held = 0;
  }

  private onEnd(): void {
    this.ended = true;
    const w = this.wake;
    this.wake = undefined;
    w?.();
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
   * Ends quietly when the peer closes between frames. A Chunks frame's `parts` are
   * valid until the next frame is asked for.
   */
  async *frames(): AsyncGenerator<Frame, void, void> {
    for (;;) {
      let f: Frame | undefined;
      while ((f = this.decoder.next()) !== undefined) {
        // Payloads are kept by the consumer (an Offer's header is queued): own copies
        // when they lie in the arena, which is reused.
        if (this.arena && f.payload.length > 0) f = { ...f, payload: Buffer.from(f.payload) };
        this.account(); // the frame is complete: its budget goes back
        yield f;
        this.arena?.release(this.decoder.consumed);
      }
      if (this.readError) {
        if (this.decoder.pendingBytes > 0) throw this.truncated("the connection failed");
        throw this.readError;
      }
      if (this.ended) {
        if (this.decoder.pendingBytes > 0) throw this.truncated("the peer closed the connection");
        return;
      }
      let timer: NodeJS.Timeout | undefined;
      let timedOut = false;
      const more = new Promise<void>((resolve) => (this.wake = resolve));
      // (Not while waiting for budget: the peer is not the one stalling.)
      if (this.decoder.pendingBytes > 0 && !this.cancelWait) {
        timer = setTimeout(() => {
          timedOut = true;
          this.onEnd();
        }, this.frameTimeoutMs);
      }
      if (!this.cancelWait) this.resumeReading();
      try {
        await more;
      } finally {
        if (timer !== undefined) clearTimeout(timer);
      }
      if (timedOut) {
        const err = this.truncated(`stalled for ${this.frameTimeoutMs} ms`);
        this.fail(err);
        throw err;
      }
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
    this.releaseBudget();
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
    this.releaseBudget();
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
