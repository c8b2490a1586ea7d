// Store integrity through the daemon and the CLI (issue 11, defects 5, 6, 14):
// `tardigrade verify`, the `ls` warning, the daemon log, and a daemon that refuses to
// start (instead of deleting every pack) when index.sqlite was moved away.
import assert from "node:assert/strict";
import { existsSync, readFileSync, readdirSync, renameSync, statSync, truncateSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { sampleImage } from "../src/image/writer.js";
import { MemModel } from "./helpers/cas-images.js";
import { isAlive, makeHome, waitFor, type TestHome } from "./helpers/home.js";

let seeds = 0;
async function seed(h: TestHome, app: string, image: Buffer): Promise<string> {
  const file = join(h.home, `seed-${++seeds}.img`);
  writeFileSync(file, image);
  const r = await h.cli(["import", app, file, "--json"]);
  assert.equal(r.code, 0, r.stderr);
  return (JSON.parse(r.stdout) as { id: string }).id;
}

const packDir = (h: TestHome): string => join(h.home, "store", "packs");
const packs = (h: TestHome): string[] => readdirSync(packDir(h)).filter((f) => f.endsWith(".dat")).sort();

async function stopDaemon(h: TestHome): Promise<void> {
  const pid = h.daemonPid();
  if (!pid) return;
  process.kill(pid, "SIGKILL");
  await waitFor("daemon gone", () => !isAlive(pid), 20_000);
}

interface Report {
  ok: boolean;
  damagedBlocks: { pack: string; offset: number; checkpoints: string[]; found: string }[];
  affected: { id: string; badPages: number }[];
  damagedPacks: { pack: string }[];
}

describe("store integrity through the daemon", () => {
  let h: TestHome;
  before(() => {
    h = makeHome("tg-si-");
  });
  after(async () => {
    await h.cleanup();
  });

  test("a flipped byte: verify names the block and checkpoint (exit 2), ls warns, the next import of the same memory stores it again and reads back; gc works", async () => {
    const img = sampleImage({ npages: 600, fill: (i) => (i * 53 + 7) & 255 });
    const id1 = await seed(h, "flip", img);
    const ok = await h.cli(["verify"]);
    assert.equal(ok.code, 0, ok.stdout + ok.stderr);
    assert.match(ok.stdout, /ok: every checkpoint checked reads back intact/);
    const pack = join(packDir(h), packs(h)[0]!);
    const buf = readFileSync(pack);
    buf[16 + 16 + 200]! ^= 0x10; // inside the first block's data
    writeFileSync(pack, buf);
    const v = await h.cli(["verify", "flip", "--json"]);
    assert.equal(v.code, 2, v.stderr);
    const rep = JSON.parse(v.stdout) as Report;
    assert.equal(rep.ok, false);
    assert.equal(rep.damagedBlocks.length, 1);
    assert.deepEqual([rep.damagedBlocks[0]!.pack, rep.damagedBlocks[0]!.offset, rep.damagedBlocks[0]!.checkpoints], [packs(h)[0], 16, [id1]]);
    assert.deepEqual(rep.affected.map((a) => a.id), [id1]);
    const text = await h.cli(["verify", id1]);
    assert.equal(text.code, 2);
    assert.match(text.stdout, new RegExp(`pack-000001\\.dat\\s+16\\s+\\S+\\s+${id1}`));
    assert.match(text.stdout, /DAMAGE FOUND/);
    const ls = await h.cli(["ls"]);
    assert.equal(ls.code, 0, ls.stderr);
    assert.match(ls.stderr, /warning: the store holds damaged data \(1 damaged block\(s\) set aside\)\. Run `tardigrade verify`/);
    // The same memory again (as `checkpoint --full` of an unchanged app): stored again, readable.
    const id2 = await seed(h, "flip", img);
    const ins = await h.cli(["inspect", id2]);
    assert.equal(ins.code, 0, `the new checkpoint reads back: ${ins.stderr}`);
    const healed = await h.cli(["verify", "flip", "--json"]);
    assert.equal(healed.code, 0, healed.stdout);
    assert.equal((JSON.parse(healed.stdout) as Report).ok, true);
    const gc = await h.cli(["gc", "--keep", "1"]);
    assert.equal(gc.code, 0, gc.stderr);
    assert.match(gc.stdout, new RegExp(`removed 1 checkpoint\\(s\\) \\(${id1}\\)`));
    const api = await import("../src/index.js");
    const viaApi = await api.verify(id2, { home: h.home });
    assert.equal(viaApi.ok, true);
    assert.deepEqual(viaApi.checkpoints, [id2]);
    await assert.rejects(api.verify("nosuchapp", { home: h.home }), (e: unknown) => e instanceof api.TgError && e.code === "unknown-checkpoint");
  });

  test("a truncated pack: the daemon logs it at start, ls warns, verify lists the checkpoint; new data goes to a new pack", async () => {
    const m = new MemModel(9); // random pages: none of them stored yet
    m.map(0x5000, 300);
    for (let p = 0x5000; p < 0x5000 + 300; p++) m.write(p);
    const img = m.image();
    const sizes = new Map(packs(h).map((p) => [p, statSync(join(packDir(h), p)).size]));
    const id = await seed(h, "trunc", img);
    await stopDaemon(h);
    const grown = packs(h).filter((p) => statSync(join(packDir(h), p)).size > (sizes.get(p) ?? 0));
    assert.equal(grown.length, 1, `the import wrote to one pack: ${grown.join(", ")}`);
    const last = join(packDir(h), grown[0]!);
    const was = sizes.get(grown[0]!) ?? 0;
    const full = statSync(last).size;
    const cut = was + Math.floor((full - was) / 2); // the checkpoint's blocks lose their second half
    truncateSync(last, cut);
    const ls = await h.cli(["ls", "trunc"]);
    assert.equal(ls.code, 0, ls.stderr);
    assert.match(ls.stderr, /damaged pack\(s\) pack-0+\d+\.dat/);
    const log = readFileSync(join(h.home, "daemon.log"), "utf8");
    assert.match(log, /STORE DAMAGED: pack-0+\d+\.dat is \d+ bytes, the index says \d+ \(truncated\)/);
    const v = await h.cli(["verify", "trunc", "--json"]);
    assert.equal(v.code, 2, v.stderr);
    const rep = JSON.parse(v.stdout) as Report;
    assert.deepEqual(rep.affected.map((a) => a.id), [id]);
    assert.ok(rep.damagedPacks.some((p) => last.endsWith(p.pack)));
    const before = packs(h);
    const id2 = await seed(h, "trunc", img);
    assert.equal(statSync(last).size, cut, "nothing appended after the hole");
    assert.ok(packs(h).length > before.length, "a new pack");
    assert.equal((await h.cli(["inspect", id2])).code, 0);
  });

  test("index.sqlite moved away: the daemon refuses to start and deletes nothing; put back, all is there", async () => {
    const id = await seed(h, "idx", sampleImage({ npages: 30, fill: (i) => (i * 7 + 1) & 255 }));
    await stopDaemon(h);
    const before = packs(h).map((p) => [p, statSync(join(packDir(h), p)).size]);
    const store = join(h.home, "store");
    const moved = ["index.sqlite", "index.sqlite-wal", "index.sqlite-shm"].filter((f) => existsSync(join(store, f)));
    for (const f of moved) renameSync(join(store, f), join(h.home, f));
    const r = await h.cli(["ls"], { timeoutMs: 60_000 });
    assert.equal(r.code, 1);
    assert.match(r.stderr, new RegExp(`store index missing; ${before.length} pack file\\(s\\) present`));
    assert.match(r.stderr, /Put back the index\.sqlite/);
    assert.deepEqual(packs(h).map((p) => [p, statSync(join(packDir(h), p)).size]), before, "every pack still there, same size");
    for (const f of moved) renameSync(join(h.home, f), join(store, f));
    const ls = await h.cli(["ls", "idx", "--json"]);
    assert.equal(ls.code, 0, ls.stderr);
    assert.deepEqual((JSON.parse(ls.stdout) as { id: string }[]).map((m) => m.id), [id]);
  });
});
