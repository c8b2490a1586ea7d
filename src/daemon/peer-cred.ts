// Only the daemon's user (or root) may talk to the daemon. The socket is 0600 in a 0700 home
// (src/daemon/main.ts), so the kernel already refuses other users at connect(); this is the
// second check, on the connection itself: the peer's uid from SO_PEERCRED (getsockopt(2)),
// which node does not expose, called through koffi (a maintained FFI library with prebuilt
// binaries). A home or socket whose modes were loosened by hand then still lets nobody in.
import type { Socket } from "node:net";
import koffi from "koffi";
import { TgError } from "../errors.js";

const SOL_SOCKET = 1;
const SO_PEERCRED = 17;

export interface PeerCred {
  pid: number;
  uid: number;
  gid: number;
}

type GetSockOpt = (fd: number, level: number, name: number, buf: Buffer, len: number[]) => number;

let getsockopt: GetSockOpt | null = null;
let unavailable: string | null = null;
try {
  const libc = koffi.load("libc.so.6");
  getsockopt = libc.func("int getsockopt(int, int, int, _Out_ uint8_t *buf, _Inout_ uint32_t *len)") as GetSockOpt;
} catch (e) {
  unavailable = e instanceof Error ? e.message : String(e);
}

/** Why peer credentials cannot be read on this machine, or null when they can. */
export function peerCredUnavailable(): string | null {
  return unavailable;
}

/** The credentials of the process at the other end of a Unix stream connection, or null
 *  when they cannot be read (no FFI on this platform, or the socket has no fd). */
export function peerCredentials(sock: Socket): PeerCred | null {
  // net.Socket keeps its handle's fd on Unix (an internal, stable since node 0.x).
  const fd = (sock as unknown as { _handle?: { fd?: number } })._handle?.fd;
  if (!getsockopt || typeof fd !== "number" || fd < 0) return null;
  const buf = Buffer.alloc(12);
  const len = [12];
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, buf, len) !== 0 || len[0] !== 12) return null;
  return { pid: buf.readInt32LE(0), uid: buf.readUInt32LE(4), gid: buf.readUInt32LE(8) };
}

/** May this peer use the daemon? Its own user and root may. */
export function peerAllowed(cred: PeerCred, self: number = process.getuid?.() ?? 0): boolean {
  return cred.uid === self || cred.uid === 0;
}

/** The refusal for a peer that may not use the daemon. */
export function refusal(cred: PeerCred, self: number): TgError {
  return new TgError(
    "permission denied",
    `this daemon serves uid ${self} (and root) only; the request came from uid ${cred.uid} (pid ${cred.pid})`,
    "Run tardigrade as the daemon's user, or use a home of your own (TARDIGRADE_HOME)",
    "forbidden",
  );
}
