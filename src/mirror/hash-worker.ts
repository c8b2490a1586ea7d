// Worker thread of HashPool (hash-pool.ts): SHA-256 of byte ranges of a slab.
// Message in:  {id, ab, ranges: [offset, length][]}   (ab transferred here)
// Message out: {id, ab, digests: string[]}              (ab transferred back; lowercase hex, in range order)
import { hash } from "node:crypto";
import { getPriority, setPriority } from "node:os";
import { parentPort } from "node:worker_threads";

export interface HashRequest {
  id: number;
  ab: ArrayBuffer;
  ranges: [number, number][];
}

export interface HashReply {
  id: number;
  ab: ArrayBuffer;
  digests: string[];
}

/** Verification is background work: this thread runs this much nicer than the server's socket loop. */
const HASH_NICE = 5;

const port = parentPort;
if (port) {
  try {
    setPriority(0, Math.min(19, getPriority(0) + HASH_NICE)); // Linux: this thread only
  } catch {
    // not permitted or not supported: hash at normal priority
  }
  port.on("message", (m: HashRequest) => {
    const digests = m.ranges.map(([off, len]) => hash("sha256", new Uint8Array(m.ab, off, len), "hex"));
    const reply: HashReply = { id: m.id, ab: m.ab, digests };
    port.postMessage(reply, [m.ab]);
  });
}
