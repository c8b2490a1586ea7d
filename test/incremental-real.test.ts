// Real interpreters checkpointed incrementally: python3 and node take one full and four
// incremental checkpoints while they run; restoring the middle one and the last one must
// each continue exactly as an uninterrupted run would from that point.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, test, type TestContext } from "node:test";
import { makeHome, type TestHome } from "./helpers/home.js";
import { fixtureScript, requireNative } from "./helpers/native.js";
import { baseline, logLines, logSize, runApp, waitExited, waitLines } from "./helpers/scenario.js";

function setup(t: TestContext): TestHome {
  requireNative();
  const h = makeHome("tg-incr-");
  t.after(() => h.cleanup());
  return h;
}

interface Taken {
  id: string;
  kind: string;
  parent: string | null;
  /** Lines in the log when the checkpoint was asked for, and when it returned. */
  before: number;
  after: number;
}

/** The program waits at its step GATE_STEP until this file exists: it cannot end before the five checkpoints are taken, however slow the machine. */
const GATE_STEP = "60";
const gateFile = (h: TestHome): string => join(h.home, "gate");

async function fiveCheckpoints(h: TestHome, name: string, argv: string[]): Promise<Taken[]> {
  await runApp(h, name, [...argv, gateFile(h), GATE_STEP]);
  const taken: Taken[] = [];
  for (let i = 0; i < 5; i++) {
    await waitLines(h, name, (ls) => ls.length >= 10 + 8 * i, `output before checkpoint ${i + 1}`, 300_000);
    const before = logLines(h, name).length;
    const cp = await h.cli(["checkpoint", name, "--json"]);
    const after = logLines(h, name).length;
    assert.equal(cp.code, 0, cp.stderr);
    const m = JSON.parse(cp.stdout) as { id: string; kind: string; parent: string | null; fullReason?: string };
    // The agent lifts MADV_DONTFORK from every mapping smaps shows with it (docs/engine.md):
    // no snapshot lacks memory, so no later checkpoint falls back to full.
    if (i === 0) assert.equal(m.kind, "full");
    else {
      assert.equal(m.kind, "incremental", `checkpoint ${i + 1}: ${m.fullReason ?? ""}`);
      assert.equal(m.parent, taken[i - 1]!.id);
    }
    taken.push({ id: m.id, kind: m.kind, parent: m.parent, before, after });
  }
  writeFileSync(gateFile(h), ""); // the program (and every restored copy) runs to its end from here
  return taken;
}

/** Restores `t` (killing whatever runs) and checks the run continues the uninterrupted output from there to the end. */
async function restoreAndCheck(h: TestHome, name: string, t: Taken, base: { lines: string[] }, done: RegExp): Promise<void> {
  const stop = await h.cli(["stop", name]); // whatever runs now (the original, or an earlier restore)
  assert.equal(stop.code, 0, stop.stderr);
  const from = logSize(h, name);
  const r = await h.cli(["restore", name, "--checkpoint", t.id, "--json"]);
  assert.equal(r.code, 0, r.stderr);
  await waitLines(h, name, (ls) => ls.some((l) => done.test(l)), `the run restored from ${t.id} to finish`, 300_000, from);
  const st = await waitExited(h, name, 120_000);
  assert.deepEqual(st.exit, { exit_code: 0 });
  const restored = logLines(h, name, from);
  let resumeAt: number | undefined;
  for (let j = t.before; j <= t.after; j++) {
    const want = base.lines.slice(j);
    if (want.length === restored.length && want.every((l, i) => l === restored[i])) resumeAt = j;
  }
  assert.ok(resumeAt !== undefined && resumeAt > 0, `restored from ${t.id}: the output must continue an uninterrupted run from line ${t.before}..${t.after}; got ${JSON.stringify(restored.slice(0, 2))}`);
}

describe("incremental checkpoints of real interpreters", { timeout: 1_800_000 }, () => {
  test("python3: five checkpoints (one full, four incremental); restore the middle one and the last one", async (t) => {
    const h = setup(t);
    const python = execFileSync("python3", ["-c", "import sys; print(sys.executable)"], { encoding: "utf8" }).trim();
    const argv = [python, fixtureScript("stateful.py"), "160", "50"];
    const base = baseline(argv);
    const taken = await fiveCheckpoints(h, "py", argv);
    const b = await base;
    await restoreAndCheck(h, "py", taken[2]!, b, /^done 160 /);
    await restoreAndCheck(h, "py", taken[4]!, b, /^done 160 /);
  });

  test("node: five checkpoints (one full, four incremental); restore the middle one and the last one", async (t) => {
    const h = setup(t);
    const argv = [process.execPath, fixtureScript("ticker.mjs"), "300", "50", "20"];
    const base = baseline(argv);
    const taken = await fiveCheckpoints(h, "node", argv);
    const b = await base;
    await restoreAndCheck(h, "node", taken[2]!, b, /^done 300 /);
    await restoreAndCheck(h, "node", taken[4]!, b, /^done 300 /);
  });
});
