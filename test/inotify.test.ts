// inotify (FD kind 11): an app watching a directory keeps its watch, with the same wd, across a
// checkpoint, kill -9 and restore (native/resources/inotify.c).
import assert from "node:assert/strict";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { makeHome } from "./helpers/home.js";
import { fixtureScript, requireNative } from "./helpers/native.js";
import { killApp, logLines, logSize, runApp, waitLines } from "./helpers/scenario.js";

test("a python3 inotify watcher (wd 3, after two watches added and removed) gets events after kill -9 and restore; inspect lists the watch", { timeout: 300_000 }, async (t) => {
  requireNative();
  const h = makeHome();
  t.after(() => h.cleanup());
  const dir = join(h.home, "watched");
  mkdirSync(dir);
  await runApp(h, "wt", ["python3", fixtureScript("watcher.py"), dir]);
  await waitLines(h, "wt", (l) => l.includes("watching wd 3"), "the watch is set");
  writeFileSync(join(dir, "a"), "");
  await waitLines(h, "wt", (l) => l.includes("event a"), "event a");
  const cp = await h.cli(["checkpoint", "wt", "--json"]);
  assert.equal(cp.code, 0, cp.stderr);
  const id = (JSON.parse(cp.stdout) as { id: string }).id;
  const ins = await h.cli(["inspect", id]);
  assert.match(ins.stdout, new RegExp(`inotify +\\d+ +\\d+ +wd 3 ${dir}`), ins.stdout);
  await killApp(h, "wt");
  const from = logSize(h, "wt");
  const rs = await h.cli(["restore", "wt"]);
  assert.equal(rs.code, 0, rs.stderr);
  writeFileSync(join(dir, "b"), "");
  await waitLines(h, "wt", (l) => l.includes("event b"), "event b after the restore", 120_000, from);
  assert.ok(!logLines(h, "wt", from).some((l) => /Traceback|Error/.test(l)), logLines(h, "wt", from).join("\n"));
});
