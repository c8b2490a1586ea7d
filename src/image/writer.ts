// Builds raw images in memory (docs/format.md). Used by tests to craft valid,
// truncated and corrupted images without the C core; the agent is the real writer.
import { crc32c } from "@node-rs/crc32";
import { FILE_HEADER_SIZE, MAGIC, MM_FIELDS, PAGE_SIZE, RecordType, VERSION, type FileId } from "./format.js";

export interface RawRecord {
  type: number;
  payload: Buffer;
}

function align8(n: number): number {
  return Math.ceil(n / 8) * 8; // not bitwise: lengths may exceed 2^31
}

function fileIdBytes(id: Partial<FileId> = {}): Buffer {
  const b = Buffer.alloc(40);
  b.writeBigUInt64LE(id.dev ?? 0n, 0);
  b.writeBigUInt64LE(id.ino ?? 0n, 8);
  b.writeBigUInt64LE(id.size ?? 0n, 16);
  b.writeBigUInt64LE(id.mtimeNs ?? 0n, 24);
  b.writeUInt32LE(id.mode ?? 0, 32);
  return b;
}

export function fileHeader(h: { pid?: number; seq?: bigint; parentSeq?: bigint; flags?: number; createdNs?: bigint } = {}): Buffer {
  const b = Buffer.alloc(FILE_HEADER_SIZE);
  MAGIC.copy(b, 0);
  b.writeUInt32LE(VERSION, 8);
  b.writeUInt32LE(FILE_HEADER_SIZE, 12);
  b.writeBigUInt64LE(h.createdNs ?? 1_700_000_000_000_000_000n, 16);
  b.writeUInt32LE(h.pid ?? 2, 24);
  b.writeUInt32LE(h.flags ?? 0, 28);
  b.writeBigUInt64LE(h.seq ?? 1n, 32);
  b.writeBigUInt64LE(h.parentSeq ?? 0n, 40);
  b.writeUInt32LE(PAGE_SIZE, 48);
  b.writeUInt32LE(crc32c(b.subarray(0, 60)), 60);
  return b;
}

export function recordBytes(r: RawRecord): Buffer {
  const h = Buffer.alloc(32);
  h.writeUInt32LE(r.type, 0);
  h.writeBigUInt64LE(BigInt(r.payload.length), 8);
  h.writeUInt32LE(crc32c(r.payload), 16);
  h.writeUInt32LE(crc32c(h.subarray(0, 28)), 28);
  return Buffer.concat([h, r.payload, Buffer.alloc(align8(r.payload.length) - r.payload.length)]);
}

export function procRecord(p: { pid?: number; nthreads?: number; brk?: bigint } = {}): RawRecord {
  const b = Buffer.alloc(680);
  b.writeUInt32LE(p.pid ?? 2, 0);
  b.writeUInt32LE(1, 4);
  b.writeUInt32LE(p.pid ?? 2, 8);
  b.writeUInt32LE(p.pid ?? 2, 12);
  b.writeUInt32LE(0o022, 16);
  b.writeUInt32LE(p.nthreads ?? 1, 20);
  MM_FIELDS.forEach((k, i) => b.writeBigUInt64LE(k === "brk" ? (p.brk ?? 0x600000n) : 0n, 56 + i * 8));
  return { type: RecordType.PROC, payload: b };
}

export function cwdRecord(path: string): RawRecord {
  return { type: RecordType.CWD, payload: Buffer.from(path) };
}

export function vmaRecord(v: { start: bigint; end: bigint; prot?: number; kind?: number; path?: string; file?: Partial<FileId> }): RawRecord {
  const b = Buffer.alloc(80);
  b.writeBigUInt64LE(v.start, 0);
  b.writeBigUInt64LE(v.end, 8);
  b.writeUInt32LE(v.prot ?? 3, 24);
  b.writeUInt32LE(v.kind ?? 1, 28);
  fileIdBytes(v.file).copy(b, 40);
  return { type: RecordType.VMA, payload: Buffer.concat([b, Buffer.from(v.path ?? "")]) };
}

export function threadRecord(t: { tid: number; rip?: bigint; rsp?: bigint; comm?: string; manager?: boolean }): RawRecord {
  const b = Buffer.alloc(112);
  b.writeUInt32LE(t.tid, 0);
  b.writeUInt32LE(t.manager ? 1 : 0, 4);
  b.writeBigUInt64LE(t.rip ?? 0x401000n, 80);
  b.writeBigUInt64LE(t.rsp ?? 0x7ffff000n, 88);
  Buffer.from((t.comm ?? "app").slice(0, 15)).copy(b, 96);
  return { type: RecordType.THREAD, payload: b };
}

export function fdRecord(f: { fd: number; kind: number; path?: string; pos?: bigint; openFlags?: number }): RawRecord {
  const extra = Buffer.from(f.path ?? "");
  const b = Buffer.alloc(80);
  b.writeUInt32LE(f.fd, 0);
  b.writeUInt32LE(f.kind, 4);
  b.writeUInt32LE(f.openFlags ?? 0, 8);
  b.writeBigUInt64LE(f.pos ?? 0n, 16);
  b.writeUInt32LE(extra.length, 72);
  return { type: RecordType.FD, payload: Buffer.concat([b, extra]) };
}

export function pagesRecord(addr: bigint, data: Buffer): RawRecord {
  if (data.length % PAGE_SIZE !== 0) throw new Error("page data must be whole pages");
  const h = Buffer.alloc(16);
  h.writeBigUInt64LE(addr, 0);
  h.writeBigUInt64LE(BigInt(data.length / PAGE_SIZE), 8);
  return { type: RecordType.PAGES, payload: Buffer.concat([h, data]) };
}

/** Encodes a complete image: header, the records given, and a correct END record. */
export function buildImage(records: RawRecord[], header: Parameters<typeof fileHeader>[0] = {}): Buffer {
  const parts = [fileHeader(header), ...records.map(recordBytes)];
  let size = parts.reduce((n, p) => n + p.length, 0);
  const pages = records.filter((r) => r.type === RecordType.PAGES).reduce((n, r) => n + Number(r.payload.readBigUInt64LE(8)), 0);
  size += 32 + 24;
  const end = Buffer.alloc(24);
  end.writeBigUInt64LE(BigInt(records.length), 0);
  end.writeBigUInt64LE(BigInt(pages), 8);
  end.writeBigUInt64LE(BigInt(size), 16);
  parts.push(recordBytes({ type: RecordType.END, payload: end }));
  return Buffer.concat(parts);
}

/** A small, valid single-threaded image with one anonymous region holding `npages` pages. */
export function sampleImage(opts: { npages?: number; pid?: number; fill?: (page: number) => number } = {}): Buffer {
  const npages = opts.npages ?? 3;
  const base = 0x10000000n;
  const data = Buffer.alloc(npages * PAGE_SIZE);
  for (let i = 0; i < npages; i++) data.fill(opts.fill ? opts.fill(i) : i + 1, i * PAGE_SIZE, (i + 1) * PAGE_SIZE);
  const pageRecs: RawRecord[] = [];
  for (let i = 0; i < npages; i += 256) {
    const n = Math.min(256, npages - i);
    pageRecs.push(pagesRecord(base + BigInt(i * PAGE_SIZE), data.subarray(i * PAGE_SIZE, (i + n) * PAGE_SIZE)));
  }
  return buildImage(
    [
      procRecord({ pid: opts.pid ?? 2 }),
      cwdRecord("/tmp"),
      vmaRecord({ start: 0x400000n, end: 0x401000n, prot: 5, kind: 3, path: "/usr/bin/app" }),
      vmaRecord({ start: base, end: base + BigInt(Math.max(npages, 1) * PAGE_SIZE) }),
      threadRecord({ tid: opts.pid ?? 2, comm: "app" }),
      fdRecord({ fd: 0, kind: 2, path: "/dev/null" }),
      fdRecord({ fd: 1, kind: 1, path: "/tmp/log", pos: 42n, openFlags: 0o2001 }),
      ...pageRecs,
    ],
    { pid: opts.pid ?? 2 },
  );
}

/** A TIMERS record (docs/format.md): itimers as [interval, value] ns, POSIX timers as given. */
export function timersRecord(t: { itimers?: [bigint, bigint][]; timers?: { id: number; clock: number; notify: number; signo: number; tid?: number; sigval?: bigint; intervalNs: bigint; valueNs: bigint }[]; ntimers?: number }): RawRecord {
  const timers = t.timers ?? [];
  const b = Buffer.alloc(56 + timers.length * 48);
  b.writeUInt32LE(t.ntimers ?? timers.length, 0);
  b.writeUInt32LE(48, 4);
  (t.itimers ?? []).forEach(([interval, value], i) => {
    b.writeBigUInt64LE(interval, 8 + i * 16);
    b.writeBigUInt64LE(value, 16 + i * 16);
  });
  timers.forEach((x, i) => {
    const o = 56 + i * 48;
    b.writeInt32LE(x.id, o);
    b.writeInt32LE(x.clock, o + 4);
    b.writeUInt32LE(x.notify, o + 8);
    b.writeUInt32LE(x.signo, o + 12);
    b.writeUInt32LE(x.tid ?? 0, o + 16);
    b.writeBigUInt64LE(x.sigval ?? 0n, o + 24);
    b.writeBigUInt64LE(x.intervalNs, o + 32);
    b.writeBigUInt64LE(x.valueNs, o + 40);
  });
  return { type: RecordType.TIMERS, payload: b };
}
