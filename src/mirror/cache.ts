// The destination's in-memory cache: chunk bytes shared by every source, reference
// counted by the checkpoints (in progress or queued) that need them, and a byte
// budget. A checkpoint reserves the bytes it will receive before its chunks are
// asked for; while the budget is spent, reservations wait, so the sessions waiting on
// them stop reading their sockets (backpressure) until a flush frees memory.
//
// Chunk bytes are kept as views of the receive buffers they arrived in, so ingest
// copies nothing but the few chunks that span two buffers. The byte budget counts
// chunk bytes, so a view must not keep much more than itself alive: a session copies
// the chunks of a receive buffer that is mostly other bytes, and a view is only held
// while the checkpoint that inserted it holds it (when its first reference is
// dropped while others remain, the entry is copied to its own buffer).
//
// Verification: chunks of Chunks frames are cached *unverified* (their SHA-256 is
// checked by the flush, before anything is written). An unverified chunk is usable
// only by checkpoints of the source that sent it: another source offering the same
// name is asked for its own copy, which is verified on arrival and then replaces the
// unverified bytes. So no source's bytes can spoil another source's checkpoint.

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
  /** data is a view of a shared receive buffer (see above). */
  view: boolean;
  /** The bytes were checked against the name. */
  verified: boolean;
  /** The source that sent the bytes. */
  owner: string;
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

  /** Cached and usable by `source`: verified, or sent by that source itself. */
  usable(hash: string, source: string): boolean {
    const e = this.entries.get(hash);
    return e !== undefined && (e.verified || e.owner === source);
  }

  /** Cached but not usable by `source`: another source's unverified bytes. */
  conflicts(hash: string, source: string): boolean {
    const e = this.entries.get(hash);
    return e !== undefined && !e.verified && e.owner !== source;
  }

  get(hash: string): Buffer | undefined {
    return this.entries.get(hash)?.data;
  }

  isVerified(hash: string): boolean {
    return this.entries.get(hash)?.verified === true;
  }

  markVerified(hash: string): void {
    const e = this.entries.get(hash);
    if (e) e.verified = true;
  }

  /** Takes a reference on a chunk already cached and usable by `source`. Returns false if there is none. */
  pin(hash: string, source: string): boolean {
    const e = this.entries.get(hash);
    if (!e || !(e.verified || e.owner === source)) return false;
    e.refs++;
    return true;
  }

  /** Drops a chunk whatever its references (its bytes failed verification). */
  evict(hash: string): void {
    const e = this.entries.get(hash);
    if (!e) return;
    this.entries.delete(hash);
    this.bytes -= e.data.length;
    this.grant();
  }

  /**
   * Converts `reservedBytes` of a reservation into the chunk's data (or, when the
   * chunk is already cached and usable by `owner`, just pins it and returns the
   * reservation). `verified`: the caller checked the bytes against the name; verified
   * bytes replace another source's unverified ones (the caller must have checked
   * conflicts() and verified in that case). With `keepView`, `data` (a view of a
   * receive buffer) is kept as is; otherwise it is copied unless it is (nearly) its
   * buffer's only content. Returns true when `data` was stored.
   */
  insert(hash: string, data: Buffer, reservedBytes: number, owner: string, verified: boolean, keepView = false): boolean {
    this.reserved -= reservedBytes;
    const e = this.entries.get(hash);
    let stored = false;
    const alone = data.buffer.byteLength <= data.length + 64;
    const own = keepView || alone ? data : Buffer.from(data);
    if (e && (e.verified || e.owner === owner)) {
      e.refs++;
    } else if (e) {
      if (!verified) throw new Error(`internal error: unverified chunk ${hash} over another source's unverified copy`);
      this.bytes += data.length - e.data.length;
      e.data = own;
      e.view = keepView && !alone;
      e.verified = true;
      e.owner = owner;
      e.refs++;
      stored = true;
    } else {
      this.entries.set(hash, { data: own, refs: 1, view: keepView && !alone, verified, owner });
      this.bytes += data.length;
      stored = true;
    }
    this.notePeak();
    this.grant();
    return stored;
  }

  /** Gives a cached chunk a buffer of its own (it stops keeping its frame alive). */
  privatize(hash: string): void {
    const e = this.entries.get(hash);
    if (e?.view) {
      e.data = Buffer.from(e.data);
      e.view = false;
    }
  }

  unpin(hash: string): void {
    const e = this.entries.get(hash);
    if (!e) return;
    if (--e.refs <= 0) {
      this.entries.delete(hash);
      this.bytes -= e.data.length;
      this.grant();
    } else if (e.view) {
      // Its inserter let go; the others must not keep the inserter's frame alive.
      e.data = Buffer.from(e.data);
      e.view = false;
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
