// CRIU as the peer of the engine bench's busy-app part (issue 15): the same fixture
// (test/fixtures/busy MIB 1), measured the same way, in the same run, when CRIU=path is
// set. One round: start the app (its own session, stdout appended to a log), rate over
// 1.5 s, `criu dump --leave-running` then fsync of every image file and the directory
// (time to durable), CPU of criu (user + system, from this process's reaped-children
// times), the app's lost time over the request to 1 s after durable; then SIGKILL and
// `criu restore -d` (the log handed over with --inherit-fd) until the restored app's first
// tick line appears in the log (by this process's clock: criu gives the app back its clock). The app is started again for every round, so every dump is a full one.
import { spawn } from "node:child_process";
import { closeSync, existsSync, fsyncSync, mkdirSync, openSync, readFileSync, readdirSync, rmSync, statSync } from "node:fs";
import { loadavg } from "node:os";
import { join } from "node:path";
import { killTracked, nowNs, sleep, track, waitForLine } from "./bench-procs.js";
import { itersAt, lastRun, rateOver, readTicks, waitTickAfter } from "./busy-app.js";

export interface CriuRound {
  /** dump --leave-running, wall time */
  dumpNs: number;
  /** dump + fsync of the image files */
  durableNs: number;
  /** criu dump's CPU (user + system), s */
  dumpCpuS: number;
  imageBytes: number;
  rateBefore: number;
  windowNs: number;
  lostNs: number;
  maxGapNs: number;
  /** `criu restore -d` request to the restored app's first tick */
  restoreToRunningNs: number;
  restoreCpuS: number;
  load1: number;
}

const clkTck = 100;

/** CPU seconds of this process's reaped children (cutime + cstime). */
function childrenCpuS(): number {
  const s = readFileSync("/proc/self/stat", "utf8");
  const f = s.slice(s.lastIndexOf(")") + 2).split(" ");
  return (Number(f[13]) + Number(f[14])) / clkTck;
}

async function runCriu(criu: string, args: string[], stdio: (number | "ignore" | "pipe")[] = ["ignore", "ignore", "pipe"]): Promise<{ cpuS: number; ns: number }> {
  const c0 = childrenCpuS();
  const t0 = nowNs();
  const child = spawn(criu, args, { stdio });
  let stderr = "";
  child.stderr?.setEncoding("utf8");
  child.stderr?.on("data", (d: string) => (stderr += d));
  const code = await new Promise<number | string>((resolve, reject) => {
    child.on("error", reject);
    child.on("close", (c, sig) => resolve(c ?? sig ?? "?"));
  });
  const ns = Number(nowNs() - t0);
  if (code !== 0) throw new Error(`criu ${args[0]} failed (${code}): ${stderr.slice(-400)}`);
  return { cpuS: childrenCpuS() - c0, ns };
}

/** Node's clock when a "tick" line first appears in `log` past byte `from` (polled every 5 ms). */
export async function tickSeen(log: string, from: number, timeoutMs: number): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const size = statSync(log).size;
    if (size > from) {
      const text = readFileSync(log, "utf8").slice(from);
      if (/(^|\n)tick /.test(text)) return Number(nowNs());
    }
    await sleep(5);
  }
  throw new Error(`no tick in ${log} within ${timeoutMs} ms`);
}

function fsyncTree(dir: string): number {
  let bytes = 0;
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    const fd = openSync(p, "r");
    fsyncSync(fd);
    closeSync(fd);
    bytes += statSync(p).size;
  }
  const d = openSync(dir, "r");
  fsyncSync(d);
  closeSync(d);
  return bytes;
}

async function gone(pid: number, ms: number): Promise<void> {
  const deadline = Date.now() + ms;
  while (existsSync(`/proc/${pid}`)) {
    if (Date.now() > deadline) throw new Error(`pid ${pid} still there ${ms} ms after SIGKILL`);
    await sleep(20);
  }
}

/** `criu restore -d` of the images in img, the app's stdout/stderr handed over as `fd` (the log, open for appending; closed here). */
async function criuRestoreOnLog(criu: string, img: string, log: string, fd: number): Promise<{ cpuS: number; ns: number }> {
  try {
    return await runCriu(criu, ["restore", "-D", img, "-d", "-o", "restore.log", "--inherit-fd", `fd[3]:${log.slice(1)}`], ["ignore", "ignore", "pipe", fd]);
  } finally {
    closeSync(fd);
  }
}

/** One CRIU round on a fresh busy app of `mib` MiB (see the file's comment). */
export async function criuRound(criu: string, busyBin: string, mib: number, workDir: string, round: number): Promise<CriuRound> {
  const dir = join(workDir, `criu-${mib}-${round}`);
  rmSync(dir, { recursive: true, force: true });
  const img = join(dir, "img");
  mkdirSync(img, { recursive: true });
  const log = join(dir, "log");
  const out = openSync(log, "a");
  const app = spawn(busyBin, [String(mib), "1"], { detached: true, stdio: ["ignore", out, out] });
  closeSync(out);
  const pid = app.pid ?? 0;
  if (!pid) throw new Error(`cannot start ${busyBin}`);
  track(pid, "criu-app");
  try {
    await waitForLine(log, ["ready "], 300_000);
    const rateBefore = await rateOver(log, 1500);
    const load1 = loadavg()[0]!;
    const t0 = Number(nowNs());
    const dump = await runCriu(criu, ["dump", "-t", String(pid), "-D", img, "--leave-running", "-o", "dump.log"]);
    const imageBytes = fsyncTree(img);
    const t1 = Number(nowNs());
    const end = t1 + 1e9;
    await sleep(1000);
    await waitTickAfter(log, end, 10_000);
    const { ticks, gaps } = readTicks(log);
    const run1 = lastRun(ticks);
    const windowNs = end - t0;
    const done = itersAt(run1, end) - itersAt(run1, t0);

    process.kill(pid, "SIGKILL");
    await gone(pid, 60_000);
    const fd = openSync(log, "a");
    const from = statSync(log).size;
    const r0 = Number(nowNs());
    // the restored app's stdout/stderr: the log, handed over (criu checks a regular file's size otherwise).
    // Its first tick is timed by this process's clock: criu restores the app's CLOCK_MONOTONIC as it
    // was (time namespace), so the app's own timestamps do not compare with ours.
    const seen = tickSeen(log, from, 120_000);
    const rs = await criuRestoreOnLog(criu, img, log, fd);
    track(pid, "criu-app");
    const firstSeen = await seen;
    return {
      dumpNs: dump.ns,
      durableNs: t1 - t0,
      dumpCpuS: dump.cpuS,
      imageBytes,
      rateBefore,
      windowNs,
      lostNs: Math.max(0, windowNs - (done / rateBefore) * 1e9),
      maxGapNs: Math.max(0, ...gaps.filter((g) => g.at >= t0 && g.at <= end).map((g) => g.ns)),
      restoreToRunningNs: firstSeen - r0,
      restoreCpuS: rs.cpuS,
      load1,
    };
  } finally {
    killTracked("SIGKILL", (t) => t.what === "criu-app");
    await gone(pid, 60_000).catch(() => undefined);
    rmSync(dir, { recursive: true, force: true });
  }
}

/** frozen_time of a CRIU dump, in µs, from its stats-dump image (two magic words, a length, then the StatsEntry message: field 1 DumpStatsEntry, its field 2 frozen_time). */
export function criuFrozenUs(imgDir: string): number {
  const b = readFileSync(join(imgDir, "stats-dump"));
  let at = 12; // magic, magic, u32 message length
  const end = Math.min(b.length, 12 + b.readUInt32LE(8));
  const varint = (): number => {
    let v = 0;
    for (let shift = 0; at < end; shift += 7) {
      const x = b[at++]!;
      v += (x & 0x7f) * 2 ** shift;
      if (!(x & 0x80)) return v;
    }
    throw new Error("stats-dump: truncated varint");
  };
  const fields = (limit: number, want: number, inner: boolean): number | null => {
    while (at < limit) {
      const key = varint();
      const field = Math.floor(key / 8);
      const wire = key & 7;
      if (wire === 0) {
        const v = varint();
        if (inner && field === want) return v;
      } else if (wire === 2) {
        const len = varint();
        if (!inner && field === want) return fields(at + len, 2, true);
        at += len;
      } else throw new Error(`stats-dump: wire type ${wire} not expected`);
    }
    return null;
  };
  const v = fields(end, 1, false);
  if (v === null) throw new Error("stats-dump has no frozen_time");
  return v;
}

/** The session id of a process, or null once it is gone. */
function sessionOf(pid: number): number | null {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, "utf8");
    return Number(s.slice(s.lastIndexOf(")") + 2).split(" ")[3]);
  } catch {
    return null;
  }
}

export interface CriuTreeRound {
  /** The tree frozen during `criu dump --leave-running` (its own stats) */
  frozenNs: number;
  dumpNs: number;
  imageBytes: number;
  /** `criu restore -d` of the killed tree until it returns (every process running) */
  restoreNs: number;
  load1: number;
}

/**
 * One CRIU round on a process tree: `script` (bash starting `n` children that print "ready"
 * once their memory is filled), started in its own session with its output appended to a log;
 * a full dump with --leave-running (then fsync), SIGKILL of the whole session, `criu restore -d`.
 */
export async function criuTreeRound(criu: string, script: string, n: number, workDir: string, round: number): Promise<CriuTreeRound> {
  const dir = join(workDir, `criu-tree-${round}`);
  rmSync(dir, { recursive: true, force: true });
  const img = join(dir, "img");
  mkdirSync(img, { recursive: true });
  const log = join(dir, "log");
  const out = openSync(log, "a");
  const app = spawn("bash", [script], { detached: true, stdio: ["ignore", out, out] });
  closeSync(out);
  const pid = app.pid ?? 0;
  if (!pid) throw new Error(`cannot start ${script}`);
  track(pid, "criu-app");
  try {
    for (let i = 0; ; i++) {
      if ((readFileSync(log, "utf8").match(/^ready \d+$/gm) ?? []).length >= n) break;
      if (i > 6000) throw new Error(`CRIU round: ${n} children never got ready`);
      await sleep(50);
    }
    const load1 = loadavg()[0]!;
    const dump = await runCriu(criu, ["dump", "-t", String(pid), "-D", img, "--leave-running", "-o", "dump.log"]);
    const imageBytes = fsyncTree(img);
    const frozenNs = criuFrozenUs(img) * 1000;
    // every process of the session gone (reaped), or criu cannot take their pids again
    const members = readdirSync("/proc").filter((d) => /^\d+$/.test(d) && sessionOf(Number(d)) === pid).map(Number);
    process.kill(-pid, "SIGKILL");
    for (const m of members) await gone(m, 60_000);
    const rs = await criuRestoreOnLog(criu, img, log, openSync(log, "a"));
    track(pid, "criu-app");
    return { frozenNs, dumpNs: dump.ns, imageBytes, restoreNs: rs.ns, load1 };
  } finally {
    try {
      process.kill(-pid, "SIGKILL");
    } catch {
      /* gone */
    }
    killTracked("SIGKILL", (t) => t.what === "criu-app");
    await gone(pid, 60_000).catch(() => undefined);
    rmSync(dir, { recursive: true, force: true });
  }
}
