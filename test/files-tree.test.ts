// Issue 14: directories the app makes, removes and renames, hard links, and the mode, owner and
// times of its files and directories come back with the checkpoint. A python3 app builds a tree,
// is checkpointed, then removes a directory with its file (a file takes its name), renames one,
// makes one, changes modes, an owner, times and user.* extended attributes, replaces a second name
// of a file and swaps two files' names (test/fixtures/treeapp.py); after kill -9 and restore the
// tree must be exactly the checkpoint's.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, unlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, test } from "node:test";
import { makeHome } from "./helpers/home.js";
import { fixtureScript, requireNative } from "./helpers/native.js";
import { killApp, waitLines } from "./helpers/scenario.js";

const WAIT = 90_000;

describe("files: directories, hard links, owner, mode and times", { timeout: 300_000 }, () => {
  test("a tree changed after the checkpoint is put back: directories, links, modes, owner, times", async (t) => {
    requireNative();
    const h = makeHome("tg-");
    const dir = mkdtempSync(join(tmpdir(), "tg-ft-"));
    t.after(async () => {
      await h.cleanup();
      rmSync(dir, { recursive: true, force: true });
    });
    const r0 = await h.cli(["run", "--name", "tree", "--json", "--", "python3", fixtureScript("treeapp.py"), dir]);
    assert.equal(r0.code, 0, r0.stderr);
    await waitLines(h, "tree", (ls) => ls.includes("ready"), "the tree made", WAIT);
    const cp = await h.cli(["checkpoint", "tree", "--json"]);
    assert.equal(cp.code, 0, cp.stderr);
    const before = {
      keepMode: statSync(join(dir, "keep")).mode & 0o7777,
      aMtime: statSync(join(dir, "keep", "a.txt")).mtimeMs,
      data: readFileSync(join(dir, "data.txt"), "utf8"),
    };
    assert.equal(before.keepMode, 0o750);
    writeFileSync(join(dir, "go"), "");
    await waitLines(h, "tree", (ls) => ls.includes("changed"), "the tree changed", WAIT);
    assert.ok(statSync(join(dir, "gone")).isFile() && existsSync(join(dir, "moved2")) && existsSync(join(dir, "newdir")));
    await killApp(h, "tree");
    unlinkSync(join(dir, "go")); // not the app's: the restored app waits for it again
    const rr = await h.cli(["restore", "tree", "--json"]);
    assert.equal(rr.code, 0, rr.stderr);
    const res = JSON.stringify((JSON.parse(rr.stdout) as { files?: unknown }).files);
    assert.deepEqual(readdirSync(dir).sort(), ["data-link.txt", "data.txt", "gone", "keep", "moved", "s1.txt", "s2.txt"], res);
    // two files that swapped names (one renamed away, the other renamed onto its name): each its own again
    for (const n of ["s1", "s2"]) assert.equal(readFileSync(join(dir, `${n}.txt`), "utf8"), `${n} at the checkpoint\n`, res);
    assert.equal(readFileSync(join(dir, "gone", "b.txt"), "utf8"), "gone/b.txt at the checkpoint\n", res);
    assert.deepEqual(readdirSync(join(dir, "moved")), ["c.txt"], `moved back, without what was made in it after: ${res}`);
    assert.equal(readFileSync(join(dir, "moved", "c.txt"), "utf8"), "moved/c.txt at the checkpoint\n");
    for (const sub of ["keep", "gone", "moved"]) assert.equal(statSync(join(dir, sub)).mode & 0o7777, 0o750, `${sub}'s mode: ${res}`);
    assert.equal(statSync(join(dir, "keep", "a.txt")).mtimeMs, before.aMtime, "a.txt's mtime");
    const data = statSync(join(dir, "data.txt"));
    assert.equal(readFileSync(join(dir, "data.txt"), "utf8"), before.data);
    assert.equal(data.mode & 0o7777, 0o604, "data.txt's mode");
    assert.deepEqual([data.uid, data.gid], [1234, 5678], "data.txt's owner");
    const link = statSync(join(dir, "data-link.txt"));
    assert.deepEqual([link.dev, link.ino], [data.dev, data.ino], `data-link.txt is a second name of data.txt again: ${res}`);
    assert.equal(data.nlink, 2);
    // user.* extended attributes: the checkpoint's (python reads them: node has no binding)
    const xa = spawnSync("python3", ["-c", "import os,sys; print(sorted((n, os.getxattr(p, n).decode()) for p in sys.argv[1:] for n in os.listxattr(p)))", join(dir, "data.txt"), join(dir, "keep")], { encoding: "utf8" });
    assert.equal(xa.stdout.trim(), "[('user.dir', 'd1'), ('user.tag', 'v1')]", `extended attributes: ${xa.stdout}${xa.stderr} ${res}`);
    await killApp(h, "tree");
  });
});
