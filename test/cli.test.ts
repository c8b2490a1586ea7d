// CLI and daemon behaviour that does not need the C core: bad input, clear errors,
// daemon start on first use and after kill -9, inspect/ls of stored checkpoints.
import assert from "node:assert/strict";
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { RecordType } from "../src/image/format.js";
import { sampleImage } from "../src/image/writer.js";
import { isAlive, makeHome, waitFor, type TestHome } from "./helpers/home.js";

let seeds = 0;
/** Writes a crafted image to a file (returned with the CLI's answer to `import`). */
async function importImage(h: TestHome, app: string, image: Buffer): Promise<{ file: string; r: { code: number | null; stdout: string; stderr: string } }> {
  const file = join(h.home, `seed-${++seeds}.img`);
  writeFileSync(file, image);
  return { file, r: await h.cli(["import", app, file, "--json"]) };
}

/** Commits a crafted image as the next checkpoint of `app` (tardigrade import). */
async function seed(h: TestHome, app: string, image = sampleImage({ npages: 40 })): Promise<string> {
  const { r } = await importImage(h, app, image);
  assert.equal(r.code, 0, r.stderr);
  return (JSON.parse(r.stdout) as { id: string }).id;
}

/** Offsets of the PAGES records of a raw image. */
function pagesRecords(buf: Buffer): number[] {
  let off = 64;
  const pages: number[] = [];
  while (off < buf.length) {
    if (buf.readUInt32LE(off) === RecordType.PAGES) pages.push(off);
    off += 32 + ((Number(buf.readBigUInt64LE(off + 8)) + 7) & ~7);
  }
  return pages;
}

function expectError(r: { code: number | null; stderr: string }, re: RegExp): void {
  assert.equal(r.code, 1, `exit code (stderr: ${r.stderr})`);
  assert.match(r.stderr, /^tardigrade: /);
  assert.match(r.stderr, re);
}

describe("CLI without the C core", { timeout: 600_000 }, () => {
  let h: TestHome;
  before(() => {
    h = makeHome();
  });
  after(async () => {
    await h.cleanup();
  });

  test("ls on an empty store; the daemon starts on first use", async () => {
    const r = await h.cli(["ls", "--json"]);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(JSON.parse(r.stdout), []);
    const pid = h.daemonPid();
    assert.ok(pid && isAlive(pid), "daemon running");
    assert.ok(existsSync(join(h.home, "daemon.sock")));
  });

  test("restore of an unknown checkpoint", async () => {
    expectError(await h.cli(["restore", "calc", "--checkpoint", "calc@42"]), /unknown checkpoint calc@42: no such checkpoint in the store\. List the checkpoints with `tardigrade ls`/);
    expectError(await h.cli(["restore", "calc"]), /cannot restore calc: the store has no checkpoint of this app/);
    expectError(await h.cli(["restore", "calc", "--checkpoint", "garbage"]), /unknown checkpoint garbage: checkpoint ids look like APP@SEQ/);
    expectError(await h.cli(["inspect", "calc@42"]), /unknown checkpoint calc@42/);
    assert.ok(!existsSync(join(h.home, "apps", "calc", "pidfile")), "nothing started");
  });

  test("a checkpoint of another app is refused", async () => {
    const id = await seed(h, "other");
    expectError(await h.cli(["restore", "calc", "--checkpoint", id]), /unknown checkpoint other@1: it belongs to app other, not calc/);
  });

  test("unknown app, bad name, missing command", async () => {
    expectError(await h.cli(["checkpoint", "ghost"]), /no app named ghost/);
    expectError(await h.cli(["status", "ghost"]), /no app named ghost/);
    expectError(await h.cli(["stop", "ghost"]), /no app named ghost/);
    expectError(await h.cli(["logs", "ghost"]), /no log for ghost/);
    expectError(await h.cli(["run", "--name", "../x", "--", "true"]), /invalid app name/);
    expectError(await h.cli(["run", "--every", "often", "--", "true"]), /bad interval "often"/);
    expectError(await h.cli(["run"]), /missing required argument 'cmd'/);
    expectError(await h.cli(["frobnicate"]), /unknown command 'frobnicate'/);
  });

  test("ls and inspect of a stored checkpoint (text and --json)", async () => {
    const id = await seed(h, "calc");
    const ls = await h.cli(["ls", "calc", "--json"]);
    assert.equal(ls.code, 0, ls.stderr);
    const list = JSON.parse(ls.stdout) as { id: string; pages: number; kind: string; threads: number; downtimeNs: number }[];
    // an imported image has no capture measurements (downtime 0)
    assert.deepEqual(list.map((m) => [m.id, m.pages, m.kind, m.threads, m.downtimeNs]), [[id, 40, "full", 1, 0]]);
    const text = await h.cli(["ls"]);
    assert.match(text.stdout, /^ID\s+TIME\s+KIND\s+PAGES\s+BYTES\s+STORED\s+THREADS\s+DOWNTIME/);
    assert.match(text.stdout, new RegExp(`${id}\\s+\\S+\\s+full\\s+40\\s+\\S+ KiB\\s+\\S+ \\S*B\\s+1\\s+0 µs`));
    const ins = await h.cli(["inspect", id, "--json"]);
    assert.equal(ins.code, 0, ins.stderr);
    const j = JSON.parse(ins.stdout) as { manifest: { id: string }; image: { threads: { tid: number; rip: string; rsp: string }[]; fds: { fd: number; path: string }[]; vmas: unknown[] } };
    assert.equal(j.manifest.id, id);
    assert.deepEqual(j.image.threads.map((t) => [t.tid, t.rip, t.rsp]), [[2, "0x401000", "0x7ffff000"]]);
    assert.deepEqual(j.image.fds.map((f) => [f.fd, f.path]), [[0, "/dev/null"], [1, "/tmp/log"]]);
    assert.equal(j.image.vmas.length, 2);
    const insText = await h.cli(["inspect", id]);
    assert.match(insText.stdout, /threads:\nTID\s+COMM\s+RIP\s+RSP/);
    assert.match(insText.stdout, /fds:\n/);
  });

  for (const damage of ["truncated", "bit-flipped"] as const) {
    test(`import of a ${damage} image names the file and the offset; nothing stored or started`, async () => {
      const app = `dmg-${damage}`;
      const buf = sampleImage({ npages: 300 });
      const target = pagesRecords(buf)[1]!;
      const bad = damage === "truncated" ? buf.subarray(0, target + 32 + 100) : Buffer.from(buf);
      if (damage === "bit-flipped") bad[target + 32 + 16 + 777]! ^= 0x20;
      const { file, r } = await importImage(h, app, bad);
      expectError(r, new RegExp(`${file.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}.*offset ${target}\\b`));
      assert.match(r.stderr, damage === "truncated" ? /truncated/ : /CRC mismatch/);
      const ls = await h.cli(["ls", app, "--json"]);
      assert.deepEqual(JSON.parse(ls.stdout), [], "nothing stored");
      expectError(await h.cli(["restore", app]), /the store has no checkpoint of this app/);
      assert.ok(!existsSync(join(h.home, "apps", app, "pidfile")), "nothing started");
    });
  }

  test("a damaged store (bit flip in a pack file): reading the checkpoint names the pack file and offset", async () => {
    const app = "dmg-pack";
    const packDir = join(h.home, "store", "packs");
    const lastPack = (): string => join(packDir, readdirSync(packDir).filter((f) => f.endsWith(".dat")).sort().pop()!);
    const before = readFileSync(lastPack()).length;
    // pages no other test stores, so the damage hits only this checkpoint's blocks
    const id = await seed(h, app, sampleImage({ npages: 600, fill: (i) => (i * 37 + 11) & 255 }));
    const pack = lastPack();
    const buf = readFileSync(pack);
    assert.ok(buf.length > before, "the checkpoint appended blocks");
    buf[before + Math.floor((buf.length - before) / 2)]! ^= 0x10;
    writeFileSync(pack, buf);
    // inspect composes the whole image (as a restore does); a restore with a real app is in e2e.test.ts
    const r = await h.cli(["inspect", id]);
    expectError(r, /pack-[0-9]+\.dat/);
    assert.match(r.stderr, /offset/);
  });

  test("an unusable TARDIGRADE_HOME is a clear error (not a hang)", async () => {
    for (const [home, re] of [
      ["/proc/tardigrade-nope", /^tardigrade: cannot create \/proc\/tardigrade-nope: .*Set TARDIGRADE_HOME to a writable directory/],
      [`/tmp/${"x".repeat(110)}`, /^tardigrade: cannot use this tardigrade home: the daemon socket path .* is too long for a Unix socket/],
    ] as const) {
      const r = await h.cli(["ls"], { env: { TARDIGRADE_HOME: home }, timeoutMs: 20_000 });
      assert.equal(r.code, 1, r.stderr);
      assert.match(r.stderr, re);
    }
  });

  test("Node API: errors arrive as TgError, also when progress is streamed", async () => {
    const api = await import("../src/index.js");
    const o = { home: h.home };
    await assert.rejects(api.restore("calc", { ...o, checkpoint: "calc@999" }), (e: unknown) => e instanceof api.TgError && e.code === "unknown-checkpoint");
    const bad = sampleImage({ npages: 700 });
    bad[bad.length - 3000]! ^= 1;
    const file = join(h.home, "streamed.img");
    writeFileSync(file, bad);
    await assert.rejects(api.importImage("streamed", file, o), (e: unknown) => e instanceof api.TgError && e.code === "bad-image" && /CRC mismatch/.test(e.message));
    await seed(h, "streamed", sampleImage({ npages: 50 }));
    const phases: string[] = [];
    // no C core in this suite: the restore fails, and the progress seen before the error arrives
    await assert.rejects(api.restore("streamed", { ...o, onProgress: (e) => phases.push(e.phase) }), (e: unknown) => e instanceof api.TgError);
    assert.ok(phases.includes("start"), `progress before the error: ${phases.join(",")}`);
    assert.deepEqual((await api.ls(undefined, o)).map((m) => m.app).includes("streamed"), true);
  });

  test("kill -9 of the daemon: the next command starts a new one; staging leftovers are removed", async () => {
    const old = h.daemonPid()!;
    process.kill(old, "SIGKILL");
    await waitFor("old daemon gone", () => !isAlive(old), 5000);
    const s = { dir: join(h.home, "store", "staging", "calc.leftover") };
    mkdirSync(s.dir, { recursive: true });
    writeFileSync(join(s.dir, "pid2.img"), "half an image");
    const r = await h.cli(["ls", "calc", "--json"]);
    assert.equal(r.code, 0, r.stderr);
    const now = h.daemonPid();
    assert.ok(now && now !== old && isAlive(now), "a new daemon runs");
    assert.ok(!existsSync(s.dir), "staging leftover removed");
    assert.ok((JSON.parse(r.stdout) as unknown[]).length >= 1, "committed checkpoints still listed");
  });
});
