// Issue 14: a file the app changed in place since the checkpoint is rolled back by writing only the
// pages that differ (docs/files.md, "Rollback"): a 4 MiB file with a 64 KiB hole, the app writes into
// the hole, rewrites two pages and appends 1 MiB after the checkpoint; kill -9, restore: the file is
// byte for byte the checkpoint's (the hole reads as zeros again, the size is cut back) and the
// rollback wrote about what changed, not the whole file.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, test } from "node:test";
import { makeHome } from "./helpers/home.js";
import { fixtureScript, requireNative } from "./helpers/native.js";
import { killApp, runApp, waitLines } from "./helpers/scenario.js";

const TIMEOUT = 300_000;
const sha = (p: string): string => createHash("sha256").update(readFileSync(p)).digest("hex");

describe("files rolled back in place", { timeout: TIMEOUT }, () => {
  test("only the pages that differ are written; holes read as zeros again; the size is the checkpoint's", { timeout: TIMEOUT }, async (t) => {
    requireNative();
    const h = makeHome("tg-");
    const dir = mkdtempSync(join(tmpdir(), "tg-inpl-"));
    t.after(async () => {
      await h.cleanup();
      rmSync(dir, { recursive: true, force: true });
    });
    const f = join(dir, "f");
    await runApp(h, "hole", ["python3", fixtureScript("holefile.py"), dir]);
    await waitLines(h, "hole", (ls) => ls.includes("ready"), "ready");
    const atCut = sha(f);
    assert.equal(statSync(f).size, 4 << 20);
    const ck = await h.cli(["checkpoint", "hole", "--json"]);
    assert.equal(ck.code, 0, ck.stderr);
    writeFileSync(join(dir, "go"), "");
    await waitLines(h, "hole", (ls) => ls.includes("changed"), "changed");
    assert.equal(statSync(f).size, 5 << 20);
    assert.notEqual(sha(f), atCut);
    await killApp(h, "hole");
    rmSync(join(dir, "go")); // (the restored app, back in its wait, must not change the file again)
    const r = await h.cli(["restore", "hole", "--json"]);
    assert.equal(r.code, 0, r.stderr);
    const files = (JSON.parse(r.stdout) as { files?: { rewritten: string[]; bytesWritten: number; bytesCompared: number } }).files;
    assert.ok(files, `the restore rolled files back: ${r.stdout}`);
    assert.deepEqual(files.rewritten, [f]);
    assert.equal(statSync(f).size, 4 << 20, "the appended MiB is cut off");
    assert.equal(sha(f), atCut, "the file is the checkpoint's, byte for byte (the hole zeros again)");
    // what differed: the 64 KiB in the hole and two pages (the append is cut by the truncation)
    assert.ok(files.bytesWritten >= 64 * 1024 + 2 * 4096 && files.bytesWritten <= 256 * 1024, `bytes written: ${files.bytesWritten} (64 KiB + 2 pages changed in a 4 MiB file)`);
    assert.ok(files.bytesCompared >= 4 << 20, `bytes compared: ${files.bytesCompared}`);
  });
});
