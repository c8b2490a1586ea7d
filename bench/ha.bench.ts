// HA takeover benchmark (issue 16, docs/ha.md): how long a standby takes to run an app
// after its primary died, split into detection (the primary's daemon and app killed -9
// to the mirror granting the standby the lease) and recovery (lease granted to the app
// running on the standby: list the mirror, pull the checkpoint, restore), against a
// baseline measured in the same run on the same host: a local `restore --replace` of the
// same app from the standby's own store (no mirror, no lease). One host, loopback, two
// TARDIGRADE_HOMEs (two daemons); a counter checkpointing every second.
//   TG_BENCH_HA_ROUNDS=3          rounds (medians reported)
//   TG_BENCH_HA_FAILOVER=1s       --failover-after
//   TG_BENCH_HA_WARM=both         the standby with its warm copy (prefetch), without it
//                                 (--no-prefetch), or both alternated round by round
import { createSocket } from "node:dgram";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { loadavg } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { startServerProcess, tempDir, writeTokens } from "../src/mirror/testing.js";
import { parseInterval } from "../src/cli/format.js";
import { CLI, ROOT, makeHome, waitFor } from "../test/helpers/home.js";
import { fixture, requireNative } from "../test/helpers/native.js";
import { spawn } from "node:child_process";

const ROUNDS = Number(process.env.TG_BENCH_HA_ROUNDS ?? 3);
const FAILOVER = process.env.TG_BENCH_HA_FAILOVER ?? "1s";
const TOKEN = "bench-ha-token-01";
const WARM = process.env.TG_BENCH_HA_WARM ?? "both";

interface Round {
  warm: boolean;
  detectMs: number;
  recoverMs: number;
  totalMs: number;
  localRestoreMs: number;
  ratio: number;
  silentMs: { udp: number; mirror: number };
}

function freeUdpPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createSocket("udp4");
    s.once("error", reject);
    s.bind(0, "127.0.0.1", () => {
      const p = s.address().port;
      s.close(() => resolve(p));
    });
  });
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
};

async function round(warm: boolean): Promise<Round> {
  const tmp = tempDir("tg-bench-ha-");
  const P = makeHome("tg-bha-P-", { TARDIGRADE_HOST_ID: "bench-primary" });
  const S = makeHome("tg-bha-S-", { TARDIGRADE_HOST_ID: "bench-standby" });
  const tokenFile = join(tmp.dir, "calc.token");
  writeFileSync(tokenFile, TOKEN + "\n");
  const server = await startServerProcess(["--listen", "127.0.0.1:0", "--store", join(tmp.dir, "mirror"), "--tokens", writeTokens(tmp.dir, { calc: TOKEN }), "--max-delay", "100ms"]);
  const port = await freeUdpPort();
  let standby: ReturnType<typeof spawn> | undefined;
  try {
    // The primary first: a standby started before any lease was granted would take the lease itself.
    const run = await P.cli(["run", "--name", "calc", "--every", "1s", "--mirror", server.url, "--token-file", tokenFile, "--standby", `127.0.0.1:${port}`, "--failover-after", FAILOVER, "--", fixture("counter"), "1000000", "50"]);
    if (run.code !== 0) throw new Error(`run failed: ${run.stderr}`);
    standby = spawn(process.execPath, [CLI, "standby", "--mirror", server.url, "--app", "calc", "--token-file", tokenFile, "--failover-after", FAILOVER, "--listen", `127.0.0.1:${port}`, "--every", "1s", ...(warm ? [] : ["--no-prefetch"]), "--json"], { env: S.env, cwd: ROOT, stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    let err = "";
    standby.stdout!.setEncoding("utf8").on("data", (d: string) => (out += d));
    standby.stderr!.setEncoding("utf8").on("data", (d: string) => (err += d));
    const exited = new Promise<number | null>((r) => standby!.on("exit", (c) => r(c)));
    await waitFor("the standby seeing the primary's lease", () => err.includes("held by bench-primary"), 60_000);
    await waitFor("three durable checkpoints", () => {
      try {
        const st = JSON.parse(readFileSync(join(P.home, "apps", "calc", "mirror-state.json"), "utf8")) as { checkpoints: { state: string }[] };
        return st.checkpoints.filter((c) => c.state === "durable").length >= 3;
      } catch {
        return false;
      }
    }, 60_000);
    const p = P.pids("calc")!;
    const killedAt = Date.now();
    const t0 = performance.now();
    for (const pid of [P.daemonPid(), p.init, p.app]) if (pid) process.kill(pid, "SIGKILL");
    const code = await exited;
    if (code !== 0) throw new Error(`standby exited ${code}: ${err}`);
    await waitFor("the app counting on the standby", () => /^count \d+$/m.test(S.log("calc")), 60_000, 5);
    const totalMs = performance.now() - t0;
    const report = JSON.parse(out) as { restoreMs: number; silentMs: { udp: number; mirror: number } };
    const grantLine = /^(\S+) primary silent .*lease of calc granted/m.exec(err);
    if (!grantLine) throw new Error(`no grant line in the standby's log: ${err}`);
    const detectMs = Date.parse(grantLine[1]!) - killedAt;
    // Baseline: the same app restored on the same host from its local store.
    const l0 = performance.now();
    const local = await S.cli(["restore", "calc", "--replace"]);
    const localRestoreMs = performance.now() - l0;
    if (local.code !== 0) throw new Error(`local restore failed: ${local.stderr}`);
    return { warm, detectMs, recoverMs: report.restoreMs, totalMs: Math.round(totalMs), localRestoreMs: Math.round(localRestoreMs), ratio: report.restoreMs / localRestoreMs, silentMs: report.silentMs };
  } finally {
    if (standby && standby.exitCode === null && standby.pid) process.kill(standby.pid, "SIGKILL");
    server.kill();
    await server.exited;
    await P.cleanup();
    await S.cleanup();
    tmp.cleanup();
  }
}

export async function main(): Promise<void> {
  requireNative();
  const loadStart = loadavg();
  const rounds: Round[] = [];
  const modes = WARM === "both" ? [true, false] : [WARM !== "0" && WARM !== "no"];
  for (let i = 0; i < ROUNDS; i++) for (const w of i % 2 ? [...modes].reverse() : modes) rounds.push(await round(w));
  const loadEnd = loadavg();
  const rowOf = (rs: Round[]) => ({
    warm: rs[0]!.warm,
    failoverAfterMs: parseInterval(FAILOVER),
    rounds: rs.length,
    detectMs: median(rs.map((r) => r.detectMs)),
    recoverMs: median(rs.map((r) => r.recoverMs)),
    totalMs: median(rs.map((r) => r.totalMs)),
    localRestoreMs: median(rs.map((r) => r.localRestoreMs)),
    recoverVsLocal: Number(median(rs.map((r) => r.ratio)).toFixed(2)),
  });
  const rows = modes.map((w) => rowOf(rounds.filter((r) => r.warm === w)));
  const row = rows[0]!;
  console.log("standby | failover-after | detect (kill -9 to lease granted) | recover (granted to running) | kill to counting | local restore --replace | recover/local");
  for (const r of rows) console.log(`${r.warm ? "warm copy" : "--no-prefetch"} | ${FAILOVER} | ${r.detectMs} ms | ${r.recoverMs} ms | ${r.totalMs} ms | ${r.localRestoreMs} ms | ${r.recoverVsLocal}x`);
  console.log(`medians of ${ROUNDS} rounds each (alternated); load average ${loadStart.map((x) => x.toFixed(2)).join(" ")} at the start, ${loadEnd.map((x) => x.toFixed(2)).join(" ")} at the end`);
  const dir = join(ROOT, "bench", "results");
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, "ha.json"), JSON.stringify({ at: new Date().toISOString(), loadStart, loadEnd, row, rows, rounds }, null, 2) + "\n");
}
