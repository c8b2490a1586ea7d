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
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { loadavg } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { parseInterval } from "../src/cli/format.js";
import { ROOT, waitFor } from "../test/helpers/home.js";
import { startLoopbackHa } from "../test/helpers/ha-loopback.js";
import { requireNative } from "../test/helpers/native.js";

const ROUNDS = Number(process.env.TG_BENCH_HA_ROUNDS ?? 3);
const FAILOVER = process.env.TG_BENCH_HA_FAILOVER ?? "1s";
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

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
};

async function round(warm: boolean): Promise<Round> {
  const ha = await startLoopbackHa({ prefix: "tg-bha", failoverAfter: FAILOVER, standbyArgs: ["--every", "1s", ...(warm ? [] : ["--no-prefetch"])] });
  const { P, S } = ha;
  try {
    await waitFor("three durable checkpoints", () => {
      try {
        const st = JSON.parse(readFileSync(join(P.home, "apps", "calc", "mirror-state.json"), "utf8")) as { checkpoints: { state: string }[] };
        return st.checkpoints.filter((c) => c.state === "durable").length >= 3;
      } catch {
        return false;
      }
    }, 60_000);
    const killedAt = Date.now();
    const t0 = performance.now();
    ha.killPrimary();
    const code = await ha.exited;
    if (code !== 0) throw new Error(`standby exited ${code}: ${ha.err()}`);
    await waitFor("the app counting on the standby", () => /^count \d+$/m.test(S.log("calc")), 60_000, 5);
    const totalMs = performance.now() - t0;
    const report = JSON.parse(ha.out()) as { restoreMs: number; silentMs: { udp: number; mirror: number } };
    const grantLine = /^(\S+) primary silent .*lease of calc granted/m.exec(ha.err());
    if (!grantLine) throw new Error(`no grant line in the standby's log: ${ha.err()}`);
    const detectMs = Date.parse(grantLine[1]!) - killedAt;
    // Baseline: the same app restored on the same host from its local store.
    const l0 = performance.now();
    const local = await S.cli(["restore", "calc", "--replace"]);
    const localRestoreMs = performance.now() - l0;
    if (local.code !== 0) throw new Error(`local restore failed: ${local.stderr}`);
    return { warm, detectMs, recoverMs: report.restoreMs, totalMs: Math.round(totalMs), localRestoreMs: Math.round(localRestoreMs), ratio: report.restoreMs / localRestoreMs, silentMs: report.silentMs };
  } finally {
    await ha.stop();
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
