// The mirror's store: one server per store (issue 11, defect 8) and file modes that
// keep sources' memory private whatever the umask (defect 4, mirror side).
import { test } from "node:test";
import assert from "node:assert/strict";
import { statSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { MirrorClient } from "../src/mirror/client.js";
import { withAdmin } from "../src/mirror/admin.js";
import { SyntheticSource } from "../src/mirror/synthetic.js";
import { startServerProcess, tempDir, waitFor, writeTokens, type ServerProcess } from "../src/mirror/testing.js";
import type { MirrorCheckpoint } from "../src/mirror/objects.js";

const TOKEN = "token-alpha-0123456789";

test("a second mirror server on the same store is refused and the first one's in-flight flush survives", { timeout: 120_000 }, async () => {
  const tmp = tempDir();
  const store = join(tmp.dir, "store");
  const tokens = writeTokens(tmp.dir, { alpha: TOKEN });
  // The first server pauses 3 s between writing generation 1 and committing it.
  let a: ServerProcess = await startServerProcess(["--listen", "127.0.0.1:0", "--store", store, "--tokens", tokens, "--max-delay", "1h"], {
    TARDIGRADE_MIRROR_TEST_PAUSE_BEFORE_COMMIT_MS: "3000",
  });
  let b: ServerProcess | undefined;
  const client = new MirrorClient({ url: a.url, source: "alpha", token: TOKEN, backoff: { initialMs: 50, maxMs: 200 } });
  try {
    const ck = new SyntheticSource("alpha", { pages: 16, sharedFraction: 0 }).next() as MirrorCheckpoint;
    const durable = client.send(ck, "durable");
    await waitFor(() => client.state(ck.id) === "received", 30_000, "received");
    void withAdmin({ url: a.url, token: TOKEN }, (x) => x.flush()).catch(() => undefined);
    await a.waitForLog((l) => l.msg === "test hook: data written, pausing before commit" && l.generation === 1, 30_000);
    // A second server on the same store, while generation 1 is written but not committed.
    let refused: string | undefined;
    try {
      b = await startServerProcess(["--listen", "127.0.0.1:0", "--store", store, "--tokens", tokens]);
    } catch (e) {
      refused = (e as Error).message;
    }
    assert.ok(refused !== undefined, "the second server must not start");
    assert.match(refused, /in use by another mirror server \(pid \d+/);
    assert.ok(readdirSync(join(store, "gen")).includes("1.pack"), "the first server's in-flight generation is still there");
    await durable;
    assert.equal(client.state(ck.id), "durable");
    await client.close();
    a.kill("SIGTERM");
    await a.exited;
    // The store has the checkpoint, durable, after a restart; and the lock was released.
    a = await startServerProcess(["--listen", "127.0.0.1:0", "--store", store, "--tokens", tokens]);
    const rows = await withAdmin({ url: a.url, token: TOKEN }, (x) => x.list());
    assert.deepEqual(
      rows.map((r) => [r.id, r.state]),
      [[ck.id, "durable"]],
    );
  } finally {
    await client.close();
    a.kill("SIGKILL");
    await a.exited;
    if (b) {
      b.kill("SIGKILL");
      await b.exited;
    }
    tmp.cleanup();
  }
});

test("the mirror's store is 0700 and its files 0600 even under umask 000", { timeout: 60_000 }, async () => {
  const tmp = tempDir();
  const store = join(tmp.dir, "store");
  const tokens = writeTokens(tmp.dir, { alpha: TOKEN });
  const old = process.umask(0);
  let srv: ServerProcess;
  try {
    srv = await startServerProcess(["--listen", "127.0.0.1:0", "--store", store, "--tokens", tokens, "--max-delay", "1h"]);
  } finally {
    process.umask(old);
  }
  const client = new MirrorClient({ url: srv.url, source: "alpha", token: TOKEN });
  try {
    const ck = new SyntheticSource("alpha", { pages: 16 }).next() as MirrorCheckpoint;
    const durable = client.send(ck, "durable");
    await waitFor(() => client.state(ck.id) === "received", 30_000, "received");
    await withAdmin({ url: srv.url, token: TOKEN }, (x) => x.flush());
    await durable;
    const mode = (p: string): string => (statSync(p).mode & 0o777).toString(8);
    assert.equal(mode(store), "700");
    assert.equal(mode(join(store, "gen")), "700");
    const files = ["COMMITTED", "LOCK", ...readdirSync(join(store, "gen")).map((n) => join("gen", n))];
    assert.ok(files.includes(join("gen", "1.pack")) && files.includes(join("gen", "1.meta.json")), files.join(" "));
    for (const f of files) assert.equal(mode(join(store, f)), "600", `${f} mode`);
  } finally {
    await client.close();
    srv.kill("SIGKILL");
    await srv.exited;
    tmp.cleanup();
  }
});
