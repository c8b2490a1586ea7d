// Sparse address space benchmark (issue 10, item 7): capture cost must follow resident memory,
// not reserved address space. Two idle apps run test/fixtures/sparse:
//   sparse: 4096 MiB reserved (PROT_NONE; the first quarter read-write), 32 MiB touched (JVM-like)
//   dense (baseline, same run): 136 MiB reserved, the same 32 MiB touched
// Each round asks each app's agent directly (its control socket, docs/native-interface.md) for a
// full and then an incremental checkpoint written to a file in /dev/shm, so the figures are the
// agent's own work and not the store's ingest speed:
//   agent wall: the agent's total_ns (threads stopped -> image written)
//   agent CPU:  user+system time of the app process and its reaped snapshot child across the
//               request (/proc/PID/stat utime+stime+cutime+cstime; the fixture itself is asleep)
// Target: sparse full capture under 0.3 s of agent time (judged on agent CPU, which the machine's
// load does not inflate; the wall figure and the load average are printed beside it), and a
// sparse/dense ratio near 1. Prints a table and writes bench/results/sparse.json.
//
// Environment: BENCH_SPARSE_REPS=5, BENCH_SPARSE_RESERVE_MIB=4096, BENCH_SPARSE_TOUCH_MIB=32,
// BENCH_KEEP_HOME=1 keeps the temporary TARDIGRADE_HOME. Everything started is killed by PID.
import { mkdirSync, mkdtempSync, readFileSync, rmSync, unlinkSync, writeFileSync } from "node:fs";
import { createConnection } from "node:net";
import { cpus, loadavg, release, tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { type StatusJson, cleanup, cliJson, killTracked, median, trackApp, trackDaemon, waitForLine } from "./bench-procs.js";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");
const SPARSE = join(ROOT, "test", "fixtures", "build", "sparse");
const RESULTS = join(ROOT, "bench", "results", "sparse.json");
const TARGET_AGENT_S = 0.3;
const CLK_TCK = 100;

const envInt = (name: string, def: number): number => {
  const v = Number(process.env[name]);
  return Number.isFinite(v) && v > 0 ? Math.floor(v) : def;
};

interface AgentDone {
  event: "done";
  ok: boolean;
  error?: string;
  total_ns: number;
  pages: number;
  seq: number;
  kind?: string;
  pages_scanned?: number;
}

/** One CHECKPOINT request on the agent's socket; resolves with the downtime and the done event. */
function agentCheckpoint(sock: string, image: string, opts: string): Promise<{ downtimeNs: number; done: AgentDone }> {
  return new Promise((res, rej) => {
    const c = createConnection(sock);
    let buf = "";
    let downtimeNs = 0;
    const timer = setTimeout(() => {
      c.destroy();
      rej(new Error(`no answer from ${sock} in 120 s`));
    }, 120_000);
    c.setEncoding("utf8");
    c.on("connect", () => c.write(`CHECKPOINT ${image} ${opts}\n`));
    c.on("data", (d: string) => {
      buf += d;
      let nl: number;
      while ((nl = buf.indexOf("\n")) >= 0) {
        const ev = JSON.parse(buf.slice(0, nl)) as { event: string; ok: boolean; downtime_ns?: number; error?: string };
        buf = buf.slice(nl + 1);
        if (ev.event === "resumed") downtimeNs = ev.downtime_ns ?? 0;
        else if (ev.event === "done" || ev.event === "error") {
          clearTimeout(timer);
          c.end();
          if (!ev.ok) rej(new Error(`agent: ${ev.error ?? "failed"}`));
          else res({ downtimeNs, done: ev as unknown as AgentDone });
        }
      }
    });
    c.on("error", (e) => {
      clearTimeout(timer);
      rej(e);
    });
  });
}

/** utime+stime+cutime+cstime of pid, in seconds. */
function cpuS(pid: number): number {
  const s = readFileSync(`/proc/${pid}/stat`, "utf8");
  const f = s.slice(s.lastIndexOf(")") + 2).split(" ");
  // fields 14..17 (1-based) are at 11..14 after "pid (comm) "
  return (Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14])) / CLK_TCK;
}

interface Row {
  app: string;
  kind: string;
  wallS: number;
  cpuS: number;
  downtimeS: number;
  pages: number;
  pagesScanned: number;
}

export async function main(): Promise<void> {
  const reps = envInt("BENCH_SPARSE_REPS", 5);
  const reserve = envInt("BENCH_SPARSE_RESERVE_MIB", 4096);
  const touch = envInt("BENCH_SPARSE_TOUCH_MIB", 32);
  const home = mkdtempSync(join(tmpdir(), "tgb-sparse-"));
  const env = { ...process.env, TARDIGRADE_HOME: home };
  const apps = [
    { name: "sparse", reserve },
    { name: "dense", reserve: Math.ceil((touch * 4 + 8) / 8) * 8 },
  ];
  const load0 = loadavg();
  const rows: Row[] = [];
  console.log(`TARDIGRADE_HOME=${home}; ${reps} round(s); touched ${touch} MiB; sparse reserves ${apps[0]!.reserve} MiB, dense ${apps[1]!.reserve} MiB`);
  try {
    const st: Record<string, StatusJson> = {};
    for (const a of apps) {
      await cliJson(env, ["run", "--name", a.name, "--json", "--", SPARSE, String(a.reserve), String(touch), "0", "3600000"]);
      trackDaemon(home);
      st[a.name] = await trackApp(env, a.name);
      await waitForLine(join(home, "apps", a.name, "log"), ["ready"], 120_000);
    }
    for (let r = 0; r < reps; r++) {
      for (const a of apps) {
        const pid = st[a.name]!.appHostPid!;
        const sock = join(home, "apps", a.name, "agent.sock");
        let parent = 0;
        for (const kind of ["full", "incremental"]) {
          const image = join("/dev/shm", `tgb-sparse-${process.pid}-${a.name}.img`);
          const c0 = cpuS(pid);
          const { downtimeNs, done } = await agentCheckpoint(sock, image, kind === "full" ? "full" : `incremental parent=${parent}`);
          const c1 = cpuS(pid);
          unlinkSync(image);
          parent = done.seq;
          rows.push({ app: a.name, kind: done.kind ?? kind, wallS: done.total_ns / 1e9, cpuS: c1 - c0, downtimeS: downtimeNs / 1e9, pages: done.pages, pagesScanned: done.pages_scanned ?? 0 });
        }
      }
    }
  } finally {
    killTracked("SIGKILL");
    await cleanup();
    if (!process.env.BENCH_KEEP_HOME) rmSync(home, { recursive: true, force: true });
  }
  const load1 = loadavg();
  const groups = ["sparse", "dense"].flatMap((app) => ["full", "incremental"].map((kind) => ({ app, kind, rs: rows.filter((x) => x.app === app && x.kind === kind) })));
  const med = groups.map((g) => ({
    app: g.app,
    kind: g.kind,
    rounds: g.rs.length,
    wallS: median(g.rs.map((x) => x.wallS)),
    cpuS: median(g.rs.map((x) => x.cpuS)),
    downtimeS: median(g.rs.map((x) => x.downtimeS)),
    pages: median(g.rs.map((x) => x.pages)),
    pagesScanned: median(g.rs.map((x) => x.pagesScanned)),
  }));
  const f = (x: number): string => x.toFixed(3);
  console.log("\nAPP     KIND         AGENT CPU s  AGENT WALL s  DOWNTIME s  PAGES STORED  PAGES IN MAPPINGS");
  for (const m of med)
    console.log(`${m.app.padEnd(8)}${m.kind.padEnd(13)}${f(m.cpuS).padStart(11)}  ${f(m.wallS).padStart(12)}  ${f(m.downtimeS).padStart(10)}  ${String(m.pages).padStart(12)}  ${String(m.pagesScanned).padStart(17)}`);
  const sf = med.find((m) => m.app === "sparse" && m.kind === "full")!;
  const df = med.find((m) => m.app === "dense" && m.kind === "full")!;
  const ratio = df.cpuS > 0 ? sf.cpuS / df.cpuS : NaN;
  const pass = sf.cpuS < TARGET_AGENT_S;
  console.log(`\nmedians of ${reps} round(s). sparse full: agent CPU ${f(sf.cpuS)} s (target < ${TARGET_AGENT_S} s: ${pass ? "PASS" : "FAIL"}), wall ${f(sf.wallS)} s; sparse/dense agent CPU ${ratio.toFixed(2)}x`);
  console.log(`load average ${load0.map((x) => x.toFixed(1)).join(" ")} before, ${load1.map((x) => x.toFixed(1)).join(" ")} after (${cpus().length} CPUs): wall figures include waiting for a CPU`);
  mkdirSync(dirname(RESULTS), { recursive: true });
  writeFileSync(
    RESULTS,
    JSON.stringify(
      {
        bench: "sparse",
        date: new Date().toISOString(),
        host: { kernel: release(), cpus: cpus().length, loadBefore: load0, loadAfter: load1 },
        method: {
          apps: "test/fixtures/sparse RESERVE TOUCH 0 3600000 (idle after filling); sparse = JVM-like reservation, dense = baseline with the same touched memory",
          request: "CHECKPOINT on the agent socket into /dev/shm: full, then incremental on it, each round",
          agentCpu: "utime+stime+cutime+cstime of the app host pid across the request (10 ms ticks)",
          agentWall: "agent total_ns",
        },
        targetAgentS: TARGET_AGENT_S,
        pass,
        sparseOverDenseCpu: ratio,
        medians: med,
        rounds: rows,
      },
      null,
      2,
    ) + "\n",
  );
  console.log(`wrote ${RESULTS}`);
}
