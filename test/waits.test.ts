// The agent's park signal must not end the application's waits (native/agent/waits.c): calls the
// kernel never restarts after a handler (poll, select, epoll_wait, nanosleep, pause, sigsuspend,
// sigtimedwait) are restarted when only the park interrupted them, and still end on the
// application's own signals. Checked across checkpoints, kill -9 and restore, and on `tail -f`.
import assert from "node:assert/strict";
import { appendFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { makeHome } from "./helpers/home.js";
import { fixture, requireNative } from "./helpers/native.js";
import { killApp, logLines, logSize, runApp, waitLines } from "./helpers/scenario.js";

const PIPE_WAITERS = ["poll", "ppoll", "select", "pselect", "epoll_wait", "epoll_pwait"];
const SIGNAL_WAITERS = ["nanosleep", "clock_nanosleep", "sleep", "pause", "sigsuspend"];
const TIMED = ["timed poll", "timed select", "timed epoll_wait", "timed nanosleep"];
const ALL = [...PIPE_WAITERS, ...SIGNAL_WAITERS, "sigtimedwait", ...TIMED];

async function checkpoint(h: ReturnType<typeof makeHome>, name: string): Promise<void> {
  const cp = await h.cli(["checkpoint", name]);
  assert.equal(cp.code, 0, cp.stderr);
}

/** Outcome lines ("KIND: ...") in the log, none of them wrong. */
function outcomes(ls: string[]): string[] {
  const out = ls.filter((l) => /^[a-z_ ]+: /.test(l));
  const wrong = out.filter((l) => l.includes("WRONG"));
  assert.deepEqual(wrong, [], `a wait ended wrongly:\n${ls.join("\n")}`);
  return out;
}

test("threads blocked in poll, select, epoll_wait, nanosleep, pause, sigsuspend, sigtimedwait stay blocked through checkpoints and a restore, and still end on the app's own signals", { timeout: 300_000 }, async (t) => {
  requireNative();
  const h = makeHome();
  t.after(() => h.cleanup());
  const wake = join(h.home, "wake");
  await runApp(h, "w", [fixture("waits"), wake]);
  await waitLines(h, "w", (ls) => ALL.every((k) => ls.includes(`wait ${k}`)) && ls.includes("handler ok"), "every thread waiting");
  await checkpoint(h, "w");
  await checkpoint(h, "w");
  // only the 20 s timed waits may have ended by now, and only by their timeout
  const early = outcomes(logLines(h, "w")).filter((l) => !TIMED.some((k) => l.startsWith(`${k}: timeout`)));
  assert.deepEqual(early, [], `waits ended at a checkpoint:\n${h.log("w")}`);

  await killApp(h, "w");
  const from = logSize(h, "w");
  const rs = await h.cli(["restore", "w"]);
  assert.equal(rs.code, 0, rs.stderr);
  await checkpoint(h, "w"); // parks the restored threads once more
  const afterRestore = outcomes(logLines(h, "w", from)).filter((l) => !TIMED.some((k) => l.startsWith(`${k}: timeout`)));
  assert.deepEqual(afterRestore, [], `waits ended after the restore:\n${h.log("w")}`);

  writeFileSync(wake, "");
  const ls = await waitLines(h, "w", (l) => l.includes("done"), "the fixture ends", 180_000, from);
  const got = outcomes(ls);
  for (const k of PIPE_WAITERS) assert.ok(got.includes(`${k}: ready`), `${k} woke on its pipe:\n${ls.join("\n")}`);
  for (const k of SIGNAL_WAITERS) assert.ok(got.includes(`${k}: interrupted`), `${k} ended by the app's SIGUSR1:\n${ls.join("\n")}`);
  assert.ok(got.includes("sigtimedwait: got SIGUSR2"), ls.join("\n"));
  // each 20 s wait ended by its timeout, never before it (the whole log: it may have ended before the kill)
  const all = logLines(h, "w");
  for (const k of TIMED) {
    const m = all.map((l) => new RegExp(`^${k}: timeout after (\\d+) ms$`).exec(l)).find((x) => x);
    assert.ok(m, `${k} reported its timeout:\n${all.join("\n")}`);
    assert.ok(Number(m[1]) >= 20_000, `${k} ended after ${m[1]} ms, before its 20 s`);
  }
});

test("coreutils tail -f follows its file across checkpoints and a kill -9 and restore", { timeout: 300_000 }, async (t) => {
  requireNative();
  const h = makeHome();
  t.after(() => h.cleanup());
  const f = join(h.home, "followed.log");
  writeFileSync(f, "line 1\n");
  await runApp(h, "tl", ["tail", "-n", "+1", "-f", f]);
  await waitLines(h, "tl", (ls) => ls.includes("line 1"), "tail prints the file");
  for (let i = 2; i <= 4; i++) {
    await checkpoint(h, "tl");
    appendFileSync(f, `line ${i}\n`);
    await waitLines(h, "tl", (ls) => ls.includes(`line ${i}`), `tail prints line ${i} after a checkpoint`);
  }
  await killApp(h, "tl");
  const from = logSize(h, "tl");
  const rs = await h.cli(["restore", "tl"]);
  assert.equal(rs.code, 0, rs.stderr);
  appendFileSync(f, "line 5\n");
  await waitLines(h, "tl", (ls) => ls.includes("line 5"), "the restored tail prints line 5", 180_000, from);
  await checkpoint(h, "tl");
  appendFileSync(f, "line 6\n");
  await waitLines(h, "tl", (ls) => ls.includes("line 6"), "tail prints line 6 after a checkpoint of the restored app", 180_000, from);
  const st = await h.cli(["status", "tl", "--json"]);
  assert.equal((JSON.parse(st.stdout) as { state: string }).state, "running", h.log("tl"));
});
