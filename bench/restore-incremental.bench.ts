// The first checkpoint after a restore (issue 16, decision 6; docs/engine.md "Checkpoints after a
// restore"): incremental on the restored checkpoint, against the full one it replaces, and what
// arming the tracker costs the restore. Two apps run test/fixtures/dirtier MIB (random,
// incompressible memory), one with the default tracking (uffd: the restorer arms it) and one
// with --tracking hash (nothing armed: the baseline restore, and the old behaviour, a full first
// checkpoint). Each round, for each app: checkpoint, kill -9, restore (restoreNs: spawn of the
// restorer to the agent answering), 1% of the pages dirtied (SIGUSR1), checkpoint again: its kind,
// pages and bytes stored against the full checkpoint of the same app in the same round.
//
// Environment: BENCH_RINC_MIB=256, BENCH_RINC_ROUNDS=3, BENCH_KEEP_HOME=1. Everything started is
// killed by PID. Prints a table, writes bench/results/restore-incremental.json.
import { mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from "node:fs";
import { cpus, loadavg, release, tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { type StatusJson, cleanup, cliJson, killTracked, median, sleep, trackApp, trackDaemon, waitForLine } from "./bench-procs.js";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");
const DIRTIER = join(ROOT, "test", "fixtures", "build", "dirtier");
const RESULTS = join(ROOT, "bench", "results", "restore-incremental.json");

const envInt = (name: string, def: number): number => {
  const v = Number(process.env[name]);
  return Number.isFinite(v) && v > 0 ? Math.floor(v) : def;
};

interface Cp {
  id: string;
  kind: string;
  parent: string | null;
  pages: number;
  bytes: number;
  downtimeNs: number;
  fullReason?: string;
  stats?: { storedBytes?: number; newBytes?: number };
}

interface Row {
  app: string;
  round: number;
  fullPages: number;
  fullBytes: number;
  restoreS: number;
  afterKind: string;
  afterParent: string | null;
  afterPages: number;
  afterBytes: number;
  afterDowntimeS: number;
  afterReason: string;
}

function logSize(file: string): number {
  try {
    return statSync(file).size;
  } catch {
    return 0;
  }
}

export async function main(): Promise<void> {
  const mib = envInt("BENCH_RINC_MIB", 256);
  const rounds = envInt("BENCH_RINC_ROUNDS", 3);
  const home = mkdtempSync(join(tmpdir(), "tgb-rinc-"));
  const env = { ...process.env, TARDIGRADE_HOME: home };
  const apps = [
    { name: "uffd", tracking: "uffd" },
    { name: "hash", tracking: "hash" },
  ];
  const load0 = loadavg();
  const rows: Row[] = [];
  console.log(`TARDIGRADE_HOME=${home}; ${rounds} round(s); dirtier ${mib} MiB, 1% dirtied after each restore`);
  try {
    const st: Record<string, StatusJson> = {};
    for (const a of apps) {
      await cliJson(env, ["run", "--name", a.name, "--tracking", a.tracking, "--files", "none", "--json", "--", DIRTIER, String(mib), "1"]);
      trackDaemon(home);
      st[a.name] = await trackApp(env, a.name);
      await waitForLine(join(home, "apps", a.name, "log"), ["ready"], 300_000);
    }
    for (let r = 0; r < rounds; r++) {
      for (const a of apps) {
        const log = join(home, "apps", a.name, "log");
        const full = (await cliJson(env, ["checkpoint", a.name, "--full", "--json"])).json as Cp;
        process.kill(st[a.name]!.appHostPid!, "SIGKILL");
        for (let i = 0; i < 6000; i++) {
          const s = (await cliJson(env, ["status", a.name, "--json"])).json as StatusJson;
          if (s.state === "exited") break;
          await sleep(20);
        }
        const rs = (await cliJson(env, ["restore", a.name, "--checkpoint", full.id, "--json"])).json as { restoreNs: number };
        st[a.name] = await trackApp(env, a.name);
        const from = logSize(log);
        process.kill(st[a.name]!.appHostPid!, "SIGUSR1");
        await waitForLine(log, ["dirtied"], 300_000, from);
        const after = (await cliJson(env, ["checkpoint", a.name, "--json"])).json as Cp;
        rows.push({
          app: a.name,
          round: r,
          fullPages: full.pages,
          fullBytes: full.bytes,
          restoreS: rs.restoreNs / 1e9,
          afterKind: after.kind,
          afterParent: after.parent,
          afterPages: after.pages,
          afterBytes: after.bytes,
          afterDowntimeS: after.downtimeNs / 1e9,
          afterReason: after.fullReason ?? "",
        });
      }
    }
  } finally {
    killTracked("SIGKILL");
    await cleanup();
    if (!process.env.BENCH_KEEP_HOME) rmSync(home, { recursive: true, force: true });
  }
  const load1 = loadavg();
  const f = (x: number): string => x.toFixed(3);
  console.log("\nAPP   ROUND  FULL PAGES  RESTORE s  FIRST AFTER RESTORE: KIND   PARENT       PAGES   BYTES/FULL  DOWNTIME s");
  for (const x of rows)
    console.log(
      `${x.app.padEnd(6)}${String(x.round).padStart(5)}  ${String(x.fullPages).padStart(10)}  ${f(x.restoreS).padStart(9)}  ${x.afterKind.padStart(25)}   ${String(x.afterParent ?? "-").padEnd(11)}${String(x.afterPages).padStart(7)}   ${(x.afterBytes / x.fullBytes).toFixed(4).padStart(10)}  ${f(x.afterDowntimeS).padStart(10)}`,
    );
  const med = apps.map((a) => {
    const rs = rows.filter((x) => x.app === a.name);
    return {
      app: a.name,
      restoreS: median(rs.map((x) => x.restoreS)),
      afterOverFull: median(rs.map((x) => x.afterBytes / x.fullBytes)),
      afterDowntimeS: median(rs.map((x) => x.afterDowntimeS)),
      incremental: rs.filter((x) => x.afterKind === "incremental").length,
      rounds: rs.length,
    };
  });
  const u = med.find((m) => m.app === "uffd")!;
  const h = med.find((m) => m.app === "hash")!;
  console.log(
    `\nmedians: uffd (armed by the restorer): first checkpoint after a restore ${u.incremental}/${u.rounds} incremental, ${(u.afterOverFull * 100).toFixed(2)}% of the full one's bytes, downtime ${f(u.afterDowntimeS)} s; restore ${f(u.restoreS)} s` +
      `\n         hash (nothing armed, baseline): ${h.incremental}/${h.rounds} incremental, ${(h.afterOverFull * 100).toFixed(2)}% of the full one's bytes, downtime ${f(h.afterDowntimeS)} s; restore ${f(h.restoreS)} s` +
      `\n         restore uffd/hash ${(u.restoreS / h.restoreS).toFixed(2)}x (the difference is mostly write-protecting ${mib} MiB)`,
  );
  console.log(`load average ${load0.map((x) => x.toFixed(1)).join(" ")} before, ${load1.map((x) => x.toFixed(1)).join(" ")} after (${cpus().length} CPUs)`);
  mkdirSync(dirname(RESULTS), { recursive: true });
  writeFileSync(
    RESULTS,
    JSON.stringify({ bench: "restore-incremental", date: new Date().toISOString(), host: { kernel: release(), cpus: cpus().length, loadBefore: load0, loadAfter: load1 }, mib, medians: med, rounds: rows }, null, 2) + "\n",
  );
  console.log(`wrote ${RESULTS}`);
}
