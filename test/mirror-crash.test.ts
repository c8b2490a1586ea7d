// Crash safety: kill -9 of the server in the middle of a flush, kill -9 of a source in
// the middle of a checkpoint.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { readdirSync } from "node:fs";
import { join } from "node:path";
import { MirrorClient } from "../src/mirror/client.js";
import { MirrorServer } from "../src/mirror/server.js";
import { SyntheticSource } from "../src/mirror/synthetic.js";
import { withAdmin } from "../src/mirror/admin.js";
import { TokenTable } from "../src/mirror/tokens.js";
import { captureLogger, here, startServerProcess, tempDir, waitFor, writeTokens, type ServerProcess } from "../src/mirror/testing.js";
import type { MirrorCheckpoint } from "../src/mirror/objects.js";

const TOKEN = "token-alpha-0123456789";

test("kill -9 during a flush: only complete checkpoints after restart, durable ones kept, no resend of durable data", { timeout: 60_000 }, async () => {
  const tmp = tempDir();
  const store = join(tmp.dir, "store");
  const tokens = writeTokens(tmp.dir, { alpha: TOKEN });
  const env = { TARDIGRADE_MIRROR_TEST_PAUSE_BEFORE_COMMIT_MS: "1000" };
  let srv: ServerProcess = await startServerProcess(
    ["--listen", "127.0.0.1:0", "--store", store, "--tokens", tokens, "--max-delay", "1h"],
    env,
  );
  const port = srv.port;
  const client = new MirrorClient({ url: srv.url, source: "alpha", token: TOKEN, backoff: { initialMs: 50, maxMs: 200 } });
  const PAGES = 32;
  const gen = new SyntheticSource("alpha", { pages: PAGES, sharedFraction: 0, dirtyFraction: 1 });
  const cks: MirrorCheckpoint[] = [];
  try {
    // ck1..3: acknowledged durable (generation 1).
    const durable: Promise<unknown>[] = [];
    for (let i = 0; i < 3; i++) {
      cks.push(gen.next());
      durable.push(client.send(cks[i] as MirrorCheckpoint, "durable"));
    }
    await waitFor(() => cks.every((c) => client.state(c.id) === "received"), 10_000, "received");
    await withAdmin({ url: srv.url, token: TOKEN }, (a) => a.flush());
    await Promise.all(durable);
    // ck4..6: received only; then a flush that we kill after its data is written and before its commit.
    for (let i = 3; i < 6; i++) {
      cks.push(gen.next());
      await client.send(cks[i] as MirrorCheckpoint, "received");
    }
    const sentBefore = client.stats.chunksSent;
    const offeredBefore = client.stats.checkpointsOffered;
    assert.equal(sentBefore, 6 * PAGES);
    void withAdmin({ url: srv.url, token: TOKEN }, (a) => a.flush()).catch(() => undefined);
    await srv.waitForLog((l) => l.msg === "test hook: data written, pausing before commit" && l.generation === 2);
    assert.ok(readdirSync(join(store, "gen")).includes("2.meta.json"), "generation 2 was written before the kill");
    srv.kill("SIGKILL");
    const exit = await srv.exited;
    assert.equal(exit.signal, "SIGKILL");

    srv = await startServerProcess(["--listen", `127.0.0.1:${port}`, "--store", store, "--tokens", tokens, "--max-delay", "1h"]);
    const removed = await srv.waitForLog((l) => typeof l.msg === "string" && l.msg.startsWith("removed files of an interrupted flush"));
    assert.deepEqual((removed.removed as string[]).sort(), ["2.meta.json", "2.pack"]);
    const rows = await withAdmin({ url: srv.url, token: TOKEN }, (a) => a.list());
    assert.deepEqual(
      rows.filter((r) => r.state === "durable").map((r) => r.id),
      cks.slice(0, 3).map((c) => c.id),
      "exactly the acknowledged-durable checkpoints survive",
    );
    // The client reconnects by itself and resends ck4..6 only.
    // (The client still shows ck4..6 "received" from before the crash until the new
    // Hello answer demotes them to "queued": wait for the new server to hold them.)
    await waitFor(() => client.stats.connects >= 2, 10_000, "reconnect");
    for (let i = 0; ; i++) {
      const now = await withAdmin({ url: srv.url, token: TOKEN }, (a) => a.list());
      if (now.length === 6) break;
      if (i > 500) throw new Error(`ck4..6 not resent: ${JSON.stringify(now.map((r) => [r.id, r.state]))}`);
      await new Promise((r) => setTimeout(r, 20));
    }
    await waitFor(() => cks.slice(3).every((c) => client.state(c.id) === "received"), 10_000, "resend acknowledged");
    assert.equal(client.stats.checkpointsOffered - offeredBefore, 3, "only ck4..6 offered again");
    assert.equal(client.stats.chunksSent - sentBefore, 3 * PAGES, "no chunk of a durable checkpoint resent");
    await withAdmin({ url: srv.url, token: TOKEN }, (a) => a.flush());
    await waitFor(() => cks.every((c) => client.state(c.id) === "durable"), 10_000, "all durable");
    for (const c of [cks[0], cks[5]] as MirrorCheckpoint[]) {
      const got = await withAdmin({ url: srv.url, token: TOKEN }, (a) => a.fetch("alpha", c.id));
      assert.ok(got.header.manifest.equals(c.manifest));
      for (const [h, d] of c.chunks) assert.ok(got.chunks.get(h)?.equals(d));
    }
  } finally {
    await client.close();
    srv.kill("SIGKILL");
    await srv.exited;
    tmp.cleanup();
  }
});

test("kill -9 of a source mid-checkpoint: no partial checkpoint becomes visible", { timeout: 60_000 }, async () => {
  const tmp = tempDir();
  const { logger, lines } = await captureLogger();
  const server = await MirrorServer.start({
    storeDir: join(tmp.dir, "store"),
    tokens: new TokenTable([["alpha", TOKEN]]),
    maxDelayMs: 3_600_000,
    logger,
  });
  const url = `tg://127.0.0.1:${server.address().port}`;
  // 8192 pages of 4 KiB: 32 MiB per checkpoint, far more than the loopback socket
  // buffers hold, so the kill lands inside one (the server drains what the kernel had).
  const PAGES = 8192;
  const child = spawn(process.execPath, [join(here, "synthetic-source-main.js"), url, "alpha", TOKEN, "20", String(PAGES), "received"], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  try {
    let received = 0;
    child.stdout.setEncoding("utf8").on("data", (d: string) => {
      received += (d.match(/"state":"received"/g) ?? []).length;
    });
    await waitFor(() => received >= 1, 20_000, "first checkpoint received");
    // Wait until a checkpoint is admitted and its chunks are on the way, then kill.
    // ck1 is queued (32 MiB cached); wait until part of ck2's chunks are in too.
    // Checked at every turn of the event loop (this server runs in it: a timer can come
    // too late, after the whole checkpoint arrived).
    const t0 = Date.now();
    while (server.cache.stats().bytes <= PAGES * 4096 + 256 * 1024) {
      if (Date.now() - t0 > 20_000) throw new Error("timed out waiting for a checkpoint in transit");
      await new Promise((r) => setImmediate(r));
    }
    child.kill("SIGKILL");
    await new Promise((r) => child.on("exit", r));
    await waitFor(() => lines.some((l) => typeof l.msg === "string" && l.msg.startsWith("partial checkpoint discarded")), 10_000, "discard").catch((e: unknown) => {
      console.log(JSON.stringify(lines.slice(-8)), JSON.stringify(server.cache.stats()));
      throw e;
    });
    const out = await withAdmin({ url, token: TOKEN }, (a) => a.flush());
    const rows = await withAdmin({ url, token: TOKEN }, (a) => a.list());
    assert.ok(rows.length >= 1 && out.checkpoints === rows.length, `${rows.length} complete checkpoints`);
    for (const r of rows) {
      assert.equal(r.state, "durable");
      assert.equal(r.chunks, PAGES);
      const got = await withAdmin({ url, token: TOKEN }, (a) => a.fetch("alpha", r.id));
      assert.equal(got.chunks.size, PAGES, `${r.id} is complete`);
    }
    const st = server.cache.stats();
    assert.equal(st.reserved, 0, "the partial checkpoint's reservation was released");
    assert.equal(st.bytes, 0, "the partial checkpoint's chunks were dropped");
  } finally {
    child.kill("SIGKILL");
    await server.close();
    tmp.cleanup();
  }
});
