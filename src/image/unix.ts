// Unix socket pairs in an image (docs/format.md: FD kind 9, SOCKET_DATA record 15).
import type { SocketData, UnixSock } from "./format.js";

/** The FD record's extra of a kind-9 fd, or an error message. */
export function decodeUnixSock(extra: Buffer): UnixSock | string {
  if (extra.length < 40) return `Unix socket FD extra is ${extra.length} bytes, need 40`;
  return {
    ino: extra.readBigUInt64LE(0),
    peerIno: extra.readBigUInt64LE(8),
    type: extra.readUInt32LE(16),
    shutdown: extra.readUInt32LE(20),
    sndbuf: extra.readUInt32LE(24),
    rcvbuf: extra.readUInt32LE(28),
    peekOff: extra.readInt32LE(32),
    flags: extra.readUInt32LE(36),
  };
}

/** A listening Unix socket's name from its FD extra (struct tg_unix_listen, then the name): "listening on PATH" or "listening on @NAME". */
export function unixListenName(extra: Buffer): string {
  const len = extra.readUInt32LE(24);
  const name = extra.subarray(32, 32 + len);
  const type = SOCK_TYPE_NAMES[extra.readUInt32LE(0)] ?? "socket";
  return `Unix ${type} socket listening on ${name[0] === 0 ? "@" + name.subarray(1).toString("utf8") : name.toString("utf8")} (backlog ${extra.readUInt32LE(4)})`;
}

const SOCK_TYPE_NAMES: Record<number, string> = { 1: "stream", 2: "datagram", 5: "seqpacket" };

/** A Unix socket whose peer was outside the app (FD kind 14: struct tg_unix_ext, the peer's name, its own name). */
export interface UnixExternal {
  type: string;
  /** "reconnect": a datagram socket connected to the peer's name again; "closed": restored as a connection whose peer went away; "eof": its peer had closed its end, nothing left to read. */
  action: "reconnect" | "closed" | "eof";
  /** The peer's name (a path, "@name" for an abstract one), or "" (unnamed, or gone). */
  peer: string;
  /** The socket's own name, or "". */
  name: string;
}

function shownName(b: Buffer): string {
  return b.length === 0 ? "" : b[0] === 0 ? "@" + b.subarray(1).toString("utf8") : b.toString("utf8");
}

/** The FD extra of a kind-14 fd, or an error message. */
export function decodeUnixExternal(extra: Buffer): UnixExternal | string {
  if (extra.length < 32) return `external Unix socket FD extra is ${extra.length} bytes, need 32`;
  const action = extra.readUInt32LE(4);
  const peerLen = extra.readUInt32LE(20);
  const nameLen = extra.readUInt32LE(24);
  if (peerLen > 108 || nameLen > 108 || 32 + peerLen + nameLen > extra.length) return `external Unix socket FD extra of ${extra.length} bytes does not hold names of ${peerLen} and ${nameLen} bytes`;
  if (action !== 1 && action !== 2 && action !== 3) return `external Unix socket FD extra has an unknown action ${action}`;
  return {
    type: SOCK_TYPE_NAMES[extra.readUInt32LE(0)] ?? `type ${extra.readUInt32LE(0)}`,
    action: action === 1 ? "reconnect" : action === 2 ? "closed" : "eof",
    peer: shownName(extra.subarray(32, 32 + peerLen)),
    name: shownName(extra.subarray(32 + peerLen, 32 + peerLen + nameLen)),
  };
}

/** "Unix stream socket bound to /x, connected to /y (outside the app)" */
export function describeUnixExternal(u: UnixExternal): string {
  if (u.action === "eof") return `Unix ${u.type} socket${u.name ? ` bound to ${u.name}` : ""} whose peer closed its end`;
  return `Unix ${u.type} socket${u.name ? ` bound to ${u.name}` : ""}, connected to ${u.peer || "an unnamed socket"} (outside the app)`;
}

/** What a restore did with a socket whose peer was outside (README: Unix sockets to outside peers). `live` says whether a socket file is at a path now. */
export function externalUnixNote(fd: number, u: UnixExternal, live: (path: string) => boolean, pid?: number): string {
  const who = pid !== undefined ? `pid ${pid} ` : "";
  const what = `${who}fd ${fd} (${describeUnixExternal(u)})`;
  if (u.action === "eof") return `${what}: its peer had closed its end: restored the same (the app's next read gets end of file, a write EPIPE)`;
  if (u.action === "closed") return `${what}: restored closed (its peer is outside the app); the app's next read on it gets ECONNRESET, a write EPIPE`;
  if (u.peer.startsWith("/") && !live(u.peer)) return `${what}: restored unconnected: nothing is bound to ${u.peer} now; the app's next send on it gets ENOTCONN (it may connect again)`;
  return `${what}: connected to ${u.peer} again`;
}

/** A DGRAM_SENDERS payload: the sender's name of each queued datagram ("" unnamed, "@name" abstract); or an error message. */
export function decodeDgramSenders(p: Buffer): { ino: bigint; senders: string[] } | string {
  const ino = p.readBigUInt64LE(0);
  const nmsg = p.readUInt32LE(8);
  const senders: string[] = [];
  let at = 16;
  while (at < p.length) {
    if (p.length - at < 4) return `DGRAM_SENDERS name ${senders.length} has a truncated length`;
    const len = p.readUInt32LE(at);
    if (len > 108 || len > p.length - at - 4) return `DGRAM_SENDERS name ${senders.length} (${len} bytes) is too long or runs past the payload`;
    const raw = p.subarray(at + 4, at + 4 + len);
    senders.push(len === 0 ? "" : raw[0] === 0 ? `@${raw.subarray(1).toString("latin1")}` : raw.toString("utf8").replace(/\0.*$/s, ""));
    at += 4 + len;
  }
  if (senders.length !== nmsg) return `DGRAM_SENDERS header says ${nmsg} names, the payload holds ${senders.length}`;
  return { ino, senders };
}

/** A SOCKET_DATA payload, its datagram framing checked; or an error message. */
export function decodeSocketData(p: Buffer): SocketData | string {
  const ino = p.readBigUInt64LE(0);
  const type = p.readUInt32LE(8);
  const nmsg = p.readUInt32LE(12);
  const data = p.subarray(16);
  if (type === 1) return { ino, type, messages: 0, bytes: data.length };
  let at = 0;
  let m = 0;
  while (at < data.length) {
    if (data.length - at < 4) return `SOCKET_DATA datagram ${m} has a truncated length`;
    const len = data.readUInt32LE(at);
    if (len > data.length - at - 4) return `SOCKET_DATA datagram ${m} (${len} bytes) runs past the payload`;
    at += 4 + len;
    m++;
  }
  if (m !== nmsg) return `SOCKET_DATA header says ${nmsg} datagrams, the payload holds ${m}`;
  return { ino, type, messages: m, bytes: data.length - 4 * m };
}
