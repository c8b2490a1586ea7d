// A slow disk (the flusher throttled by a test hook) with fast sources: the server
// slows the sources down instead of growing without bound.
import { test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { MirrorClient } from "../src/mirror/client.js";
import { SyntheticSource } from "../src/mirror/synthetic.js";
import { rssOf, startServerProcess, tempDir, writeTokens } from "../src/mirror/testing.js";
import type { CacheStats } from "../src/mirror/cache.js";

test("slow disk, 4 fast sources: cache stays under --cache-max and server RSS stays bounded", { timeout: 90_000 }, async () => {
  const tmp = tempDir();
  const sources = ["s1", "s2", "s3", "s4"];
  const tokens = writeTokens(tmp.dir, Object.fromEntries(sources.map((s) => [s, `token-${s}-0123456789`])));
  const CACHE = 8 * 1024 * 1024;
  const srv = await startServerProcess(
    ["--listen", "127.0.0.1:0", "--store", join(tmp.dir, "store"), "--tokens", tokens, "--cache-max", String(CACHE), "--max-delay", "1h"],
    { TARDIGRADE_MIRROR_TEST_COMMIT_DELAY_MS: "200" },
  );
  const clients = sources.map((s) => new MirrorClient({ url: srv.url, source: s, token: `token-${s}-0123456789`, ack: "received" }));
  let peakRss = 0;
  const baseRss = await rssOf(srv.pid);
  const sampler = setInterval(() => {
    rssOf(srv.pid).then(
      (r) => (peakRss = Math.max(peakRss, r)),
      () => undefined,
    );
  }, 20);
  try {
    const PER_SOURCE = 24; // 1 MiB each: 96 MiB in all, 12x the cache, in two halves
    const t0 = Date.now();
    const gens = sources.map((s) => new SyntheticSource(s, { pages: 256, sharedFraction: 0, dirtyFraction: 1 }));
    const half = (): Promise<unknown> =>
      Promise.all(
        clients.map(async (client, k) => {
          for (let i = 0; i < PER_SOURCE / 2; i++) await client.send((gens[k] as SyntheticSource).next());
        }),
      );
    await half();
    const peakFirstHalf = peakRss;
    peakRss = 0;
    await half();
    const peakSecondHalf = peakRss;
    peakRss = Math.max(peakFirstHalf, peakSecondHalf);
    const elapsed = Date.now() - t0;
    clearInterval(sampler);
    const flushes = srv.logs.filter((l) => typeof l.msg === "string" && l.msg.startsWith("flush committed"));
    const peakCache = Math.max(...flushes.map((l) => (l.cache as CacheStats).peak));
    const waits = Math.max(...flushes.map((l) => (l.cache as CacheStats).waits));
    const total = 4 * PER_SOURCE * 1024 * 1024;
    console.log(
      `backpressure: ${total >> 20} MiB in ${elapsed} ms, ${flushes.length} flushes, cache peak ${(peakCache / 2 ** 20).toFixed(1)} MiB ` +
        `(max ${CACHE >> 20}), ${waits} admission waits, server RSS ${(baseRss / 2 ** 20).toFixed(0)} -> peak ${(peakRss / 2 ** 20).toFixed(0)} MiB`,
    );
    assert.ok(peakCache <= CACHE, `cache peak ${peakCache} <= ${CACHE}`);
    assert.ok(waits > 0, "sources had to wait for room (backpressure)");
    assert.ok(flushes.length >= 8, `${flushes.length} flushes: the cache was recycled many times`);
    // RSS is cache + runtime garbage (frame buffers awaiting GC): bounded, whatever
    // the volume streamed (96 MiB here, 12x the cache).
    console.log(`RSS peak first half ${(peakFirstHalf / 2 ** 20).toFixed(0)} MiB, second half ${(peakSecondHalf / 2 ** 20).toFixed(0)} MiB`);
    // (Not asserted: the two halves' peaks differ by GC timing, a few MiB either way.)
    assert.ok(peakRss - baseRss < 96 * 2 ** 20, `RSS grew by ${peakRss - baseRss} bytes (bound: cache + 88 MiB runtime)`);
  } finally {
    clearInterval(sampler);
    await Promise.all(clients.map((c) => c.close()));
    srv.kill("SIGKILL");
    await srv.exited;
    tmp.cleanup();
  }
});
