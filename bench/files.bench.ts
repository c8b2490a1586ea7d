// Data files benchmark (issue 14). test/fixtures/blockwriter rewrites random 4 KiB blocks of a
// BENCH_FILES_MIB (default 1024) MiB file with pwrite. Two apps in the same run: one with the app's
// files in its checkpoints (the default), one with `--files none` (the baseline). Measured:
//   write throughput: blocks/s over BENCH_FILES_LOOP_S seconds, files on against --files none,
//   three turns each, alternating, medians (target >= 0.9x);
//   checkpoint downtime: a full checkpoint, then 1% of the blocks (BENCH_FILES_REWRITE blocks, when
//   set) rewritten and an incremental one, against the same with --files none; the time the app was
//   held for its files (the files cut) and the downtime added, per 100 MiB of changed file data
//   (target <= 20 ms; the hold no longer grows with the ranges, docs/files.md "Changed ranges", so
//   this figure falls as more is changed: run with BENCH_FILES_REWRITE=8000, 31 MiB in 8000 ranges,
//   under the agents' 8192 per interval, too);
//   incremental size: bytes the store added for the files image of the incremental against the
//   bytes rewritten (target <= 1.2x);
//   restore: the rollback of the file (restore --replace) against a plain copy of it (cp + fsync).
// Prints a table, the load, and writes bench/results/files.json. Everything started is killed by PID.
import { randomBytes } from "node:crypto";
import { closeSync, copyFileSync, fsyncSync, mkdirSync, mkdtempSync, openSync, renameSync, rmSync, statSync, writeFileSync, writeSync } from "node:fs";
import { cpus, loadavg, release, tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { cleanup, cliJson, killTracked, median, nowNs, trackApp, trackDaemon, waitForLine } from "./bench-procs.js";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");
const WRITER = join(ROOT, "test", "fixtures", "build", "blockwriter");
const RESULTS = join(ROOT, "bench", "results", "files.json");

const logSizeOf = (f: string): number => {
  try {
    return statSync(f).size;
  } catch {
    return 0;
  }
};

const envInt = (name: string, def: number): number => {
  const v = Number(process.env[name]);
  return Number.isFinite(v) && v > 0 ? Math.floor(v) : def;
};

interface Ck {
  id: string;
  downtimeNs: number;
  files?: { id: string; changed: number; ranged?: number; bytesRead: number; cutNs: number; setNs?: number; rangesNs?: number; filesNs?: number };
}

interface Row {
  mode: "files" | "none";
  rate: number;
  fullDowntimeMs: number;
  incDowntimeMs: number;
  fullFilesCutMs?: number;
  incFilesCutMs?: number;
  incFilesBytesRead?: number;
  incFilesRanged?: number;
  /** The incremental's files cut split: the set, the agents' tables, the files. */
  incFilesSplitMs?: [number, number, number];
  incFilesStoredBytes?: number;
  changedBytes: number;
  restoreFilesMs?: number;
  restoreWallMs?: number;
}

export async function main(): Promise<void> {
  const mib = envInt("BENCH_FILES_MIB", 1024);
  const loopS = envInt("BENCH_FILES_LOOP_S", 5);
  const blocks = mib * 256;
  const rewrite = Math.min(blocks, envInt("BENCH_FILES_REWRITE", Math.round(blocks / 100)));
  const home = mkdtempSync(join(tmpdir(), "tgb-files-"));
  const data = mkdtempSync(join(tmpdir(), "tgb-files-data-"));
  const env = { ...process.env, TARDIGRADE_HOME: home };
  const load0 = loadavg();
  const rows: Row[] = [];
  let copyMs = 0;
  console.log(`TARDIGRADE_HOME=${home}; file ${mib} MiB; ${rewrite} random blocks (${((rewrite / blocks) * 100).toFixed(1)}%) rewritten between the two checkpoints; throughput over ${loopS} s`);
  try {
    // both apps first; their write rates measured in turns (the machine's load moves)
    // (started in BENCH_FILES_ORDER order, default none first: the app started first measured slower in
    // every order tried on this machine, whatever its mode)
    const order = process.env.BENCH_FILES_ORDER === "files-first" ? (["files", "none"] as const) : (["none", "files"] as const);
    const apps = order.map((mode) => {
      const name = `bw-${mode}`;
      const file = join(data, `${mode}.dat`);
      const log = join(home, "apps", name, "log");
      const command = async (cmd: string, want: string): Promise<string> => {
        const from = logSizeOf(log);
        writeFileSync(`${file}.cmd.tmp`, cmd);
        renameSync(`${file}.cmd.tmp`, `${file}.cmd`); // whole, at once: the app polls for it
        return waitForLine(log, [want], 600_000, from);
      };
      return { mode, name, file, log, command, rates: [] as number[] };
    });
    // both files made (random bytes) and flushed before either app starts: no writeback of one
    // app's creation slows the other's writes
    for (const a of apps) {
      const fd = openSync(a.file, "w");
      const chunk = randomBytes(1 << 20);
      for (let i = 0; i < mib; i++) {
        chunk.writeUInt32LE(i, 0);
        writeSync(fd, chunk);
      }
      fsyncSync(fd);
      closeSync(fd);
    }
    for (const a of apps) {
      await cliJson(env, ["run", "--name", a.name, ...(a.mode === "none" ? ["--files", "none"] : []), "--json", "--", WRITER, a.file, String(mib)]);
      trackDaemon(home);
      await trackApp(env, a.name);
      await waitForLine(a.log, ["ready"], 600_000);
    }
    for (let round = 0; round < 3; round++) for (const a of round % 2 ? [...apps].reverse() : apps) a.rates.push(Number((await a.command(`loop ${loopS}`, "rate ")).split(" ")[1]));
    for (const { mode, name, file, command, rates } of apps) {
      const rate = median(rates);
      const c1 = (await cliJson(env, ["checkpoint", name, "--json"])).json as Ck;
      await command(`rewrite ${rewrite}`, "rewrote ");
      const c2 = (await cliJson(env, ["checkpoint", name, "--json"])).json as Ck;
      const row: Row = { mode, rate, fullDowntimeMs: c1.downtimeNs / 1e6, incDowntimeMs: c2.downtimeNs / 1e6, changedBytes: rewrite * 4096 };
      if (mode === "files" && c1.files && c2.files) {
        row.fullFilesCutMs = c1.files.cutNs / 1e6;
        row.incFilesCutMs = c2.files.cutNs / 1e6;
        row.incFilesBytesRead = c2.files.bytesRead;
        row.incFilesRanged = c2.files.ranged ?? 0;
        row.incFilesSplitMs = [(c2.files.setNs ?? 0) / 1e6, (c2.files.rangesNs ?? 0) / 1e6, (c2.files.filesNs ?? 0) / 1e6];
        const ins = (await cliJson(env, ["inspect", c2.files.id, "--json"])).json as { manifest: { stats: { storedBytes: number } } };
        row.incFilesStoredBytes = ins.manifest.stats.storedBytes;
        // restore: the app killed, its file rolled back (the blocks rewritten again first, so there is something to undo)
        await command(`rewrite ${rewrite}`, "rewrote ");
        const r = (await cliJson(env, ["restore", name, "--replace", "--json"])).json as { wallNs: number; files?: { ns: number } };
        await trackApp(env, name);
        row.restoreFilesMs = (r.files?.ns ?? 0) / 1e6;
        row.restoreWallMs = r.wallNs / 1e6;
        // the baseline: a plain copy of the same bytes, made durable
        const t0 = nowNs();
        copyFileSync(file, `${file}.copy`);
        const fd = openSync(`${file}.copy`, "r+");
        fsyncSync(fd);
        closeSync(fd);
        copyMs = Number(nowNs() - t0) / 1e6;
        rmSync(`${file}.copy`, { force: true });
      }
      rows.push(row);
      await cliJson(env, ["stop", name, "--timeout", "5", "--json"]).catch(() => undefined);
    }
  } finally {
    killTracked("SIGKILL");
    await cleanup();
    if (!process.env.BENCH_KEEP_HOME) {
      rmSync(home, { recursive: true, force: true });
      rmSync(data, { recursive: true, force: true });
    }
  }
  const load1 = loadavg();
  const on = rows.find((r) => r.mode === "files")!;
  const off = rows.find((r) => r.mode === "none")!;
  const f1 = (x: number | undefined): string => (x === undefined ? "-" : x.toFixed(1));
  console.log("\nMODE    WRITES/S   FULL DOWNTIME ms  INC DOWNTIME ms  FILES CUT full/inc ms  INC FILES READ  INC FILES STORED");
  for (const r of rows)
    console.log(
      `${r.mode.padEnd(8)}${String(Math.round(r.rate)).padStart(8)}   ${f1(r.fullDowntimeMs).padStart(16)}  ${f1(r.incDowntimeMs).padStart(15)}  ${`${f1(r.fullFilesCutMs)}/${f1(r.incFilesCutMs)}`.padStart(22)}  ${r.incFilesBytesRead === undefined ? "-".padStart(14) : `${(r.incFilesBytesRead / 2 ** 20).toFixed(1)} MiB`.padStart(14)}  ${r.incFilesStoredBytes === undefined ? "-" : `${(r.incFilesStoredBytes / 2 ** 20).toFixed(2)} MiB`}`,
    );
  const throughput = on.rate / off.rate;
  const perHundred = on.incFilesCutMs !== undefined ? (on.incFilesCutMs * 100 * 2 ** 20) / on.changedBytes : NaN;
  const sizeRatio = (on.incFilesStoredBytes ?? NaN) / on.changedBytes;
  console.log(`\nwrite throughput with files / --files none: ${throughput.toFixed(2)}x (target >= 0.9x: ${throughput >= 0.9 ? "PASS" : "FAIL"})`);
  const addedPerHundred = ((on.incDowntimeMs - off.incDowntimeMs) * 100 * 2 ** 20) / on.changedBytes;
  console.log(
    `incremental checkpoint downtime: ${f1(on.incDowntimeMs)} ms with files, ${f1(off.incDowntimeMs)} ms with --files none (+${f1(on.incDowntimeMs - off.incDowntimeMs)} ms: ${addedPerHundred.toFixed(1)} ms added per 100 MiB changed, target <= 20 ms: ${addedPerHundred <= 20 ? "PASS" : "FAIL"})`,
  );
  console.log(
    `files cut: ${f1(on.incFilesCutMs)} ms with the app held for ${(on.changedBytes / 2 ** 20).toFixed(2)} MiB rewritten (${((on.incFilesBytesRead ?? 0) / 2 ** 20).toFixed(2)} MiB read, ${on.incFilesRanged ?? 0} file(s) by ranges): ${perHundred.toFixed(1)} ms per 100 MiB changed (target <= 20 ms: ${perHundred <= 20 ? "PASS" : "FAIL"}); of it: set ${f1(on.incFilesSplitMs?.[0])} ms, agents' tables ${f1(on.incFilesSplitMs?.[1])} ms, files ${f1(on.incFilesSplitMs?.[2])} ms`,
  );
  console.log(`incremental files image: ${((on.incFilesStoredBytes ?? 0) / 2 ** 20).toFixed(2)} MiB stored for ${(on.changedBytes / 2 ** 20).toFixed(2)} MiB rewritten: ${sizeRatio.toFixed(2)}x (target <= 1.2x: ${sizeRatio <= 1.2 ? "PASS" : "FAIL"})`);
  console.log(`restore: files rolled back in ${f1(on.restoreFilesMs)} ms (restore wall ${f1(on.restoreWallMs)} ms); a plain copy of the same file + fsync ${copyMs.toFixed(1)} ms: ${((on.restoreFilesMs ?? NaN) / copyMs).toFixed(2)}x`);
  console.log(`load average ${load0.map((x) => x.toFixed(1)).join(" ")} before, ${load1.map((x) => x.toFixed(1)).join(" ")} after (${cpus().length} CPUs)`);
  mkdirSync(dirname(RESULTS), { recursive: true });
  writeFileSync(
    RESULTS,
    JSON.stringify({ bench: "files", date: new Date().toISOString(), host: { kernel: release(), cpus: cpus().length, loadBefore: load0, loadAfter: load1 }, mib, loopS, rewriteBlocks: rewrite, throughputRatio: throughput, filesCutMsPer100MiBChanged: perHundred, addedDowntimeMsPer100MiBChanged: addedPerHundred, incrementalSizeRatio: sizeRatio, plainCopyMs: copyMs, rows }, null, 2) + "\n",
  );
  console.log(`wrote ${RESULTS}`);
}
