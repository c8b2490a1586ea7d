// The daemon's end of the image FIFO. It is opened before the agent is asked to write
// (O_NONBLOCK: open() returns at once, with no writer yet), so the agent's open of the
// write end never waits for the store: a capture queued behind another app's long ingest
// is not given up by the agent while the daemon later blocks in open() for ever (issue 11,
// defect 2). The read end is watched by the event loop (epoll): it reports end of file
// only after a writer came and went, never before one came.
import { closeSync, constants, openSync } from "node:fs";
import { Socket } from "node:net";
import type { Readable } from "node:stream";

const IDLE_MS = Math.max(1000, Number(process.env.TARDIGRADE_FIFO_IDLE_MS ?? 120_000));

export interface FifoReader {
  /** The image bytes as the agent writes them; ends when the agent closes its end. */
  readonly stream: Readable;
  /** Stops reading: a writer gets EPIPE, a consumer an error. Idempotent. */
  abort(why: string): void;
}

export function openFifoReader(path: string): FifoReader {
  const fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK);
  let sock: Socket;
  try {
    sock = new Socket({ fd, readable: true, writable: false });
  } catch (e) {
    closeSync(fd);
    throw e;
  }
  sock.on("error", () => {}); // surfaced to the consumer through the stream
  // Named like an fs.ReadStream: the store's image errors then name the FIFO's path.
  Object.defineProperty(sock, "path", { value: path, enumerable: true });
  // Bounded wait: once the store reads (it holds the store's lock then), an agent that sends
  // nothing for IDLE_MS while the store waits for bytes is given up (the ingest fails, the lock
  // is released). Time spent queued for the lock does not count: nobody reads then.
  let seen = 0;
  let quietSince = Date.now();
  const watch = setInterval(() => {
    const waiting = sock.readableFlowing !== null && sock.readableLength === 0;
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
