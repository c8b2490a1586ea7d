// The mirror connected to the content-addressed store: MirrorShipper ships a CasStore's
// checkpoints (blocks as chunks) to a real server process on loopback; pullFromMirror
// brings them back into another CasStore; exports must be byte-identical.
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { readFileSync, readdirSync, statSync, writeFileSync, openSync, readSync, writeSync, closeSync } from "node:fs";
import { spawnSync } from "node:child_process";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { after, before, test } from "node:test";
import { CasStore, decodeTable } from "../src/store/cas/index.js";
import { MirrorShipper, pullFromMirror, readShipperState, type ShipperStateEvent } from "../src/mirror/bridge.js";
import { ChunkReadError, MirrorClient } from "../src/mirror/client.js";
import { sha256hex, type LazyChunk } from "../src/mirror/objects.js";
import { startServerProcess, tempDir, writeTokens, type ServerProcess } from "../src/mirror/testing.js";
import { churnChain } from "./helpers/cas-images.js";

const here = dirname(fileURLToPath(import.meta.url));
const TOKENS = { calc: "token-calc-0123456789", twin: "token-twin-0123456789", other: "token-other-0123456789" };
let tmp: ReturnType<typeof tempDir>;
let srv: ServerProcess;
let n = 0;

before(async () => {
  tmp = tempDir("tg-mirror-cas-");
  const tokens = writeTokens(tmp.dir, TOKENS);
  srv = await startServerProcess(["--listen", "127.0.0.1:0", "--store", join(tmp.dir, "mirror"), "--tokens", tokens, "--max-delay", "100ms"]);
});
after(async () => {
  if (srv) {
    process.kill(srv.pid, "SIGKILL");
    await srv.exited;
  }
  tmp.cleanup();
});

function path(name: string): string {
  return join(tmp.dir, `${name}-${++n}`);
}

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

function dirBytes(d: string): number {
  let total = 0;
  for (const e of readdirSync(d, { withFileTypes: true })) total += e.isDirectory() ? dirBytes(join(d, e.name)) : statSync(join(d, e.name)).size;
  return total;
}

const chain = churnChain(7, 8);

test("a full + incremental chain is shipped, durable, not resent after a restart, and pulled back byte-identical", { timeout: 120_000 }, async () => {
  const src = await CasStore.open(path("src"));
  const statePath = path("state.json");
  try {
    for (let i = 0; i < 5; i++) await src.ingest("calc", i + 1, writeImage(chain.images[i]!));
    const events: ShipperStateEvent[] = [];
    let sh = await MirrorShipper.open({ store: src, app: "calc", url: srv.url, token: TOKENS.calc, statePath, backoff: { initialMs: 20, maxMs: 200 } });
    sh.on("state", (e: ShipperStateEvent) => events.push(e));
    await sh.idle();
    assert.deepEqual(
      sh.states().map((r) => [r.id, r.state]),
      [1, 2, 3, 4, 5].map((s) => [`calc@${s}`, "durable"]),
    );
    for (const s of ["sending", "received", "durable"]) assert.ok(events.some((e) => e.id === "calc@3" && e.state === s), `calc@3 went through ${s}`);
    const first = { ...sh.stats };
    assert.equal(first.checkpointsOffered, 5);
    assert.ok(first.chunksSent > 5, "blocks sent");
    await sh.close();
    assert.deepEqual(
      readShipperState(statePath).map((r) => r.state),
      ["durable", "durable", "durable", "durable", "durable"],
    );

    // Restart: nothing durable is offered again; new checkpoints are shipped incrementally.
    sh = await MirrorShipper.open({ store: src, app: "calc", url: srv.url, token: TOKENS.calc, statePath, backoff: { initialMs: 20, maxMs: 200 } });
    await sh.idle();
    assert.equal(sh.stats.checkpointsOffered, 0, "no durable checkpoint offered again");
    for (let i = 5; i < 8; i++) {
      const c = await src.ingest("calc", i + 1, writeImage(chain.images[i]!));
      sh.enqueue(c.id);
      sh.enqueue(c.id); // twice: ignored
    }
    await sh.idle();
    assert.equal(sh.stats.checkpointsOffered, 3);
    assert.equal(sh.state("calc@8")?.state, "durable");
    // The incrementals sent only their own new blocks (the destination had the rest).
    const incBytes = sh.stats.chunkBytesSent;
    const fullBlocks = (await src.blocksOf("calc@1")).manifest.blockBytes;
    assert.ok(incBytes < fullBlocks, `incrementals sent ${incBytes} bytes, less than the full checkpoint's ${fullBlocks}`);
    await sh.close();

    // Pull everything into a fresh store: every checkpoint exports byte-identically.
    const dst = await CasStore.open(path("dst"));
    try {
      const r = await pullFromMirror(srv.url, TOKENS.calc, "calc", "latest", dst);
      assert.equal(r.id, "calc@8");
      assert.deepEqual(
        r.imported.map((i) => i.id),
        [1, 2, 3, 4, 5, 6, 7, 8].map((s) => `calc@${s}`),
      );
      for (let s = 1; s <= 8; s++) {
        const id = `calc@${s}`;
        assert.equal(await exportDigest(dst, id), await exportDigest(src, id), `${id} exports identically`);
        assert.deepEqual({ ...dst.get(id), stats: undefined }, { ...src.get(id), stats: undefined });
      }
      const again = await pullFromMirror(srv.url, TOKENS.calc, "calc", "calc@3", dst);
      assert.equal(again.alreadyPresent, true);
      assert.equal(again.blocksFetched, 0);
    } finally {
      await dst.close();
    }

    // A middle checkpoint into another fresh store: only its chain comes.
    const dst2 = await CasStore.open(path("dst"));
    try {
      const r = await pullFromMirror(srv.url, TOKENS.calc, "calc", "calc.4", dst2);
      assert.deepEqual(
        r.imported.map((i) => i.id),
        ["calc@1", "calc@2", "calc@3", "calc@4"],
      );
      assert.equal(await exportDigest(dst2, "calc@4"), await exportDigest(src, "calc@4"));
      // Then the rest: only blocks the store lacks are fetched.
      const before = r.bytesFetched;
      const r2 = await pullFromMirror(srv.url, TOKENS.calc, "calc", "calc@8", dst2);
      assert.deepEqual(
        r2.imported.map((i) => i.id),
        ["calc@5", "calc@6", "calc@7", "calc@8"],
      );
      assert.ok(r2.bytesFetched < before, "incrementals fetch less than the base");
      assert.equal(await exportDigest(dst2, "calc@8"), await exportDigest(src, "calc@8"));
    } finally {
      await dst2.close();
    }

    // A merged (synthetic full) checkpoint: described and imported like any other.
    await src.merge("calc@8");
    const d = await src.blocksOf("calc@8");
    assert.equal(d.manifest.kind, "full");
    // The store that shipped it pulls it back (a failback): its merged calc@8 is still known as the
    // mirror's (recorded when shipped, kept by the merge), so nothing is set aside or fetched
    // (before: its kind and digest differ from the mirror's increment, so it was set aside and all fetched again)
    const back = await pullFromMirror(srv.url, TOKENS.calc, "calc", "latest", src);
    assert.equal(back.setAside, undefined, JSON.stringify(back.setAside));
    assert.equal(back.alreadyPresent, true);
    assert.equal(back.blocksFetched, 0);
  } finally {
    await src.close();
  }
});

test("corrupted blocks are rejected: on the wire (mirror's disk) and at import (bytes, page hashes)", { timeout: 60_000 }, async () => {
  const src = await CasStore.open(path("src"));
  const tokensDir = path("mirror2");
  const tokens = writeTokens(tmp.dir, { other: TOKENS.other });
  const srv2 = await startServerProcess(["--listen", "127.0.0.1:0", "--store", tokensDir, "--tokens", tokens, "--max-delay", "50ms"]);
  try {
    await src.ingest("other", 1, writeImage(chain.images[0]!));
    const sh = await MirrorShipper.open({ store: src, app: "other", url: srv2.url, token: TOKENS.other, statePath: path("state.json") });
    await sh.idle();
    assert.equal(sh.state("other@1")?.state, "durable");
    await sh.close();

    // Import-level checks, without the wire.
    const d = await src.blocksOf("other@1");
    const table = decodeTable(Buffer.concat(d.tableParts.map((p) => p.data)), d.manifest.id);
    const dst = await CasStore.open(path("dst"));
    try {
      const packBytes0 = dirBytes(join(dst.root, "packs"));
      const byName = new Map(await Promise.all(d.blocks.map(async (b) => [b.name, await b.read()] as const)));
      await assert.rejects(
        dst.importCheckpoint(d.manifest, table, async (name) => {
          const b = Buffer.from(byName.get(name)!);
          b[b.length - 10]! ^= 0xff;
          return b;
        }),
        /hashes to/,
      );
      const badTable = decodeTable(Buffer.concat(d.tableParts.map((p) => p.data)), d.manifest.id);
      const victim = badTable.blocks[badTable.blocks.length - 1]!;
      victim.pages = Buffer.from(victim.pages);
      victim.pages[5]! ^= 0xff;
      await assert.rejects(
        dst.importCheckpoint(d.manifest, badTable, async (name) => byName.get(name)!),
        /does not hash to the listed hash/,
      );
      assert.equal(dst.list().length, 0, "nothing visible");
      assert.equal(dirBytes(join(dst.root, "packs")), packBytes0, "packs cut back");
      // The good data imports.
      const rep = await dst.importCheckpoint(d.manifest, table, async (name) => byName.get(name)!);
      assert.equal(rep.blocksStored, d.blocks.length);
      assert.equal(await exportDigest(dst, "other@1"), await exportDigest(src, "other@1"));
    } finally {
      await dst.close();
    }

    // On the wire: a block damaged on the mirror's disk is refused by the pull.
    process.kill(srv2.pid, "SIGKILL");
    await srv2.exited;
    const gen = join(tokensDir, "gen");
    const metaFile = readdirSync(gen).find((f) => f.endsWith(".meta.json"))!;
    const meta = JSON.parse(readFileSync(join(gen, metaFile), "utf8")) as { chunks: [string, number, number][] };
    const blockNames = new Set(d.blocks.map((b) => b.name));
    const [, off, len] = meta.chunks.find(([h]) => blockNames.has(h))!;
    const fd = openSync(join(gen, metaFile.replace(".meta.json", ".pack")), "r+");
    const one = Buffer.alloc(1);
    readSync(fd, one, 0, 1, off + Math.floor(len / 2));
    one[0]! ^= 0xff;
    writeSync(fd, one, 0, 1, off + Math.floor(len / 2));
    closeSync(fd);
    const srv3 = await startServerProcess(["--listen", "127.0.0.1:0", "--store", tokensDir, "--tokens", tokens]);
    try {
      const dst2 = await CasStore.open(path("dst"));
      try {
        await assert.rejects(pullFromMirror(srv3.url, TOKENS.other, "other", "latest", dst2), /corrupted in transit or on the mirror/);
        assert.equal(dst2.list().length, 0);
      } finally {
        await dst2.close();
      }
    } finally {
      process.kill(srv3.pid, "SIGKILL");
      await srv3.exited;
    }
  } finally {
    if (srv2.child.exitCode === null && srv2.child.signalCode === null) process.kill(srv2.pid, "SIGKILL");
    await src.close();
  }
});

test("identical blocks from two sources are stored once on the mirror (cross-source dedup)", { timeout: 60_000 }, async () => {
  const a = await CasStore.open(path("a"));
  const b = await CasStore.open(path("b"));
  try {
    // Same images ingested the same way: byte-identical blocks (zstd is deterministic).
    for (let i = 0; i < 3; i++) {
      await a.ingest("calc", 100 + i, writeImage(chain.images[i]!), i > 0 ? { parent: `calc@${99 + i}` } : {});
      await b.ingest("twin", 100 + i, writeImage(chain.images[i]!), i > 0 ? { parent: `twin@${99 + i}` } : {});
    }
    const shA = await MirrorShipper.open({ store: a, app: "calc", url: srv.url, token: TOKENS.calc, statePath: path("state.json") });
    await shA.idle();
    await shA.close();
    const shB = await MirrorShipper.open({ store: b, app: "twin", url: srv.url, token: TOKENS.twin, statePath: path("state.json") });
    await shB.idle();
    assert.deepEqual(
      shB.states().map((r) => r.state),
      ["durable", "durable", "durable"],
    );
    const blockChunks = (await Promise.all([100, 101, 102].map((s) => b.blocksOf(`twin@${s}`)))).reduce((k, d) => k + d.blocks.length, 0);
    assert.ok(blockChunks > 0);
    // twin sent none of the blocks (only its tables, whose content is the same too).
    assert.equal(shB.stats.chunksSent, 0, `twin sent ${shB.stats.chunksSent} chunks`);
    assert.ok(shB.stats.chunksSkipped >= blockChunks);
    await shB.close();
    // And twin's checkpoints restore from the mirror.
    const dst = await CasStore.open(path("dst"));
    try {
      await pullFromMirror(srv.url, TOKENS.twin, "twin", "latest", dst);
      assert.equal(await exportDigest(dst, "twin@102"), await exportDigest(b, "twin@102"));
    } finally {
      await dst.close();
    }
  } finally {
    await a.close();
    await b.close();
  }
});

test("`tardigrade mirror pull --store DIR --cas` imports into a checkpoint store", { timeout: 60_000 }, async () => {
  const dir = path("cli-store");
  const bin = join(here, "..", "..", "bin", "tardigrade.js");
  const run = (extra: string[]): { status: number | null; stdout: string; stderr: string } =>
    spawnSync(process.execPath, [bin, "mirror", "pull", "--server", srv.url, "--source", "calc", "--checkpoint", "calc@2", "--store", dir, "--json", ...extra], {
      env: { ...process.env, TARDIGRADE_MIRROR_TOKEN: TOKENS.calc },
      encoding: "utf8",
    });
  const r = run(["--cas"]);
  assert.equal(r.status, 0, r.stderr);
  const out = JSON.parse(r.stdout) as { id: string; imported: { id: string }[] };
  assert.equal(out.id, "calc@2");
  assert.deepEqual(
    out.imported.map((i) => i.id),
    ["calc@1", "calc@2"],
  );
  // The directory is now a store: found without --cas.
  const again = run([]);
  assert.equal(again.status, 0, again.stderr);
  assert.equal((JSON.parse(again.stdout) as { alreadyPresent: boolean }).alreadyPresent, true);
  const s = await CasStore.open(dir);
  try {
    assert.deepEqual(
      s.list().map((c) => c.id),
      ["calc@1", "calc@2"],
    );
  } finally {
    await s.close();
  }
});

test("a chunk that cannot be read fails only that send; the same seq can be sent again", { timeout: 30_000 }, async () => {
  const client = new MirrorClient({ url: srv.url, source: "other", token: TOKENS.other, backoff: { initialMs: 20, maxMs: 100 } });
  try {
    const good = randomBytes(200 * 1024);
    const chunks = new Map<string, Buffer | LazyChunk>([[sha256hex(good), { size: good.length, read: () => Promise.reject(new Error("block moved by gc")) }]]);
    const ck = { source: "other", id: "lazy.900", seq: 900, manifest: Buffer.from("{}"), chunks };
    const failed: unknown[] = [];
    client.on("failed", (e) => failed.push(e));
    await assert.rejects(client.send(ck, "received"), (e: unknown) => e instanceof ChunkReadError && /block moved by gc/.test(e.message));
    assert.equal(failed.length, 1);
    const again = new Map<string, Buffer | LazyChunk>([[sha256hex(good), { size: good.length, read: () => Promise.resolve(good) }]]);
    assert.equal(await client.send({ ...ck, chunks: again }, "durable"), "durable");
  } finally {
    await client.close();
  }
});

test("checkpoints only received when the mirror dies are shipped again by a restarted shipper", { timeout: 60_000 }, async () => {
  const src = await CasStore.open(path("src"));
  const mdir = path("mirror3");
  const tokens = writeTokens(tmp.dir, { calc: TOKENS.calc });
  const statePath = path("state.json");
  let s3 = await startServerProcess(["--listen", "127.0.0.1:0", "--store", mdir, "--tokens", tokens, "--max-delay", "1h"]);
  const port = s3.port;
  try {
    for (let i = 0; i < 3; i++) await src.ingest("calc", i + 1, writeImage(chain.images[i]!));
    let sh = await MirrorShipper.open({ store: src, app: "calc", url: s3.url, token: TOKENS.calc, statePath, ack: "received", backoff: { initialMs: 20, maxMs: 100 } });
    await sh.idle();
    assert.deepEqual(
      sh.states().map((r) => r.state),
      ["received", "received", "received"],
    );
    assert.deepEqual(sh.unshipped(), ["calc@1", "calc@2", "calc@3"]);
    await sh.close();
    process.kill(s3.pid, "SIGKILL"); // nothing was flushed: the mirror loses all three
    await s3.exited;
    s3 = await startServerProcess(["--listen", `127.0.0.1:${port}`, "--store", mdir, "--tokens", tokens, "--max-delay", "50ms"]);
    sh = await MirrorShipper.open({ store: src, app: "calc", url: s3.url, token: TOKENS.calc, statePath, ack: "durable", backoff: { initialMs: 20, maxMs: 100 } });
    await sh.idle();
    assert.deepEqual(
      sh.states().map((r) => r.state),
      ["durable", "durable", "durable"],
    );
    assert.equal(sh.stats.checkpointsOffered, 3, "all three offered again");
    await sh.close();
    const dst = await CasStore.open(path("dst"));
    try {
      await pullFromMirror(s3.url, TOKENS.calc, "calc", "calc@3", dst);
      assert.equal(await exportDigest(dst, "calc@3"), await exportDigest(src, "calc@3"));
    } finally {
      await dst.close();
    }
  } finally {
    if (s3.child.exitCode === null && s3.child.signalCode === null) process.kill(s3.pid, "SIGKILL");
    await s3.exited;
    await src.close();
  }
});
