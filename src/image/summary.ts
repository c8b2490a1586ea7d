// A JSON-friendly summary of a parsed image, for `tardigrade inspect`.
import { constants as osConstants } from "node:os";
import { FD_KIND, FILE_STATE_FLAGS, SOCK_TYPE, VF_CONTENT, VMA_KIND, type FdInfo, type ThreadAttrs } from "./format.js";
import { parseImage, type ParsedImage, type ProcAttrs, type ProcCreds } from "./parser.js";
import { connectionFate, describeInet } from "./inet.js";

const hex = (v: bigint): string => `0x${v.toString(16)}`;

function prot(p: number): string {
  return `${p & 1 ? "r" : "-"}${p & 2 ? "w" : "-"}${p & 4 ? "x" : "-"}`;
}

export interface ImageSummary {
  file: string;
  bytes: number;
  version: number;
  pid: number;
  seq: string;
  createdAt: string;
  incremental: boolean;
  cwd: string;
  exe: string | null;
  pages: number;
  records: number;
  vmas: { start: string; end: string; prot: string; kind: string; path: string; pagesStored: number; contents?: true }[];
  threads: { tid: number; manager: boolean; comm: string; rip: string; rsp: string; attrs?: ThreadAttrs }[];
  fds: { fd: number; kind: string; path: string; flags: string; pos: string }[];
  pipes: { inode: string; bytes: number }[];
  /** Data queued in Unix sockets of pairs inside the app, per receiving socket. */
  sockets: { inode: string; type: string; bytes: number; messages: number; /** a named datagram socket's: who sent each datagram ("" unnamed) */ senders?: string[] }[];
  /** File locks held through its fds (LOCKS), taken back on restore. */
  locks: { fd: number; kind: string; type: string; range: string }[];
  /** TCP and UDP sockets: family, protocol, state, addresses, bytes queued; `restore`: what a restore does with a connection. */
  inet: { fd: number; proto: string; family: string; state: string; local: string; remote: string; toRead: number; toSend: number; backlog: number; options: string[]; restore?: "whole" | "closed" }[];
  /** Files held for writing or mapped shared and writable: a restore refuses if they changed (FILE_STATE). */
  files: { path: string; held: string; size: string; inode: string; generation: number | null; mtime: string; contentsStored: boolean }[];
  /** Signals whose disposition is not the default: handler address, or "ignore". */
  signals: { signo: number; name: string; handler: string; flags: string; mask: string }[];
  /** Limits that are not unlimited (cur/max, "inf" for RLIM_INFINITY). */
  rlimits: { resource: string; cur: string; max: string }[];
  tracking: { mode: number; pagesScanned: string; pagesWritten: string; freshMappings: string } | null;
  /** POSIX timers and armed interval timers (times in ns, as decimal strings; value "0" = disarmed). */
  timers: { kind: string; id: number | null; clock: string; notify: string; signal: string; interval: string; value: string; overrun: number }[];
  /** Process attributes (ATTRS; null in images of earlier versions). */
  attrs: ProcAttrs | null;
  /** The controlling terminal (TTY record), null: none. */
  tty: ParsedImage["tty"];
  /** Credentials (CREDS; null in images of earlier versions). */
  creds: ProcCreds | null;
}

const CLOCKS: Record<number, string> = { 0: "realtime", 1: "monotonic", 7: "boottime", 8: "realtime-alarm", 9: "boottime-alarm", 11: "tai" };
const ITIMERS = ["ITIMER_REAL", "ITIMER_VIRTUAL", "ITIMER_PROF"];

function clockName(c: number): string {
  if (c >= 0) return CLOCKS[c] ?? `clock ${c}`;
  const pid = ~(c >> 3);
  const what = (c & 4) !== 0 ? "thread" : "process";
  return pid === 0 ? `${what}-cputime` : `${what}-cputime(${pid})`;
}

function notifyName(n: number, tid: number): string {
  const base = ["signal", "none", "thread"][n & 3] ?? `notify ${n}`;
  return (n & 4) !== 0 ? `${base} to tid ${tid}` : base;
}

function timerRows(img: Awaited<ReturnType<typeof parseImage>>): ImageSummary["timers"] {
  if (!img.timers) return [];
  const rows: ImageSummary["timers"] = img.timers.timers.map((t) => ({
    kind: "posix",
    id: t.id,
    clock: clockName(t.clock),
    notify: notifyName(t.notify, t.tid),
    signal: t.notify === 1 ? "-" : signalName(t.signo),
    interval: t.intervalNs.toString(),
    value: t.valueNs.toString(),
    overrun: t.overrun,
  }));
  img.timers.itimers.forEach((it, i) => {
    if (it.valueNs === 0n) return;
    rows.push({ kind: ITIMERS[i]!, id: null, clock: i === 0 ? "realtime" : "process-cputime", notify: "signal", signal: ["SIGALRM", "SIGVTALRM", "SIGPROF"][i]!, interval: it.intervalNs.toString(), value: it.valueNs.toString(), overrun: 0 });
  });
  return rows;
}

const RLIMIT_NAMES = ["cpu", "fsize", "data", "stack", "core", "rss", "nproc", "nofile", "memlock", "as", "locks", "sigpending", "msgqueue", "nice", "rtprio", "rttime"];
const INF = 0xffffffffffffffffn;
const lim = (v: bigint): string => (v === INF ? "inf" : v.toString());

function signalName(n: number): string {
  const entry = Object.entries(osConstants.signals).find(([, v]) => v === n);
  return entry ? entry[0] : n >= 34 ? `SIGRTMIN+${n - 34}` : `SIG${n}`;
}

/** What an fd is: its path, or for a Unix socket of a pair "socket:[INO] stream, peer fd N". */
function fdPath(f: FdInfo, all: FdInfo[]): string {
  if (f.inet) return describeInet(f.inet);
  if (!f.unix) return f.path;
  const u = f.unix;
  const peer = all.find((g) => g.unix?.ino === u.peerIno);
  const shut = u.shutdown ? `, shut down ${u.shutdown === 3 ? "both ways" : u.shutdown === 1 ? "for reading" : "for writing"}` : "";
  return `socket:[${u.ino}] ${SOCK_TYPE[u.type] ?? `type ${u.type}`}, peer ${peer ? `fd ${peer.fd}` : `socket:[${u.peerIno}]`}${shut}`;
}

export async function summarizeImage(path: string): Promise<ImageSummary> {
  const img = await parseImage(path);
  const stored = new Map<number, number>();
  for (const e of img.extents) {
    const i = img.vmas.findIndex((v) => v.start <= e.addr && e.addr < v.end);
    stored.set(i, (stored.get(i) ?? 0) + e.npages);
  }
  return {
    file: path,
    bytes: img.size,
    version: img.header.version,
    pid: img.header.pid,
    seq: img.header.seq.toString(),
    createdAt: new Date(Number(img.header.createdNs / 1_000_000n)).toISOString(),
    incremental: (img.header.flags & 1) !== 0,
    cwd: img.cwd,
    exe: img.exe?.path ?? null,
    pages: img.pagesTotal,
    records: img.recordCount,
    vmas: img.vmas.map((v, i) => ({
      start: hex(v.start),
      end: hex(v.end),
      prot: prot(v.prot),
      kind: VMA_KIND[v.kind] ?? `kind ${v.kind}`,
      path: v.path,
      pagesStored: stored.get(i) ?? 0,
      ...(v.vflags & VF_CONTENT ? { contents: true as const } : {}),
    })),
    threads: img.threads.map((t) => ({ tid: t.tid, manager: (t.flags & 1) !== 0, comm: t.comm, rip: hex(t.rip), rsp: hex(t.rsp), ...(t.attrs ? { attrs: t.attrs } : {}) })),
    fds: img.fds.map((f) => ({ fd: f.fd, kind: FD_KIND[f.kind] ?? `kind ${f.kind}`, path: fdPath(f, img.fds), flags: `0${f.openFlags.toString(8)}`, pos: f.pos.toString() })),
    pipes: img.pipes.map((p) => ({ inode: p.inode.toString(), bytes: p.bytes })),
    locks: img.locks.map((k) => ({ fd: k.fd, kind: k.kind, type: k.type, range: `${k.start}-${k.end === 2n ** 64n - 1n ? "EOF" : k.end.toString()}` })),
    sockets: img.sockets.map((s) => ({ inode: s.ino.toString(), type: SOCK_TYPE[s.type] ?? `type ${s.type}`, bytes: s.bytes, messages: s.messages, ...(s.senders ? { senders: s.senders } : {}) })),
    inet: img.fds.flatMap((f) => {
      const s = f.inet;
      if (!s) return [];
      const fate = connectionFate(s, img.repairs.find((r) => r.ino === s.ino));
      const listening = s.state === "listening";
      return [{ fd: f.fd, proto: s.proto, family: s.family, state: s.state, local: s.local, remote: s.remote, toRead: listening ? 0 : s.rqueue, toSend: s.wqueue, backlog: listening ? s.backlog : 0, options: s.options, ...(fate ? { restore: fate } : {}) }];
    }),
    files: img.files.map((f) => ({
      path: f.path,
      held: [f.fd !== null ? `fd ${f.fd} (write)` : "", f.flags & FILE_STATE_FLAGS.mapped ? "mapped shared rw" : ""].filter(Boolean).join(", "),
      size: f.file.size.toString(),
      inode: f.file.ino.toString(),
      generation: f.generation,
      mtime: new Date(Number(f.file.mtimeNs / 1_000_000n)).toISOString(),
      contentsStored: (f.flags & FILE_STATE_FLAGS.covered) !== 0,
    })),
    signals: img.sigactions
      .filter((a) => a.handler !== 0n)
      .map((a) => ({ signo: a.signo, name: signalName(a.signo), handler: a.handler === 1n ? "ignore" : hex(a.handler), flags: hex(a.flags), mask: hex(a.mask) })),
    rlimits: img.rlimits
      .map((r, i) => ({ resource: RLIMIT_NAMES[i] ?? `rlimit${i}`, cur: lim(r.cur), max: lim(r.max) }))
      .filter((r) => r.cur !== "inf" || r.max !== "inf"),
    tracking: img.tracking && {
      mode: img.tracking.mode,
      pagesScanned: img.tracking.pagesScanned.toString(),
      pagesWritten: img.tracking.pagesWritten.toString(),
      freshMappings: img.tracking.freshMappings.toString(),
    },
    timers: timerRows(img),
    attrs: img.attrs,
    tty: img.tty,
    creds: img.creds,
  };
}
