// The daemon's end of the image FIFO. It is opened before the agent is asked to write
// (O_NONBLOCK: open() returns at once, with no writer yet), so the agent's open of the
// write end never waits for the store: a capture queued behind another app's long ingest
// is not given up by the agent while the daemon later blocks in open() for ever (issue 11,
// defect 2). The read end is watched by the event loop (epoll): it reports end of file
// only after a writer came and went, never before one came.
import { closeSync, constants, openSync } from "node:fs";
import koffi from "koffi";
import { type OnReadOpts, Socket, type SocketConstructorOpts } from "node:net";
import type { Readable } from "node:stream";
import { CHUNK_FEED, FEED_CHUNK, type ChunkFeed, type FeedSink } from "../store/cas/image-stream.js";

/** Bytes kept before the store starts reading (the agent may start writing first). */
const EARLY_MAX = 4 << 20;

const IDLE_MS = Math.max(1000, Number(process.env.TARDIGRADE_FIFO_IDLE_MS ?? 120_000));

export interface FifoReader {
  /** The image bytes as the agent writes them; ends when the agent closes its end. */
  readonly stream: Readable;
  /** Stops reading: a writer gets EPIPE, a consumer an error. Idempotent. */
  abort(why: string): void;
}

/** F_SETPIPE_SZ (linux/fcntl.h): not in node's constants. */
const F_SETPIPE_SZ = 1031;
/** The FIFO's capacity asked for: the default 64 KiB made every 1 GiB image 16,384 wake-ups of
 * the writer and as many reads (at most /proc/sys/fs/pipe-max-size, 1 MiB by default). */
const PIPE_BYTES = 1 << 20;
let libcFcntl: ((fd: number, cmd: number, ...rest: unknown[]) => number) | null = null;

/** Grows the pipe behind fd; a refusal (a user over pipe-user-pages-soft, an older kernel) leaves the default. */
function growPipe(fd: number): void {
  try {
    libcFcntl ??= koffi.load("libc.so.6").func("int fcntl(int fd, int cmd, ...)") as (fd: number, cmd: number, ...rest: unknown[]) => number;
    libcFcntl(fd, F_SETPIPE_SZ, "int", PIPE_BYTES);
  } catch {
    // koffi or libc unavailable: the default pipe size works, only slower
  }
}

export function openFifoReader(path: string): FifoReader {
  const fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK);
  growPipe(fd);
  // Every read(2) lands in this one buffer (the socket's `onread`), handed to the store's
  // reader (a ChunkFeed, image-stream.ts) which copies it into the records: no new memory
  // per chunk. Before the store reads, up to EARLY_MAX bytes are kept here (then reading pauses).
  const scratch = Buffer.allocUnsafeSlow(FEED_CHUNK);
  let sink: FeedSink | null = null;
  const early: Buffer[] = [];
  let earlyBytes = 0;
  let ended: { err: Error | null } | null = null;
  let sock: Socket;
  try {
    // (onread is a Socket constructor option since Node 12; @types/node lists it for connect() only)
    const opts: SocketConstructorOpts & { onread: OnReadOpts } = {
      fd,
      readable: true,
      writable: false,
      onread: {
        buffer: scratch,
        callback: (n: number, buf: Uint8Array): boolean => {
          const b = Buffer.from(buf.buffer, buf.byteOffset, n);
          if (sink) return sink.got(n, b);
          early.push(Buffer.from(b)); // a copy: the buffer is read into again
          earlyBytes += n;
          return earlyBytes < EARLY_MAX;
        },
      },
    };
    sock = new Socket(opts);
  } catch (e) {
    closeSync(fd);
    throw e;
  }
  const finish = (err: Error | null): void => {
    if (ended) return;
    ended = { err };
    sink?.end(err);
  };
  sock.on("end", () => finish(null));
  sock.on("error", (e: Error) => finish(e)); // surfaced to the consumer through the feed
  sock.on("close", () => finish(null));
  // with onread the stream holds no data: read(0) lets it see the end of file and emit 'end'
  sock.resume();
  const feed: ChunkFeed = {
    attach(s: FeedSink): void {
      sink = s;
      let more = true;
      for (const b of early.splice(0)) more = s.got(b.length, b) && more;
      earlyBytes = 0;
      if (ended) s.end(ended.err);
      else if (more) feed.resume();
    },
    resume(): void {
      if (!sock.destroyed) sock._read(0); // starts reading again after a callback returned false
    },
    destroy(): void {
      if (!sock.destroyed) sock.destroy();
    },
  };
  Object.defineProperty(sock, CHUNK_FEED, { value: feed });
  // Named like an fs.ReadStream: the store's image errors then name the FIFO's path.
  Object.defineProperty(sock, "path", { value: path, enumerable: true });
  // Bounded wait: once the store reads (it holds the store's lock then), an agent that sends
  // nothing for IDLE_MS while the store waits for bytes is given up (the ingest fails, the lock
  // is released). Time spent queued for the lock does not count: nobody reads then.
  let seen = 0;
  let quietSince = Date.now();
  const watch = setInterval(() => {
    const waiting = sink !== null && sink.waiting;
    if (sock.bytesRead !== seen || !waiting) {
      seen = sock.bytesRead;
      quietSince = Date.now();
    } else if (Date.now() - quietSince > IDLE_MS) sock.destroy(new Error(`the agent sent no image data for ${Math.round(IDLE_MS / 1000)} s`));
  }, Math.min(1000, IDLE_MS / 4));
  watch.unref();
  sock.once("close", () => clearInterval(watch));
  return {
    stream: sock,
    abort(why: string): void {
      if (!sock.destroyed) sock.destroy(new Error(why));
    },
  };
}
