// TCP and UDP sockets in an image (docs/format.md: FD kind 13, INET_REPAIR record 20).

/** The FD record's extra of a kind-13 fd (struct tg_inet_sock, 112 bytes). */
export interface InetSock {
  ino: bigint;
  /** "ipv4" or "ipv6" */
  family: string;
  /** "tcp" or "udp" */
  proto: string;
  /** TCP: the kernel's state name (established, listening, close-wait, ...); UDP: connected / unconnected. */
  state: string;
  local: string;
  /** "" when not connected. */
  remote: string;
  backlog: number;
  /** Bytes queued to read; for a listener, connections waiting to be accepted (dropped by a restore). */
  rqueue: number;
  /** Bytes queued to send. */
  wqueue: number;
  /** Options set: reuseaddr, reuseport, nodelay, keepalive, v6only, broadcast. */
  options: string[];
  sndbuf: number;
  rcvbuf: number;
}

/** An INET_REPAIR record: a TCP connection restored whole (both ends in the app). */
export interface InetRepair {
  ino: bigint;
  /** TCP_QUEUE_SEQ of the send and receive queues at the checkpoint. */
  sndSeq: number;
  rcvSeq: number;
  /** The peer is outside the app (kept only by a planned restore that holds its traffic). */
  external: boolean;
  outq: number;
  unsent: number;
  inq: number;
}

export const INET_SOCK_SIZE = 112;
export const INET_REPAIR_SIZE = 72;

const TCP_STATES = ["?", "established", "syn-sent", "syn-recv", "fin-wait1", "fin-wait2", "time-wait", "closed", "close-wait", "last-ack", "listening", "closing", "new-syn-recv"];
const OPTS: [number, string][] = [[1, "reuseaddr"], [2, "reuseport"], [4, "nodelay"], [8, "keepalive"], [16, "v6only"], [32, "broadcast"]];

function addr(family: number, b: Buffer, port: number): string {
  if (family === 2) return `${b[0]}.${b[1]}.${b[2]}.${b[3]}:${port}`;
  const w: string[] = [];
  for (let i = 0; i < 16; i += 2) w.push(b.readUInt16BE(i).toString(16));
  // the shortest form is not needed for a listing; collapse the common all-zero prefixes
  const s = w.join(":").replace(/^(0:)+/, "::").replace(/::0$/, "::").replace(/^::(0:)*/, "::");
  return `[${s}]:${port}`;
}

/** Decodes a kind-13 FD extra, or returns an error message. */
export function decodeInetSock(extra: Buffer): InetSock | string {
  if (extra.length < INET_SOCK_SIZE) return `TCP/UDP socket FD extra is ${extra.length} bytes, need ${INET_SOCK_SIZE}`;
  const family = extra.readUInt16LE(8);
  const protocol = extra.readUInt16LE(12);
  const state = extra.readUInt8(14);
  if (family !== 2 && family !== 10) return `TCP/UDP socket of family ${family} (neither AF_INET nor AF_INET6)`;
  if (protocol !== 6 && protocol !== 17) return `TCP/UDP socket of protocol ${protocol} (neither TCP nor UDP)`;
  const lport = extra.readUInt16LE(16);
  const rport = extra.readUInt16LE(18);
  const opts = extra.readUInt32LE(76);
  return {
    ino: extra.readBigUInt64LE(0),
    family: family === 2 ? "ipv4" : "ipv6",
    proto: protocol === 6 ? "tcp" : "udp",
    state: protocol === 17 ? (state === 1 ? "connected" : "unconnected") : (TCP_STATES[state] ?? `state ${state}`),
    local: addr(family, extra.subarray(24, 40), lport),
    remote: rport ? addr(family, extra.subarray(40, 56), rport) : "",
    backlog: extra.readUInt32LE(56),
    sndbuf: extra.readUInt32LE(60),
    rcvbuf: extra.readUInt32LE(64),
    rqueue: extra.readUInt32LE(68),
    wqueue: extra.readUInt32LE(72),
    options: OPTS.filter(([bit]) => (opts & bit) !== 0).map(([, n]) => n),
  };
}

/** Decodes an INET_REPAIR payload (its queue lengths checked), or returns an error message. */
export function decodeInetRepair(p: Buffer): InetRepair | string {
  const outq = p.readUInt32LE(36);
  const unsent = p.readUInt32LE(40);
  const inq = p.readUInt32LE(44);
  if (outq + inq !== p.length - INET_REPAIR_SIZE) return `INET_REPAIR queue lengths (${outq} + ${inq}) do not match its ${p.length - INET_REPAIR_SIZE} data bytes`;
  if (unsent > outq) return `INET_REPAIR: ${unsent} unsent bytes in a send queue of ${outq}`;
  return { ino: p.readBigUInt64LE(0), sndSeq: p.readUInt32LE(8), rcvSeq: p.readUInt32LE(12), external: (p.readUInt32LE(68) & 1) !== 0, outq, unsent, inq };
}

/** One line for a socket: "tcp ipv4 127.0.0.1:6379 listening (backlog 511)". */
export function describeInet(s: InetSock): string {
  const peer = s.remote ? ` <-> ${s.remote}` : "";
  const extra = s.state === "listening" ? ` (backlog ${s.backlog}${s.rqueue ? `, ${s.rqueue} waiting to be accepted` : ""})` : s.rqueue || s.wqueue ? ` (${s.rqueue} bytes to read, ${s.wqueue} to send)` : "";
  return `${s.proto} ${s.family} ${s.local}${peer} ${s.state}${extra}`;
}

/** What a restore does with a TCP connection: whole (both ends in the app) or closed (the peer saw it
 * drop; a planned restore may keep one whose state was recorded: `hold` in its stats). */
export function connectionFate(s: InetSock, repair: InetRepair | undefined): "whole" | "closed" | null {
  if (s.proto !== "tcp" || s.state === "listening" || s.state === "closed") return null;
  return repair && !repair.external ? "whole" : "closed";
}

/** A TCP/UDP socket as kept with a checkpoint's stats (what a restore will do with it). */
export interface SocketStat {
  fd: number;
  /** describeInet's line */
  socket: string;
  /** TCP connections: "whole" (both ends in the app, TCP_REPAIR) or "closed" (after a restore the app's next read or write gets ECONNRESET). */
  fate?: "whole" | "closed";
  /** A connection to a peer outside whose TCP_REPAIR state was recorded: what `restore --replace` needs to keep it. */
  hold?: { ino: string; sndSeq: number; rcvSeq: number; family: string; local: string; remote: string };
}

/** The sockets of an image's FD records (kind 13, extra as in the record) and its INET_REPAIR inodes. */
export function socketStats(fds: { fd: number; extra: Buffer }[], repairs: InetRepair[]): SocketStat[] {
  const out: SocketStat[] = [];
  for (const f of fds) {
    const s = decodeInetSock(f.extra);
    if (typeof s === "string") continue;
    const r = repairs.find((x) => x.ino === s.ino);
    const fate = connectionFate(s, r);
    const hold = r?.external && s.state === "established" ? { ino: s.ino.toString(), sndSeq: r.sndSeq, rcvSeq: r.rcvSeq, family: s.family, local: s.local, remote: s.remote } : undefined;
    out.push({ fd: f.fd, socket: describeInet(s), ...(fate ? { fate } : {}), ...(hold ? { hold } : {}) });
  }
  return out;
}

/** What a restore says about the app's connections (README: TCP connections after a crash). */
export function restoreNotes(socks: SocketStat[] | undefined, pid?: number, held?: Map<string, string>): string[] {
  const who = pid !== undefined ? `pid ${pid} ` : "";
  return (socks ?? []).filter((s) => s.fate).map((s) => {
    const h = s.hold && held?.get(s.hold.ino);
    if (h === "kept") return `${who}fd ${s.fd} (${s.socket}): kept: restored with TCP_REPAIR while its traffic was held; its peer saw a pause`;
    if (s.fate === "whole") return `${who}fd ${s.fd} (${s.socket}): restored whole (both ends are in the app)`;
    const why = h ? h : held ? "its state was not recorded at the checkpoint" : "its peer saw the connection drop when the app died";
    return `${who}fd ${s.fd} (${s.socket}): restored closed (${why}); the app's next read or write on it gets ECONNRESET`;
  });
}

/** "tcp ipv4 A <-> B established...": [A, B], or null for another kind of line. */
function ends(line: string): [string, string] | null {
  const m = /^tcp \S+ (\S+) <-> (\S+) /.exec(line);
  return m ? [m[1]!, m[2]!] : null;
}

/**
 * A process tree's restore notes: every process's sockets (pid undefined: the main process's). A
 * connection whose other end is another process's (loopback inside the tree, both recorded with
 * TCP_REPAIR) is restored whole by the restorer (native/resources/inet.c, tree pairs), not closed.
 * One whose other end is in the app too but without TCP_REPAIR state (a process without
 * CAP_NET_ADMIN) is refused by the restorer, or with `restore --allow-closed-tcp` (closedTcp)
 * restored as closed by its peer.
 */
export function treeRestoreNotes(procs: { pid?: number; socks: SocketStat[] | undefined }[], held?: Map<string, string>, closedTcp = false): string[] {
  const holds = procs.flatMap((p, i) => (p.socks ?? []).flatMap((s) => (s.hold ? [{ i, h: s.hold }] : [])));
  const lines = procs.flatMap((p) => (p.socks ?? []).map((s) => ends(s.socket)).filter((e): e is [string, string] => e !== null));
  return procs.flatMap((p, i) => {
    const who = p.pid !== undefined ? `pid ${p.pid} ` : "";
    const notes: string[] = [];
    const socks = (p.socks ?? []).flatMap((s): SocketStat[] => {
      const h = s.hold;
      if (s.fate !== "closed") return [s];
      const paired = h && holds.some((o) => o.i !== i && o.h.family === h.family && o.h.local === h.remote && o.h.remote === h.local);
      if (paired) {
        const { hold: _hold, ...rest } = s;
        return [{ ...rest, fate: "whole" }];
      }
      const e = ends(s.socket);
      if (closedTcp && e && lines.some(([l, r]) => l === e[1] && r === e[0])) {
        notes.push(`${who}fd ${s.fd} (${s.socket}): restored closed by its peer (--allow-closed-tcp: its other end is in the app, but the checkpoint holds no TCP_REPAIR state for the connection); the app's next read on it gets end of file`);
        return [];
      }
      return [s];
    });
    return [...restoreNotes(socks, p.pid, held), ...notes];
  });
}

/**
 * A tree checkpoint's connections whose other end is in the app too but which have no TCP_REPAIR
 * state (their process had no CAP_NET_ADMIN): a restore of it refuses them unless
 * `--allow-closed-tcp` (native/resources/inet.c). What `checkpoint` says about them.
 */
export function unreadableConnectionNotes(procs: { pid?: number; socks: SocketStat[] | undefined }[]): string[] {
  const lines = procs.flatMap((p) => (p.socks ?? []).map((s) => ends(s.socket)).filter((e): e is [string, string] => e !== null));
  return procs.flatMap((p) =>
    (p.socks ?? []).flatMap((s) => {
      const e = s.fate === "closed" && !s.hold ? ends(s.socket) : null;
      if (!e || !lines.some(([l, r]) => l === e[1] && r === e[0])) return [];
      const who = p.pid !== undefined ? `pid ${p.pid} ` : "";
      return [`${who}fd ${s.fd} (${s.socket}): no TCP_REPAIR state (its process has no CAP_NET_ADMIN) and its other end is in the app: a restore of this checkpoint refuses it unless \`restore --allow-closed-tcp\` (then it comes back closed by its peer)`];
    }),
  );
}
