// Issue 14, the window after the cut (docs/files.md "Changed ranges"): the app is held only while
// the daemon flips the agents' tables and turns copy-before-write on for every page; once it runs
// again the daemon reads the tables, publishes the pages it reads, and reads them. The tests widen
// that window on purpose (TG_TEST_DELAY_AT: the daemon waits there) while the app writes:
// test/fixtures/windowwriter.py rewrites pages not read yet, truncates a file of the set by up to
// 3 MiB (more than an agent saves at once: it waits for the published set), O_TRUNCs files, writes a
// file that was not changed since the last checkpoint, makes and removes files. Its files are a
// function of its operation counter, so after kill -9 and restore it checks them against its memory.
// Also sqlite3 (test/fixtures/sqlbank.py) in the same window, and a kill -9 of the daemon in the
// window: that checkpoint fails with nothing committed, the next one is right.
import assert from "node:assert/strict";
import { chmodSync, existsSync, mkdtempSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, test, type TestContext } from "node:test";
import { isAlive, makeHome, waitFor, type TestHome } from "./helpers/home.js";
import { fixtureScript, requireNative } from "./helpers/native.js";
import { killApp, logLines, logSize, waitLines } from "./helpers/scenario.js";
import { others } from "./helpers/tree.js";

const TIMEOUT = 600_000;
const WAIT = 120_000;

interface Ckpt {
  id: string;
  files?: { id: string; changed: number; ranged?: number; bytesRead: number; cutNs: number; afterNs?: number };
}

function setup(t: TestContext, env: Record<string, string>): { h: TestHome; dir: string; cli: (args: string[]) => Promise<string> } {
  requireNative();
  const h = makeHome("tg-", env);
  const dir = mkdtempSync(join(tmpdir(), "tg-fw-"));
  t.after(async () => {
    await h.cleanup();
    rmSync(dir, { recursive: true, force: true });
  });
  const cli = async (args: string[]): Promise<string> => {
    const r = await h.cli(args);
    assert.equal(r.code, 0, `${args.join(" ")}: ${r.stderr}`);
    return r.stdout;
  };
  return { h, dir, cli };
}

const lastWrote = (ls: string[]): number => {
  for (let i = ls.length - 1; i >= 0; i--) {
    const m = /^wrote (\d+)$/.exec(ls[i]!);
    if (m) return Number(m[1]);
  }
  return 0;
};

/** The app's check of its files against its memory, after a restore (from the log's offset `from`). */
async function verify(h: TestHome, dir: string, name: string): Promise<string> {
  const from = logSize(h, name);
  writeFileSync(join(dir, "cmd"), "verify");
  const ls = await waitLines(h, name, (l) => l.some((x) => x.startsWith("verify ")), "verify", WAIT, from);
  return ls.find((x) => x.startsWith("verify "))!;
}

/** Checkpoints while the app writes (each after ~1000 more operations); the last one's id. */
async function checkpointsWhileWriting(h: TestHome, cli: (args: string[]) => Promise<string>, name: string, n: number): Promise<Ckpt[]> {
  const out: Ckpt[] = [];
  for (let i = 0; i < n; i++) {
    const w = lastWrote(logLines(h, name));
    await waitLines(h, name, (ls) => lastWrote(ls) > w, "more operations", WAIT);
    out.push(JSON.parse(await cli(["checkpoint", name, "--json"])) as Ckpt);
  }
  return out;
}

async function windowScenario(t: TestContext, point: string): Promise<void> {
  const { h, dir, cli } = setup(t, { TG_TEST_DELAY_AT: `${point}:400` });
  await cli(["run", "--name", "ww", "--json", "--", "python3", fixtureScript("windowwriter.py"), dir]);
  await waitLines(h, "ww", (ls) => ls.includes("ready"), "ready", WAIT);
  await checkpointsWhileWriting(h, cli, "ww", 1);
  const cs = await checkpointsWhileWriting(h, cli, "ww", 4);
  // data (8 MiB, a few hundred pages rewritten between checkpoints) is read by ranges
  assert.ok(cs.some((c) => (c.files?.ranged ?? 0) >= 1), `files read by ranges: ${cs.map((c) => JSON.stringify(c.files)).join(" ")}`);
  await killApp(h, "ww");
  await cli(["restore", "ww", "--json"]);
  const v = await verify(h, dir, "ww");
  assert.match(v, /^verify ok \d+$/, v);
  // an older checkpoint (its files composed from ranged increments) too
  await cli(["restore", "ww", "--replace", "--checkpoint", cs[1]!.id, "--json"]);
  const v2 = await verify(h, dir, "ww");
  assert.match(v2, /^verify ok \d+$/, v2);
}

describe("the window after the cut: the app writes while the daemon reads its files (issue 14)", { timeout: TIMEOUT }, () => {
  test("every page saved before it changes (the daemon slow to read the tables): restores match the app's memory", { timeout: TIMEOUT }, async (t) => {
    await windowScenario(t, "files-deferred-read");
  });

  test("the set's pages saved before they change (the daemon slow to read the files): restores match the app's memory", { timeout: TIMEOUT }, async (t) => {
    await windowScenario(t, "files-set-read");
  });

  test("a worker of another uid (65534, forked by root like nginx's) writes through the window: its saves reach files.cow-log, checkpoints commit, restores match its memory", { timeout: TIMEOUT, skip: process.getuid?.() !== 0 ? "needs root (tardigrade run does)" : false }, async (t) => {
    const { h, dir, cli } = setup(t, { TG_TEST_DELAY_AT: "files-deferred-read:400" });
    chmodSync(dir, 0o777); // the worker, uid 65534, makes and removes its files there
    await cli(["run", "--name", "wu", "--json", "--", "python3", fixtureScript("windowwriter.py"), dir, "--worker-uid", "65534"]);
    await waitLines(h, "wu", (ls) => ls.includes("ready"), "ready", WAIT);
    assert.equal(statSync(join(dir, "data")).uid, 65534, "the worker writes its files as uid 65534");
    // the log the agents made (and granted to 65534 at its setuid) gone: the daemon makes it again
    // at the cut, and must let the app's users write it
    rmSync(join(h.home, "apps", "wu", "files.cow-log"));
    // every checkpoint has the worker writing in the window where every page is saved first (before:
    // its save could not open files.cow-log, root's 0600, and each of these checkpoints failed)
    await checkpointsWhileWriting(h, cli, "wu", 1);
    const cs = await checkpointsWhileWriting(h, cli, "wu", 3);
    assert.ok(cs.some((c) => (c.files?.ranged ?? 0) >= 1), `files read by ranges: ${cs.map((c) => JSON.stringify(c.files)).join(" ")}`);
    const worker = others(h, "wu")[0];
    assert.ok(worker, "the worker process");
    const p = h.pids("wu")!;
    process.kill(p.init, "SIGKILL"); // (the tree: its PID namespace's init)
    await waitFor("the tree gone", () => !isAlive(p.init) && !isAlive(p.app) && !isAlive(worker.hostPid), WAIT, 20);
    await cli(["restore", "wu", "--json"]);
    const v = await verify(h, dir, "wu");
    assert.match(v, /^verify ok \d+$/, v);
    await cli(["restore", "wu", "--replace", "--checkpoint", cs[0]!.id, "--json"]);
    const v2 = await verify(h, dir, "wu");
    assert.match(v2, /^verify ok \d+$/, v2);
  });

  test("sqlite3 committing through the window: integrity_check, rows and checksum as the app held them", { timeout: TIMEOUT }, async (t) => {
    const { h, dir, cli } = setup(t, { TG_TEST_DELAY_AT: "files-deferred-read:400" });
    const db = join(dir, "bank.db");
    await cli(["run", "--name", "sql", "--json", "--", "python3", fixtureScript("sqlbank.py"), db, "delete"]);
    const commits = (ls: string[]): number => {
      for (let i = ls.length - 1; i >= 0; i--) {
        const m = /^commit (\d+) rows/.exec(ls[i]!);
        if (m) return Number(m[1]);
      }
      return 0;
    };
    await waitLines(h, "sql", (ls) => commits(ls) >= 60, "the database grows", WAIT);
    for (let i = 0; i < 4; i++) {
      const n = commits(logLines(h, "sql"));
      await waitLines(h, "sql", (ls) => commits(ls) >= n + 3, "more commits", WAIT);
      await cli(["checkpoint", "sql", "--json"]);
    }
    const n = commits(logLines(h, "sql"));
    await waitLines(h, "sql", (ls) => commits(ls) >= n + 5, "more commits after the checkpoint", WAIT);
    await killApp(h, "sql");
    const from = logSize(h, "sql");
    await cli(["restore", "sql", "--json"]);
    await waitLines(h, "sql", (ls) => ls.some((l) => /^commit \d+ rows/.test(l)), "the restored app commits", WAIT, from);
    writeFileSync(`${db}.check`, "");
    const ls = await waitLines(h, "sql", (l) => l.some((x) => x.startsWith("verify ")), "verify", WAIT, from);
    const v = ls.find((x) => x.startsWith("verify "))!;
    assert.match(v, /^verify ok \d+$/, v);
  });

  test("kill -9 of the daemon in the window: that checkpoint fails, nothing is committed, the next one is right", { timeout: TIMEOUT }, async (t) => {
    const { h, dir, cli } = setup(t, { TG_TEST_DELAY_AT: "files-deferred-read:3000" });
    await cli(["run", "--name", "ww", "--json", "--", "python3", fixtureScript("windowwriter.py"), dir]);
    await waitLines(h, "ww", (ls) => ls.includes("ready"), "ready", WAIT);
    const [c1] = await checkpointsWhileWriting(h, cli, "ww", 1);
    const w = lastWrote(logLines(h, "ww"));
    await waitLines(h, "ww", (ls) => lastWrote(ls) > w, "more operations", WAIT);
    // the second checkpoint: the daemon killed while the flipped tables wait to be read
    const first = h.daemonPid()!;
    const flipped = join(h.home, "apps", "ww", "files.pending-ranges.flipped");
    const ck = h.cliSpawn(["checkpoint", "ww", "--json"]);
    await waitFor("the window after the cut", () => existsSync(flipped), WAIT, 5);
    process.kill(first, "SIGKILL");
    const failed = await ck.done;
    assert.notEqual(failed.code, 0, `the checkpoint in the window failed: ${failed.stdout}`);
    await waitFor("the daemon gone", () => !isAlive(first), WAIT, 50);
    // (the next command starts a daemon)
    const ids = (JSON.parse(await cli(["ls", "ww", "--json"])) as { id: string }[]).map((m) => m.id);
    assert.deepEqual(ids, [c1!.id], "nothing of the failed checkpoint is committed");
    // more writes, then a checkpoint: the lost interval's changes are in it (the files changed are read whole)
    const cs = await checkpointsWhileWriting(h, cli, "ww", 1);
    assert.equal(cs[0]!.files?.ranged ?? 0, 0, `after the lost window nothing is taken by ranges: ${JSON.stringify(cs[0]!.files)}`);
    const more = await checkpointsWhileWriting(h, cli, "ww", 1);
    assert.ok((more[0]!.files?.ranged ?? 0) >= 1, `then by ranges again: ${JSON.stringify(more[0]!.files)}`);
    await killApp(h, "ww");
    await cli(["restore", "ww", "--checkpoint", cs[0]!.id, "--json"]);
    const v = await verify(h, dir, "ww");
    assert.match(v, /^verify ok \d+$/, v);
    await cli(["restore", "ww", "--replace", "--json"]);
    const v2 = await verify(h, dir, "ww");
    assert.match(v2, /^verify ok \d+$/, v2);
  });
  // A parent hands an open file to a worker and closes its own copy right after fork; the worker
  // writes through it. The child's table of tracked fds used to be copied from the parent's live
  // table, which the parent's close may clear first: the worker's writes then went untracked and
  // the file was read whole at the cut. The agent now copies the table in fork's prepare handler.
  // TARDIGRADE_TEST_AFTER_FORK_MS makes the child slow to take its table, so the parent's close
  // always comes first: before the fix, the second checkpoint read all 4 MiB of the file.
  test("a file handed to a forked worker whose parent closes its copy at once: the worker's writes are tracked (read by ranges), the restore right", { timeout: TIMEOUT }, async (t) => {
    const { h, dir, cli } = setup(t, { TARDIGRADE_TEST_AFTER_FORK_MS: "300" });
    const r = await h.cli(["run", "--name", "fh", "--json", "--", "python3", fixtureScript("forkhand.py"), dir]);
    assert.equal(r.code, 0, r.stderr);
    await waitLines(h, "fh", (l) => l.includes("ready"), "ready", WAIT);
    await cli(["checkpoint", "fh", "--json"]);
    writeFileSync(join(dir, "go"), "");
    await waitLines(h, "fh", (l) => l.includes("worker wrote") && l.includes("parent closed"), "the worker's write and the parent's close", WAIT);
    const c2 = JSON.parse(await cli(["checkpoint", "fh", "--json"])) as Ckpt;
    assert.ok(c2.files, "the checkpoint has files");
    assert.ok((c2.files.ranged ?? 0) >= 1 && c2.files.bytesRead < 1 << 20, `the file read by ranges, not whole: ${JSON.stringify(c2.files)}`);
    await killApp(h, "fh");
    const fd = join(dir, "data");
    const { openSync, writeSync, closeSync, readFileSync } = await import("node:fs");
    const w = openSync(fd, "r+");
    writeSync(w, Buffer.alloc(4096, "c"), 0, 4096, 2 << 20);
    closeSync(w);
    const rr = await h.cli(["restore", "fh", "--json"]);
    assert.equal(rr.code, 0, rr.stderr);
    const data = readFileSync(fd);
    assert.equal(data.length, 4 << 20);
    assert.equal(data.subarray(1 << 20, (1 << 20) + 4096).toString(), "b".repeat(4096), "the worker's write is the checkpoint's");
    assert.equal(data.subarray(2 << 20, (2 << 20) + 4096).toString(), "a".repeat(4096), "the write after it is rolled back");
    writeFileSync(join(dir, "release"), "");
  });
});
