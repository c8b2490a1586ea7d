// Lazy restore against eager (issue 16, decision 5; docs/engine.md "Lazy restore"): one app,
// test/fixtures/dirtier MIB (random, incompressible memory: raw blocks in the store, all in the
// restore plan), one checkpoint, then each round kills it and restores it from that checkpoint,
// eagerly then with --lazy (same run, same checkpoint, alternating). "To running": restoreNs, the
// spawn of tardigrade-restore to the restored agent answering (wall: the CLI's whole call). For the
// lazy restore also the time to the page server's "done" (its own clock, from getting the memory)
// and how many pages were in when the app answered. The checksum of all memory (SIGUSR2) is
// compared with the one before the checkpoint after the first restore of each kind.
//
// Environment: BENCH_LAZY_MIB=1024, BENCH_LAZY_ROUNDS=3, BENCH_KEEP_HOME=1. Everything started is
// killed by PID. Prints a table, writes bench/results/lazy.json.
import { mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from "node:fs";
import { cpus, loadavg, release, tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { type RestoreJson, type StatusJson, cleanup, cliJson, killTracked, median, sleep, trackApp, trackDaemon, waitForLine } from "./bench-procs.js";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");
const DIRTIER = join(ROOT, "test", "fixtures", "build", "dirtier");
const RESULTS = join(ROOT, "bench", "results", "lazy.json");

const envInt = (name: string, def: number): number => {
  const v = Number(process.env[name]);
  return Number.isFinite(v) && v > 0 ? Math.floor(v) : def;
};

interface Row {
  mode: "eager" | "lazy";
  round: number;
  toRunningS: number;
  wallS: number;
  loadedAtAnswer?: number;
  total?: number;
  loadDoneS?: number;
  faults?: number;
  sumOk?: boolean;
}

function logSize(file: string): number {
  try {
    return statSync(file).size;
  } catch {
    return 0;
  }
}

async function checksum(log: string, pid: number): Promise<string> {
  const from = logSize(log);
  process.kill(pid, "SIGUSR2");
  return waitForLine(log, ["sum "], 600_000, from);
}

export async function main(): Promise<void> {
  const mib = envInt("BENCH_LAZY_MIB", 1024);
  const rounds = envInt("BENCH_LAZY_ROUNDS", 3);
  const home = mkdtempSync(join(tmpdir(), "tgb-lazy-"));
  const env = { ...process.env, TARDIGRADE_HOME: home };
  const name = "lz";
  const log = join(home, "apps", name, "log");
  const load0 = loadavg();
  const rows: Row[] = [];
  console.log(`TARDIGRADE_HOME=${home}; ${rounds} round(s); dirtier ${mib} MiB; eager then lazy restore of one checkpoint each round`);
  try {
    await cliJson(env, ["run", "--name", name, "--files", "none", "--json", "--", DIRTIER, String(mib), "1"]);
    trackDaemon(home);
    let st: StatusJson = await trackApp(env, name);
    await waitForLine(log, ["ready"], 600_000);
    const before = await checksum(log, st.appHostPid!);
    const cp = (await cliJson(env, ["checkpoint", name, "--json"])).json as { id: string };
    for (let r = 0; r < rounds; r++) {
      for (const mode of ["eager", "lazy"] as const) {
        process.kill(st.appHostPid!, "SIGKILL");
        for (let i = 0; i < 6000; i++) {
          const s = (await cliJson(env, ["status", name, "--json"])).json as StatusJson;
          if (s.state === "exited") break;
          await sleep(20);
        }
        const rs = (await cliJson(env, ["restore", name, "--checkpoint", cp.id, "--json", ...(mode === "lazy" ? ["--lazy"] : [])])).json as RestoreJson;
        st = await trackApp(env, name);
        const row: Row = { mode, round: r, toRunningS: rs.restoreNs / 1e9, wallS: rs.wallNs / 1e9 };
        if (mode === "lazy") {
          row.loadedAtAnswer = rs.lazy?.loaded ?? -1;
          row.total = rs.lazy?.total ?? -1;
          for (let i = 0; i < 30_000; i++) {
            const s = (await cliJson(env, ["status", name, "--json"])).json as StatusJson;
            if (s.lazy && s.lazy.state !== "loading") {
              if (s.lazy.state !== "done") throw new Error(`lazy restore ${s.lazy.state}: ${s.lazy.error ?? ""}`);
              row.loadDoneS = s.lazy.ms / 1000;
              row.faults = s.lazy.faults;
              break;
            }
            await sleep(20);
          }
        }
        if (r === 0) row.sumOk = (await checksum(log, st.appHostPid!)) === before;
        rows.push(row);
      }
    }
  } finally {
    killTracked("SIGKILL");
    await cleanup();
    if (!process.env.BENCH_KEEP_HOME) rmSync(home, { recursive: true, force: true });
  }
  const load1 = loadavg();
  const f = (x: number | undefined): string => (x === undefined ? "-" : x.toFixed(3));
  console.log("\nMODE   ROUND  TO RUNNING s  WALL s  PAGES IN AT ANSWER  LOAD DONE s  FAULTS  CHECKSUM");
  for (const x of rows)
    console.log(
      `${x.mode.padEnd(6)}${String(x.round).padStart(6)}  ${f(x.toRunningS).padStart(12)}  ${f(x.wallS).padStart(6)}  ${(x.total !== undefined ? `${x.loadedAtAnswer}/${x.total}` : "-").padStart(18)}  ${f(x.loadDoneS).padStart(11)}  ${String(x.faults ?? "-").padStart(6)}  ${x.sumOk === undefined ? "-" : x.sumOk ? "right" : "WRONG"}`,
    );
  const med = (mode: string, k: "toRunningS" | "wallS" | "loadDoneS"): number => median(rows.filter((x) => x.mode === mode && x[k] !== undefined).map((x) => x[k]!));
  const e = med("eager", "toRunningS");
  const l = med("lazy", "toRunningS");
  console.log(
    `\nmedians: to running eager ${f(e)} s, lazy ${f(l)} s (lazy/eager ${(l / e).toFixed(3)}x); wall eager ${f(med("eager", "wallS"))} s, lazy ${f(med("lazy", "wallS"))} s; lazy load done ${f(med("lazy", "loadDoneS"))} s after the server got the memory`,
  );
  console.log(`load average ${load0.map((x) => x.toFixed(1)).join(" ")} before, ${load1.map((x) => x.toFixed(1)).join(" ")} after (${cpus().length} CPUs)`);
  mkdirSync(dirname(RESULTS), { recursive: true });
  writeFileSync(
    RESULTS,
    JSON.stringify({ bench: "lazy", date: new Date().toISOString(), host: { kernel: release(), cpus: cpus().length, loadBefore: load0, loadAfter: load1 }, mib, medians: { eagerToRunningS: e, lazyToRunningS: l, lazyLoadDoneS: med("lazy", "loadDoneS") }, rounds: rows }, null, 2) + "\n",
  );
  console.log(`wrote ${RESULTS}`);
}
