// The metadata blob of a checkpoint: the raw bytes of its image's records before the
// page data (PROC, CWD, EXE, RLIMITS, SIGACTIONS, VMA, THREAD, FD, PIPE_DATA, SOCKET_DATA, FILE_STATE, TIMERS, TRACKING),
// concatenated exactly as they were in the image. Export re-emits them byte for byte
// (TRACKING excepted: a composed image has no capture statistics).
import { RECORD_HEADER_SIZE, RecordType, VF_CONTENT } from "../../image/format.js";
import { storeCorrupt } from "./util.js";

export interface MetaRecord {
  type: number;
  /** Header + payload + padding. */
  raw: Buffer;
  payload: Buffer;
}

export interface MetaVma {
  start: bigint;
  end: bigint;
  kind: number;
  vflags: number;
}

/** VMA kinds whose pages are never stored (docs/format.md: vdso trio, vsyscall, shared file). */
export const UNSTORED_VMA_KINDS = new Set([4, 5, 6]);

/** Does this VMA hold stored pages? Not the vdso trio, vsyscall, nor a shared file mapping unless
 * its contents are in the image (vflags bit 4, docs/format.md). */
export function storedVma(v: MetaVma): boolean {
  return !UNSTORED_VMA_KINDS.has(v.kind) || (v.kind === 4 && (v.vflags & VF_CONTENT) !== 0);
}

export function* metaRecords(blob: Buffer, id: string): Generator<MetaRecord> {
  let off = 0;
  while (off < blob.length) {
    if (blob.length - off < RECORD_HEADER_SIZE) throw storeCorrupt(`cannot read the metadata of checkpoint ${id}`, `truncated record header at blob offset ${off}`);
    const type = blob.readUInt32LE(off);
    const plen = Number(blob.readBigUInt64LE(off + 8));
    const total = RECORD_HEADER_SIZE + ((plen + 7) & ~7);
    if (off + total > blob.length) throw storeCorrupt(`cannot read the metadata of checkpoint ${id}`, `record of type ${type} at blob offset ${off} runs past the blob end`);
    yield { type, raw: blob.subarray(off, off + total), payload: blob.subarray(off + RECORD_HEADER_SIZE, off + RECORD_HEADER_SIZE + plen) };
    off += total;
  }
}

export function metaVmas(blob: Buffer, id: string): MetaVma[] {
  const out: MetaVma[] = [];
  for (const r of metaRecords(blob, id)) {
    if (r.type === RecordType.VMA) out.push({ start: r.payload.readBigUInt64LE(0), end: r.payload.readBigUInt64LE(8), kind: r.payload.readUInt32LE(28), vflags: r.payload.readUInt32LE(32) });
  }
  return out;
}
