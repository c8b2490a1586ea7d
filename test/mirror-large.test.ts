// Issue 11, defect 11: a checkpoint larger than the mirror's whole cache streams
// through it to disk (it used to be refused, and the source reconnected every 100 ms
// forever, shown as "sending"); a refusal fails that checkpoint with the reason.
import assert from "node:assert/strict";
import { join } from "node:path";
import { test } from "node:test";
import { CheckpointRefusedError, MirrorClient } from "../src/mirror/client.js";
import { withAdmin } from "../src/mirror/admin.js";
import { MirrorServer } from "../src/mirror/server.js";
import { SyntheticSource } from "../src/mirror/synthetic.js";
import { TokenTable } from "../src/mirror/tokens.js";
import { captureLogger, tempDir } from "../src/mirror/testing.js";
import type { MirrorCheckpoint } from "../src/mirror/objects.js";

const TOKEN = "token-alpha-0123456789";
const MiB = 1024 * 1024;

async function withServer(cacheMaxBytes: number, fn: (server: MirrorServer, url: string) => Promise<void>): Promise<void> {
  const tmp = tempDir();
  const { logger } = await captureLogger();
  const server = await MirrorServer.start({ storeDir: join(tmp.dir, "store"), tokens: new TokenTable([["alpha", TOKEN]]), cacheMaxBytes, maxDelayMs: 200, logger });
  try {
    await fn(server, `tg://127.0.0.1:${server.address().port}`);
  } finally {
    await server.close();
    tmp.cleanup();
  }
}

test("a 12 MiB checkpoint through a 4 MiB cache becomes durable, within the cache's bound, and reads back intact", { timeout: 120_000 }, async () => {
  await withServer(4 * MiB, async (server, url) => {
    const client = new MirrorClient({ url, source: "alpha", token: TOKEN, backoff: { initialMs: 50, maxMs: 200 } });
    try {
      const gen = new SyntheticSource("alpha", { pages: 3072, sharedFraction: 0, dirtyFraction: 0.5 });
      const big = gen.next() as MirrorCheckpoint; // 12 MiB, full
      const inc = gen.next() as MirrorCheckpoint; // 6 MiB of changed pages, on it
      const sends = [client.send(big, "durable"), client.send(inc, "durable")];
      const states = await Promise.race([
        Promise.all(sends),
        new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`not durable within 60 s (connects: ${client.stats.connects})`)), 60_000)),
      ]);
      assert.deepEqual(states, ["durable", "durable"]);
      assert.equal(client.stats.connects, 1, "no reconnect loop");
      const m = server.metrics();
      assert.ok(m.cache.peak <= 4 * MiB, `cache peak ${m.cache.peak} within its 4 MiB bound`);
      assert.ok((m.flushesByReason.spill ?? 0) >= 2, `chunks were written ahead of their checkpoint (${JSON.stringify(m.flushesByReason)})`);
      for (const c of [big, inc]) {
        const got = await withAdmin({ url, token: TOKEN }, (a) => a.fetch("alpha", c.id));
        assert.ok(got.header.manifest.equals(c.manifest));
        assert.equal(got.chunks.size, c.chunks.size);
        for (const [h, d] of c.chunks) assert.ok(got.chunks.get(h)?.equals(d), `chunk ${h} of ${c.id}`);
      }
    } finally {
      await client.close();
    }
  });
});

test("a checkpoint the mirror refuses fails with the reason instead of reconnecting forever", { timeout: 60_000 }, async () => {
  // A 1 MiB cache cannot hold even this checkpoint's 1.5 MiB manifest (a header is never streamed).
  await withServer(1 * MiB, async (_server, url) => {
    const client = new MirrorClient({ url, source: "alpha", token: TOKEN, backoff: { initialMs: 50, maxMs: 200 } });
    try {
      const ck: MirrorCheckpoint = { source: "alpha", id: "big.1", seq: 1, manifest: Buffer.alloc(1536 * 1024, 0x7b), chunks: new Map() };
      const err = await client.send(ck, "received").then(
        () => undefined,
        (e: unknown) => e as Error,
      );
      assert.ok(err instanceof CheckpointRefusedError, String(err));
      assert.match(err.message, /--cache-max/);
      assert.ok(client.stats.connects <= 2, `connects: ${client.stats.connects}`);
    } finally {
      await client.close();
    }
  });
});
