// Issue 14: `restore --keep-file-changes PATH`: a file of the app's set that someone else changed
// since the checkpoint keeps its current contents (a directory: everything under it); by default
// the checkpoint wins and restore says which files it put back. A counter app with a `--files DIR`
// tree that another program (the test) changes after the checkpoint.
import assert from "node:assert/strict";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, test } from "node:test";
import { makeHome } from "./helpers/home.js";
import { fixture, requireNative } from "./helpers/native.js";
import { killApp, waitLines } from "./helpers/scenario.js";

const WAIT = 90_000;

describe("files: restore --keep-file-changes", { timeout: 300_000 }, () => {
  test("kept paths keep their changes, the rest is the checkpoint's and restore names what it put back", async (t) => {
    requireNative();
    const h = makeHome("tg-");
    const dir = mkdtempSync(join(tmpdir(), "tg-fk-"));
    t.after(async () => {
      await h.cleanup();
      rmSync(dir, { recursive: true, force: true });
    });
    const data = join(dir, "data");
    mkdirSync(join(data, "conf"), { recursive: true });
    writeFileSync(join(data, "a.txt"), "a at the checkpoint\n");
    writeFileSync(join(data, "b.txt"), "b at the checkpoint\n");
    writeFileSync(join(data, "conf", "c.ini"), "c at the checkpoint\n");
    const r0 = await h.cli(["run", "--name", "keep", "--files", data, "--json", "--", fixture("counter"), "1000000", "50"]);
    assert.equal(r0.code, 0, r0.stderr);
    await waitLines(h, "keep", (ls) => ls.length >= 3, "first counts", WAIT);
    const cp = await h.cli(["checkpoint", "keep", "--json"]);
    assert.equal(cp.code, 0, cp.stderr);
    const change = (): void => {
      writeFileSync(join(data, "a.txt"), "a changed by someone else\n");
      writeFileSync(join(data, "b.txt"), "b changed by someone else\n");
      writeFileSync(join(data, "conf", "c.ini"), "c changed by someone else\n");
      writeFileSync(join(data, "conf", "new.ini"), "new\n");
    };
    change();
    await killApp(h, "keep");
    // kept: a.txt and the conf directory; b.txt rolled back
    const rr = await h.cli(["restore", "keep", "--keep-file-changes", join(data, "a.txt"), "--keep-file-changes", join(data, "conf")]);
    assert.equal(rr.code, 0, rr.stderr);
    assert.equal(readFileSync(join(data, "a.txt"), "utf8"), "a changed by someone else\n");
    assert.equal(readFileSync(join(data, "conf", "c.ini"), "utf8"), "c changed by someone else\n");
    assert.ok(existsSync(join(data, "conf", "new.ini")), "kept directory: a file made since stays");
    assert.equal(readFileSync(join(data, "b.txt"), "utf8"), "b at the checkpoint\n");
    assert.match(rr.stdout, /kept as is .*a\.txt/, rr.stdout);
    assert.match(rr.stdout, /kept as is .*c\.ini/, rr.stdout);
    assert.match(rr.stdout, /the checkpoint wins: 1 path\(s\)/, rr.stdout);
    assert.match(rr.stdout, /rewritten +.*b\.txt/, rr.stdout);
    // the default: the checkpoint wins everywhere, and restore says what it overwrote
    await killApp(h, "keep");
    change();
    const rd = await h.cli(["restore", "keep", "--checkpoint", (JSON.parse(cp.stdout) as { id: string }).id, "--json"]);
    assert.equal(rd.code, 0, rd.stderr);
    const f = (JSON.parse(rd.stdout) as { files: { rewritten: string[]; removed: string[]; kept: string[] } }).files;
    for (const n of ["a.txt", "b.txt", "conf/c.ini"]) {
      assert.equal(readFileSync(join(data, n), "utf8"), `${n.slice(-5, -4)} at the checkpoint\n`, n);
      assert.ok(f.rewritten.includes(join(data, n)), `${n} named as overwritten: ${JSON.stringify(f)}`);
    }
    assert.ok(!existsSync(join(data, "conf", "new.ini")) && f.removed.includes(join(data, "conf", "new.ini")), JSON.stringify(f));
    assert.deepEqual(f.kept, []);
    await killApp(h, "keep");
  });
});
