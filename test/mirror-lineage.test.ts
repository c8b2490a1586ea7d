// Issue 11, defect 1: a standby whose store already holds checkpoints with the mirror's
// ids but of another lineage (the app ran there before: failover, then failback) must
// restore the mirror's chain, never the mirror's newest checkpoint composed on its own
// older ones. Matching is by content (src/store/cas/lineage.ts); the standby's own
// lineage is kept under another app name.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { CasStore } from "../src/store/cas/index.js";
import { MirrorShipper, pullFromMirror } from "../src/mirror/bridge.js";
import { startServerProcess, tempDir, writeTokens, type ServerProcess } from "../src/mirror/testing.js";
import { churnChain, memoryDiff, readImageMemory } from "./helpers/cas-images.js";

const TOKEN = "token-calc-0123456789";
let tmp: ReturnType<typeof tempDir>;
let srv: ServerProcess;
let n = 0;

before(async () => {
  tmp = tempDir("tg-mirror-lineage-");
  const tokens = writeTokens(tmp.dir, { calc: TOKEN });
  srv = await startServerProcess(["--listen", "127.0.0.1:0", "--store", join(tmp.dir, "mirror"), "--tokens", tokens, "--max-delay", "100ms"]);
});
after(async () => {
  if (srv) {
    process.kill(srv.pid, "SIGKILL");
    await srv.exited;
  }
  tmp.cleanup();
});

const path = (name: string): string => join(tmp.dir, `${name}-${++n}`);
function writeImage(img: Buffer): string {
  const f = path("img");
  writeFileSync(f, img);
  return f;
}
async function exportDigest(store: CasStore, id: string): Promise<string> {
  const h = createHash("sha256");
  for await (const c of store.exportChunks(id)) h.update(c);
  return h.digest("hex");
}
async function exportMemory(store: CasStore, id: string): Promise<Map<number, Buffer>> {
  const f = path("export");
  const parts: Buffer[] = [];
  for await (const c of store.exportChunks(id)) parts.push(c);
  writeFileSync(f, Buffer.concat(parts));
  return (await readImageMemory(f)).pages;
}

// The primary's lineage (on the mirror) and the standby's own, earlier one.
const primary = churnChain(7, 5);
const standbyOwn = churnChain(1234, 3);

async function shipPrimary(): Promise<CasStore> {
  const src = await CasStore.open(path("primary"));
  for (let i = 0; i < 5; i++) await src.ingest("calc", i + 1, writeImage(primary.images[i]!));
  const sh = await MirrorShipper.open({ store: src, app: "calc", url: srv.url, token: TOKEN, statePath: path("state.json"), backoff: { initialMs: 20, maxMs: 200 } });
  await sh.idle();
  assert.deepEqual(
    sh.states().map((r) => r.state),
    ["durable", "durable", "durable", "durable", "durable"],
  );
  await sh.close();
  return src;
}

test("a standby holding its own calc@1..3 restores the mirror's calc@5 with the mirror's memory; its own lineage is kept under another name", { timeout: 120_000 }, async () => {
  const src = await shipPrimary();
  const standby = await CasStore.open(path("standby"));
  try {
    for (let i = 0; i < 3; i++) await standby.ingest("calc", i + 1, writeImage(standbyOwn.images[i]!));
    const ownDigests = await Promise.all([1, 2, 3].map((s) => exportDigest(standby, `calc@${s}`)));
    const r = await pullFromMirror(srv.url, TOKEN, "calc", "latest", standby);
    assert.equal(r.id, "calc@5");
    assert.equal(r.alreadyPresent, false);
    assert.equal(memoryDiff(await exportMemory(standby, "calc@5"), primary.expected[4]!), null, "calc@5 restores the primary's memory");
    // Every link differs from the standby's: the whole chain comes from the mirror.
    assert.deepEqual(
      r.imported.map((i) => i.id),
      [1, 2, 3, 4, 5].map((s) => `calc@${s}`),
    );
    for (let s = 1; s <= 5; s++) {
      assert.equal(await exportDigest(standby, `calc@${s}`), await exportDigest(src, `calc@${s}`), `calc@${s} is the mirror's`);
    }
    // The standby's own checkpoints are not lost: renamed, same content.
    assert.ok(r.setAside, "the other lineage was set aside");
    assert.match(r.setAside.app, /^calc\.diverged-\d{8}-\d{6}$/);
    assert.deepEqual(Object.keys(r.setAside.renamed), ["calc@1", "calc@2", "calc@3"]);
    const aside = standby.list(r.setAside.app);
    assert.deepEqual(
      aside.map((c) => [c.seq, c.parent]),
      [
        [1, null],
        [2, `${r.setAside.app}@1`],
        [3, `${r.setAside.app}@2`],
      ],
    );
    for (let s = 1; s <= 3; s++) assert.equal(await exportDigest(standby, `${r.setAside.app}@${s}`), ownDigests[s - 1], `own calc@${s} kept`);
    // Pulling again: the chain matches link by link now, nothing is imported.
    const again = await pullFromMirror(srv.url, TOKEN, "calc", "latest", standby);
    assert.equal(again.alreadyPresent, true);
    assert.equal(again.blocksFetched, 0);
    assert.equal(again.setAside, undefined);
  } finally {
    await standby.close();
    await src.close();
  }
});

test("a standby sharing calc@1..2 with the mirror but holding another calc@3 imports calc@3..5 only, on the shared calc@2", { timeout: 120_000 }, async () => {
  const src = await shipPrimary();
  const standby = await CasStore.open(path("standby"));
  try {
    const early = await pullFromMirror(srv.url, TOKEN, "calc", "calc@2", standby);
    assert.deepEqual(
      early.imported.map((i) => i.id),
      ["calc@1", "calc@2"],
    );
    // The standby then took a checkpoint of its own as calc@3 (a full one).
    await standby.ingest("calc", 3, writeImage(standbyOwn.images[0]!));
    const own3 = await exportDigest(standby, "calc@3");
    const r = await pullFromMirror(srv.url, TOKEN, "calc", "calc@4", standby);
    assert.equal(memoryDiff(await exportMemory(standby, "calc@4"), primary.expected[3]!), null);
    assert.deepEqual(
      r.imported.map((i) => i.id),
      ["calc@3", "calc@4"],
    );
    assert.deepEqual(Object.keys(r.setAside?.renamed ?? {}), ["calc@3"]);
    for (let s = 1; s <= 4; s++) assert.equal(await exportDigest(standby, `calc@${s}`), await exportDigest(src, `calc@${s}`), `calc@${s}`);
    assert.equal(await exportDigest(standby, `${r.setAside!.app}@3`), own3);
  } finally {
    await standby.close();
    await src.close();
  }
});
