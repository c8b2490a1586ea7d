// Receive buffers for one connection that the socket reads straight into (net's
// `onread` option), reused once the frames cut from them have been handled.
//
// Why: a stream socket allocates a new 64 KiB buffer for every read. At ~1 GB/s that
// is 16,000 allocations a second, fresh memory (page faults), and external memory
// growth that makes V8 run a full mark-compact every 64 MiB: measured at ~20% of the
// mirror server's CPU, in its GC threads. Reads into a few reused 1 MiB buffers cost
// none of that.
//
// Contract: a view handed out by take() stays valid until release() is called with a
// stream position at or past its end (FramedConnection calls it when the consumer
// asks for the next frame, so a frame's views are valid while it is being handled).

const BUF_BYTES = 1024 * 1024;
/** A read gets at least this much room (else the next buffer is started). */
const MIN_READ = 64 * 1024;
/**
 * And at most this much: libuv reads a readable socket up to 32 times in a row, so
 * this bounds what one connection takes in per turn of the event loop (8 MiB).
 */
const MAX_READ = 256 * 1024;
/** Free buffers kept per connection. */
const MAX_FREE = 4;

export class RecvArena {
  private cur: Buffer = Buffer.allocUnsafeSlow(BUF_BYTES);
  private off = 0;
  /** Stream position of cur[0]. */
  private base = 0;
  /** Buffers read into completely, with the stream position their bytes end at. */
  private readonly retired: { buf: Buffer; end: number }[] = [];
  private readonly free: Buffer[] = [];

  /** Where the next read goes (called by the socket after each read). */
  room(): Buffer {
    if (this.cur.length - this.off < MIN_READ) {
      this.retired.push({ buf: this.cur, end: this.base + this.off });
      this.base += this.off;
      this.cur = this.free.pop() ?? Buffer.allocUnsafeSlow(BUF_BYTES);
      this.off = 0;
    }
    return this.cur.subarray(this.off, this.off + MAX_READ);
  }

  /** The `n` bytes the socket just read into room(). */
  take(n: number): Buffer {
    const v = this.cur.subarray(this.off, this.off + n);
    this.off += n;
    return v;
  }

  /** Every byte before stream position `pos` is no longer referenced: reuse their buffers. */
  release(pos: number): void {
    while (this.retired.length > 0 && (this.retired[0] as { end: number }).end <= pos) {
      const r = this.retired.shift() as { buf: Buffer };
      if (this.free.length < MAX_FREE) this.free.push(r.buf);
    }
  }
}
