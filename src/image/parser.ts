// Streaming, bounds-checked parser of raw process images (docs/format.md).
// Reads record headers and metadata payloads into memory, and page payloads in
// chunks (only to verify their CRC), so a 1 GiB image costs a few MiB of RAM.
import { open, type FileHandle } from "node:fs/promises";
import { crc32c } from "@node-rs/crc32";
import { TgError } from "../errors.js";
import {
  FILE_HEADER_SIZE,
  MAGIC,
  MAX_META_PAYLOAD,
  MAX_PAGES_PER_RECORD,
  LOCK_KIND,
  MIN_PAYLOAD,
  MM_FIELDS,
  PAGE_SIZE,
  RECORD_HEADER_SIZE,
  RecordType,
  TIMER_ENTRY_SIZE,
  VERSION,
  recordTypeName,
  type ClearExtent,
  type EndInfo,
  type FdInfo,
  type FileHeader,
  type FileId,
  type FileLock,
  type FileState,
  type PageExtent,
  type ProcInfo,
  type SocketData,
  type ThreadInfo,
  type TimersInfo,
  type TrackingInfo,
  type Vma,
} from "./format.js";
import { decodeDgramSenders, decodeSocketData, decodeUnixExternal, decodeUnixSock, describeUnixExternal, unixListenName } from "./unix.js";
import { decodeInetRepair, decodeInetSock, type InetRepair } from "./inet.js";

/** A defect in an image file: names the file, the byte offset and what failed. */
export class ImageError extends TgError {
  constructor(
    readonly file: string,
    readonly offset: number,
    readonly reason: string,
  ) {
    super(
      `invalid checkpoint image ${file}`,
      `${reason} at offset ${offset} (0x${offset.toString(16)})`,
      "The image is damaged or was not written completely; use an earlier checkpoint (`tardigrade ls NAME`, then `--checkpoint ID`)",
      "bad-image",
    );
    this.name = "ImageError";
  }
}

export interface ParsedImage {
  file: string;
  size: number;
  header: FileHeader;
  proc: ProcInfo;
  cwd: string;
  exe: { file: FileId; path: string } | null;
  rlimits: { cur: bigint; max: bigint }[];
  sigactions: { signo: number; handler: bigint; flags: bigint; restorer: bigint; mask: bigint }[];
  vmas: Vma[];
  threads: ThreadInfo[];
  fds: FdInfo[];
  pipes: { inode: bigint; bytes: number }[];
  /** SOCKET_DATA records: what was queued in each Unix socket of a pair inside the app. */
  sockets: SocketData[];
  /** INET_REPAIR records: TCP connections with both ends in the app, restored whole. */
  repairs: InetRepair[];
  /** FILE_STATE records: files held for writing or mapped shared and writable. */
  files: FileState[];
  /** The LOCKS record: file locks held through the process's fds. */
  locks: FileLock[];
  extents: PageExtent[];
  /** PAGES_CLEAR runs (incremental images). */
  clears: ClearExtent[];
  tracking: TrackingInfo | null;
  /** The TIMERS record (null: the image has none, as images of earlier versions). */
  timers: TimersInfo | null;
  /** The ATTRS record (null: the image has none, as images of earlier versions). */
  attrs: ProcAttrs | null;
  /** The TTY record: the process's controlling terminal (null: none). */
  tty: { index: number; sid: number; fgPgrp: number } | null;
  /** The CREDS record (null: the image has none, as images of earlier versions). */
  creds: ProcCreds | null;
  pagesTotal: number;
  recordCount: number;
}

/** The ATTRS record: prctl flags, personality, timer slack, the main thread's CPU affinity. */
export interface ProcAttrs {
  pdeathsig: number;
  subreaper: boolean;
  dumpable: number;
  noNewPrivs: boolean;
  personality: number;
  timerslackNs: number;
  /** CPUs the main thread may run on (empty: not recorded). */
  cpus: number[];
  nice: number;
  /** sched_getscheduler: 0 SCHED_OTHER, 1 FIFO, 2 RR, 3 BATCH, 5 IDLE, 6 DEADLINE */
  schedPolicy: number;
  schedPriority: number;
  schedResetOnFork: boolean;
}

/** The CREDS record: the process's user and group ids, groups, capability sets (hex) and securebits. */
export interface ProcCreds {
  /** real, effective, saved, filesystem */
  uid: [number, number, number, number];
  gid: [number, number, number, number];
  groups: number[];
  securebits: number;
  capInh: string;
  capPrm: string;
  capEff: string;
  capBnd: string;
  capAmb: string;
}

export interface ParseOptions {
  /** Verify PAGES payload CRCs (default true). Without it page data is not read at all. */
  verifyPages?: boolean;
  /** Read size for page payloads (default 4 MiB). */
  chunkSize?: number;
  /** Called after each PAGES record with the bytes parsed so far and the file size. */
  onProgress?: (done: number, total: number) => void;
}

function align8(n: number): number {
  return Math.ceil(n / 8) * 8; // not bitwise: lengths may exceed 2^31
}

function u64(b: Buffer, off: number): bigint {
  return b.readBigUInt64LE(off);
}

/** A u64 that must fit a JS number (lengths, sizes, counts). */
function u64n(b: Buffer, off: number): number {
  const v = b.readBigUInt64LE(off);
  return v > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(v);
}

function str(b: Buffer, start: number, end = b.length): string {
  return b.subarray(start, end).toString("utf8");
}

function fileId(b: Buffer, off: number): FileId {
  return { dev: u64(b, off), ino: u64(b, off + 8), size: u64(b, off + 16), mtimeNs: u64(b, off + 24), mode: b.readUInt32LE(off + 32) };
}

function decodeProc(p: Buffer): ProcInfo {
  const mm = {} as ProcInfo["mm"];
  MM_FIELDS.forEach((k, i) => {
    mm[k] = u64(p, 56 + i * 8);
  });
  return {
    pid: p.readUInt32LE(0),
    ppid: p.readUInt32LE(4),
    pgid: p.readUInt32LE(8),
    sid: p.readUInt32LE(12),
    umask: p.readUInt32LE(16),
    nthreads: p.readUInt32LE(20),
    vvarAddr: u64(p, 24),
    vdsoAddr: u64(p, 32),
    restartInfoAddr: u64(p, 40),
    trampolineAddr: u64(p, 48),
    mm,
    sharedSigpending: u64(p, 144),
    auxvLen: p.readUInt32LE(152),
    clockMonotonicNs: u64(p, 672),
  };
}

function decodeVma(p: Buffer): Vma {
  return {
    start: u64(p, 0),
    end: u64(p, 8),
    pgoff: u64(p, 16),
    prot: p.readUInt32LE(24),
    kind: p.readUInt32LE(28),
    vflags: p.readUInt32LE(32),
    file: fileId(p, 40),
    path: str(p, 80),
  };
}

/** The CPUs set in an affinity mask (sched_getaffinity's bytes). */
function cpuList(mask: Buffer): number[] {
  const cpus: number[] = [];
  for (let i = 0; i < mask.length * 8; i++) if ((mask[i >> 3]! >> (i & 7)) & 1) cpus.push(i);
  return cpus;
}

function decodeThread(p: Buffer): ThreadInfo {
  const comm = p.subarray(96, 112);
  const nul = comm.indexOf(0);
  return {
    tid: p.readUInt32LE(0),
    flags: p.readUInt32LE(4),
    ucAddr: u64(p, 8),
    fsBase: u64(p, 16),
    gsBase: u64(p, 24),
    clearChildTid: u64(p, 32),
    robustListHead: u64(p, 40),
    robustListLen: u64(p, 48),
    rseqAddr: u64(p, 56),
    rseqLen: p.readUInt32LE(64),
    rseqSig: p.readUInt32LE(68),
    sigpending: u64(p, 72),
    rip: u64(p, 80),
    rsp: u64(p, 88),
    comm: comm.subarray(0, nul < 0 ? 16 : nul).toString("utf8"),
  };
}

/** The TIMERS record, or what is wrong with it. */
export function decodeTimers(p: Buffer): TimersInfo | string {
  const n = p.readUInt32LE(0);
  const size = p.readUInt32LE(4);
  if (size < TIMER_ENTRY_SIZE) return `TIMERS timer_size ${size} is below ${TIMER_ENTRY_SIZE}`;
  if (56 + n * size > p.length) return `TIMERS record holds ${n} timers of ${size} bytes but its payload is ${p.length} bytes`;
  const itimers = [0, 1, 2].map((i) => ({ intervalNs: u64(p, 8 + i * 16), valueNs: u64(p, 16 + i * 16) }));
  const timers = Array.from({ length: n }, (_, i) => {
    const o = 56 + i * size;
    return {
      id: p.readInt32LE(o),
      clock: p.readInt32LE(o + 4),
      notify: p.readUInt32LE(o + 8),
      signo: p.readUInt32LE(o + 12),
      tid: p.readUInt32LE(o + 16),
      overrun: p.readInt32LE(o + 20),
      sigval: u64(p, o + 24),
      intervalNs: u64(p, o + 32),
      valueNs: u64(p, o + 40),
    };
  });
  return { itimers, timers };
}

function decodeFileState(p: Buffer): FileState {
  const flags = p.readUInt32LE(0);
  const fd = p.readUInt32LE(4);
  return {
    flags,
    fd: fd === 0xffffffff ? null : fd,
    file: { dev: u64(p, 8), ino: u64(p, 16), size: u64(p, 24), mtimeNs: u64(p, 32), mode: p.readUInt32LE(52) },
    ctimeNs: u64(p, 40),
    generation: flags & 8 ? p.readUInt32LE(48) : null,
    covered: u64(p, 56),
    path: str(p, 64),
  };
}

/** Incremental reader over one open image, with every check of docs/format.md. */
class ImageReader {
  private scratch: Buffer;
  constructor(
    private readonly fh: FileHandle,
    private readonly file: string,
    private readonly size: number,
    private readonly opts: Required<ParseOptions>,
  ) {
    this.scratch = Buffer.allocUnsafe(opts.chunkSize);
  }

  fail(offset: number, reason: string): never {
    throw new ImageError(this.file, offset, reason);
  }

  async readExact(offset: number, len: number, into?: Buffer): Promise<Buffer> {
    const buf = into ?? Buffer.allocUnsafe(len);
    let done = 0;
    while (done < len) {
      const { bytesRead } = await this.fh.read(buf, done, len - done, offset + done);
      if (bytesRead === 0) this.fail(offset + done, `unexpected end of file (file shrank while reading?)`);
      done += bytesRead;
    }
    return buf.subarray(0, len);
  }

  async header(): Promise<FileHeader> {
    if (this.size < FILE_HEADER_SIZE) this.fail(0, `truncated file header (file is ${this.size} bytes, header needs ${FILE_HEADER_SIZE})`);
    const h = await this.readExact(0, FILE_HEADER_SIZE);
    if (!h.subarray(0, 8).equals(MAGIC)) this.fail(0, `bad magic ${JSON.stringify(h.subarray(0, 8).toString("latin1"))} (not a tardigrade image)`);
    const version = h.readUInt32LE(8);
    if (version !== VERSION) this.fail(8, `unsupported image version ${version} (this tardigrade reads version ${VERSION})`);
    const hsize = h.readUInt32LE(12);
    if (hsize !== FILE_HEADER_SIZE) this.fail(12, `bad header_size ${hsize} (expected ${FILE_HEADER_SIZE})`);
    const crc = h.readUInt32LE(60);
    if (crc32c(h.subarray(0, 60)) !== crc) this.fail(0, "file header CRC mismatch");
    const pageSize = h.readUInt32LE(48);
    if (pageSize !== PAGE_SIZE) this.fail(48, `unsupported page_size ${pageSize} (expected ${PAGE_SIZE})`);
    return {
      version,
      createdNs: u64(h, 16),
      pid: h.readUInt32LE(24),
      flags: h.readUInt32LE(28),
      seq: u64(h, 32),
      parentSeq: u64(h, 40),
      pageSize,
    };
  }

  async parse(): Promise<ParsedImage> {
    const header = await this.header();
    const out: Omit<ParsedImage, "proc"> & { proc: ProcInfo | null } = {
      file: this.file,
      size: this.size,
      header,
      proc: null,
      cwd: "",
      exe: null,
      rlimits: [],
      sigactions: [],
      vmas: [],
      threads: [],
      fds: [],
      pipes: [],
      sockets: [],
      repairs: [],
      files: [],
      locks: [],
      extents: [],
      clears: [],
      tracking: null,
      timers: null,
      attrs: null,
      tty: null,
      creds: null,
      pagesTotal: 0,
      recordCount: 0,
    };
    let off = FILE_HEADER_SIZE;
    let end: EndInfo | null = null;
    let lastPageEnd = 0n;
    while (end === null) {
      if (off === this.size) this.fail(off, `missing END record (file ends after ${out.recordCount} records)`);
      if (this.size - off < RECORD_HEADER_SIZE) this.fail(off, `truncated record header (${this.size - off} bytes left, need ${RECORD_HEADER_SIZE})`);
      const rh = await this.readExact(off, RECORD_HEADER_SIZE);
      if (crc32c(rh.subarray(0, 28)) !== rh.readUInt32LE(28)) this.fail(off, "record header CRC mismatch");
      const type = rh.readUInt32LE(0);
      const name = recordTypeName(type);
      if (!(type in MIN_PAYLOAD)) this.fail(off, `unknown record type ${type}`);
      const rtype = type as RecordType;
      const plen = u64n(rh, 8);
      const pcrc = rh.readUInt32LE(16);
      const payloadOff = off + RECORD_HEADER_SIZE;
      const left = this.size - payloadOff;
      if (plen > left || align8(plen) > left) this.fail(off, `truncated record ${name}: payload of ${plen} bytes (padded ${align8(plen)}) but only ${left} bytes left in the file`);
      if (plen < MIN_PAYLOAD[rtype]) this.fail(off, `payload too short for record ${name}: ${plen} bytes, need at least ${MIN_PAYLOAD[rtype]}`);
      if (out.recordCount === 0 && rtype !== RecordType.PROC) this.fail(off, `first record is ${name}, expected PROC`);
      if (rtype === RecordType.PAGES) {
        await this.pages(off, payloadOff, plen, pcrc, out, lastPageEnd);
        const last = out.extents[out.extents.length - 1]!;
        lastPageEnd = last.addr + BigInt(last.npages * PAGE_SIZE);
      } else {
        if (plen > MAX_META_PAYLOAD) this.fail(off, `record ${name} payload of ${plen} bytes exceeds the ${MAX_META_PAYLOAD}-byte limit for metadata`);
        const padded = await this.readExact(payloadOff, align8(plen));
        const p = padded.subarray(0, plen);
        if (crc32c(p) !== pcrc) this.fail(off, `payload CRC mismatch in record ${name}`);
        if (padded.subarray(plen).some((b) => b !== 0)) this.fail(off, `non-zero padding after record ${name}`);
        const pageSection = rtype === RecordType.END || rtype === RecordType.PAGES_CLEAR || rtype === RecordType.TRACKING;
        if (out.extents.length > 0 && !pageSection) this.fail(off, `record ${name} after PAGES records (page records must come last)`);
        end = this.meta(off, rtype, p, out);
      }
      out.recordCount++;
      off = payloadOff + align8(plen);
    }
    const endOff = off;
    if (endOff !== this.size) this.fail(endOff, `data after END (${this.size - endOff} extra bytes)`);
    if (end.fileSize !== BigInt(this.size)) this.fail(endOff, `END says file_size ${end.fileSize} but the file has ${this.size} bytes`);
    if (end.recordCount !== BigInt(out.recordCount - 1)) this.fail(endOff, `END says ${end.recordCount} records but the file has ${out.recordCount - 1}`);
    if (end.pagesTotal !== BigInt(out.pagesTotal)) this.fail(endOff, `END says ${end.pagesTotal} pages but PAGES records hold ${out.pagesTotal}`);
    if (out.proc === null) this.fail(FILE_HEADER_SIZE, "no PROC record");
    return out as ParsedImage;
  }

  private async pages(off: number, payloadOff: number, plen: number, pcrc: number, out: { vmas: Vma[]; extents: PageExtent[]; pagesTotal: number }, lastEnd: bigint): Promise<void> {
    const head = await this.readExact(payloadOff, 16);
    const addr = u64(head, 0);
    const npages = u64n(head, 8);
    if (npages < 1 || npages > MAX_PAGES_PER_RECORD) this.fail(off, `PAGES record with ${npages} pages (must be 1..${MAX_PAGES_PER_RECORD})`);
    if (plen !== 16 + npages * PAGE_SIZE) this.fail(off, `PAGES record payload is ${plen} bytes, expected ${16 + npages * PAGE_SIZE} for ${npages} pages`);
    if (addr % BigInt(PAGE_SIZE) !== 0n) this.fail(off, `PAGES address 0x${addr.toString(16)} is not page aligned`);
    if (addr < lastEnd) this.fail(off, `PAGES address 0x${addr.toString(16)} is not after the previous extent (ends 0x${lastEnd.toString(16)})`);
    const endAddr = addr + BigInt(npages * PAGE_SIZE);
    const vma = out.vmas.find((v) => v.start <= addr && endAddr <= v.end);
    if (!vma) this.fail(off, `PAGES 0x${addr.toString(16)}-0x${endAddr.toString(16)} is not inside one VMA`);
    if (this.opts.verifyPages) {
      const crc = crc32c(head);
      const rest = await this.crcStreamFrom(payloadOff + 16, plen - 16, crc);
      if (rest !== pcrc) this.fail(off, `payload CRC mismatch in record PAGES (0x${addr.toString(16)}, ${npages} pages)`);
    }
    out.extents.push({ addr, npages, dataOffset: payloadOff + 16 });
    out.pagesTotal += npages;
    this.opts.onProgress(payloadOff + plen, this.size);
  }

  private async crcStreamFrom(offset: number, len: number, initial: number): Promise<number> {
    let crc = initial;
    let done = 0;
    while (done < len) {
      const n = Math.min(this.scratch.length, len - done);
      crc = crc32c(await this.readExact(offset + done, n, this.scratch), crc);
      done += n;
    }
    return crc;
  }

  /** Decodes one metadata record into `out`; returns the END info for END. */
  private meta(off: number, type: RecordType, p: Buffer, out: Omit<ParsedImage, "proc"> & { proc: ProcInfo | null }): EndInfo | null {
    switch (type) {
      case RecordType.PROC:
        if (out.proc) this.fail(off, "second PROC record (exactly one allowed)");
        out.proc = decodeProc(p);
        if (out.proc.auxvLen > 512) this.fail(off, `PROC auxv_len ${out.proc.auxvLen} exceeds 512`);
        return null;
      case RecordType.CWD:
        out.cwd = str(p, 0);
        return null;
      case RecordType.EXE:
        out.exe = { file: fileId(p, 0), path: str(p, 40) };
        return null;
      case RecordType.RLIMITS:
        out.rlimits = Array.from({ length: 16 }, (_, i) => ({ cur: u64(p, i * 16), max: u64(p, i * 16 + 8) }));
        return null;
      case RecordType.SIGACTIONS:
        out.sigactions = Array.from({ length: 64 }, (_, i) => ({
          signo: i + 1,
          handler: u64(p, i * 32),
          flags: u64(p, i * 32 + 8),
          restorer: u64(p, i * 32 + 16),
          mask: u64(p, i * 32 + 24),
        }));
        return null;
      case RecordType.VMA: {
        const v = decodeVma(p);
        if (v.start >= v.end || v.start % BigInt(PAGE_SIZE) !== 0n || v.end % BigInt(PAGE_SIZE) !== 0n)
          this.fail(off, `VMA 0x${v.start.toString(16)}-0x${v.end.toString(16)} is empty or not page aligned`);
        const prev = out.vmas[out.vmas.length - 1];
        if (prev && v.start < prev.end) this.fail(off, `VMA 0x${v.start.toString(16)} overlaps or precedes the previous VMA (ends 0x${prev.end.toString(16)})`);
        out.vmas.push(v);
        return null;
      }
      case RecordType.THREAD:
        out.threads.push(decodeThread(p));
        return null;
      case RecordType.THREAD_ATTRS: {
        const tid = p.readUInt32LE(0);
        const last = out.threads[out.threads.length - 1];
        if (!last || last.tid !== tid || last.attrs) this.fail(off, `THREAD_ATTRS record of tid ${tid} does not follow that thread's THREAD record`);
        const len = p.readUInt32LE(20);
        if (len > 128) this.fail(off, `THREAD_ATTRS: cpus_len ${len} is over 128 bytes`);
        (last as ThreadInfo).attrs = {
          nice: p.readInt32LE(4),
          schedPolicy: p.readUInt32LE(8),
          schedPriority: p.readUInt32LE(12),
          schedResetOnFork: (p.readUInt32LE(16) & 1) !== 0,
          timerslackNs: Number(u64(p, 24)),
          cpus: cpuList(p.subarray(32, 32 + len)),
        };
        return null;
      }
      case RecordType.FD: {
        const extraLen = p.readUInt32LE(72);
        if (80 + extraLen > p.length) this.fail(off, `FD extra_len ${extraLen} exceeds the payload (${p.length - 80} bytes)`);
        const extra = p.subarray(80, 80 + extraLen);
        const kind = p.readUInt32LE(4);
        const epoll = [];
        if (kind === 8) {
          for (let i = 0; i + 16 <= extra.length; i += 16) epoll.push({ tfd: extra.readUInt32LE(i) & 0x7fffffff, events: extra.readUInt32LE(i + 4), data: u64(extra, i + 8), ...(extra.readUInt32LE(i) >>> 31 ? { other: true } : {}) }); // bit 31: another process's entry
        }
        const unix = kind === 9 ? decodeUnixSock(extra) : undefined;
        if (kind === 10 && (extra.length < 32 || extra.readUInt32LE(24) > extra.length - 32)) this.fail(off, `listening Unix socket FD extra of ${extra.length} bytes does not hold its name`);
        if (typeof unix === "string") this.fail(off, unix);
        const inet = kind === 13 ? decodeInetSock(extra) : undefined;
        if (typeof inet === "string") this.fail(off, inet);
        const watches = kind === 11 ? decodeInotify(extra, p.readUInt32LE(64)) : undefined;
        if (typeof watches === "string") this.fail(off, watches);
        const unixExt = kind === 14 ? decodeUnixExternal(extra) : undefined;
        if (kind === 25 && extra.length !== 32) this.fail(off, `timerfd FD extra of ${extra.length} bytes (32 expected)`);
        if (kind === 18 && (extra.length < 32 || 32 + extra.readUInt32LE(24) + extra.readUInt32LE(28) > extra.length)) this.fail(off, `named Unix datagram socket FD extra of ${extra.length} bytes does not hold its names`);
        if ((kind === 16 || kind === 17) && extra.length !== 72) this.fail(off, `pty FD extra of ${extra.length} bytes (72 expected)`);
        if (typeof unixExt === "string") this.fail(off, unixExt);
        out.fds.push({
          fd: p.readUInt32LE(0),
          kind,
          openFlags: p.readUInt32LE(8),
          fdFlags: p.readUInt32LE(12),
          pos: u64(p, 16),
          file: fileId(p, 24),
          aux: u64(p, 64),
          path: kind === 8 || kind === 9 || kind === 13 ? "" : kind === 10 ? unixListenName(extra) : kind === 11 ? (watches as InotifyWatch[]).map((w) => `wd ${w.wd} ${w.path}`).join(", ") : unixExt ? describeUnixExternal(unixExt) : kind === 15 ? signalfdSet(u64(p, 64)) : kind === 20 ? deletedFile(extra) : kind === 25 ? timerfdState(extra) : kind === 16 || kind === 17 ? ptyState(kind, extra) : kind === 18 ? unixDgramName(extra) : extra.toString("utf8"),
          epoll,
          ...(unix ? { unix } : {}),
          ...(inet ? { inet } : {}),
        });
        return null;
      }
      case RecordType.PIPE_DATA:
        out.pipes.push({ inode: u64(p, 0), bytes: p.length - 8 });
        return null;
      case RecordType.SOCKET_DATA: {
        const sd = decodeSocketData(p);
        if (typeof sd === "string") this.fail(off, sd);
        else out.sockets.push(sd);
        return null;
      }
      case RecordType.DGRAM_SENDERS: {
        // after its socket's SOCKET_DATA record, one name per datagram (native/resources/unixdgram.c)
        const ds = decodeDgramSenders(p);
        const sd = out.sockets[out.sockets.length - 1];
        if (typeof ds === "string") this.fail(off, ds);
        else if (!sd || sd.ino !== ds.ino || sd.messages !== ds.senders.length || sd.senders) this.fail(off, `DGRAM_SENDERS record of socket ${ds.ino} does not follow its SOCKET_DATA record`);
        else sd.senders = ds.senders;
        return null;
      }
      case RecordType.INET_REPAIR: {
        const r = decodeInetRepair(p);
        if (typeof r === "string") this.fail(off, r);
        else out.repairs.push(r);
        return null;
      }
      case RecordType.PAGES_CLEAR: {
        const addr = u64(p, 0);
        const npages = u64n(p, 8);
        if (npages < 1 || addr % BigInt(PAGE_SIZE) !== 0n) this.fail(off, `PAGES_CLEAR 0x${addr.toString(16)} x ${npages} is empty or not page aligned`);
        out.clears.push({ addr, npages });
        return null;
      }
      case RecordType.FILE_STATE:
        out.files.push(decodeFileState(p));
        return null;
      case RecordType.LOCKS: {
        if (out.locks.length) this.fail(off, "second LOCKS record (at most one allowed)");
        if (p.length % 32) this.fail(off, `LOCKS record of ${p.length} bytes is not a whole number of 32-byte locks`);
        for (let i = 0; i < p.length; i += 32) {
          const kind = p.readUInt32LE(i + 4);
          const type = p.readUInt32LE(i + 8);
          if (kind < 1 || kind > 3 || type < 1 || type > 2) this.fail(off + 32 + i, `LOCKS: lock ${i / 32} has kind ${kind} and type ${type}`);
          out.locks.push({ fd: p.readUInt32LE(i), kind: LOCK_KIND[kind]!, type: type === 2 ? "write" : "read", start: u64(p, i + 16), end: u64(p, i + 24) });
        }
        return null;
      }
      case RecordType.FILE: // a files image's data file (src/daemon/files-image.ts reads them)
        return null;
      case RecordType.TRACKING:
        out.tracking = { mode: p.readUInt32LE(0), pagesScanned: u64(p, 8), pagesWritten: u64(p, 16), freshMappings: u64(p, 24) };
        return null;
      case RecordType.TIMERS: {
        if (out.timers) this.fail(off, "second TIMERS record (at most one allowed)");
        const decoded = decodeTimers(p);
        if (typeof decoded === "string") this.fail(off, decoded);
        out.timers = decoded;
        return null;
      }
      case RecordType.ATTRS: {
        if (out.attrs) this.fail(off, "second ATTRS record (at most one allowed)");
        const len = p.readUInt32LE(20);
        if (len > 128) this.fail(off, `ATTRS: cpus_len ${len} is over 128 bytes`);
        const cpus = cpuList(p.subarray(32, 32 + len));
        out.attrs = {
          pdeathsig: p.readUInt32LE(0),
          subreaper: p.readUInt32LE(4) !== 0,
          dumpable: p.readUInt32LE(8),
          noNewPrivs: p.readUInt32LE(12) !== 0,
          personality: p.readUInt32LE(16),
          timerslackNs: Number(u64(p, 24)),
          cpus,
          nice: p.readInt32LE(160),
          schedPolicy: p.readUInt32LE(164),
          schedPriority: p.readUInt32LE(168),
          schedResetOnFork: (p.readUInt32LE(172) & 1) !== 0,
        };
        return null;
      }
      case RecordType.TTY:
        if (out.tty) this.fail(off, "second TTY record (at most one allowed)");
        out.tty = { index: p.readUInt32LE(0), sid: p.readInt32LE(4), fgPgrp: p.readInt32LE(8) };
        return null;
      case RecordType.CREDS: {
        if (out.creds) this.fail(off, "second CREDS record (at most one allowed)");
        const ngroups = p.readUInt32LE(32);
        if (ngroups > 64) this.fail(off, `CREDS: ${ngroups} groups, over 64`);
        const ids = (at: number): [number, number, number, number] => [p.readUInt32LE(at), p.readUInt32LE(at + 4), p.readUInt32LE(at + 8), p.readUInt32LE(at + 12)];
        const hex = (at: number): string => u64(p, at).toString(16).padStart(16, "0");
        const groups: number[] = [];
        for (let i = 0; i < ngroups; i++) groups.push(p.readUInt32LE(80 + i * 4));
        out.creds = { uid: ids(0), gid: ids(16), groups, securebits: p.readUInt32LE(36), capInh: hex(40), capPrm: hex(48), capEff: hex(56), capBnd: hex(64), capAmb: hex(72) };
        return null;
      }
      case RecordType.END:
        return { recordCount: u64(p, 0), pagesTotal: u64(p, 8), fileSize: u64(p, 16) };
      case RecordType.PAGES:
        return null; // handled by pages()
    }
  }
}

const CLOCK_NAME: Record<number, string> = { 0: "CLOCK_REALTIME", 1: "CLOCK_MONOTONIC", 7: "CLOCK_BOOTTIME", 8: "CLOCK_REALTIME_ALARM", 9: "CLOCK_BOOTTIME_ALARM" };

/** A timerfd (FD kind 25, extra: struct tg_timerfd): "timerfd on CLOCK_MONOTONIC, next in 0.1 s, every 0.1 s, 3 expirations unread". */
function timerfdState(e: Buffer): string {
  const clock = e.readUInt32LE(0);
  const flags = e.readUInt32LE(4);
  const ticks = e.readBigUInt64LE(8);
  const value = Number(e.readBigUInt64LE(16)) / 1e9;
  const every = Number(e.readBigUInt64LE(24)) / 1e9;
  const parts = [`timerfd on ${CLOCK_NAME[clock] ?? `clock ${clock}`}`];
  if (!value) parts.push("disarmed");
  else if (flags & 1) parts.push(`at ${new Date(value * 1000).toISOString()}`);
  else parts.push(`next in ${value.toFixed(3)} s`);
  if (every) parts.push(`every ${every.toFixed(3)} s`);
  if (ticks) parts.push(`${ticks} expiration${ticks === 1n ? "" : "s"} unread`);
  return parts.join(", ");
}

/** A named Unix datagram socket (FD kind 18, extra: struct tg_unix_dgram, name, peer name): "Unix datagram socket bound to /x, connected to /dev/log". */
function unixDgramName(e: Buffer): string {
  const show = (b: Buffer): string => (b[0] === 0 ? `@${b.subarray(1).toString("utf8")}` : b.toString("utf8"));
  const nl = e.readUInt32LE(24);
  const pl = e.readUInt32LE(28);
  return `Unix datagram socket bound to ${show(e.subarray(32, 32 + nl))}${pl ? `, connected to ${show(e.subarray(32 + nl, 32 + nl + pl))}` : ""}`;
}

/** A pty end (FD kinds 16, 17; extra: struct tg_pty): "/dev/pts/0 master, 24x80, packet mode, 12 bytes queued (dropped at restore)". */
function ptyState(kind: number, e: Buffer): string {
  const index = e.readUInt32LE(0);
  const flags = e.readUInt32LE(4);
  const queued = e.readUInt32LE(8) + e.readUInt32LE(12);
  if (flags & 8) return `/dev/pts/${index}, hung up (its master was closed)`;
  const parts = [`/dev/pts/${index}${kind === 16 ? " master" : ""}`, `${e.readUInt16LE(16)}x${e.readUInt16LE(18)}`];
  if (flags & 1) parts.push("locked");
  if (flags & 2) parts.push("packet mode");
  if (queued) parts.push(`${queued} byte${queued === 1 ? "" : "s"} queued (dropped at restore)`);
  return parts.join(", ");
}

/** A deleted-but-open file (FD kind 20, extra: staging path, NUL, the path it had): "PATH (deleted; contents at STAGING)". */
function deletedFile(extra: Buffer): string {
  const nul = extra.indexOf(0);
  if (nul < 0) return extra.toString("utf8");
  return `${extra.subarray(nul + 1).toString("utf8")} (deleted; contents at ${extra.subarray(0, nul).toString("utf8")})`;
}

/** A signalfd's set (FD kind 15, aux bit n-1: signal n): "signalfd for signals 10, 15". */
function signalfdSet(mask: bigint): string {
  const sigs: number[] = [];
  for (let n = 1; n <= 64; n++) if ((mask >> BigInt(n - 1)) & 1n) sigs.push(n);
  return `signalfd for signal${sigs.length === 1 ? "" : "s"} ${sigs.join(", ") || "(none)"}`;
}

/** Parses and verifies an image; throws ImageError naming file, offset and defect. */
export async function parseImage(file: string, opts: ParseOptions = {}): Promise<ParsedImage> {
  let fh: FileHandle;
  try {
    fh = await open(file, "r");
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code ?? "";
    throw new TgError(`cannot open checkpoint image ${file}`, code === "ENOENT" ? "the file does not exist" : String((e as Error).message), "Check the checkpoint id with `tardigrade ls`", "bad-image");
  }
  try {
    const { size } = await fh.stat();
    const reader = new ImageReader(fh, file, size, {
      verifyPages: opts.verifyPages ?? true,
      chunkSize: opts.chunkSize ?? 4 * 1024 * 1024,
      onProgress: opts.onProgress ?? (() => {}),
    });
    return await reader.parse();
  } finally {
    await fh.close();
  }
}

/** A watch of an inotify fd (FD kind 11). */
export interface InotifyWatch {
  wd: number;
  mask: number;
  path: string;
}

/** FD kind 11's extra: {i32 wd, u32 mask, u32 path_len, u32 0, path} back to back, `count` of them; or what is wrong. */
function decodeInotify(extra: Buffer, count: number): InotifyWatch[] | string {
  const out: InotifyWatch[] = [];
  let o = 0;
  while (o < extra.length) {
    if (o + 16 > extra.length) return `inotify FD extra: a watch header at byte ${o} is cut short`;
    const len = extra.readUInt32LE(o + 8);
    if (len === 0 || len > 4095 || o + 16 + len > extra.length) return `inotify FD extra: watch at byte ${o} claims a path of ${len} bytes`;
    out.push({ wd: extra.readInt32LE(o), mask: extra.readUInt32LE(o + 4), path: extra.toString("utf8", o + 16, o + 16 + len) });
    o += 16 + len;
  }
  if (out.length !== count) return `inotify FD extra holds ${out.length} watches, the record says ${count}`;
  return out;
}
