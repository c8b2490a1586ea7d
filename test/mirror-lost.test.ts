// Issue 11, defect 9: a mirror that lost a source's data. The destination refuses an
// increment whose parent it does not hold; a source whose mirror answers Hello with a
// durable position below what it had acknowledged sends its chain again.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { CasStore } from "../src/store/cas/index.js";
import { MirrorShipper, pullFromMirror, type ShipperStateEvent } from "../src/mirror/bridge.js";
import { MirrorClient, MissingParentError } from "../src/mirror/client.js";
import { withAdmin } from "../src/mirror/admin.js";
import { SyntheticSource } from "../src/mirror/synthetic.js";
import { startServerProcess, tempDir, waitFor, writeTokens, type ServerProcess } from "../src/mirror/testing.js";
import { churnChain } from "./helpers/cas-images.js";

const TOKEN = "token-calc-0123456789";

async function exportDigest(store: CasStore, id: string): Promise<string> {
  const h = createHash("sha256");
  for await (const c of store.exportChunks(id)) h.update(c);
  return h.digest("hex");
}

test("an increment whose parent the mirror does not hold is refused, not acknowledged", { timeout: 60_000 }, async () => {
  const tmp = tempDir();
  const tokens = writeTokens(tmp.dir, { calc: TOKEN });
  const srv = await startServerProcess(["--listen", "127.0.0.1:0", "--store", join(tmp.dir, "store"), "--tokens", tokens, "--max-delay", "100ms"]);
  const client = new MirrorClient({ url: srv.url, source: "calc", token: TOKEN, backoff: { initialMs: 20, maxMs: 100 } });
  try {
    const gen = new SyntheticSource("calc", { pages: 8 });
    gen.next(); // calc's first checkpoint: never sent
    const second = gen.next();
    assert.ok(second.parent !== undefined);
    const err = await client.send(second, "received").then(
      () => undefined,
      (e: unknown) => e as Error,
    );
    assert.ok(err instanceof MissingParentError, `refused: ${String(err)}`);
    assert.match(err.message, /does not hold/);
    const rows = await withAdmin({ url: srv.url, token: TOKEN }, (a) => a.list());
    assert.deepEqual(rows, []);
  } finally {
    await client.close();
    srv.kill("SIGKILL");
    await srv.exited;
    tmp.cleanup();
  }
});

test("a wiped mirror store: the source notices at reconnect, sends its chain again, and the mirror can restore the newest checkpoint", { timeout: 120_000 }, async () => {
  const tmp = tempDir();
  const tokens = writeTokens(tmp.dir, { calc: TOKEN });
  const mirrorDir = join(tmp.dir, "mirror");
  const args = (port: number): string[] => ["--listen", `127.0.0.1:${port}`, "--store", mirrorDir, "--tokens", tokens, "--max-delay", "100ms"];
  let srv: ServerProcess = await startServerProcess(args(0));
  const port = srv.port;
  const chain = churnChain(11, 4);
  const img = (i: number): string => {
    const f = join(tmp.dir, `img-${i}`);
    writeFileSync(f, chain.images[i]!);
    return f;
  };
  const src = await CasStore.open(join(tmp.dir, "src"));
  const events: ShipperStateEvent[] = [];
  let sh: MirrorShipper | undefined;
  try {
    for (let i = 0; i < 3; i++) await src.ingest("calc", i + 1, img(i));
    sh = await MirrorShipper.open({ store: src, app: "calc", url: srv.url, token: TOKEN, statePath: join(tmp.dir, "state.json"), backoff: { initialMs: 20, maxMs: 200 } });
    sh.on("state", (e: ShipperStateEvent) => events.push(e));
    await sh.idle();
    assert.deepEqual(
      sh.states().map((r) => r.state),
      ["durable", "durable", "durable"],
    );
    // The mirror's store is lost; a new, empty one takes its place on the same address.
    srv.kill("SIGKILL");
    await srv.exited;
    rmSync(mirrorDir, { recursive: true, force: true });
    srv = await startServerProcess(args(port));
    // At reconnect the shipper sees durable seq 0 and stops calling calc@1..3 durable.
    await waitFor(() => events.some((e) => e.id === "calc@1" && e.state === "queued"), 30_000, "calc@1 no longer durable");
    const c4 = await src.ingest("calc", 4, img(3));
    sh.enqueue(c4.id);
    await sh.idle();
    assert.deepEqual(
      sh.states().map((r) => [r.id, r.state]),
      [1, 2, 3, 4].map((s) => [`calc@${s}`, "durable"]),
    );
    const rows = await withAdmin({ url: srv.url, token: TOKEN }, (a) => a.list());
    assert.deepEqual(
      rows.map((r) => [r.id, r.state]),
      [1, 2, 3, 4].map((s) => [`calc.${s}`, "durable"]),
    );
    // What the mirror calls durable can be restored.
    const dst = await CasStore.open(join(tmp.dir, "dst"));
    try {
      const r = await pullFromMirror(srv.url, TOKEN, "calc", "latest", dst);
      assert.equal(r.id, "calc@4");
      assert.equal(await exportDigest(dst, "calc@4"), await exportDigest(src, "calc@4"));
    } finally {
      await dst.close();
    }
  } finally {
    await sh?.close();
    await src.close();
    srv.kill("SIGKILL");
    await srv.exited;
    tmp.cleanup();
  }
});
