// A restored app's CLOCK_MONOTONIC goes on from the checkpoint (a time namespace made by the
// restorer: native/launcher/launcher.c, set_app_clock). The test plays a failover to a host whose
// clock is 100000 s behind: the app runs under a daemon started in a time namespace 100000 s
// ahead, is checkpointed and killed, and is restored by a daemon on the host's clocks. Node's
// timers, scheduled on that clock, must keep firing.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { CLI, isAlive, makeHome, waitFor } from "./helpers/home.js";
import { fixtureScript, requireNative } from "./helpers/native.js";
import { killApp, logLines, logSize, waitLines } from "./helpers/scenario.js";

const AHEAD_S = 100_000;

function monos(ls: string[]): number[] {
  return ls.map((l) => /^tick \d+ mono (\d+)$/.exec(l)).filter((m) => m !== null).map((m) => Number(m[1]));
}

test("an app checkpointed on a host whose monotonic clock is 100000 s ahead keeps its clock and its node timers when restored here", { timeout: 300_000 }, async (t) => {
  requireNative();
  const h = makeHome();
  t.after(() => h.cleanup());
  // `run` through unshare: the daemon it starts, and so the app, live 100000 s ahead
  const run = spawn("unshare", ["--time", "--monotonic", String(AHEAD_S), "--boottime", String(AHEAD_S), process.execPath, CLI, "run", "--name", "clk", "--", process.execPath, fixtureScript("clock.mjs")], { env: h.env, stdio: ["ignore", "pipe", "pipe"] });
  let err = "";
  run.stderr.setEncoding("utf8").on("data", (d: string) => (err += d));
  const code = await new Promise<number | null>((r) => run.on("close", r));
  assert.equal(code, 0, `run under unshare --time: ${err}`);
  await waitLines(h, "clk", (ls) => monos(ls).length >= 5, "ticks");
  const hostNowMs = (): number => Number(process.hrtime.bigint() / 1_000_000n);
  const before = monos(logLines(h, "clk"));
  assert.ok(before[0]! > hostNowMs() + (AHEAD_S - 60) * 1000, `the app's clock is ${AHEAD_S} s ahead of the host's: ${before[0]} vs ${hostNowMs()}`);
  const atCheckpoint = Math.max(...monos(logLines(h, "clk"))); // the cut is later than this tick
  const cp = await h.cli(["checkpoint", "clk"]);
  assert.equal(cp.code, 0, cp.stderr);
  await killApp(h, "clk");
  // "the other host": a daemon on this host's clocks (the watchdog first: it would restart the old one in its namespace)
  const pids = [readPid(join(h.home, "watchdog.pid")), h.daemonPid()].filter((p): p is number => !!p);
  for (const p of pids) process.kill(p, "SIGKILL");
  await waitFor("the first daemon gone", () => pids.every((p) => !isAlive(p)), 60_000);
  const from = logSize(h, "clk");
  const rs = await h.cli(["restore", "clk"]);
  assert.equal(rs.code, 0, rs.stderr);
  assert.notEqual(h.daemonPid(), pids[pids.length - 1], "a new daemon restored the app");
  // the timers go on (they stalled for 100000 s when the clock went back), and the clock with them
  const ls = await waitLines(h, "clk", (l) => monos(l).length >= 10, "ticks after the restore", 120_000, from);
  const after = monos(ls);
  assert.ok(after[0]! >= atCheckpoint, `the clock did not go back: ${after[0]} after ${atCheckpoint}`);
  assert.ok(after[0]! < atCheckpoint + 120_000, `the clock went on from the checkpoint: ${after[0]} after ${atCheckpoint}`);
  for (let i = 1; i < after.length; i++) assert.ok(after[i]! >= after[i - 1]!, `monotonic: ${after.join(" ")}`);
});

function readPid(file: string): number | null {
  try {
    const n = Number(readFileSync(file, "utf8").trim().split(/\s+/)[0]);
    return Number.isInteger(n) && n > 0 ? n : null;
  } catch {
    return null;
  }
}
