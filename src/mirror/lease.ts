// The lease of each source (app) on the mirror destination (docs/ha.md, decisions 1-2):
// one host at a time holds it, under an epoch that only increases. Granting a new epoch
// is written durably (leases.json in the store, fsynced, renamed) before it is answered,
// so a mirror that restarts never grants an epoch twice; a restarted mirror also waits out
// the longest lease it may have granted (it cannot know when the last renewal was) before
// granting the source's lease to anyone else. Renewals by the holder are not written
// (the holder and epoch do not change; expiry is by this process's monotonic clock).
import { readFileSync } from "node:fs";
import { chmod } from "node:fs/promises";
import { join } from "node:path";
import { writeFileAtomic } from "../store/fsutil.js";

/** Shortest and longest lease a holder may ask for (ms). */
export const MIN_LEASE_MS = 200;
export const MAX_LEASE_MS = 60_000;

export interface LeaseAnswerGranted {
  granted: true;
  holder: string;
  epoch: number;
  ttlMs: number;
}

export interface LeaseAnswerHeld {
  granted: false;
  holder: string;
  epoch: number;
  /** Until the lease may go to someone else (ms from now; 0: it has expired, but the asker named a stale epoch). */
  expiresInMs: number;
  /** Since the holder last renewed it (ms), or null when unknown (the mirror restarted since). */
  renewedMsAgo: number | null;
}

export type LeaseAnswer = LeaseAnswerGranted | LeaseAnswerHeld;

interface Persisted {
  holder: string;
  epoch: number;
  /** Longest lease granted under this epoch (what a restarted mirror waits out). */
  maxTtlMs: number;
}

interface Live extends Persisted {
  /** performance.now() after which the lease may be granted to another host. */
  expiresAt: number;
  renewedAt: number | null;
}

interface LeaseFile {
  format: "tardigrade-mirror-leases";
  version: 1;
  leases: Record<string, Persisted>;
}

export class LeaseTable {
  private readonly live = new Map<string, Live>();
  /** Grants are written one at a time (a grant's check and its write do not interleave with another's). */
  private chain: Promise<unknown> = Promise.resolve();
  private readonly path: string;

  constructor(storeDir: string, private readonly now: () => number = () => performance.now()) {
    this.path = join(storeDir, "leases.json");
    let file: LeaseFile | undefined;
    try {
      file = JSON.parse(readFileSync(this.path, "utf8")) as LeaseFile;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "ENOENT") {
        throw new Error(`cannot read the lease table ${this.path}: ${(e as Error).message}; it records which host may run each app: restore it from a backup or remove it only when no app runs anywhere`);
      }
    }
    const t = this.now();
    for (const [source, p] of Object.entries(file?.leases ?? {})) {
      // Restarted: the holder may have renewed just before; wait out the longest lease it had.
      this.live.set(source, { ...p, expiresAt: t + p.maxTtlMs, renewedAt: null });
    }
  }

  /** The epoch offers of `source` must carry, or undefined if no lease was ever granted for it. */
  epochOf(source: string): number | undefined {
    return this.live.get(source)?.epoch;
  }

  /** Who holds the lease of `source`, without asking for it (a standby watching the primary). */
  peek(source: string): LeaseAnswerHeld | null {
    const cur = this.live.get(source);
    if (!cur) return null;
    const t = this.now();
    return { granted: false, holder: cur.holder, epoch: cur.epoch, expiresInMs: Math.max(0, Math.round(cur.expiresAt - t)), renewedMsAgo: cur.renewedAt === null ? null : Math.round(t - cur.renewedAt) };
  }

  holderOf(source: string): string | undefined {
    return this.live.get(source)?.holder;
  }

  /**
   * `host` asks for (epoch undefined) or renews (its epoch) the lease of `source` for ttlMs.
   * Renewing needs the current epoch and holder; acquiring needs the lease free or expired
   * (a new epoch then, written durably first).
   */
  request(source: string, host: string, epoch: number | undefined, ttlMs: number): Promise<LeaseAnswer> {
    const ttl = Math.min(MAX_LEASE_MS, Math.max(MIN_LEASE_MS, ttlMs));
    const run = (): Promise<LeaseAnswer> => this.decide(source, host, epoch, ttl);
    const p = this.chain.then(run, run);
    this.chain = p.catch(() => undefined);
    return p;
  }

  private async decide(source: string, host: string, epoch: number | undefined, ttl: number): Promise<LeaseAnswer> {
    const cur = this.live.get(source);
    const t = this.now();
    if (cur && epoch !== undefined && epoch === cur.epoch && host === cur.holder) {
      cur.expiresAt = t + ttl;
      cur.renewedAt = t;
      if (ttl > cur.maxTtlMs) {
        cur.maxTtlMs = ttl;
        await this.save();
      }
      return { granted: true, holder: host, epoch: cur.epoch, ttlMs: ttl };
    }
    if (cur && (epoch !== undefined || t < cur.expiresAt)) {
      // Held by another, or the asker names an epoch that is not the current one (it was fenced).
      return {
        granted: false,
        holder: cur.holder,
        epoch: cur.epoch,
        expiresInMs: Math.max(0, Math.round(cur.expiresAt - t)),
        renewedMsAgo: cur.renewedAt === null ? null : Math.round(t - cur.renewedAt),
      };
    }
    const next: Live = { holder: host, epoch: (cur?.epoch ?? 0) + 1, maxTtlMs: ttl, expiresAt: 0, renewedAt: null };
    const prev = cur;
    this.live.set(source, next);
    try {
      await this.save();
    } catch (e) {
      if (prev) this.live.set(source, prev);
      else this.live.delete(source);
      throw e;
    }
    // The lease runs from when it is answered, not from the request (the write took time).
    const t2 = this.now();
    next.expiresAt = t2 + ttl;
    next.renewedAt = t2;
    return { granted: true, holder: host, epoch: next.epoch, ttlMs: ttl };
  }

  private async save(): Promise<void> {
    const leases: Record<string, Persisted> = {};
    for (const [s, l] of this.live) leases[s] = { holder: l.holder, epoch: l.epoch, maxTtlMs: l.maxTtlMs };
    const file: LeaseFile = { format: "tardigrade-mirror-leases", version: 1, leases };
    await writeFileAtomic(this.path, JSON.stringify(file, null, 2) + "\n");
    await chmod(this.path, 0o600);
  }
}
