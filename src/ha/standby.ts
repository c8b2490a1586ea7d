// The standby (docs/ha.md, decisions 3-4): watches the primary on two paths, the lease
// renewals the mirror sees (probed every failover/6) and the primary's direct UDP beats,
// and takes the app over only when both have been silent past --failover-after AND the
// mirror grants it the lease: then it restores the newest checkpoint at the chosen level
// (`--rpo durable|received`) through the local daemon, under the new epoch, so the
// restored app's own checkpoints go to the mirror under it. It renews the lease itself
// until the restore returns (the daemon's shipper renews it from then on).
import { AdminConnection, type LeaseReply } from "../mirror/admin.js";
import type { DialOptions } from "../mirror/dial.js";
import type { ListedCheckpoint } from "../mirror/server.js";
import { TgError } from "../errors.js";
import { BeatReceiver } from "./heartbeat.js";
import type { Takeover } from "./fence.js";

export interface StandbyOptions {
  url: string;
  app: string;
  token: string;
  dial?: DialOptions;
  /** This host's id in the lease table (host.ts). */
  host: string;
  failoverAfterMs: number;
  rpo: "durable" | "received";
  /** Where the primary's UDP beats arrive. */
  listen: { host: string; port: number };
  /** The restored app's periodic checkpoints. */
  everyMs?: number;
  log(line: string): void;
  /** The restore through the local daemon (api.restore with from.takeover). */
  restore(checkpoint: string, takeover: Takeover): Promise<{ checkpoint: string; appHostPid: number; wallNs?: number; lazy?: boolean }>;
  /**
   * The warm copy (api.prefetch): pulls a checkpoint of the app from the mirror into this host's
   * store while the primary runs, so a takeover's restore fetches only what came after it.
   */
  prefetch?(checkpoint: string): Promise<{ id: string; imported: number; blocksFetched: number; bytesFetched: number; ms: number }>;
  /** At most one prefetch per this long (ms); default 1000. */
  prefetchEveryMs?: number;
  /** Ends the watch (tests); resolves runStandby with no takeover. */
  signal?: AbortSignal;
}

export interface TakeoverReport {
  app: string;
  epoch: number;
  previousHolder: string;
  /** How long each path had been silent when the lease was asked for (ms). */
  silentMs: { udp: number; mirror: number };
  checkpoint: string;
  /** Its id on the mirror (the primary's mirror-state.json names it too). */
  mirrorId: string;
  checkpointState: "durable" | "received";
  /** Lease granted to the app restored (ms). */
  restoreMs: number;
  appHostPid: number;
  beatsReceived: number;
  /** Restored lazily (the app resumed before its memory was all in; `status` shows the loading). */
  lazy?: boolean;
  /** The newest checkpoint the warm copy had pulled before the takeover (its restore fetched only what is newer). */
  prefetched?: string;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** The newest checkpoint at the level asked for (not damaged). */
export function pickCheckpoint(list: ListedCheckpoint[], rpo: "durable" | "received"): ListedCheckpoint | undefined {
  return list.filter((c) => !c.damaged && (rpo === "received" || c.state === "durable")).sort((a, b) => b.seq - a.seq)[0];
}

export async function runStandby(o: StandbyOptions): Promise<TakeoverReport | undefined> {
  const beats = await BeatReceiver.listen(o.listen, o.token, o.app);
  const every = Math.max(20, Math.floor(o.failoverAfterMs / 6));
  const started = performance.now();
  let mirrorSeenAt = 0; // performance.now() of the primary's last renewal the mirror reported
  let admin: AdminConnection | undefined;
  let lastHolder = "";
  let unreachable = false;
  const connect = async (): Promise<AdminConnection> => (admin ??= await AdminConnection.open({ url: o.url, token: o.token, source: o.app, ...(o.dial ? { dial: o.dial } : {}) }));
  const ask = async (req: Parameters<AdminConnection["lease"]>[0]): Promise<LeaseReply | undefined> => {
    try {
      const r = await (await connect()).lease(req);
      if (unreachable) o.log(`mirror ${o.url} reachable again`);
      unreachable = false;
      return r;
    } catch (e) {
      if (!unreachable) o.log(`mirror ${o.url} unreachable (${(e as Error).message}); no takeover is possible without it`);
      unreachable = true;
      admin?.close();
      admin = undefined;
      return undefined;
    }
  };
  o.log(`standby for ${o.app}: beats on udp ${o.listen.host}:${beats.port}, mirror ${o.url}, failover after ${o.failoverAfterMs} ms of silence on both paths, rpo ${o.rpo}${o.prefetch ? ", warm copy" : ""}`);
  // The warm copy: one prefetch at a time, in the background (detection never waits for it).
  let prefetched: string | undefined; // (the store's id)
  let prefetchedMirrorId: string | undefined;
  let inflight: Promise<void> | undefined;
  let lastPrefetchAt = -Infinity;
  let lastPrefetchError = "";
  const prefetchEvery = o.prefetchEveryMs ?? 1000;
  const warm = async (now: number): Promise<void> => {
    if (!o.prefetch || inflight || unreachable || now - lastPrefetchAt < prefetchEvery) return;
    lastPrefetchAt = now;
    let c: ListedCheckpoint | undefined;
    try {
      c = pickCheckpoint(await (await connect()).list(), o.rpo);
    } catch {
      return; // (the next probe says whether the mirror is reachable)
    }
    if (!c || c.id === prefetchedMirrorId) return;
    const id = c.id;
    inflight = o
      .prefetch(id)
      .then((r) => {
        prefetched = r.id;
        prefetchedMirrorId = id;
        lastPrefetchError = "";
        if (r.imported > 0) o.log(`warm copy: ${r.id} pulled (${r.imported} checkpoint(s), ${r.blocksFetched} blocks, ${r.bytesFetched} bytes, ${r.ms} ms)`);
      })
      .catch((e: unknown) => {
        const m = (e as Error).message;
        if (m !== lastPrefetchError) o.log(`warm copy: cannot pull ${id}: ${m} (a takeover pulls the whole checkpoint)`);
        lastPrefetchError = m;
      })
      .finally(() => {
        inflight = undefined;
      });
  };
  try {
    while (!o.signal?.aborted) {
      const p = await ask({ probe: true });
      const now = performance.now();
      if (p && !p.granted && p.holder !== "") {
        if (p.holder !== lastHolder) o.log(`lease of ${o.app} held by ${p.holder} (epoch ${p.epoch})`);
        lastHolder = p.holder;
        // renewedMsAgo null: the mirror restarted and has not heard the holder since (its own grace covers it).
        if (p.renewedMsAgo !== null) mirrorSeenAt = Math.max(mirrorSeenAt, now - p.renewedMsAgo);
      }
      const udp = now - (beats.lastAt || started);
      const mirror = now - (mirrorSeenAt || started);
      if (p && udp > o.failoverAfterMs && mirror > o.failoverAfterMs) {
        const g = await ask({ host: o.host, ttlMs: o.failoverAfterMs });
        if (g?.granted) {
          o.log(`primary silent (udp ${Math.round(udp)} ms, mirror ${Math.round(mirror)} ms): lease of ${o.app} granted, epoch ${g.epoch}`);
          if (inflight) await inflight; // (one pull into the store at a time; what it fetched the restore need not)
          const report = await takeOver(o, g.epoch, lastHolder, { udp: Math.round(udp), mirror: Math.round(mirror) }, beats.received, admin!);
          return prefetched !== undefined ? { ...report, prefetched } : report;
        }
        if (g && !g.granted) o.log(`primary silent on both paths, but the lease is still held by ${g.holder} (epoch ${g.epoch}, ${g.expiresInMs} ms left): waiting`);
      } else if (p) {
        await warm(now);
      }
      await sleep(every);
    }
    if (inflight) await inflight;
    return undefined;
  } finally {
    beats.close();
    admin?.close();
  }
}

async function takeOver(o: StandbyOptions, epoch: number, previousHolder: string, silentMs: { udp: number; mirror: number }, beatsReceived: number, admin: AdminConnection): Promise<TakeoverReport> {
  const t0 = performance.now();
  // Keep the lease while restoring (own connection: the admin one is busy listing).
  const keeper = await AdminConnection.open({ url: o.url, token: o.token, source: o.app, ...(o.dial ? { dial: o.dial } : {}) });
  let lost: string | undefined;
  let renewing = Promise.resolve();
  const timer = setInterval(() => {
    renewing = renewing.then(async () => {
      const r = await keeper.lease({ host: o.host, epoch, ttlMs: o.failoverAfterMs }).catch(() => undefined);
      if (r && !r.granted) lost = `lease taken by ${r.holder} (epoch ${r.epoch})`;
    });
  }, Math.max(20, Math.floor(o.failoverAfterMs / 6)));
  try {
    const c = pickCheckpoint(await admin.list(), o.rpo);
    if (!c) throw new TgError(`cannot take ${o.app} over`, `the mirror holds no ${o.rpo === "durable" ? "durable " : ""}checkpoint of it: nothing to restore (the lease, epoch ${epoch}, is held by this host until it expires)`, o.rpo === "durable" ? "Wait for a checkpoint to become durable, or pass --rpo received" : "Check that the primary runs with --mirror", "not-found");
    o.log(`restoring ${o.app} from ${c.id} (${c.state}, seq ${c.seq}) under epoch ${epoch}`);
    const r = await o.restore(c.id, { epoch, ttlMs: o.failoverAfterMs, ...(o.everyMs !== undefined ? { everyMs: o.everyMs } : {}) });
    if (lost) throw new TgError(`took ${o.app} over but lost its lease`, `${lost} while restoring`, `Another host runs it now: stop the copy restored here (\`tardigrade stop ${o.app}\`)`, "fenced");
    const restoreMs = Math.round(performance.now() - t0);
    o.log(`takeover done: ${o.app} running from ${r.checkpoint} (host pid ${r.appHostPid}), ${restoreMs} ms after the lease was granted`);
    return { app: o.app, epoch, previousHolder, silentMs, checkpoint: r.checkpoint, mirrorId: c.id, checkpointState: c.state, restoreMs, appHostPid: r.appHostPid, beatsReceived, ...(r.lazy ? { lazy: true } : {}) };
  } finally {
    clearInterval(timer);
    await renewing;
    keeper.close();
  }
}
