// Passing an fd to the agent with a request line (SCM_RIGHTS): the daemon opens each image in its
// private store and hands the open file (or FIFO end) to the agent, so a process of another user
// (nginx workers as `nobody`, postgres as `postgres`) writes its image without the store being
// reachable by that user (docs/engine.md, "Processes of another user"). Node's net module cannot
// send ancillary data, so libc's sendmsg(2) is called through koffi on the connected socket.
import koffi from "koffi";
import type { Socket } from "node:net";

interface Iovec { base: Buffer; len: number }
interface Msghdr { name: null; namelen: number; iov: Iovec[]; iovlen: number; control: Buffer; controllen: number; flags: number }
type SendmsgFn = (fd: number, msg: Msghdr, flags: number) => number;

let sendmsg: SendmsgFn | null = null;
function libcSendmsg(): SendmsgFn {
  if (!sendmsg) {
    const iovec = koffi.struct("tg_iovec", { base: "void *", len: "size_t" });
    koffi.struct("tg_msghdr", { name: "void *", namelen: "uint32", iov: koffi.pointer(iovec), iovlen: "size_t", control: "void *", controllen: "size_t", flags: "int" });
    sendmsg = koffi.load("libc.so.6").func("long sendmsg(int fd, const tg_msghdr *msg, int flags)") as SendmsgFn;
  }
  return sendmsg;
}

const SOL_SOCKET = 1;
const SCM_RIGHTS = 1;
const MSG_NOSIGNAL = 0x4000;

/** The fd of a connected Unix socket of node's (its libuv pipe handle's), or null. */
function socketFd(c: Socket): number | null {
  // (node keeps the OS fd on the internal handle; there is no public accessor)
  const handle = (c as unknown as { _handle?: { fd?: unknown } })._handle;
  return handle && typeof handle.fd === "number" && handle.fd >= 0 ? handle.fd : null;
}

/** Sends `line` on the connected socket c with `fd` attached, in one sendmsg; throws with the reason. */
export function sendLineWithFd(c: Socket, line: string, fd: number): void {
  const sock = socketFd(c);
  if (sock === null) throw new Error("cannot pass the image to the agent: the connection has no file descriptor");
  const data = Buffer.from(line);
  const ctl = Buffer.alloc(24); // CMSG_SPACE(sizeof(int)) on 64-bit Linux
  ctl.writeBigUInt64LE(20n, 0); // cmsg_len = CMSG_LEN(sizeof(int))
  ctl.writeInt32LE(SOL_SOCKET, 8);
  ctl.writeInt32LE(SCM_RIGHTS, 12);
  ctl.writeInt32LE(fd, 16);
  const n = libcSendmsg()(sock, { name: null, namelen: 0, iov: [{ base: data, len: data.length }], iovlen: 1, control: ctl, controllen: ctl.length, flags: 0 }, MSG_NOSIGNAL);
  if (n !== data.length) throw new Error(`cannot pass the image to the agent: sendmsg returned ${n} (${n < 0 ? "failed" : "short write"})`);
}
