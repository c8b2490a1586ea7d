// The end-to-end scenario: run under tardigrade, checkpoint while it runs,
// kill -9 the app's host PID, restore, and check that the output continues from
// the checkpointed state exactly as an uninterrupted run would.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { isAlive, waitFor, type TestHome } from "./home.js";

export interface AppStatus {
  state: string;
  appHostPid: number | null;
  initHostPid: number | null;
  exit: { exit_code?: number; signal?: number; exec_error?: string } | null;
}

const BAD = /^(CORRUPT|INVARIANT|ERROR)/;

export function lines(text: string): string[] {
  // not the app's: tardigrade's messages and the marker a restore writes into the log
  return text.split("\n").filter((l) => l.length > 0 && !l.startsWith("tardigrade") && !l.startsWith("--- tardigrade: restored "));
}

/** Runs the program without tardigrade: what an uninterrupted run prints. */
export function baseline(argv: string[], cwd?: string): Promise<{ lines: string[]; code: number | null }> {
  return new Promise((resolve, reject) => {
    const c = spawn(argv[0]!, argv.slice(1), { cwd, stdio: ["ignore", "pipe", "inherit"] });
    let out = "";
    c.stdout.setEncoding("utf8").on("data", (d: string) => (out += d));
    c.on("error", reject);
    c.on("close", (code) => resolve({ lines: lines(out), code }));
  });
}

export async function status(h: TestHome, name: string): Promise<AppStatus> {
  const r = await h.cli(["status", name, "--json"]);
  assert.equal(r.code, 0, `status ${name}: ${r.stderr}`);
  return JSON.parse(r.stdout) as AppStatus;
}

export async function waitExited(h: TestHome, name: string, timeoutMs = 180_000): Promise<AppStatus> {
  let last: AppStatus | null = null;
  await waitFor(`${name} to exit`, async () => {
    last = await status(h, name);
    return last.state === "exited";
  }, timeoutMs, 100);
  return last!;
}

export async function runApp(h: TestHome, name: string, argv: string[], cwd?: string): Promise<void> {
  const r = await h.cli(["run", "--name", name, "--json", "--", ...argv], { cwd });
  assert.equal(r.code, 0, `run ${name} failed: ${r.stderr}`);
}

export function logLines(h: TestHome, name: string, from = 0): string[] {
  return lines(h.log(name).slice(from));
}

export function logSize(h: TestHome, name: string): number {
  try {
    return statSync(join(h.home, "apps", name, "log")).size;
  } catch {
    return 0;
  }
}

export async function waitLines(h: TestHome, name: string, pred: (ls: string[]) => boolean, what: string, timeoutMs = 180_000, from = 0): Promise<string[]> {
  try {
    return await waitFor(`${name}: ${what}`, () => {
      const ls = logLines(h, name, from);
      const bad = ls.find((l) => BAD.test(l));
      if (bad) throw new Error(`${name} reported a problem: ${bad}\n--- log ---\n${h.log(name)}`);
      return pred(ls) ? ls : null;
    }, timeoutMs, 50);
  } catch (e) {
    if (!(e instanceof Error) || !e.message.startsWith("timed out")) throw e;
    throw new Error(`${e.message}\n${await appReport(h, name)}`);
  }
}

/** What an app that printed nothing more was doing: its status, its threads' states and kernel
 * stacks' wait channels, and the end of its log and of the daemon's (for a timeout's message). */
export async function appReport(h: TestHome, name: string): Promise<string> {
  const out: string[] = [];
  try {
    out.push(`status: ${JSON.stringify(await status(h, name))}`);
  } catch (e) {
    out.push(`status: ${(e as Error).message}`);
  }
  const pid = h.pids(name)?.app;
  if (pid) {
    try {
      for (const tid of readdirSync(`/proc/${pid}/task`)) {
        const st = readFileSync(`/proc/${pid}/task/${tid}/stat`, "utf8");
        const state = st.slice(st.lastIndexOf(")") + 2).split(" ")[0];
        let wchan = "";
        let sys = "";
        try {
          wchan = readFileSync(`/proc/${pid}/task/${tid}/wchan`, "utf8");
          sys = readFileSync(`/proc/${pid}/task/${tid}/syscall`, "utf8").trim();
        } catch {
          /* not readable */
        }
        out.push(`pid ${pid} tid ${tid}: state ${state} wchan ${wchan} syscall ${sys}`);
      }
    } catch (e) {
      out.push(`pid ${pid}: ${(e as Error).message}`);
    }
  }
  const tail = (text: string): string => text.split("\n").slice(-30).join("\n");
  out.push(`--- log (end) ---\n${tail(h.log(name))}`);
  try {
    out.push(`--- daemon log (end) ---\n${tail(readFileSync(join(h.home, "daemon.log"), "utf8"))}`);
  } catch {
    /* no daemon log */
  }
  return out.join("\n");
}

export async function killApp(h: TestHome, name: string): Promise<void> {
  const pids = h.pids(name);
  assert.ok(pids, `${name} has a pidfile`);
  process.kill(pids.app, "SIGKILL");
  await waitFor(`${name} host pid ${pids.app} gone`, () => !isAlive(pids.app), 60_000);
  const st = await waitExited(h, name, 60_000);
  assert.equal(st.exit?.signal, 9, `exit status after kill -9: ${JSON.stringify(st.exit)}`);
}

export interface ScenarioResult {
  id: string;
  /** Lines in the log when the checkpoint was requested / when it returned. */
  before: number;
  after: number;
  /** Lines printed by the restored process (until the program finished, if `done` is given). */
  restored: string[];
  /** Index in the baseline where the restored output starts (if a baseline was given). */
  resumeAt?: number;
  final?: AppStatus;
}

export interface Scenario {
  name: string;
  argv: string[];
  cwd?: string;
  /** Checkpoint once the log satisfies this. */
  ready(ls: string[]): boolean;
  /** Lines to wait for after the checkpoint, before the kill (default 3). */
  moreLines?: number;
  /** The program takes GATE_FILE GATE_STEP as its last two arguments and waits at that step until the
   * file exists (stateful.py, ticker.mjs): it cannot end before the kill, however slow the machine.
   * The file is created once the app is killed (the restored run goes on to its end). */
  gateStep?: number;
  /** The restored run is finished when a line matches this (then its exit status must be 0). */
  done?: RegExp;
  /** What an uninterrupted run prints; the restored output must be a suffix of it. */
  baseline?: Promise<{ lines: string[]; code: number | null }>;
  /** Extra arguments for `restore` (e.g. --allow-file-changes). */
  restoreArgs?: string[];
  /** Called right after the restore returned (e.g. to send signals). */
  afterRestore?(h: TestHome): Promise<void>;
  timeoutMs?: number;
}

export async function checkpointKillRestore(h: TestHome, s: Scenario): Promise<ScenarioResult> {
  const timeout = s.timeoutMs ?? 300_000;
  const gate = join(h.home, "gate");
  await runApp(h, s.name, s.gateStep ? [...s.argv, gate, String(s.gateStep)] : s.argv, s.cwd);
  await waitLines(h, s.name, s.ready, "ready for the checkpoint", timeout);
  const before = logLines(h, s.name).length;
  const cp = await h.cli(["checkpoint", s.name, "--json"]);
  const after = logLines(h, s.name).length;
  assert.equal(cp.code, 0, `checkpoint failed: ${cp.stderr}`);
  const m = JSON.parse(cp.stdout) as { id: string; pages: number; threads: number; downtimeNs: number };
  assert.ok(m.pages > 0 && m.threads >= 1, `manifest: ${cp.stdout}`);
  // (a gated program prints gateStep - 1 lines at most before the kill)
  const more = Math.min(after + (s.moreLines ?? 3), s.gateStep ? s.gateStep - 1 : Infinity);
  await waitLines(h, s.name, (ls) => ls.length >= more, "output after the checkpoint", timeout);
  await killApp(h, s.name);
  if (s.gateStep) writeFileSync(gate, "");
  const from = logSize(h, s.name);
  const r = await h.cli(["restore", s.name, "--json", ...(s.restoreArgs ?? [])]);
  assert.equal(r.code, 0, `restore failed: ${r.stderr}\n--- log ---\n${h.log(s.name)}`);
  const rr = JSON.parse(r.stdout) as { checkpoint: string; restoreNs: number };
  assert.equal(rr.checkpoint, m.id);
  await s.afterRestore?.(h);
  let final: AppStatus | undefined;
  let restored: string[];
  if (s.done) {
    const done = s.done;
    restored = await waitLines(h, s.name, (ls) => ls.some((l) => done.test(l)), "the restored run to finish", timeout, from);
    final = await waitExited(h, s.name, 120_000);
    assert.deepEqual(final.exit, { exit_code: 0 }, `exit status of the restored run\n--- log ---\n${h.log(s.name)}`);
    restored = logLines(h, s.name, from);
  } else {
    restored = await waitLines(h, s.name, (ls) => ls.length >= 3, "output of the restored process", timeout, from);
  }
  const result: ScenarioResult = { id: m.id, before, after, restored, final };
  if (s.baseline) {
    const base = await s.baseline;
    assert.equal(base.code, 0, "the uninterrupted run succeeded");
    const pre = logLines(h, s.name).slice(0, after);
    assert.deepEqual(pre, base.lines.slice(0, after), "output before the checkpoint matches an uninterrupted run");
    // The checkpointed state had printed j lines, before <= j <= after.
    let resumeAt: number | undefined;
    for (let j = before; j <= after; j++) {
      const want = base.lines.slice(j, j + restored.length);
      if (want.length === restored.length && want.every((l, i) => l === restored[i])) {
        resumeAt = j;
        break;
      }
    }
    assert.ok(
      resumeAt !== undefined,
      `the restored output must continue an uninterrupted run from line ${before}..${after}\n` +
        `restored starts: ${JSON.stringify(restored.slice(0, 3))}\nuninterrupted around there: ${JSON.stringify(base.lines.slice(Math.max(0, before - 1), after + 2))}`,
    );
    assert.ok(resumeAt > 0, "no restart from zero");
    if (s.done) assert.equal(resumeAt + restored.length, base.lines.length, "restored run ends exactly like the uninterrupted one");
    result.resumeAt = resumeAt;
  }
  return result;
}
