// The mirror's lease and fencing (docs/ha.md, decisions 1-2), at the protocol level:
// one holder at a time, increasing epochs, stale epochs refused (`fenced`), a restarted
// mirror that does not hand the lease out twice, and a holder that stops itself when
// its lease runs out unrenewed. Real server, real clients, real sockets.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { MirrorServer } from "../src/mirror/server.js";
import { MirrorClient, type FencedInfo } from "../src/mirror/client.js";
import { SyntheticSource } from "../src/mirror/synthetic.js";
import { tempDir } from "../src/mirror/testing.js";

const TTL = 600;

type Outcome = { granted: number } | { fenced: FencedInfo };

/** A leased client for `host`: resolves with its first grant or its fencing (the client is returned open). */
function leased(url: string, host: string, epoch?: number): { client: MirrorClient; outcome: Promise<Outcome> } {
  const client = new MirrorClient({ url, source: "alpha", token: "unused-token", ack: "received", backoff: { initialMs: 20, maxMs: 100 }, lease: { host, ttlMs: TTL, ...(epoch !== undefined ? { epoch } : {}) } });
  const outcome = new Promise<Outcome>((resolve) => {
    client.once("lease", (l: { epoch: number }) => resolve({ granted: l.epoch }));
    client.once("fenced", (f: FencedInfo) => resolve({ fenced: f }));
  });
  client.start();
  return { client, outcome };
}

test("one holder at a time, increasing epochs, stale epochs fenced, a restarted mirror does not grant twice", { timeout: 60_000 }, async () => {
  const tmp = tempDir();
  const storeDir = join(tmp.dir, "store");
  let server = await MirrorServer.start({ storeDir, maxDelayMs: 3_600_000 });
  const open: MirrorClient[] = [];
  try {
    const url = `tg://127.0.0.1:${server.address().port}`;
    const src = new SyntheticSource("alpha", { pages: 16 });
    const a = leased(url, "hostA");
    open.push(a.client);
    assert.deepEqual(await a.outcome, { granted: 1 });
    await a.client.send(src.next()); // offered under epoch 1: accepted

    // Another host asking while A renews: Held, never granted.
    const b = leased(url, "hostB");
    open.push(b.client);
    const bo = await b.outcome;
    assert.ok("fenced" in bo, "a second host must not get a held lease");
    assert.equal(bo.fenced.holder, "hostA");
    assert.equal(bo.fenced.epoch, 1);

    // A stops renewing: the lease goes to B only after A's ttl, under epoch 2.
    // (A's lease runs out TTL after the send of its last renewal the mirror answered, or later: the
    // time close() takes on a busy machine says nothing about it)
    const aExpiresAt = a.client.leaseExpiresAt;
    assert.ok(aExpiresAt > 0, "A's lease has an expiry");
    await a.client.close();
    let b2: { client: MirrorClient; outcome: Promise<Outcome> } | undefined;
    let got: Outcome | undefined;
    let grantedAt = 0;
    async function retry(): Promise<void> {
      for (;;) {
        b2 = leased(url, "hostB");
        open.push(b2.client);
        const o = await b2.outcome;
        if ("granted" in o) {
          grantedAt = performance.now();
          got = o;
          return;
        }
        await b2.client.close();
        await new Promise((r) => setTimeout(r, 50));
      }
    }
    let limit: NodeJS.Timeout | undefined;
    await Promise.race([retry(), new Promise((_, rej) => (limit = setTimeout(() => rej(new Error("hostB never got the lease")), 20_000)))]);
    clearTimeout(limit);
    assert.deepEqual(got, { granted: 2 });
    assert.ok(grantedAt >= aExpiresAt - 50, `granted ${Math.round(aExpiresAt - grantedAt)} ms before the holder's ${TTL} ms lease ran out`);
    assert.equal((JSON.parse(readFileSync(join(storeDir, "leases.json"), "utf8")) as { leases: Record<string, { epoch: number; holder: string }> }).leases.alpha?.epoch, 2);

    // The old primary coming back with its epoch: fenced, naming the holder.
    const a2 = leased(url, "hostA", 1);
    open.push(a2.client);
    const a2o = await a2.outcome;
    assert.ok("fenced" in a2o);
    assert.equal(a2o.fenced.holder, "hostB");
    assert.equal(a2o.fenced.epoch, 2);

    // An Offer without the current epoch is refused `fenced`; the holder's goes through.
    const unleased = new MirrorClient({ url, source: "alpha", token: "unused-token", ack: "received", backoff: { initialMs: 20, maxMs: 100 } });
    open.push(unleased);
    const c2 = src.next();
    await assert.rejects(unleased.send(c2), /fenced/);
    assert.ok(unleased.fenced, "the refused sender is fenced for good");
    await b2!.client.send(c2);

    // Restart the mirror: nobody new gets the lease within the longest lease granted; the holder renews.
    for (const c of open.splice(0)) await c.close();
    await server.close();
    server = await MirrorServer.start({ storeDir, maxDelayMs: 3_600_000 });
    const url2 = `tg://127.0.0.1:${server.address().port}`;
    const c = leased(url2, "hostC");
    open.push(c.client);
    const co = await c.outcome;
    assert.ok("fenced" in co, "a restarted mirror must wait out the lease it may have granted");
    assert.equal(co.fenced.epoch, 2);
    const b3 = leased(url2, "hostB", 2);
    open.push(b3.client);
    assert.deepEqual(await b3.outcome, { granted: 2 });
  } finally {
    for (const c of open) await c.close();
    await server.close();
    tmp.cleanup();
  }
});

test("a holder whose renewals go unanswered fences itself before its lease runs out on the mirror", { timeout: 30_000 }, async () => {
  const tmp = tempDir();
  const server = await MirrorServer.start({ storeDir: join(tmp.dir, "store"), maxDelayMs: 3_600_000 });
  const url = `tg://127.0.0.1:${server.address().port}`;
  const a = leased(url, "hostA");
  try {
    assert.deepEqual(await a.outcome, { granted: 1 });
    let lastGrant = performance.now();
    a.client.on("lease", () => (lastGrant = performance.now()));
    const fenced = new Promise<FencedInfo>((r) => a.client.once("fenced", r));
    await server.close(); // the mirror is gone: renewals go nowhere
    const f = await fenced;
    const after = performance.now() - lastGrant;
    assert.match(f.reason, /expired/);
    assert.ok(after <= TTL, `fenced ${Math.round(after)} ms after the last grant: must be before the ${TTL} ms lease ends`);
    await assert.rejects(a.client.send(new SyntheticSource("alpha", { pages: 4 }).next()), /fenced/);
  } finally {
    await a.client.close();
    await server.close();
    tmp.cleanup();
  }
});
