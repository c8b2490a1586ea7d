// The destination's in-memory cache: chunk bytes shared by every source, reference
// counted by the checkpoints (in progress or queued) that need them, and a byte
// budget. A checkpoint reserves the bytes it will receive before its chunks are
// asked for; while the budget is spent, reservations wait, so the sessions waiting on
// them stop reading their sockets (backpressure) until a flush frees memory.

export interface CacheStats {
  bytes: number;
  reserved: number;
  peak: number;
  entries: number;
  waiting: number;
  /** Reservations that had to wait for room (each one paused a source). */
  waits: number;
}

interface Entry {
  data: Buffer;
  refs: number;
}

interface Waiter {
  bytes: number;
  resolve: () => void;
  reject: (err: Error) => void;
}

export class ChunkCache {
  private readonly entries = new Map<string, Entry>();
  /** Bytes of chunk data held. */
  private bytes = 0;
  /** Bytes promised to checkpoints whose chunks have not all arrived yet (and manifests). */
  private reserved = 0;
  private peak = 0;
  private waits = 0;
  private readonly waiters: Waiter[] = [];
  /** Called when a reservation has to wait: the flusher should make room. */
  onPressure: () => void = () => {};

  constructor(readonly maxBytes: number) {}

  get used(): number {
    return this.bytes + this.reserved;
  }

  stats(): CacheStats {
    return { bytes: this.bytes, reserved: this.reserved, peak: this.peak, entries: this.entries.size, waiting: this.waiters.length, waits: this.waits };
  }

  has(hash: string): boolean {
    return this.entries.has(hash);
  }

  get(hash: string): Buffer | undefined {
    return this.entries.get(hash)?.data;
  }

  /** Takes a reference on a chunk already cached. Returns false if it is not cached. */
  pin(hash: string): boolean {
    const e = this.entries.get(hash);
    if (!e) return false;
    e.refs++;
    return true;
  }

  /**
   * Converts `reservedBytes` of a reservation into the chunk's data (or, when the
   * chunk is already cached, just pins it and returns the reservation).
   */
  insert(hash: string, data: Buffer, reservedBytes: number): void {
    this.reserved -= reservedBytes;
    const e = this.entries.get(hash);
    if (e) {
      e.refs++;
    } else {
      // Copy only when the chunk is a small view of a larger read buffer, which it would keep alive.
      const own = data.buffer.byteLength <= data.length + 64 ? data : Buffer.from(data);
      this.entries.set(hash, { data: own, refs: 1 });
      this.bytes += data.length;
    }
    this.notePeak();
    this.grant();
  }

  unpin(hash: string): void {
    const e = this.entries.get(hash);
    if (!e) return;
    if (--e.refs <= 0) {
      this.entries.delete(hash);
      this.bytes -= e.data.length;
      this.grant();
    }
  }

  /**
   * Reserves `n` bytes, waiting while that would exceed the budget. Fails at once if
   * n alone exceeds the budget (that checkpoint could never fit).
   */
  reserve(n: number): Promise<void> {
    if (n > this.maxBytes) {
      return Promise.reject(
        new Error(`needs ${n} bytes of cache but --cache-max is ${this.maxBytes}; raise --cache-max on the server`),
      );
    }
    if (this.waiters.length === 0 && this.used + n <= this.maxBytes) {
      this.reserved += n;
      this.notePeak();
      return Promise.resolve();
    }
    this.waits++;
    return new Promise((resolve, reject) => {
      this.waiters.push({ bytes: n, resolve, reject });
      this.onPressure();
    });
  }

  release(n: number): void {
    this.reserved -= n;
    this.grant();
  }

  /** Fails every waiting reservation (shutdown). */
  rejectWaiters(err: Error): void {
    for (const w of this.waiters.splice(0)) w.reject(err);
  }

  private grant(): void {
    while (this.waiters.length > 0) {
      const w = this.waiters[0] as Waiter;
      if (this.used + w.bytes > this.maxBytes) {
        this.onPressure();
        return;
      }
      this.waiters.shift();
      this.reserved += w.bytes;
      this.notePeak();
      w.resolve();
    }
  }

  private notePeak(): void {
    if (this.used > this.peak) this.peak = this.used;
  }
}
