// Issue 14, changed ranges: between checkpoints the agents note which byte ranges of which files the
// app's writes touch (native/agent/files-ranges.c); a checkpoint then reads only those ranges of a
// file that changed (docs/files.md, "Changed ranges"). test/fixtures/rangewriter.py changes its
// files through every path the agent follows (pwrite, write, writev, appends, size changes, fd
// copies, copy_file_range, sendfile, forked children, one of them killed, a shared mapping) with
// random offsets, lengths and bytes. After each phase the test reads the files; the checkpoints
// taken then must give back exactly those bytes after kill -9 and restore, the latest one and an
// older one (composed from ranged increments). A write whose range was not noted leaves the
// parent's bytes in the checkpoint: the byte comparison fails.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, test, type TestContext } from "node:test";
import { makeHome, type TestHome } from "./helpers/home.js";
import { fixtureScript, requireNative } from "./helpers/native.js";
import { killApp, logSize, waitLines } from "./helpers/scenario.js";

const TIMEOUT = 400_000;
const FILES = ["big", "log", "sized", "src", "mapped"];

interface Ckpt {
  id: string;
  files?: { id: string; files: number; changed: number; ranged?: number; bytesRead: number };
}

const digest = (dir: string): Record<string, string> => Object.fromEntries(FILES.map((f) => [f, createHash("sha256").update(readFileSync(join(dir, f))).digest("hex")]));

/** A home and a scratch directory, both removed after the test; `cli` must succeed. */
function scratch(t: TestContext, env: Record<string, string> = {}): { h: TestHome; dir: string; cli: (args: string[]) => Promise<string> } {
  requireNative();
  const h = makeHome("tg-", env);
  const dir = mkdtempSync(join(tmpdir(), "tg-rg-"));
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

describe("changed ranges of the app's files (issue 14)", { timeout: TIMEOUT }, () => {
  test("only the noted ranges are read at the cut; restores give back each checkpoint's bytes exactly", { timeout: TIMEOUT }, async (t) => {
    const { h, dir, cli } = scratch(t);
    const checkpoint = async (): Promise<Ckpt> => JSON.parse(await cli(["checkpoint", "rw", "--json"])) as Ckpt;
    const phase = async (n: number): Promise<void> => {
      const from = logSize(h, "rw");
      writeFileSync(join(dir, "cmd.tmp"), String(n));
      renameSync(join(dir, "cmd.tmp"), join(dir, "cmd"));
      await waitLines(h, "rw", (ls) => ls.includes(`done ${n}`), `done ${n}`, 120_000, from);
    };
    await cli(["run", "--name", "rw", "--json", "--", "python3", fixtureScript("rangewriter.py"), dir]);
    await waitLines(h, "rw", (ls) => ls.includes("ready"), "ready");
    const c1 = await checkpoint();
    assert.ok(c1.files, "the checkpoint has a files image");
    await phase(1);
    const a = digest(dir);
    const c2 = await checkpoint();
    // big (8 MiB), log (1 MiB), sized (3 MiB) by ranges; mapped (a shared writable mapping) and src (rewritten) whole
    assert.ok((c2.files?.ranged ?? 0) >= 3, `files read by ranges: ${JSON.stringify(c2.files)}`);
    assert.ok(c2.files!.bytesRead < 3 * 2 ** 20, `bytes read at the cut: ${c2.files!.bytesRead} (the files are 11 MiB)`);
    await phase(2);
    const b = digest(dir);
    const c3 = await checkpoint();
    assert.ok((c3.files?.ranged ?? 0) >= 3, `files read by ranges: ${JSON.stringify(c3.files)}`);
    // the tables of processes that ended were read and removed
    const tables = readdirSync(join(h.home, "apps", "rw")).filter((n) => n.startsWith("ranges."));
    assert.equal(tables.length, 1, `ranges tables left: ${tables.join(", ")}`);
    await phase(3);
    assert.notDeepEqual(digest(dir), b);
    await killApp(h, "rw");
    await cli(["restore", "rw", "--json"]);
    assert.deepEqual(digest(dir), b, `restore of ${c3.id}: every file as it was at the checkpoint`);
    // the app goes on from there, and the next checkpoints are ranged again
    await phase(4);
    const d = digest(dir);
    await checkpoint();
    await phase(5);
    const c5 = await checkpoint();
    assert.ok((c5.files?.ranged ?? 0) >= 3, `after a restore: ${JSON.stringify(c5.files)}`);
    await phase(6);
    const e = digest(dir);
    const c6 = await checkpoint();
    await phase(7);
    await cli(["restore", "rw", "--replace", "--checkpoint", c6.id, "--json"]);
    assert.deepEqual(digest(dir), e, `restore of ${c6.id}`);
    // an older checkpoint: its files composed from a full image and ranged increments
    await cli(["restore", "rw", "--replace", "--checkpoint", c2.id, "--json"]);
    assert.deepEqual(digest(dir), a, `restore of ${c2.id}`);
    assert.notDeepEqual(a, d);
  });

  test("copy-before-write: checkpoints taken while the app writes give back the files of the instant its memory is from", { timeout: TIMEOUT }, async (t) => {
    // the daemon reads the ranges 300 ms after the cut: the app changes many of those pages first
    const { h, dir, cli } = scratch(t, { TG_TEST_DELAY_AT: "files-deferred-read:300" });
    const checkpoint = async (): Promise<Ckpt> => JSON.parse(await cli(["checkpoint", "race", "--json"])) as Ckpt;
    const verify = async (): Promise<string> => {
      const from = logSize(h, "race");
      writeFileSync(join(dir, "cmd"), "verify");
      const ls = await waitLines(h, "race", (l) => l.some((x) => x.startsWith("verify ")), "verify", 120_000, from);
      return ls.find((x) => x.startsWith("verify "))!;
    };
    await cli(["run", "--name", "race", "--json", "--", "python3", fixtureScript("racewriter.py"), dir]);
    await waitLines(h, "race", (ls) => ls.includes("ready"), "ready");
    await checkpoint();
    // until one reads the data file (32 MiB, up to 4 KB per write) by ranges: that one is restored
    const ranged: number[] = [];
    while (ranged.length < 8 && !ranged.some((n) => n >= 1)) {
      const from = logSize(h, "race");
      await waitLines(h, "race", (ls) => ls.some((l) => l.startsWith("wrote ")), "writes", 60_000, from);
      ranged.push((await checkpoint()).files?.ranged ?? 0);
    }
    assert.ok(ranged.some((n) => n >= 1), `files read by ranges: ${ranged.join(", ")}`);
    const saved = statSync(join(h.home, "apps", "race", "files.cow-log")).size;
    assert.ok(saved > 0, "pages were saved before the app changed them");
    await killApp(h, "race");
    await cli(["restore", "race", "--json"]);
    const v = await verify();
    assert.match(v, /^verify ok \d+/, v);
  });
});
