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

const SOCK_TYPE_NAMES: Record<number, string> = { 1: "stream", 5: "seqpacket" };

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
