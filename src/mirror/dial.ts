// Opening a connection to a mirror server (plain TCP or TLS), with a timeout.
import { isIP, connect as netConnect, type Socket } from "node:net";
import { connect as tlsConnect } from "node:tls";
import type { MirrorAddress } from "./address.js";

export interface DialOptions {
  /** PEM CA bundle to trust for tgs:// (default: the system's). */
  ca?: Buffer;
  /** Only for tests with self-signed certificates. */
  rejectUnauthorized?: boolean;
  timeoutMs?: number;
}

export function dial(addr: MirrorAddress, opts: DialOptions = {}): Promise<Socket> {
  const timeoutMs = opts.timeoutMs ?? 10_000;
  return new Promise((resolve, reject) => {
    const sock: Socket = addr.tls
      ? tlsConnect({
          host: addr.host,
          port: addr.port,
          // SNI is for host names only (an IP there is DEP0123); the certificate is still checked against the IP.
          ...(isIP(addr.host) ? {} : { servername: addr.host }),
          ...(opts.ca ? { ca: opts.ca } : {}),
          rejectUnauthorized: opts.rejectUnauthorized ?? true,
        })
      : netConnect({ host: addr.host, port: addr.port, allowHalfOpen: true });
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new Error(`cannot connect to mirror ${addr.host}:${addr.port}: no answer within ${timeoutMs} ms`));
    }, timeoutMs);
    const onError = (err: Error): void => {
      clearTimeout(timer);
      reject(new Error(`cannot connect to mirror ${addr.host}:${addr.port}: ${err.message}; is "tardigrade mirror serve" running there?`));
    };
    sock.once("error", onError);
    sock.once(addr.tls ? "secureConnect" : "connect", () => {
      clearTimeout(timer);
      sock.off("error", onError);
      sock.on("error", () => undefined); // surfaced through the frame reader
      resolve(sock);
    });
  });
}
