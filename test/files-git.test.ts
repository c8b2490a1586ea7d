// Issue 14, a real program: git committing in a loop (test/fixtures/gitloop.sh: bash runs git add
// and git commit, each a process of the app with the agent) is checkpointed while it commits, goes
// on committing, is killed with -9 and restored: the repository is the checkpoint's (`git fsck
// --full` clean, HEAD has as many commits as the script made by the checkpoint, nothing left
// uncommitted or dangling from after it), and the script commits on from there. With `--files
// none` the same scenario fails: the restore cannot reopen a lock file git held, or the script
// finds commits it has not made.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, test } from "node:test";
import { makeHome } from "./helpers/home.js";
import { fixtureScript, requireNative } from "./helpers/native.js";
import { killApp, logLines, logSize, waitLines } from "./helpers/scenario.js";

const WAIT = 120_000;
const lastCommit = (ls: string[]): number => {
  for (let i = ls.length - 1; i >= 0; i--) {
    const m = /^commit (\d+)$/.exec(ls[i]!);
    if (m) return Number(m[1]);
  }
  return 0;
};

describe("files: git", { timeout: 400_000 }, () => {
  for (const files of ["on", "none"] as const)
  test(files === "on" ? "a repository committed to during the checkpoint is restored clean (git fsck) and at the checkpoint's commit" : "with --files none the same scenario fails (the script finds commits it has not made)", async (t) => {
    requireNative();
    const h = makeHome("tg-");
    const dir = mkdtempSync(join(tmpdir(), "tg-fg-"));
    t.after(async () => {
      await h.cleanup();
      rmSync(dir, { recursive: true, force: true });
    });
    const r0 = await h.cli(["run", "--name", "git", ...(files === "none" ? ["--files", "none"] : []), "--json", "--", "bash", fixtureScript("gitloop.sh"), dir]);
    assert.equal(r0.code, 0, r0.stderr);
    await waitLines(h, "git", (ls) => lastCommit(ls) >= 5, "first commits", WAIT);
    const cp = await h.cli(["checkpoint", "git", "--json"]);
    assert.equal(cp.code, 0, cp.stderr);
    const at = lastCommit(logLines(h, "git"));
    await waitLines(h, "git", (ls) => lastCommit(ls) >= at + 5, "more commits", WAIT);
    await killApp(h, "git");
    const from = logSize(h, "git");
    const rr = await h.cli(["restore", "git", "--json", ...(files === "none" ? ["--allow-file-changes"] : [])]);
    if (files === "none" && rr.code !== 0) {
      // a git process held a lock file (index.lock) open at the checkpoint: gone since, not rolled back
      assert.match(rr.stderr, /cannot reopen|is not the file the application had open/, rr.stderr);
      return;
    }
    assert.equal(rr.code, 0, rr.stderr);
    if (files === "none") {
      await waitLines(h, "git", (ls) => ls.some((l) => l.startsWith("MISMATCH")), "the script sees the repository ahead of it", WAIT, from);
      await killApp(h, "git");
      return;
    }
    await waitLines(h, "git", (ls) => ls.filter((l) => /^commit \d+$/.test(l)).length >= 3, "commits after the restore", WAIT, from).catch((e: unknown) => {
      throw new Error(`${String(e)}\n${h.log("git").slice(-1500)}`);
    });
    const after = logLines(h, "git", from);
    assert.deepEqual(after.filter((l) => l.startsWith("MISMATCH")), [], `the repository is the checkpoint's: ${after.slice(0, 20).join("\n")}`);
    const first = Number(/^commit (\d+)$/.exec(after.find((l) => /^commit \d+$/.test(l))!)![1]);
    assert.ok(first <= at + 1, `went on from the checkpoint (commit ${at}), not from the kill: first ${first}`);
    await killApp(h, "git");
    const repo = join(dir, "repo");
    const fsck = spawnSync("git", ["-C", repo, "fsck", "--full", "--no-dangling"], { encoding: "utf8" });
    assert.equal(fsck.status, 0, `git fsck: ${fsck.stdout}${fsck.stderr}`);
    assert.equal(fsck.stderr.replace(/^Checking.*$/gm, "").trim(), "", fsck.stderr);
    const n = Number(spawnSync("git", ["-C", repo, "rev-list", "--count", "HEAD"], { encoding: "utf8" }).stdout.trim());
    assert.ok(n >= first, `HEAD has ${n} commits after the restored script made ${first}+`);
  });
});
