// Page hashing for ingest, off the main thread: one worker (the VM has 2 CPUs; the other
// one compresses), fed whole PAGES payloads. Falls back to hashing inline if the worker
// cannot start.
import { Worker } from "node:worker_threads";
import { crc32c } from "@node-rs/crc32";
import { hashPages } from "./hash-worker.js";

/** Page hashes of a payload (and its CRC-32C when asked: continued from `crcFrom`). */
export interface Hashed {
  data: Buffer;
  hashes: Buffer;
  crc?: number;
  /** CRC-32C of `data` alone (with crc). */
  pagesCrc?: number;
}

export class Hasher {
  private worker: Worker | null = null;
  private nextId = 0;
  private readonly waiting = new Map<number, { resolve: (r: Hashed) => void; reject: (e: Error) => void }>();
  private failed: Error | null = null;

  /** True once the worker died: make a new Hasher. */
  get broken(): boolean {
    return this.failed !== null;
  }

  constructor(useWorker = true) {
    if (!useWorker) return;
    try {
      const w = new Worker(new URL("./hash-worker.js", import.meta.url));
      w.on("message", (m: { id: number; data: Uint8Array; hashes: Uint8Array; crc?: number; pagesCrc?: number }) => {
        const p = this.waiting.get(m.id);
        if (!p) return;
        this.waiting.delete(m.id);
        if (this.waiting.size === 0) w.unref(); // an idle worker does not keep the process alive
        p.resolve({ data: Buffer.from(m.data.buffer, m.data.byteOffset, m.data.byteLength), hashes: Buffer.from(m.hashes.buffer, m.hashes.byteOffset, m.hashes.byteLength), ...(m.crc !== undefined ? { crc: m.crc, pagesCrc: m.pagesCrc! } : {}) });
      });
      w.on("error", (e) => this.fail(e));
      w.on("exit", (code) => this.fail(new Error(`page hashing worker exited with code ${code}`)));
      w.unref();
      this.worker = w;
    } catch {
      this.worker = null;
    }
  }

  private fail(e: Error): void {
    this.failed = e;
    this.worker = null;
    for (const p of this.waiting.values()) p.reject(e);
    this.waiting.clear();
  }

  /**
   * Hashes of the pages in `data`; the result's `data` holds the same bytes. With `give`, the
   * caller hands `data` over: when its memory holds nothing else but a record prefix (the
   * image reader's assembled records), it moves to the worker and back without a copy, and
   * the caller's `data` is detached. Otherwise a copy goes to the worker.
   */
  hash(data: Buffer, give = false, crcFrom?: number): Promise<Hashed> {
    if (this.failed) return Promise.reject(this.failed);
    if (!this.worker) return Promise.resolve({ data, hashes: hashPages(data), ...(crcFrom !== undefined ? { crc: crc32c(data, crcFrom) } : {}) });
    let msg: Uint8Array;
    if (give && data.byteOffset <= 64 && data.byteOffset + data.length === data.buffer.byteLength && data.buffer instanceof ArrayBuffer) {
      msg = new Uint8Array(data.buffer, data.byteOffset, data.length);
    } else {
      msg = new Uint8Array(data.length);
      msg.set(data);
    }
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      if (this.waiting.size === 0) this.worker!.ref();
      this.waiting.set(id, { resolve, reject });
      this.worker!.postMessage({ id, data: msg, crcFrom }, [msg.buffer as ArrayBuffer]);
    });
  }

  async close(): Promise<void> {
    const w = this.worker;
    this.worker = null;
    if (w) {
      w.removeAllListeners("exit");
      await w.terminate();
    }
  }
}
