// Local store: atomic commit, crash leftovers, verification before commit.
import assert from "node:assert/strict";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, test } from "node:test";
import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { ImageError, parseImage } from "../src/image/parser.js";
import { waitFor } from "./helpers/home.js";
import { sampleImage } from "../src/image/writer.js";
import { LocalStore } from "../src/store/local.js";
import { parseCheckpointId } from "../src/store/types.js";

let root: string;
let store: LocalStore;
beforeEach(async () => {
  root = mkdtempSync(join(tmpdir(), "tg-store-"));
  store = new LocalStore(root);
  await store.recover();
});
afterEach(() => rmSync(root, { recursive: true, force: true }));

async function commit(app: string, image = sampleImage({ npages: 5 })) {
  const s = await store.stage(app);
  writeFileSync(s.imagePath(2), image);
  return store.put(s, { downtimeNs: 1000, totalNs: 5000, threads: 1 });
}

describe("local store", () => {
  test("commit gives increasing per-app ids and a complete manifest", async () => {
    const a1 = await commit("calc");
    const a2 = await commit("calc");
    const b1 = await commit("other");
    assert.deepEqual([a1.id, a2.id, b1.id], ["calc@1", "calc@2", "other@1"]);
    assert.equal(a1.kind, "full");
    assert.equal(a1.parent, null);
    assert.equal(a1.pages, 5);
    assert.equal(a1.threads, 1);
    assert.equal(a1.downtimeNs, 1000);
    assert.equal(a1.images[0]!.file, "pid2.img");
    assert.equal(a1.bytes, a1.images[0]!.bytes);
    assert.deepEqual((await store.list("calc")).map((m) => m.id), ["calc@1", "calc@2"]);
    assert.equal((await store.list()).length, 3);
    assert.deepEqual(await store.get("calc@2"), a2);
    const img = await store.openImage("calc@1");
    assert.ok(existsSync(img.path));
    assert.deepEqual(readdirSync(store.stagingDir), []);
  });

  test("seqs never repeat, even after a checkpoint directory is removed", async () => {
    await commit("calc");
    const c2 = await commit("calc");
    rmSync(join(store.checkpointsDir, c2.id), { recursive: true });
    assert.equal((await commit("calc")).id, "calc@3");
  });

  test("a corrupt staged image is refused and nothing becomes visible", async () => {
    await commit("calc");
    const bad = sampleImage({ npages: 5 });
    bad[bad.length - 200]! ^= 1;
    const s = await store.stage("calc");
    writeFileSync(s.imagePath(2), bad);
    await assert.rejects(store.put(s, { downtimeNs: 0, totalNs: 0 }), (e: unknown) => e instanceof ImageError && /CRC mismatch/.test(e.message) && e.message.includes(s.imagePath(2)));
    await store.discard(s);
    assert.deepEqual((await store.list("calc")).map((m) => m.id), ["calc@1"]);
    assert.deepEqual(readdirSync(store.stagingDir), []);
  });

  test("an empty staging dir (agent died before writing) is refused", async () => {
    const s = await store.stage("calc");
    await assert.rejects(store.put(s, { downtimeNs: 0, totalNs: 0 }), /no image was written/);
  });

  test("crash leftovers: staging removed on recover; dirs without a valid manifest are invisible", async () => {
    const good = await commit("calc");
    // Crash while the agent was writing: half an image in staging.
    const s = await store.stage("calc");
    writeFileSync(s.imagePath(2), sampleImage().subarray(0, 100));
    // Crash while writing the manifest (impossible with rename, but be defensive).
    mkdirSync(join(store.checkpointsDir, "calc@7"));
    writeFileSync(join(store.checkpointsDir, "calc@7", "manifest.json"), '{"id":"calc@7", "tru');
    mkdirSync(join(store.checkpointsDir, "calc@8"));
    writeFileSync(join(store.seqDir(), "calc.tmp.123"), "9");
    const fresh = new LocalStore(root);
    assert.deepEqual(await fresh.recover(), [s.dir.split("/").pop()]);
    assert.deepEqual(readdirSync(fresh.stagingDir), []);
    assert.deepEqual((await fresh.list()).map((m) => m.id), [good.id]);
    await assert.rejects(fresh.get("calc@7"), /unknown checkpoint calc@7/);
    // The next commit still works and skips the seqs a crash may have used.
    const next = await commit("calc");
    assert.ok(parseCheckpointId(next.id)!.seq > good.seq);
  });

  test("unknown and malformed ids are clear errors", async () => {
    await assert.rejects(store.get("calc@99"), /unknown checkpoint calc@99: no such checkpoint/);
    await assert.rejects(store.get("../../etc"), /checkpoint ids look like APP@SEQ/);
    await assert.rejects(store.openImage("nope@1"), /unknown checkpoint nope@1/);
  });

  test("kill -9 of a committing process at random points: only complete checkpoints are ever visible", async () => {
    const writer = fileURLToPath(new URL("./helpers/store-writer.js", import.meta.url));
    let lastSeq = 0;
    for (let round = 0; round < 8; round++) {
      const child = spawn(process.execPath, [writer, root], { stdio: ["ignore", "pipe", "inherit"] });
      let out = "";
      child.stdout.setEncoding("utf8").on("data", (d: string) => (out += d));
      // The kill lands inside the commit loop (after the first commit, on any machine speed), at a random point.
      await waitFor("the writer's first commit", () => out.includes("\n") || child.exitCode !== null, 120_000, 10);
      assert.equal(child.exitCode, null, "the writer runs");
      await new Promise((r) => setTimeout(r, Math.floor(Math.random() * 250)));
      child.kill("SIGKILL");
      await new Promise((r) => child.on("close", r));
      const fresh = new LocalStore(root);
      await fresh.recover();
      assert.deepEqual(readdirSync(fresh.stagingDir), [], "staging emptied");
      const list = await fresh.list("crash");
      const reported = out.split("\n").filter(Boolean);
      // Every id the writer saw committed is listed; at most one more (committed just before the kill).
      for (const id of reported) assert.ok(list.some((m) => m.id === id), `${id} survived`);
      assert.ok(list.length >= reported.length);
      for (const m of list) {
        const img = await parseImage((await fresh.openImage(m.id)).path);
        assert.equal(img.pagesTotal, 512, `${m.id} is complete`);
      }
      const seqs = list.map((m) => m.seq);
      assert.deepEqual(seqs, [...seqs].sort((a, b) => a - b));
      assert.ok((seqs[seqs.length - 1] ?? 0) >= lastSeq, "seqs only grow");
      lastSeq = seqs[seqs.length - 1] ?? 0;
    }
    assert.ok(lastSeq > 0, "the writer committed something");
  });

  test("concurrent commits of one app get distinct seqs", async () => {
    const ms = await Promise.all([commit("calc"), commit("calc"), commit("calc"), commit("calc")]);
    assert.deepEqual(ms.map((m) => m.seq).sort(), [1, 2, 3, 4]);
  });
});
