// A mirror checkpoint carrying several store checkpoints of one cut (src/mirror/bundle.ts): the
// manifests of a process tree's processes and of the app's files image travel as one bundle.
// Damaged or inconsistent bundles are refused with the reason, never half-read.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, test } from "node:test";
import { CasStore } from "../src/store/cas/index.js";
import { MirrorShipper, pullFromMirror } from "../src/mirror/bridge.js";
import { startServerProcess, tempDir, writeTokens } from "../src/mirror/testing.js";
import { churnChain } from "./helpers/cas-images.js";
import { encodeMirrorObject, objectIdOf, parseMirrorObject } from "../src/mirror/bundle.js";
import { MIRROR_MANIFEST_FORMAT, MIRROR_MANIFEST_VERSION, type MirrorManifest } from "../src/store/cas/mirror.js";

function manifest(app: string, seq: number, parent: string | null = null): MirrorManifest {
  return {
    format: MIRROR_MANIFEST_FORMAT,
    version: MIRROR_MANIFEST_VERSION,
    id: `${app}@${seq}`,
    app,
    seq,
    kind: parent ? "incremental" : "full",
    parent,
    header: Buffer.alloc(64).toString("base64"),
    table: [{ hash: "ab".repeat(32), size: 10 }],
    tableBytes: 10,
    blocks: 0,
    blockBytes: 0,
  } as unknown as MirrorManifest; // (the row fields parseMirrorManifest does not check are left out)
}

describe("mirror bundles", () => {
  test("a lone checkpoint's manifest is read as before; a bundle gives the main and its members", () => {
    const main = manifest("web", 3, "web@2");
    const lone = parseMirrorObject(Buffer.from(JSON.stringify(main)));
    assert.equal(lone.main.id, "web@3");
    assert.deepEqual(lone.members, []);
    const b = parseMirrorObject(encodeMirrorObject(main, [manifest("web~7", 3, "web~7@2"), manifest("web~files", 3)]));
    assert.equal(b.main.id, "web@3");
    assert.deepEqual(b.members.map((m) => m.id), ["web~7@3", "web~files@3"]);
  });

  test("members live in their main checkpoint's mirror object", () => {
    assert.equal(objectIdOf("web@3"), "web.3");
    assert.equal(objectIdOf("web~7@3"), "web.3");
    assert.equal(objectIdOf("web~files@12"), "web.12");
    assert.throws(() => objectIdOf("web"), /not a checkpoint id/);
  });

  test("inconsistent bundles are refused with the reason", () => {
    const main = manifest("web", 3);
    const bad = (parts: unknown[], extra: Record<string, unknown> = {}): Buffer => Buffer.from(JSON.stringify({ format: "tardigrade-mirror-bundle", version: 1, id: "web@3", parts, ...extra }));
    assert.throws(() => parseMirrorObject(bad([manifest("db~7", 3), main])), /part db~7@3 is not a member of app web/);
    assert.throws(() => parseMirrorObject(bad([manifest("web~7", 2), main])), /not at the main checkpoint's seq 3/);
    assert.throws(() => parseMirrorObject(bad([manifest("web~7", 3), manifest("web~7", 3), main])), /appears twice/);
    assert.throws(() => parseMirrorObject(bad([main, manifest("web~7", 3)])), /last part is web~7@3|bad app name/);
    assert.throws(() => parseMirrorObject(bad([main])), /at least one member/);
    assert.throws(() => parseMirrorObject(bad([manifest("web~7", 3), main], { version: 9 })), /bundle version 9/);
    assert.throws(() => parseMirrorObject(bad([manifest("web~7", 3), main], { id: "web@4" })), /last part is web@3, not its main/);
    assert.throws(() => parseMirrorObject(bad([{ ...manifest("web~7", 3), kind: "odd" }, main])), /bad kind/);
    assert.throws(() => parseMirrorObject(Buffer.from("{not json")), /not JSON/);
  });

  test("a tree's checkpoints travel as one; a standby with its own lineage sets aside the main and its member together", { timeout: 180_000 }, async () => {
    const TOKEN = "token-tree-0123456789";
    const tmp = tempDir("tg-mirror-bundle-");
    const srv = await startServerProcess(["--listen", "127.0.0.1:0", "--store", join(tmp.dir, "mirror"), "--tokens", writeTokens(tmp.dir, { tree: TOKEN }), "--max-delay", "100ms"]);
    let n = 0;
    const image = (img: Buffer): string => {
      const f = join(tmp.dir, `img-${++n}`);
      writeFileSync(f, img);
      return f;
    };
    const digest = async (store: CasStore, id: string): Promise<string> => {
      const h = createHash("sha256");
      for await (const c of store.exportChunks(id)) h.update(c);
      return h.digest("hex");
    };
    const main = churnChain(11, 3);
    const member = churnChain(12, 3);
    const own = churnChain(13, 2);
    const ownMember = churnChain(14, 2);
    const src = await CasStore.open(join(tmp.dir, "primary"));
    const standby = await CasStore.open(join(tmp.dir, "standby"));
    try {
      for (let s = 1; s <= 3; s++) {
        await src.ingest("tree~7", s, image(member.images[s - 1]!));
        await src.ingest("tree", s, image(main.images[s - 1]!));
      }
      const sh = await MirrorShipper.open({ store: src, app: "tree", url: srv.url, token: TOKEN, statePath: join(tmp.dir, "state.json"), membersOf: (id) => [id.replace("tree@", "tree~7@")], backoff: { initialMs: 20, maxMs: 200 } });
      await sh.idle();
      assert.deepEqual(sh.states().map((r) => [r.id, r.state]), [["tree@1", "durable"], ["tree@2", "durable"], ["tree@3", "durable"]]);
      await sh.close();
      // the standby ran the app before: its own tree@1..2 and tree~7@1..2
      for (let s = 1; s <= 2; s++) {
        await standby.ingest("tree~7", s, image(ownMember.images[s - 1]!));
        await standby.ingest("tree", s, image(own.images[s - 1]!));
      }
      const ownDigests = [await digest(standby, "tree@2"), await digest(standby, "tree~7@2")];
      const r = await pullFromMirror(srv.url, TOKEN, "tree", "latest", standby);
      assert.equal(r.id, "tree@3");
      assert.deepEqual(r.imported.map((i) => i.id), ["tree~7@1", "tree~7@2", "tree~7@3", "tree@1", "tree@2", "tree@3"], "members first, the main last");
      for (let s = 1; s <= 3; s++) {
        assert.equal(await digest(standby, `tree@${s}`), await digest(src, `tree@${s}`), `tree@${s} is the mirror's`);
        assert.equal(await digest(standby, `tree~7@${s}`), await digest(src, `tree~7@${s}`), `tree~7@${s} is the mirror's`);
      }
      assert.ok(r.setAside);
      const base = r.setAside.app;
      assert.match(base, /^tree\.diverged-\d{8}-\d{6}$/);
      assert.deepEqual(Object.keys(r.setAside.renamed).sort(), ["tree@1", "tree@2", "tree~7@1", "tree~7@2"]);
      assert.equal(r.setAside.renamed["tree~7@2"], `${base}~7@2`, "the member is set aside under the main's new name");
      assert.equal(await digest(standby, `${base}@2`), ownDigests[0]);
      assert.equal(await digest(standby, `${base}~7@2`), ownDigests[1]);
      const again = await pullFromMirror(srv.url, TOKEN, "tree", "latest", standby);
      assert.equal(again.alreadyPresent, true);
      // a member at another seq than its main, or missing, is refused by the sender: nothing half-shipped
      const bad = await MirrorShipper.open({ store: src, app: "tree", url: srv.url, token: TOKEN, statePath: join(tmp.dir, "state2.json"), backfill: false, membersOf: () => ["tree~7@9"], backoff: { initialMs: 20, maxMs: 200 } });
      await src.ingest("tree", 4, image(main.images[2]!));
      bad.enqueue("tree@4");
      await bad.idle();
      assert.equal(bad.state("tree@4")?.state, "failed");
      assert.match(bad.state("tree@4")?.error ?? "", /cannot read it from the store.*tree~7@9/);
      await bad.close();
    } finally {
      await standby.close();
      await src.close();
      process.kill(srv.pid, "SIGKILL");
      await srv.exited;
      tmp.cleanup();
    }
  });
});
