// Issue 10, items 4 and 5, for apps run with --files none (issue 14 rolls files back otherwise:
// test/files-rollback.test.ts): files the app writes are not rolled back, so a restore refuses
// (naming the file) when one changed since the checkpoint, unless --allow-file-changes; the
// app's own log is exempt and gets a marker line; shared writable file mappings have their
// contents in the checkpoint and get them back (or come back as memory once the file is gone).
// Real programs: python3 (files, mmap, sqlite3 in PERSIST and WAL modes) and a JVM.
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, unlinkSync, writeFileSync, type BigIntStats } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, test, type TestContext } from "node:test";
import { ImageError, parseImage } from "../src/image/parser.js";
import { RecordType } from "../src/image/format.js";
import { buildImage, procRecord, threadRecord } from "../src/image/writer.js";
import { ROOT, isAlive, makeHome, waitFor, type TestHome } from "./helpers/home.js";
import { fixture, fixtureScript, requireNative } from "./helpers/native.js";
import { killApp, logLines, logSize, status, waitLines } from "./helpers/scenario.js";

const TIMEOUT = 1_800_000; // per describe block (all its tests): generous for a busy machine; every wait inside is on a condition

/** These tests are of apps run with `--files none` (no file rollback, issue 14): the restore's refusal. */
async function runApp(h: TestHome, name: string, argv: string[]): Promise<void> {
  const r = await h.cli(["run", "--name", name, "--files", "none", "--json", "--", ...argv]);
  assert.equal(r.code, 0, `run ${name} failed: ${r.stderr}`);
}
const WAIT = 60_000;

function setup(t: TestContext, env: NodeJS.ProcessEnv = {}): { h: TestHome; dir: string } {
  requireNative();
  const h = makeHome("tg-", env);
  const dir = mkdtempSync(join(tmpdir(), "tg-files-"));
  t.after(async () => {
    await h.cleanup();
    rmSync(dir, { recursive: true, force: true });
  });
  return { h, dir };
}

async function checkpoint(h: TestHome, name: string): Promise<string> {
  const r = await h.cli(["checkpoint", name, "--json"]);
  assert.equal(r.code, 0, `checkpoint ${name}: ${r.stderr}`);
  return (JSON.parse(r.stdout) as { id: string }).id;
}

/** Number in the last line matching re. */
function lastNum(ls: string[], re: RegExp): number {
  for (let i = ls.length - 1; i >= 0; i--) {
    const m = re.exec(ls[i]!);
    if (m) return Number(m[1]);
  }
  return 0;
}

/** A refused restore: exit 1, the file named, the flag offered, and nothing started. */
/** A python3 app holding data.txt (4 KiB) open, checkpointed, then killed; the file's stat then. */
async function heldFileCheckpointed(t: TestContext): Promise<{ h: TestHome; file: string; before: BigIntStats }> {
  const { h, dir } = setup(t);
  const file = join(dir, "data.txt");
  writeFileSync(file, "x".repeat(4096));
  await runApp(h, "holder", ["python3", fixtureScript("holdopen.py"), file]);
  await waitLines(h, "holder", (ls) => ls.length >= 3, "ticks", WAIT);
  await checkpoint(h, "holder");
  await killApp(h, "holder");
  return { h, file, before: statSync(file, { bigint: true }) };
}

/** Sets file's mtime back to mtimeNs, to the nanosecond. */
function touchBack(file: string, mtimeNs: bigint): void {
  const sec = mtimeNs / 1_000_000_000n;
  const nsec = (mtimeNs % 1_000_000_000n).toString().padStart(9, "0");
  execFileSync("touch", ["-d", `@${sec}.${nsec}`, file]);
}

async function assertRefused(h: TestHome, name: string, file: string, args: string[] = []): Promise<string> {
  const r = await h.cli(["restore", name, ...args]);
  assert.equal(r.code, 1, `restore should be refused\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
  assert.match(r.stderr, /^tardigrade: cannot restore /, r.stderr);
  assert.ok(r.stderr.includes(file), `the refusal names ${file}: ${r.stderr}`);
  assert.match(r.stderr, /--allow-file-changes/, r.stderr);
  return r.stderr;
}

describe("files written since the checkpoint", { timeout: TIMEOUT }, () => {
  test("an app appending to a file: restore refused naming it (also with --replace, the app survives); --allow-file-changes restores", async (t) => {
    const { h, dir } = setup(t);
    const file = join(dir, "out.txt");
    await runApp(h, "app", ["python3", fixtureScript("appender.py"), file, "0.05"]);
    await waitLines(h, "app", (ls) => ls.length >= 5, "first lines", WAIT);
    const id = await checkpoint(h, "app");
    const at = readFileSync(file, "utf8").split("\n").length;
    await waitFor("more lines appended after the checkpoint", () => readFileSync(file, "utf8").split("\n").length >= at + 5, WAIT);
    // --replace: refused before the running app is touched
    const pid = h.pids("app")!.app;
    const why = await assertRefused(h, "app", file, ["--replace"]);
    assert.match(why, /open for writing as fd \d+/);
    assert.ok(isAlive(pid), "the running app survived the refused --replace");
    const n = lastNum(logLines(h, "app"), /^wrote (\d+)$/);
    await waitLines(h, "app", (ls) => lastNum(ls, /^wrote (\d+)$/) > n + 2, "the app keeps running", WAIT);
    await killApp(h, "app");
    await assertRefused(h, "app", file);
    assert.equal((await status(h, "app")).state, "exited", "a refused restore starts nothing");
    const from = logSize(h, "app");
    const r = await h.cli(["restore", "app", "--allow-file-changes", "--json"]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal((JSON.parse(r.stdout) as { checkpoint: string }).checkpoint, id);
    await waitLines(h, "app", (ls) => ls.length >= 3, "the restored app writes again", WAIT, from);
  });

  test("an app printing only to stdout: restored, and the log has the marker line", async (t) => {
    const { h } = setup(t);
    await runApp(h, "counter", [fixture("counter"), "100000", "50"]);
    await waitLines(h, "counter", (ls) => ls.length >= 5, "first lines", WAIT);
    const id = await checkpoint(h, "counter");
    await waitLines(h, "counter", (ls) => ls.length >= 10, "output after the checkpoint", WAIT);
    await killApp(h, "counter");
    const from = logSize(h, "counter");
    const r = await h.cli(["restore", "counter"]);
    assert.equal(r.code, 0, r.stderr);
    await waitLines(h, "counter", (ls) => ls.length >= 3, "restored output", WAIT, from);
    const after = h.log("counter").slice(from).split("\n");
    assert.match(after[0]!, new RegExp(`^--- tardigrade: restored ${id} at \\d{4}-\\d\\d-\\d\\dT\\d\\d:\\d\\d:\\d\\d\\.\\d{3}Z ---$`), `marker line first after the restore:\n${after.slice(0, 3).join("\n")}`);
    assert.match(after[1]!, /^count \d+$/);
  });

  test("inode reuse: the file deleted and recreated with the same size and mtime is refused", async (t) => {
    const { h, file, before } = await heldFileCheckpointed(t);
    const content = readFileSync(file);
    unlinkSync(file);
    writeFileSync(file, content);
    touchBack(file, before.mtimeNs);
    const now = statSync(file, { bigint: true });
    assert.equal(now.size, before.size);
    assert.equal(now.mtimeNs, before.mtimeNs, "same mtime");
    t.diagnostic(`inode ${before.ino} -> ${now.ino} (${now.ino === before.ino ? "reused" : "not reused"})`);
    const why = await assertRefused(h, "holder", file);
    assert.match(why, /another file now|changed since the checkpoint/);
    assert.equal((await status(h, "holder")).state, "exited");
  });

  test("same inode, same size and mtime, other contents (rewritten in place, touch -d): refused", async (t) => {
    const { h, file, before } = await heldFileCheckpointed(t);
    writeFileSync(file, "y".repeat(4096)); // same inode: truncated and rewritten
    touchBack(file, before.mtimeNs);
    const now = statSync(file, { bigint: true });
    assert.deepEqual([now.ino, now.size, now.mtimeNs], [before.ino, before.size, before.mtimeNs], "same inode, size and mtime");
    const why = await assertRefused(h, "holder", file);
    assert.match(why, /changed since the checkpoint \(inode changed/);
    assert.equal((await status(h, "holder")).state, "exited");
  });

  for (const mode of ["persist", "wal"] as const) {
    test(`sqlite3 in ${mode.toUpperCase()} mode: more commits after the checkpoint: refused naming the database; --allow-file-changes proceeds`, async (t) => {
      const { h, dir } = setup(t);
      const db = join(dir, "t.db");
      await runApp(h, "sql", ["python3", fixtureScript("sqlwriter.py"), db, mode]);
      await waitLines(h, "sql", (ls) => ls.includes(`mode ${mode}`) && lastNum(ls, /^batch (\d+)$/) >= 5, "first batches", WAIT);
      if (mode === "wal") {
        const maps = readFileSync(`/proc/${h.pids("sql")!.app}/maps`, "utf8");
        assert.ok(maps.includes(`${db}-shm`), `the -shm file is mapped:\n${maps}`);
      }
      const id = await checkpoint(h, "sql");
      if (mode === "wal") {
        const ins = await h.cli(["inspect", id, "--json"]);
        assert.equal(ins.code, 0, ins.stderr);
        const img = (JSON.parse(ins.stdout) as { image: { vmas: { path: string; contents?: boolean; pagesStored: number }[]; files: { path: string; contentsStored: boolean }[] } }).image;
        const shm = img.vmas.find((v) => v.path === `${db}-shm`);
        assert.ok(shm?.contents && shm.pagesStored > 0, `the -shm mapping's contents are stored: ${JSON.stringify(shm)}`);
        assert.ok(img.files.some((f) => f.path === `${db}-shm` && f.contentsStored), JSON.stringify(img.files));
      }
      const n = lastNum(logLines(h, "sql"), /^batch (\d+)$/);
      await waitLines(h, "sql", (ls) => lastNum(ls, /^batch (\d+)$/) >= n + 5, "more commits", WAIT);
      await killApp(h, "sql");
      await assertRefused(h, "sql", db);
      assert.equal((await status(h, "sql")).state, "exited");
      const from = logSize(h, "sql");
      const r = await h.cli(["restore", "sql", "--allow-file-changes"]);
      assert.equal(r.code, 0, r.stderr);
      await waitFor("the restored writer runs", () => isAlive(h.pids("sql")?.app ?? 0) && h.log("sql").length > from, WAIT);
    });
  }
});

describe("shared writable file mappings", { timeout: TIMEOUT }, () => {
  test("contents captured and put back into the file; after the file is deleted they come back as memory", async (t) => {
    const { h, dir } = setup(t);
    const file = join(dir, "map.dat");
    await runApp(h, "map", ["python3", fixtureScript("sharedmap.py"), file, "32768"]);
    await waitLines(h, "map", (ls) => ls.length >= 5, "ticks", WAIT);
    const id = await checkpoint(h, "map");
    const n = lastNum(logLines(h, "map"), /^tick (\d+) ok$/);
    await waitLines(h, "map", (ls) => lastNum(ls, /^tick (\d+) ok$/) >= n + 10, "ticks after the checkpoint", WAIT);
    await killApp(h, "map");
    // the file holds a later counter than the checkpoint's memory expects: it must be put back
    let from = logSize(h, "map");
    let r = await h.cli(["restore", "map"]);
    assert.equal(r.code, 0, r.stderr);
    let ls = await waitLines(h, "map", (x) => x.filter((l) => l.startsWith("tick")).length >= 5, "restored ticks", WAIT, from);
    assert.deepEqual(ls.filter((l) => l.startsWith("MISMATCH")), [], ls.join("\n"));
    // again from the same checkpoint, with the file gone: shared memory with the same contents
    await killApp(h, "map");
    unlinkSync(file);
    from = logSize(h, "map");
    r = await h.cli(["restore", "map", "--checkpoint", id]);
    assert.equal(r.code, 0, r.stderr);
    ls = await waitLines(h, "map", (x) => x.filter((l) => l.startsWith("tick")).length >= 5, "restored ticks (file deleted)", WAIT, from);
    assert.deepEqual(ls.filter((l) => l.startsWith("MISMATCH")), [], ls.join("\n"));
    assert.ok(!existsSync(file), "the deleted file is not recreated");
    const maps = readFileSync(`/proc/${h.pids("map")!.app}/maps`, "utf8");
    assert.ok(!maps.includes(file), "no mapping of the deleted path");
  });

  test("MAP_SHARED anonymous and memfd memory: captured at the same instant as private memory", async (t) => {
    const { h } = setup(t);
    await runApp(h, "shm", [fixture("shmcount")]);
    await waitLines(h, "shm", (ls) => ls.filter((l) => l.startsWith("ok ")).length >= 2, "counting", WAIT);
    // several checkpoints: the app counts in all three places at full speed all along
    for (let i = 0; i < 3; i++) await checkpoint(h, "shm");
    await killApp(h, "shm");
    const from = logSize(h, "shm");
    const r = await h.cli(["restore", "shm"]);
    assert.equal(r.code, 0, r.stderr);
    const ls = await waitLines(h, "shm", (x) => x.some((l) => l.startsWith("CORRUPT")) || x.filter((l) => l.startsWith("ok ")).length >= 3, "counting after the restore", WAIT, from);
    assert.deepEqual(ls.filter((l) => l.startsWith("CORRUPT")), [], `the shared counters agree with the private one: ${ls.join(" | ")}`);
    assert.equal((await status(h, "shm")).state, "running");
  });

  test("a shared writable mapping of a file over 64 MiB: checkpoint refused naming it, nothing committed, the app runs on", async (t) => {
    // The daemon waits after the agent's refusal: the store has seen the image end early by then
    // (a race that a busy machine used to lose, reporting the store's 'missing END record').
    const { h, dir } = setup(t, { TG_TEST_DELAY_AT: "checkpoint-agent-failed:1500" });
    const file = join(dir, "big.dat");
    await runApp(h, "big", ["python3", fixtureScript("sharedmap.py"), file, String(65 * 1024 * 1024)]);
    await waitLines(h, "big", (ls) => ls.length >= 3, "ticks", WAIT);
    const r = await h.cli(["checkpoint", "big"]);
    assert.equal(r.code, 1, r.stdout);
    assert.ok(r.stderr.includes(file), `names the file: ${r.stderr}`);
    assert.match(r.stderr, /shared and writable.*65 MiB.*64 MiB/, r.stderr);
    const ls = await h.cli(["ls", "big", "--json"]);
    assert.deepEqual(JSON.parse(ls.stdout), []);
    const n = lastNum(logLines(h, "big"), /^tick (\d+) ok$/);
    await waitLines(h, "big", (x) => lastNum(x, /^tick (\d+) ok$/) > n + 2, "the app keeps running", WAIT);
  });

  test("a JVM and its hsperfdata file: restored, also after the file was deleted", async (t) => {
    const { h, dir } = setup(t);
    execFileSync("javac", ["-d", dir, fixtureScript("Ticker.java")]);
    await runApp(h, "jvm", ["java", "-Xmx64m", "-XX:+UsePerfData", "-cp", dir, "Ticker", "1000000"]);
    await waitLines(h, "jvm", (ls) => lastNum(ls, /^tick (\d+)$/) >= 5, "ticks", 120_000);
    const maps = readFileSync(`/proc/${h.pids("jvm")!.app}/maps`, "utf8");
    const perf = maps.split("\n").find((l) => l.includes("/hsperfdata_") && l.split(/\s+/)[1]?.startsWith("rw-s"));
    assert.ok(perf, `the JVM maps its hsperfdata file shared and writable:\n${maps}`);
    const perfPath = perf.slice(perf.indexOf("/")).replace(/ \(deleted\)$/, "");
    const id = await checkpoint(h, "jvm");
    const n = lastNum(logLines(h, "jvm"), /^tick (\d+)$/);
    await waitLines(h, "jvm", (ls) => lastNum(ls, /^tick (\d+)$/) >= n + 5, "ticks after the checkpoint", WAIT);
    await killApp(h, "jvm");
    for (const deleted of [false, true]) {
      if (deleted && existsSync(perfPath)) unlinkSync(perfPath);
      const from = logSize(h, "jvm");
      const r = await h.cli(["restore", "jvm", "--checkpoint", id]);
      assert.equal(r.code, 0, `restore (hsperfdata ${deleted ? "deleted" : "present"}): ${r.stderr}`);
      const ls = await waitLines(h, "jvm", (x) => x.filter((l) => /^tick \d+$/.test(l)).length >= 5, `restored ticks (hsperfdata ${deleted ? "deleted" : "present"})`, WAIT, from);
      const first = Number(/^tick (\d+)$/.exec(ls.find((l) => /^tick \d+$/.test(l))!)![1]);
      assert.ok(first > 1 && first <= n + 6, `continues from the checkpoint (tick ${first}, checkpoint near ${n})`);
      await killApp(h, "jvm");
    }
  });
});

describe("FILE_STATE records: bad input", () => {
  /** A FILE_STATE payload for `path` (docs/format.md). */
  function fileState(path: string, o: { flags?: number; size?: bigint; ino?: bigint } = {}): Buffer {
    const b = Buffer.alloc(64);
    b.writeUInt32LE(o.flags ?? 1, 0);
    b.writeUInt32LE(3, 4);
    b.writeBigUInt64LE(o.ino ?? 12345n, 16);
    b.writeBigUInt64LE(o.size ?? 10n, 24);
    return Buffer.concat([b, Buffer.from(path)]);
  }

  test("parsed with its fields; a short one names the record and its offset (parser and restorer)", async (t) => {
    requireNative();
    const dir = mkdtempSync(join(tmpdir(), "tg-fs-"));
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    const good = join(dir, "good.img");
    writeFileSync(good, buildImage([procRecord(), threadRecord({ tid: 2 }), { type: RecordType.FILE_STATE, payload: fileState("/nonexistent/db") }]));
    const img = await parseImage(good);
    assert.equal(img.files.length, 1);
    assert.equal(img.files[0]!.path, "/nonexistent/db");
    assert.equal(img.files[0]!.fd, 3);
    assert.equal(img.files[0]!.file.ino, 12345n);
    const off = 64 + 32 + 680 + 32 + 112;
    const bad = join(dir, "bad.img");
    writeFileSync(bad, buildImage([procRecord(), threadRecord({ tid: 2 }), { type: RecordType.FILE_STATE, payload: Buffer.alloc(63) }]));
    await assert.rejects(parseImage(bad), (e: unknown) => e instanceof ImageError && e.offset === off && /FILE_STATE/.test(e.message));
    const restorer = join(ROOT, "native", "build", "tardigrade-restore");
    const r = spawnSync(restorer, ["--check-files", "--image", bad], { encoding: "utf8" });
    assert.equal(r.status, 2, r.stderr);
    assert.match(r.stderr, new RegExp(`bad\\.img: offset ${off}: FILE_STATE record too short`), r.stderr);
    // the check itself: a file held for writing that is gone is named; the flag lets it pass
    const c = spawnSync(restorer, ["--check-files", "--image", good], { encoding: "utf8" });
    assert.equal(c.status, 3, c.stderr);
    assert.match(c.stderr, /FILES-CHANGED \/nonexistent\/db \(open for writing as fd 3\) cannot be opened/);
    assert.equal(spawnSync(restorer, ["--check-files", "--allow-file-changes", "--image", good]).status, 0);
  });
});
