// Issue 14, a real pattern: a log rotator (python's logging RotatingFileHandler: rename every
// backup one up, then create a new log) checkpointed between rotations, rotating on, killed with
// -9 and restored: the logs are the checkpoint's (no record twice, none missing, the newest the
// one the app last wrote) and it rotates on. With `--files none` the app finds records it has not
// written yet (or the restore fails on its log).
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, test } from "node:test";
import { makeHome } from "./helpers/home.js";
import { fixtureScript, requireNative } from "./helpers/native.js";
import { killApp, logLines, logSize, waitLines } from "./helpers/scenario.js";

const WAIT = 90_000;
const stepOf = (ls: string[]): number => {
  for (let i = ls.length - 1; i >= 0; i--) {
    const m = /^step (\d+)$/.exec(ls[i]!);
    if (m) return Number(m[1]);
  }
  return 0;
};

describe("files: a log rotator", { timeout: 400_000 }, () => {
  for (const files of ["on", "none"] as const)
    test(files === "on" ? "rotated logs come back as at the checkpoint and rotation goes on" : "with --files none the same scenario fails", async (t) => {
      requireNative();
      const h = makeHome("tg-");
      const dir = mkdtempSync(join(tmpdir(), "tg-rot-"));
      t.after(async () => {
        await h.cleanup();
        rmSync(dir, { recursive: true, force: true });
      });
      const r0 = await h.cli(["run", "--name", "rot", ...(files === "none" ? ["--files", "none"] : []), "--json", "--", "python3", fixtureScript("rotator.py"), dir, "0.02"]);
      assert.equal(r0.code, 0, r0.stderr);
      await waitLines(h, "rot", (ls) => stepOf(ls) >= 60, "records over a few rotations", WAIT);
      const cp = await h.cli(["checkpoint", "rot", "--json"]);
      assert.equal(cp.code, 0, cp.stderr);
      const at = stepOf(logLines(h, "rot"));
      await waitLines(h, "rot", (ls) => stepOf(ls) >= at + 60, "more rotations", WAIT);
      await killApp(h, "rot");
      const from = logSize(h, "rot");
      const rr = await h.cli(["restore", "rot", "--json", ...(files === "none" ? ["--allow-file-changes"] : [])]);
      if (files === "none") {
        if (rr.code !== 0) {
          assert.match(rr.stderr, /cannot reopen|is not the file the application had open/, rr.stderr);
          return;
        }
        await waitLines(h, "rot", (ls) => ls.some((l) => l.startsWith("MISMATCH")), "the app sees records it has not written", WAIT, from);
        await killApp(h, "rot");
        return;
      }
      assert.equal(rr.code, 0, rr.stderr);
      await waitLines(h, "rot", (ls) => ls.filter((l) => /^step \d+$/.test(l)).length >= 60, "rotations after the restore", WAIT, from);
      const after = logLines(h, "rot", from);
      assert.deepEqual(after.filter((l) => l.startsWith("MISMATCH")), [], after.slice(0, 10).join("\n"));
      const first = after.find((l) => /^step \d+$/.test(l))!;
      assert.ok(stepOf([first]) <= at + 1, `went on from the checkpoint (step ${at}): ${first}`);
      await killApp(h, "rot");
    });
});
