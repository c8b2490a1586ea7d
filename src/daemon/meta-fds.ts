// The FD records of an image's metadata (an image without pages, as the store gives it for a
// restore's notes), each payload whole; records past the data given are not returned.
import type { Readable } from "node:stream";
import { FILE_HEADER_SIZE, RECORD_HEADER_SIZE, RecordType } from "../image/format.js";

/** FD record payloads of `meta` (the 80-byte record, then its extra), dups of an earlier fd left out. */
export async function metaFdRecords(meta: Readable): Promise<Buffer[]> {
  const parts: Buffer[] = [];
  for await (const c of meta) parts.push(c as Buffer);
  const b = Buffer.concat(parts);
  const out: Buffer[] = [];
  for (let off = FILE_HEADER_SIZE; off + RECORD_HEADER_SIZE <= b.length; ) {
    const type = b.readUInt32LE(off);
    const plen = Number(b.readBigUInt64LE(off + 8));
    const p = b.subarray(off + RECORD_HEADER_SIZE, Math.min(b.length, off + RECORD_HEADER_SIZE + plen));
    off += RECORD_HEADER_SIZE + ((plen + 7) & ~7);
    if (type === RecordType.END) break;
    if (type !== RecordType.FD || p.length < 80) continue;
    if (p.readUInt32LE(76) !== 0) continue; // a dup of an earlier fd: one description, one line
    out.push(p);
  }
  return out;
}
