// A mapped executable changed in place (same inode, size and mtime) must not be
// resumed silently (issue 11, defect 17): the checkpoint records the ELF build-id (or the
// content hash of a file without one) of every executable mapping, and restore refuses,
// naming the file. A copy with another inode but the same build-id (another host with
// the same packages) restores.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { copyFileSync, mkdtempSync, openSync, closeSync, readFileSync, readSync, renameSync, rmSync, statSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test, type TestContext } from "node:test";
import { FileIdentityCache, readBuildId } from "../src/daemon/mapped-files.js";
import { makeHome, type TestHome } from "./helpers/home.js";
import { fixture, requireNative } from "./helpers/native.js";
import { killApp, logSize, runApp, waitLines } from "./helpers/scenario.js";
import { ROOT } from "./helpers/home.js";

function setup(t: TestContext): { h: TestHome; dir: string } {
  requireNative();
  const h = makeHome("tg-mf-");
  const dir = mkdtempSync(join(tmpdir(), "tg-mf-bin-"));
  t.after(async () => {
    await h.cleanup();
    rmSync(dir, { recursive: true, force: true });
  });
  return { h, dir };
}

/** Rewrites `len` bytes at `off` of `file` in place (same inode), keeping its size and mtime. */
function patchInPlace(file: string, off: number, bytes: Buffer): void {
  const st = statSync(file);
  const ref = `${file}.times`;
  execFileSync("touch", ["-r", file, ref]); // keeps the nanoseconds (utimes from JS would not)
  const fd = openSync(file, "r+");
  try {
    writeSync(fd, bytes, 0, bytes.length, off);
  } finally {
    closeSync(fd);
  }
  execFileSync("touch", ["-r", ref, file]);
  rmSync(ref);
  const after = statSync(file);
  assert.deepEqual([after.ino, after.size, after.mtimeMs], [st.ino, st.size, st.mtimeMs], "same inode, size and mtime");
}

function readAt(file: string, off: number, len: number): Buffer {
  const b = Buffer.alloc(len);
  const fd = openSync(file, "r");
  try {
    readSync(fd, b, 0, len, off);
  } finally {
    closeSync(fd);
  }
  return b;
}

interface Listed {
  id: string;
  stats?: { mappedFiles?: { path: string; buildId?: string; sha256?: string }[] };
}

async function checkpointOf(h: TestHome, name: string): Promise<Listed> {
  const c = await h.cli(["checkpoint", name, "--json"]);
  assert.equal(c.code, 0, c.stderr);
  const id = (JSON.parse(c.stdout) as { id: string }).id;
  const ls = await h.cli(["ls", name, "--json"]);
  return (JSON.parse(ls.stdout) as Listed[]).find((m) => m.id === id)!;
}

test("an executable rewritten in place with the same size and mtime: restore refuses naming it; the same build-id on another inode restores", { timeout: 300_000 }, async (t) => {
  const { h, dir } = setup(t);
  const exe = join(dir, "counter");
  copyFileSync(fixture("counter"), exe);
  const buildId = await readBuildId(exe);
  assert.ok(buildId, "the fixture has a GNU build-id");
  await runApp(h, "bid", [exe, "100000", "50"]);
  await waitLines(h, "bid", (ls) => ls.some((l) => l.startsWith("count 3")), "counting", 60_000);
  const m = await checkpointOf(h, "bid");
  const rec = m.stats?.mappedFiles?.find((f) => f.path === exe);
  assert.deepEqual(rec && { buildId: rec.buildId, sha256: rec.sha256 }, { buildId, sha256: undefined }, JSON.stringify(m.stats?.mappedFiles));
  assert.ok(m.stats!.mappedFiles!.some((f) => /libc\.so/.test(f.path)), "libc is recorded too");
  await killApp(h, "bid");

  // A rebuild in place (here: its build-id note's bytes changed), size and mtime kept.
  const whole = readFileSync(exe);
  const at = whole.indexOf(Buffer.from(buildId, "hex"));
  assert.ok(at > 0);
  const orig = readAt(exe, at, 1);
  patchInPlace(exe, at, Buffer.from([orig[0]! ^ 0xff]));
  const r = await h.cli(["restore", "bid"]);
  assert.equal(r.code, 1, `restore must refuse: ${r.stdout}${r.stderr}`);
  assert.match(r.stderr, new RegExp(`^tardigrade: cannot restore bid from ${m.id}: ${exe.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")} changed since the checkpoint \\(ELF build-id ${buildId}, now [0-9a-f]+\\)\\. The app would resume on different code`));
  const st = await h.cli(["status", "bid", "--json"]);
  assert.equal((JSON.parse(st.stdout) as { state: string }).state, "exited", "nothing started");

  // Another host with the same package: same build-id, another inode (and this host's mtime kept).
  patchInPlace(exe, at, orig);
  const ino = statSync(exe).ino;
  copyFileSync(exe, `${exe}.new`);
  execFileSync("touch", ["-r", exe, `${exe}.new`]);
  renameSync(`${exe}.new`, exe);
  assert.notEqual(statSync(exe).ino, ino);
  const from = logSize(h, "bid");
  const ok = await h.cli(["restore", "bid", "--json"]);
  assert.equal(ok.code, 0, ok.stderr);
  await waitLines(h, "bid", (ls) => ls.some((l) => l.startsWith("count ")), "counting after the restore", 60_000, from);
  await killApp(h, "bid");
});

test("a file without a build-id is compared by content (SHA-256), cached by dev/ino/size/mtime/ctime", async (t) => {
  const { dir } = setup(t);
  const exe = join(dir, "nobid");
  execFileSync("cc", ["-O2", "-Wl,--build-id=none", "-o", exe, join(ROOT, "test", "fixtures", "counter.c")]);
  assert.equal(await readBuildId(exe), null);
  const cache = new FileIdentityCache();
  const vmas = [{ path: exe, prot: 5, kind: 3, vflags: 0 }, { path: exe, prot: 1, kind: 3, vflags: 0 }, { path: "/nonexistent/lib.so", prot: 5, kind: 3, vflags: 0 }, { path: "[heap]", prot: 3, kind: 1, vflags: 1 }];
  const rec = await cache.describe(vmas);
  assert.equal(rec.length, 1);
  assert.match(rec[0]!.sha256 ?? "", /^[0-9a-f]{64}$/);
  await cache.check(rec, "cannot restore x");
  const size = statSync(exe).size;
  patchInPlace(exe, size - 1, Buffer.from([readAt(exe, size - 1, 1)[0]! ^ 1]));
  await assert.rejects(cache.check(rec, "cannot restore x"), (e: Error) => new RegExp(`cannot restore x: ${exe} changed since the checkpoint \\(its content differs`).test(e.message));
  rmSync(exe);
  await assert.rejects(cache.check(rec, "cannot restore x"), (e: Error) => new RegExp(`${exe}, mapped by the app at the checkpoint, cannot be read on this host`).test(e.message));
});
