// Worker thread of HashPool (hash-pool.ts): SHA-256 of byte ranges of a slab.
// Message in:  {id, ab, ranges: [offset, length][]}   (ab transferred here)
// Message out: {id, ab, digests: string[]}              (ab transferred back; lowercase hex, in range order)
import { hash } from "node:crypto";
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

const port = parentPort;
if (port) {
  port.on("message", (m: HashRequest) => {
    const digests = m.ranges.map(([off, len]) => hash("sha256", new Uint8Array(m.ab, off, len), "hex"));
    const reply: HashReply = { id: m.id, ab: m.ab, digests };
    port.postMessage(reply, [m.ab]);
  });
}
