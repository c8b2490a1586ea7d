// Memory for frames that are still arriving, shared by every connection of a server
// (issue 11, defect 7). A connection may hold up to one frame (16 MiB) in receive
// buffers before it can be handled: without a bound, N connections that each start a
// big frame and stall hold N x 16 MiB (150 held 2.4 GB with --cache-max 64M).
//
// Two bounds:
// - before Hello, frames are limited to PRE_AUTH_MAX_FRAME bytes (a Hello is a token and a
//   name): an unauthenticated connection's announced length is refused as soon as its
//   12-byte header is in, so it never holds more than a few KiB (and its own reads);
// - after Hello, a connection that has the header of a frame larger than SMALL_FRAME
//   must reserve that frame's length from this budget before it reads on; when the
//   budget is spent, its socket is paused until another connection's frame completes
//   (reservations are granted in arrival order). A connection holding a reservation
//   always completes its frame or is closed by the frame timeout, so the budget frees.
//
// The per-connection readahead beyond the current frame (one read, at most 256 KiB) is
// not counted.

/** Largest payload before Hello (a Hello is JSON with a token and a source name). */
export const PRE_AUTH_MAX_FRAME = 4096;
/** Frames up to this size are not reserved (they are bounded by the reads themselves). */
export const SMALL_FRAME = 256 * 1024;

interface Waiter {
  bytes: number;
  grant: () => void;
}

export class FrameBudget {
  private used = 0;
  private peakUsed = 0;
  private readonly waiters: Waiter[] = [];

  constructor(readonly maxBytes: number) {}

  get inUse(): number {
    return this.used;
  }

  get peak(): number {
    return this.peakUsed;
  }

  get waiting(): number {
    return this.waiters.length;
  }

  /** Takes `n` bytes now if they fit (and nobody waits before us); false otherwise. */
  tryTake(n: number): boolean {
    if (this.waiters.length > 0 || (this.used + n > this.maxBytes && this.used > 0)) return false;
    this.take(n);
    return true;
  }

  /** Calls `grant` once `n` bytes are taken for the caller. Returns a cancel function. */
  wait(n: number, grant: () => void): () => void {
    const w: Waiter = { bytes: n, grant };
    this.waiters.push(w);
    return () => {
      const i = this.waiters.indexOf(w);
      if (i >= 0) {
        this.waiters.splice(i, 1);
        this.pump();
      }
    };
  }

  give(n: number): void {
    this.used -= n;
    if (this.used < 0) this.used = 0;
    this.pump();
  }

  private take(n: number): void {
    this.used += n;
    if (this.used > this.peakUsed) this.peakUsed = this.used;
  }

  private pump(): void {
    while (this.waiters.length > 0) {
      const w = this.waiters[0] as Waiter;
      // A frame bigger than the whole budget still goes through, alone.
      if (this.used + w.bytes > this.maxBytes && this.used > 0) return;
      this.waiters.shift();
      this.take(w.bytes);
      w.grant();
    }
  }
}
