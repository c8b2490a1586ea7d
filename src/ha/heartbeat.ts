// Direct heartbeats from the primary's daemon to a standby (docs/ha.md, decision 3): the
// second path, so that one broken link is not taken for a dead primary. A UDP datagram
// per beat: JSON {app, host, epoch, seq} and an HMAC-SHA256 of it keyed with the app's
// mirror token (a forged or replayed beat cannot keep a standby from taking over: seq must
// increase per sender and epoch). No clock is compared across hosts.
import { createHmac, timingSafeEqual } from "node:crypto";
import { createSocket, type Socket } from "node:dgram";

export interface Beat {
  app: string;
  host: string;
  epoch: number;
  seq: number;
}

const MAX_DATAGRAM = 1024;

export function encodeBeat(b: Beat, token: string): Buffer {
  const body = JSON.stringify({ app: b.app, host: b.host, epoch: b.epoch, seq: b.seq });
  const mac = createHmac("sha256", token).update(body).digest("hex");
  return Buffer.from(`${body}\n${mac}`, "utf8");
}

/** The beat, if the datagram is one of `app`'s signed with `token`; else null. */
export function decodeBeat(d: Buffer, token: string, app: string): Beat | null {
  if (d.length > MAX_DATAGRAM) return null;
  const s = d.toString("utf8");
  const nl = s.lastIndexOf("\n");
  if (nl < 0) return null;
  const body = s.slice(0, nl);
  const mac = Buffer.from(s.slice(nl + 1), "hex");
  const want = createHmac("sha256", token).update(body).digest();
  if (mac.length !== want.length || !timingSafeEqual(mac, want)) return null;
  try {
    const v = JSON.parse(body) as Partial<Beat>;
    if (v.app !== app || typeof v.host !== "string" || !Number.isSafeInteger(v.epoch) || !Number.isSafeInteger(v.seq)) return null;
    return { app: v.app, host: v.host, epoch: v.epoch!, seq: v.seq! };
  } catch {
    return null;
  }
}

/** Splits `HOST:PORT` (IPv4 or [IPv6]). */
export function parseHostPort(s: string, what: string): { host: string; port: number } {
  const m = /^\[?([^\]]+?)\]?:(\d{1,5})$/.exec(s.trim());
  const port = m ? Number(m[2]) : NaN;
  if (!m || !(port > 0 && port < 65536)) throw new Error(`${what} ${JSON.stringify(s)} is not HOST:PORT`);
  return { host: m[1] as string, port };
}

/** Sends a beat to every standby in `to` every `everyMs` while `current()` gives one (the lease held); stop() ends it. */
export class BeatSender {
  /** One socket per address family the standbys use. */
  private readonly socks = new Map<"udp4" | "udp6", Socket>();
  private readonly timer: NodeJS.Timeout;
  private seq = 0;

  constructor(to: { host: string; port: number }[], token: string, everyMs: number, current: () => Omit<Beat, "seq"> | null) {
    const sockFor = (host: string): Socket => {
      const family = host.includes(":") ? "udp6" : "udp4";
      let s = this.socks.get(family);
      if (!s) {
        s = createSocket(family);
        s.on("error", () => undefined); // (unreachable standby: the next beat tries again)
        s.unref();
        this.socks.set(family, s);
      }
      return s;
    };
    const dests = to.map((t) => ({ ...t, sock: sockFor(t.host) }));
    // seq starts from the wall clock so a restarted daemon's beats are not taken for replays
    this.seq = Date.now();
    this.timer = setInterval(() => {
      const b = current();
      if (!b) return;
      const beat = encodeBeat({ ...b, seq: ++this.seq }, token);
      for (const d of dests) d.sock.send(beat, d.port, d.host, () => undefined);
    }, Math.max(20, everyMs));
    this.timer.unref();
  }

  stop(): void {
    clearInterval(this.timer);
    for (const s of this.socks.values()) {
      try {
        s.close();
      } catch {
        /* already closed */
      }
    }
  }
}

/** Receives `app`'s beats; `lastAt` is performance.now() of the newest valid one (0: none yet). */
export class BeatReceiver {
  private readonly sock: Socket;
  lastAt = 0;
  last: Beat | undefined;
  received = 0;
  rejected = 0;
  private readonly seqs = new Map<string, number>();

  private constructor(sock: Socket, token: string, app: string) {
    this.sock = sock;
    sock.on("message", (d) => {
      const b = decodeBeat(d, token, app);
      const key = b ? `${b.host}/${b.epoch}` : "";
      if (!b || b.seq <= (this.seqs.get(key) ?? 0)) {
        this.rejected++;
        return;
      }
      this.seqs.set(key, b.seq);
      this.lastAt = performance.now();
      this.last = b;
      this.received++;
    });
  }

  static listen(at: { host: string; port: number }, token: string, app: string): Promise<BeatReceiver> {
    const sock = createSocket(at.host.includes(":") ? "udp6" : "udp4");
    return new Promise((resolve, reject) => {
      sock.once("error", reject);
      sock.bind(at.port, at.host, () => {
        sock.off("error", reject);
        resolve(new BeatReceiver(sock, token, app));
      });
    });
  }

  get port(): number {
    return this.sock.address().port;
  }

  close(): void {
    this.sock.close();
  }
}
