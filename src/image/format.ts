// Constants and field layouts of the raw process image, version 1 (docs/format.md).

import type { InetSock } from "./inet.js";

export const MAGIC = Buffer.from("TGIMAGE\0", "latin1");
export const VERSION = 1;
export const FILE_HEADER_SIZE = 64;
export const RECORD_HEADER_SIZE = 32;
export const PAGE_SIZE = 4096;
export const MAX_PAGES_PER_RECORD = 256;
/** Largest non-PAGES payload we read into memory (pipe buffers are the big ones: ≤ 1 MiB by default). */
export const MAX_META_PAYLOAD = 64 * 1024 * 1024;

export enum RecordType {
  PROC = 1,
  CWD = 2,
  EXE = 3,
  RLIMITS = 4,
  SIGACTIONS = 5,
  VMA = 6,
  THREAD = 7,
  FD = 8,
  PIPE_DATA = 9,
  PAGES = 10,
  END = 11,
  /** Incremental images: a run of pages that are zero (or no longer stored) relative to the parent. */
  PAGES_CLEAR = 12,
  /** Dirty-tracking statistics of the capture (u32 mode, u32 reserved, u64 pages_scanned, pages_written, fresh_mappings). */
  TRACKING = 13,
  /** POSIX timers and interval timers (u32 ntimers, u32 timer_size, 3 itimers, then the timers). */
  TIMERS = 14,
  /** Data queued in a Unix socket of a pair inside the app (u64 ino, u32 sock type, u32 nmsg, then bytes or nmsg x { u32 len, bytes }). */
  SOCKET_DATA = 15,
  /** A regular file held open for writing or mapped shared and writable, as it was at the checkpoint. */
  FILE_STATE = 16,
  /** File locks held through the process's fds: n x { u32 fd, kind (1 flock, 2 POSIX, 3 OFD), type (1 read, 2 write), reserved; u64 start, end (inclusive; all ones: to EOF) }. */
  LOCKS = 17,
  /** A TCP connection with both ends in the app, read with TCP_REPAIR (src/image/inet.ts). */
  INET_REPAIR = 20,
  /** The process's controlling terminal, one of the app's ptys: u32 index; i32 sid, fg_pgrp; u32 reserved. */
  TTY = 21,
  /** Right after a named Unix datagram socket's SOCKET_DATA: u64 ino, u32 nmsg, u32 reserved, then nmsg x { u32 len, the sender's name (0: unnamed) }. */
  DGRAM_SENDERS = 22,
  /** Process attributes: u32 pdeathsig, subreaper, dumpable, no_new_privs, personality, cpus_len; u64 timerslack_ns; u64 cpus[16]; i32 nice; u32 sched_policy, sched_priority, sched_flags. */
  ATTRS = 40,
  /** One thread's own attributes, after its THREAD record: u32 tid; i32 nice; u32 sched_policy, sched_priority, sched_flags, cpus_len; u64 timerslack_ns; u64 cpus[16]. */
  THREAD_ATTRS = 41,
  /** Credentials: u32 uid[4] (real, effective, saved, fs), gid[4], ngroups, securebits; u64 cap_inh, cap_prm, cap_eff, cap_bnd, cap_amb; u32 groups[64]. */
  CREDS = 45,
  /** A data file of the app's file set (issue 14): only in a files image (docs/format.md, "Files images"). */
  FILE = 30,
}

/** Fixed (minimum) payload size per record type. */
export const MIN_PAYLOAD: Record<RecordType, number> = {
  [RecordType.PROC]: 680,
  [RecordType.CWD]: 0,
  [RecordType.EXE]: 40,
  [RecordType.RLIMITS]: 16 * 16,
  [RecordType.SIGACTIONS]: 64 * 32,
  [RecordType.VMA]: 80,
  [RecordType.THREAD]: 112,
  [RecordType.FD]: 80,
  [RecordType.PIPE_DATA]: 8,
  [RecordType.PAGES]: 16,
  [RecordType.END]: 24,
  [RecordType.PAGES_CLEAR]: 16,
  [RecordType.TRACKING]: 32,
  [RecordType.TIMERS]: 56,
  [RecordType.ATTRS]: 176,
  [RecordType.THREAD_ATTRS]: 160,
  [RecordType.CREDS]: 336,
  [RecordType.SOCKET_DATA]: 16,
  [RecordType.FILE_STATE]: 64,
  [RecordType.LOCKS]: 0,
  [RecordType.INET_REPAIR]: 72,
  [RecordType.TTY]: 16,
  [RecordType.DGRAM_SENDERS]: 16,
  [RecordType.FILE]: 72,
};

/** Size of one POSIX timer entry in a TIMERS record (entries may be longer in later versions). */
export const TIMER_ENTRY_SIZE = 48;

export function recordTypeName(t: number): string {
  return RecordType[t] ?? `type ${t}`;
}

export const VMA_KIND: Record<number, string> = {
  1: "anon-private",
  2: "anon-shared",
  3: "file-private",
  4: "file-shared",
  5: "vdso",
  6: "vsyscall",
};

export const FD_KIND: Record<number, string> = {
  1: "file",
  2: "chardev",
  3: "directory",
  4: "pipe-read",
  5: "pipe-write",
  6: "fifo",
  7: "eventfd",
  8: "epoll",
  9: "unix-socket",
  10: "unix-listen",
  11: "inotify",
  13: "inet-socket",
  14: "unix-external",
  15: "signalfd",
  16: "pty-master",
  17: "pty",
  18: "unix-dgram",
  20: "deleted-file",
  25: "timerfd",
};

export const SOCK_TYPE: Record<number, string> = { 1: "stream", 2: "datagram", 5: "seqpacket" };

export const MM_FIELDS = [
  "startCode",
  "endCode",
  "startData",
  "endData",
  "startStack",
  "startBrk",
  "brk",
  "argStart",
  "argEnd",
  "envStart",
  "envEnd",
] as const;

export interface FileHeader {
  version: number;
  createdNs: bigint;
  pid: number;
  flags: number;
  seq: bigint;
  parentSeq: bigint;
  pageSize: number;
}

export interface FileId {
  dev: bigint;
  ino: bigint;
  size: bigint;
  mtimeNs: bigint;
  mode: number;
}

export interface ProcInfo {
  pid: number;
  ppid: number;
  pgid: number;
  sid: number;
  umask: number;
  nthreads: number;
  vvarAddr: bigint;
  vdsoAddr: bigint;
  restartInfoAddr: bigint;
  trampolineAddr: bigint;
  mm: Record<(typeof MM_FIELDS)[number], bigint>;
  sharedSigpending: bigint;
  auxvLen: number;
  clockMonotonicNs: bigint;
}

export interface Vma {
  start: bigint;
  end: bigint;
  pgoff: bigint;
  prot: number;
  kind: number;
  vflags: number;
  file: FileId;
  path: string;
}

export interface ThreadInfo {
  tid: number;
  flags: number;
  ucAddr: bigint;
  fsBase: bigint;
  gsBase: bigint;
  clearChildTid: bigint;
  robustListHead: bigint;
  robustListLen: bigint;
  rseqAddr: bigint;
  rseqLen: number;
  rseqSig: number;
  sigpending: bigint;
  rip: bigint;
  rsp: bigint;
  comm: string;
  /** Its own nice value, scheduling policy, timer slack and CPU affinity (THREAD_ATTRS; absent in images of earlier versions). */
  attrs?: ThreadAttrs;
}

/** The THREAD_ATTRS record of one thread. */
export interface ThreadAttrs {
  nice: number;
  schedPolicy: number;
  schedPriority: number;
  schedResetOnFork: boolean;
  timerslackNs: number;
  cpus: number[];
}

export interface FdInfo {
  fd: number;
  kind: number;
  openFlags: number;
  fdFlags: number;
  pos: bigint;
  file: FileId;
  aux: bigint;
  path: string;
  /** epoll only: registered targets. */
  /** other: an entry another process of a tree (sharing the set) registered, added back by that process */
  epoll: { tfd: number; events: number; data: bigint; other?: boolean }[];
  /** Unix socket (kind 9) only: the socket, its peer and state. */
  unix?: UnixSock;
  /** TCP/UDP socket (kind 13) only. */
  inet?: InetSock;
}

export interface UnixSock {
  ino: bigint;
  peerIno: bigint;
  type: number;
  shutdown: number;
  sndbuf: number;
  rcvbuf: number;
  peekOff: number;
  /** bit 0: SO_PASSCRED, bit 1: autobound (kernel-chosen abstract name), bit 2: named (restored unnamed) */
  flags: number;
}

export interface SocketData {
  ino: bigint;
  type: number;
  /** Datagrams (0 for a stream socket). */
  messages: number;
  bytes: number;
  /** A named datagram socket's DGRAM_SENDERS record: who sent each datagram ("" unnamed, "@x" abstract). */
  senders?: string[];
}

export interface PageExtent {
  addr: bigint;
  npages: number;
  /** Offset of the page data (not the record) in the file. */
  dataOffset: number;
}

export interface ClearExtent {
  addr: bigint;
  npages: number;
}

export interface TrackingInfo {
  mode: number;
  pagesScanned: bigint;
  pagesWritten: bigint;
  freshMappings: bigint;
}

export interface PosixTimer {
  id: number;
  clock: number;
  /** sigev_notify: 0 signal, 1 none, 2 thread, | 4 thread id. */
  notify: number;
  signo: number;
  /** Target thread (namespace TID) of a SIGEV_THREAD_ID timer, else 0. */
  tid: number;
  overrun: number;
  sigval: bigint;
  intervalNs: bigint;
  /** Time left at the checkpoint; 0 = disarmed. */
  valueNs: bigint;
}

export interface TimersInfo {
  /** ITIMER_REAL, ITIMER_VIRTUAL, ITIMER_PROF. */
  itimers: { intervalNs: bigint; valueNs: bigint }[];
  timers: PosixTimer[];
}

/** VMA vflags bit: a shared writable file mapping whose contents are stored as pages. */
export const VF_CONTENT = 16;

/** FILE_STATE flags. */
export const FILE_STATE_FLAGS = { fdWrite: 1, mapped: 2, covered: 4, generation: 8 } as const;

export interface FileState {
  flags: number;
  /** Lowest fd holding it for writing, or null. */
  fd: number | null;
  file: FileId;
  ctimeNs: bigint;
  generation: number | null;
  /** Bytes from offset 0 whose contents the image holds (shared writable mappings). */
  covered: bigint;
  path: string;
}

/** LOCKS kinds by their number. */
export const LOCK_KIND: Record<number, FileLock["kind"]> = { 1: "flock", 2: "posix", 3: "ofd" };

/** One lock of the LOCKS record. */
export interface FileLock {
  fd: number;
  kind: "flock" | "posix" | "ofd";
  type: "read" | "write";
  start: bigint;
  /** Inclusive; 2^64-1: to the end of the file. */
  end: bigint;
}

export interface EndInfo {
  recordCount: bigint;
  pagesTotal: bigint;
  fileSize: bigint;
}
