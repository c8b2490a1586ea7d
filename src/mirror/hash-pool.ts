// SHA-256 of chunk bytes in worker threads, off the event loop: a slab's memory
// (slabs.ts) is transferred to a worker with the ranges to hash and comes back with
// their digests; nothing is copied.
import { hash } from "node:crypto";
import { availableParallelism } from "node:os";
import { Worker } from "node:worker_threads";
import type { HashReply, HashRequest } from "./hash-worker.js";

interface Pending {
  resolve: (r: { ab: ArrayBuffer; digests: string[] }) => void;
  reject: (err: Error) => void;
}

/** Default worker count: every core but the event loop's, at least 1, at most 4. */
export function defaultHashThreads(): number {
  return Math.max(1, Math.min(4, availableParallelism() - 1));
}

export class HashPool {
  private readonly workers: Worker[] = [];
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private rr = 0;
  private closed = false;

  constructor(threads: number = defaultHashThreads()) {
    for (let i = 0; i < threads; i++) {
      const w = new Worker(new URL("./hash-worker.js", import.meta.url));
      w.unref();
      w.on("message", (m: HashReply) => this.settle(m));
      w.on("error", (err) => {
        // A dead worker takes no more jobs; with none left, digest() hashes inline.
        const i = this.workers.indexOf(w);
        if (i >= 0) this.workers.splice(i, 1);
        this.failAll(err);
      });
      this.workers.push(w);
    }
  }

  /** Lowercase hex SHA-256 of each range of `ab`; `ab` is detached until the promise settles, then given back. */
  digestRanges(ab: ArrayBuffer, ranges: [number, number][]): Promise<{ ab: ArrayBuffer; digests: string[] }> {
    if (this.closed || this.workers.length === 0) {
      return Promise.resolve({ ab, digests: ranges.map(([off, len]) => hash("sha256", new Uint8Array(ab, off, len), "hex")) });
    }
    const id = this.nextId++;
    const w = this.workers[this.rr++ % this.workers.length] as Worker;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      const req: HashRequest = { id, ab, ranges };
      w.postMessage(req, [ab]);
    });
  }

  private settle(m: HashReply): void {
    const p = this.pending.get(m.id);
    if (!p) return;
    this.pending.delete(m.id);
    p.resolve({ ab: m.ab, digests: m.digests });
  }

  private failAll(err: Error): void {
    for (const p of this.pending.values()) p.reject(new Error(`hash worker failed: ${err.message}`));
    this.pending.clear();
  }

  async close(): Promise<void> {
    this.closed = true;
    this.failAll(new Error("hash pool closed"));
    await Promise.all(this.workers.splice(0).map((w) => w.terminate()));
  }
}
