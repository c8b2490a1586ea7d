// Temporary files made with mkstemp (inside libc, past the open() wrapper) are in the app's file
// set: GNU sort's runs, written and closed before a checkpoint and removed by the app after it, are
// given back by the restore (native/agent/files-track.c, mkstemp wrappers).
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { makeHome, waitFor } from "./helpers/home.js";
import { fixtureScript, requireNative } from "./helpers/native.js";
import { logSize, runApp, waitExited, waitLines } from "./helpers/scenario.js";

test("sort -T DIR (runs in mkstemp files) checkpointed mid-input; after the first run ends and removes its runs, a restore from the checkpoint prints the right digest", { timeout: 300_000 }, async (t) => {
  requireNative();
  const h = makeHome();
  t.after(() => h.cleanup());
  const n = 600_000;
  // (outside tardigrade's home, whose files are never the app's)
  const tmp = mkdtempSync(join(tmpdir(), "tg-sort-"));
  t.after(() => rmSync(tmp, { recursive: true, force: true }));
  const gate = join(h.home, "gate");
  let sorted = "";
  for (let i = 1; i <= n; i++) sorted += `${i}\n`;
  const want = createHash("md5").update(sorted).digest("hex");
  await runApp(h, "srt", ["bash", "-c", `python3 ${fixtureScript("feeder.py")} ${n} ${gate} | sort -S 1M -T ${tmp} -n | md5sum`]);
  await waitLines(h, "srt", (ls) => ls.includes("half"), "the first half is fed");
  await waitFor("sort wrote two runs", () => readdirSync(tmp).length >= 2, 120_000);
  const cp = await h.cli(["checkpoint", "srt"]);
  assert.equal(cp.code, 0, cp.stderr);
  // the first run goes on to its end: it merges and removes its runs
  writeFileSync(gate, "");
  await waitLines(h, "srt", (ls) => ls.includes(`${want}  -`), "the first run's digest");
  const st = await waitExited(h, "srt");
  assert.equal(st.exit?.exit_code, 0, JSON.stringify(st));
  assert.equal(readdirSync(tmp).length, 0, "sort removed its runs");
  const from = logSize(h, "srt");
  const rs = await h.cli(["restore", "srt"]);
  assert.equal(rs.code, 0, `${rs.stderr}\n${h.log("srt")}`);
  assert.ok(readdirSync(tmp).length >= 2, `the restore gave back the runs: ${readdirSync(tmp).join(" ")}`);
  const ls = await waitLines(h, "srt", (l) => l.some((x) => /^[0-9a-f]{32} {2}-$/.test(x)), "the restored run's digest", 180_000, from);
  assert.ok(ls.includes(`${want}  -`), ls.join("\n"));
  const end = await waitExited(h, "srt");
  assert.equal(end.exit?.exit_code, 0, JSON.stringify(end));
});
