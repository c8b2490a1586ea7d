// The time the app is held for its files (issue 14, docs/files.md "Changed ranges"), against the
// number of changed ranges and of changed files. A python app keeps BENCH_HOLD_FILES files of
// BENCH_HOLD_MIB MiB each open for writing; each round it rewrites BENCH_HOLD_WRITES random 4 KiB
// blocks of every file (pwrite, random bytes), then the daemon takes an incremental checkpoint.
// Three cases by default (BENCH_HOLD_CASES to choose): "one" (1 file of 256 MiB, 655 blocks: the
// ranges case, 2.6 MiB changed), "wide" (the same file, 8000 blocks: 31 MiB in 12x the ranges) and
// "many" (200 files of 1 MiB, 2 blocks each: 400 ranges in 200 files). Reported per case, medians over BENCH_HOLD_ROUNDS rounds (default 7): the files' cut
// (app held) and its split (set, agents' tables, files), the incremental downtime, and the bytes
// read. Prints the load; writes bench/results/files-hold.json. Everything started is killed by PID.
import { mkdirSync, mkdtempSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import { cpus, loadavg, release, tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { cleanup, cliJson, killTracked, median, trackApp, trackDaemon, waitForLine } from "./bench-procs.js";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");
const RESULTS = join(ROOT, "bench", "results", "files-hold.json");

const envInt = (name: string, def: number): number => {
  const v = Number(process.env[name]);
  return Number.isFinite(v) && v > 0 ? Math.floor(v) : def;
};

// the app: makes its files (random bytes), then obeys DIR/cmd ("round N": rewrites N random blocks of every file)
const APP = String.raw`
import os, sys, random
d, n, mib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
fds = []
for i in range(n):
    fd = os.open(os.path.join(d, "f%03d" % i), os.O_RDWR | os.O_CREAT, 0o644)
    for m in range(mib):
        os.pwrite(fd, os.urandom(1 << 20), m << 20)
    fds.append(fd)
print("ready", flush=True)
import time
while True:
    try:
        with open(os.path.join(d, "cmd")) as f:
            c = f.read()
        os.unlink(os.path.join(d, "cmd"))
    except FileNotFoundError:
        time.sleep(0.005)
        continue
    w = int(c.split()[1])
    blocks = mib * 256
    for fd in fds:
        for b in random.sample(range(blocks), w):
            os.pwrite(fd, os.urandom(4096), b * 4096)
    print("wrote %d" % w, flush=True)
`;

interface Ck {
  downtimeNs: number;
  files?: { changed: number; ranged?: number; bytesRead: number; cutNs: number; setNs?: number; rangesNs?: number; filesNs?: number; afterNs?: number; everyPageNs?: number };
}

interface CaseResult {
  name: string;
  files: number;
  mib: number;
  writes: number;
  rounds: number;
  cutMs: number[];
  setMs: number[];
  rangesMs: number[];
  filesMs: number[];
  downtimeMs: number[];
  /** From RESUME to the end of the daemon's reads (the window the agents save pages in). */
  afterMs: number[];
  /** Of it, until the set was published (every page saved until then). */
  everyPageMs: number[];
  bytesRead: number[];
  ranged: number[];
}

async function runCase(name: string, n: number, mib: number, writes: number, rounds: number): Promise<CaseResult> {
  const home = mkdtempSync(join(tmpdir(), "tgb-hold-"));
  const data = mkdtempSync(join(tmpdir(), "tgb-hold-data-"));
  const env = { ...process.env, TARDIGRADE_HOME: home };
  const app = `hold-${name}`;
  const log = join(home, "apps", app, "log");
  const logSize = (): number => {
    try {
      return statSync(log).size;
    } catch {
      return 0;
    }
  };
  const r: CaseResult = { name, files: n, mib, writes, rounds, cutMs: [], setMs: [], rangesMs: [], filesMs: [], downtimeMs: [], afterMs: [], everyPageMs: [], bytesRead: [], ranged: [] };
  try {
    await cliJson(env, ["run", "--name", app, "--json", "--", "python3", "-c", APP, data, String(n), String(mib)]);
    trackDaemon(home);
    await trackApp(env, app);
    await waitForLine(log, ["ready"], 600_000);
    await cliJson(env, ["checkpoint", app, "--json"]);
    for (let i = 0; i < rounds; i++) {
      const from = logSize();
      writeFileSync(join(data, "cmd.tmp"), `round ${writes}`);
      renameSync(join(data, "cmd.tmp"), join(data, "cmd"));
      await waitForLine(log, ["wrote "], 600_000, from);
      const c = (await cliJson(env, ["checkpoint", app, "--json"])).json as Ck;
      if (!c.files) throw new Error("the checkpoint has no files image");
      r.cutMs.push(c.files.cutNs / 1e6);
      r.setMs.push((c.files.setNs ?? 0) / 1e6);
      r.rangesMs.push((c.files.rangesNs ?? 0) / 1e6);
      r.filesMs.push((c.files.filesNs ?? 0) / 1e6);
      r.downtimeMs.push(c.downtimeNs / 1e6);
      if (c.files.afterNs !== undefined) r.afterMs.push(c.files.afterNs / 1e6);
      if (c.files.everyPageNs !== undefined) r.everyPageMs.push(c.files.everyPageNs / 1e6);
      r.bytesRead.push(c.files.bytesRead);
      r.ranged.push(c.files.ranged ?? 0);
    }
    await cliJson(env, ["stop", app, "--timeout", "5", "--json"]).catch(() => undefined);
  } finally {
    killTracked("SIGKILL");
    await cleanup();
    rmSync(home, { recursive: true, force: true });
    rmSync(data, { recursive: true, force: true });
  }
  return r;
}

export async function main(): Promise<void> {
  const rounds = envInt("BENCH_HOLD_ROUNDS", 7);
  const want = (process.env.BENCH_HOLD_CASES ?? "one,wide,many").split(",");
  const cases: [string, number, number, number][] = [
    ["one", envInt("BENCH_HOLD_ONE_FILES", 1), envInt("BENCH_HOLD_ONE_MIB", 256), envInt("BENCH_HOLD_ONE_WRITES", 655)],
    // 12x the ranges (just under the agents' 8192 per process and interval)
    ["wide", 1, envInt("BENCH_HOLD_ONE_MIB", 256), envInt("BENCH_HOLD_WIDE_WRITES", 8000)],
    ["many", envInt("BENCH_HOLD_FILES", 200), envInt("BENCH_HOLD_MIB", 1), envInt("BENCH_HOLD_WRITES", 2)],
  ];
  const load0 = loadavg();
  const out: CaseResult[] = [];
  for (const [name, n, mib, w] of cases) if (want.includes(name)) out.push(await runCase(name, n, mib, w, rounds));
  const load1 = loadavg();
  const f = (x: number): string => x.toFixed(1);
  console.log("\nCASE   FILES  CHANGED/ROUND        HELD ms med (min-max)   set / tables / files ms   INC DOWNTIME ms   READ MiB  RANGED");
  for (const c of out) {
    const changed = c.files * c.writes * 4096;
    console.log(
      `${c.name.padEnd(6)} ${String(c.files).padStart(5)}  ${`${c.files * c.writes} blocks ${(changed / 2 ** 20).toFixed(2)} MiB`.padEnd(20)} ${`${f(median(c.cutMs))} (${f(Math.min(...c.cutMs))}-${f(Math.max(...c.cutMs))})`.padStart(22)}   ${`${f(median(c.setMs))} / ${f(median(c.rangesMs))} / ${f(median(c.filesMs))}`.padStart(23)}   ${f(median(c.downtimeMs)).padStart(15)}   ${(median(c.bytesRead) / 2 ** 20).toFixed(2).padStart(8)}  ${median(c.ranged)}`,
    );
    console.log(`       held per 100 MiB changed: ${f((median(c.cutMs) * 100 * 2 ** 20) / changed)} ms (target <= 20 ms)${c.afterMs.length ? `; after RESUME (the window): ${f(median(c.afterMs))} ms, of it every page saved ${f(median(c.everyPageMs))} ms` : ""}`);
  }
  console.log(`load average ${load0.map((x) => x.toFixed(1)).join(" ")} before, ${load1.map((x) => x.toFixed(1)).join(" ")} after (${cpus().length} CPUs)`);
  mkdirSync(dirname(RESULTS), { recursive: true });
  writeFileSync(RESULTS, JSON.stringify({ bench: "files-hold", date: new Date().toISOString(), host: { kernel: release(), cpus: cpus().length, loadBefore: load0, loadAfter: load1 }, cases: out }, null, 2) + "\n");
  console.log(`wrote ${RESULTS}`);
}
