// CLI and daemon behaviour that does not need the C core: bad input, clear errors,
// daemon start on first use and after kill -9, inspect/ls of stored checkpoints.
import assert from "node:assert/strict";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { RecordType } from "../src/image/format.js";
import { sampleImage } from "../src/image/writer.js";
import { LocalStore } from "../src/store/local.js";
import { isAlive, makeHome, waitFor, type TestHome } from "./helpers/home.js";

/** Commits a crafted image as the next checkpoint of `app` (as the daemon would). */
async function seed(h: TestHome, app: string, image = sampleImage({ npages: 40 })): Promise<string> {
  const store = new LocalStore(join(h.home, "store"));
  const s = await store.stage(app);
  writeFileSync(s.imagePath(2), image);
  return (await store.put(s, { downtimeNs: 2_500_000, totalNs: 9_000_000, threads: 1 })).id;
}

function expectError(r: { code: number | null; stderr: string }, re: RegExp): void {
  assert.equal(r.code, 1, `exit code (stderr: ${r.stderr})`);
  assert.match(r.stderr, /^tardigrade: /);
  assert.match(r.stderr, re);
}

describe("CLI without the C core", { timeout: 120_000 }, () => {
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
    assert.deepEqual(list.map((m) => [m.id, m.pages, m.kind, m.threads, m.downtimeNs]), [[id, 40, "full", 1, 2_500_000]]);
    const text = await h.cli(["ls"]);
    assert.match(text.stdout, /^ID\s+TIME\s+KIND\s+PAGES\s+BYTES\s+THREADS\s+DOWNTIME/);
    assert.match(text.stdout, new RegExp(`${id}\\s+\\S+\\s+full\\s+40\\s+\\S+ KiB\\s+1\\s+2\\.50 ms`));
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
    test(`restore of a ${damage} image names the file and the offset; nothing started`, async () => {
      const app = `dmg-${damage}`;
      const id = await seed(h, app, sampleImage({ npages: 300 }));
      const file = join(h.home, "store", "checkpoints", id, "pid2.img");
      const buf = readFileSync(file);
      // Offset of the second PAGES record.
      let off = 64;
      const pages: number[] = [];
      while (off < buf.length) {
        if (buf.readUInt32LE(off) === RecordType.PAGES) pages.push(off);
        off += 32 + ((Number(buf.readBigUInt64LE(off + 8)) + 7) & ~7);
      }
      const target = pages[1]!;
      if (damage === "truncated") writeFileSync(file, buf.subarray(0, target + 32 + 100));
      else {
        buf[target + 32 + 16 + 777]! ^= 0x20;
        writeFileSync(file, buf);
      }
      const r = await h.cli(["restore", app]);
      expectError(r, new RegExp(`invalid checkpoint image ${file.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}: .*at offset ${target} \\(0x${target.toString(16)}\\)`));
      assert.match(r.stderr, damage === "truncated" ? /truncated record PAGES/ : /payload CRC mismatch in record PAGES/);
      assert.match(r.stderr, /use an earlier checkpoint/);
      assert.ok(!existsSync(join(h.home, "apps", app, "pidfile")), "nothing started");
      // inspect reports the same defect.
      expectError(await h.cli(["inspect", id]), new RegExp(`at offset ${target}`));
    });
  }

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
    const id = await seed(h, "streamed", sampleImage({ npages: 700 }));
    const file = join(h.home, "store", "checkpoints", id, "pid2.img");
    const buf = readFileSync(file);
    buf[buf.length - 3000]! ^= 1;
    writeFileSync(file, buf);
    const phases: string[] = [];
    await assert.rejects(
      api.restore("streamed", { ...o, onProgress: (e) => phases.push(e.phase) }),
      (e: unknown) => e instanceof api.TgError && e.code === "bad-image" && /payload CRC mismatch in record PAGES/.test(e.message),
    );
    assert.ok(phases.includes("verify"), `progress before the error: ${phases.join(",")}`);
    assert.deepEqual((await api.ls(undefined, o)).map((m) => m.app).includes("streamed"), true);
  });

  test("kill -9 of the daemon: the next command starts a new one; staging leftovers are removed", async () => {
    const old = h.daemonPid()!;
    process.kill(old, "SIGKILL");
    await waitFor("old daemon gone", () => !isAlive(old), 5000);
    const store = new LocalStore(join(h.home, "store"));
    const s = await store.stage("calc");
    writeFileSync(s.imagePath(2), "half an image");
    const r = await h.cli(["ls", "calc", "--json"]);
    assert.equal(r.code, 0, r.stderr);
    const now = h.daemonPid();
    assert.ok(now && now !== old && isAlive(now), "a new daemon runs");
    assert.ok(!existsSync(s.dir), "staging leftover removed");
    assert.ok((JSON.parse(r.stdout) as unknown[]).length >= 1, "committed checkpoints still listed");
  });
});
