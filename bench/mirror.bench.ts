// Mirror ingest benchmark: throughput from 1 and 4 sources over loopback into a real
// server process, against a raw TCP copy of the same bytes (to a process that only
// counts them) measured in the same run; fsync calls per committed checkpoint.
// Two regimes: "burst", where the server's cache holds a whole run (the flushes still
// run, triggered by queue length and delay, alongside the ingest), and "sustained",
// where a run is twice the cache, so half of it must reach the disk before the last
// chunk can be taken in. Every row also gives the disk's own speed (direct writes of
// the same bytes, same filesystem, same run): no mirror can make data durable faster
// than that, which bounds durable/raw at disk/raw.
// Each case runs a warm-up round and then REPEAT times (raw copy, then mirror,
// alternating, fresh bytes each time, one server per case) and reports medians: the
// 2-core test VM is shared, and single runs vary by 2x.
//   TG_BENCH_MIRROR_CASES=blocks   only the cases whose name contains this
//   TG_BENCH_MIRROR_MIB=512        MiB moved per case and repeat
//   TG_BENCH_MIRROR_REPEAT=3       repeats per case
import { spawn } from "node:child_process";
import { mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { connect } from "node:net";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { MirrorClient } from "../src/mirror/client.js";
import { SyntheticSource } from "../src/mirror/synthetic.js";
import { startServerProcess, tempDir, writeTokens, type ServerProcess } from "../src/mirror/testing.js";
import { sha256hex, type MirrorCheckpoint } from "../src/mirror/objects.js";
import { PackWriter } from "../src/mirror/pack-writer.js";
import { randomBytes } from "node:crypto";
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";

const here = dirname(fileURLToPath(import.meta.url));
const MiB = 1024 * 1024;

interface Row {
  case: string;
  sources: number;
  chunkSize: number;
  bytes: number;
  rawMs: number;
  receivedMs: number;
  durableMs: number;
  rawMBps: number;
  ingestMBps: number;
  /** The server's --cache-max, bytes. */
  cacheBytes: number;
  /** Writing the same bytes straight to a file (O_DIRECT, fsync) on the store's filesystem. */
  diskMs: number;
  diskMBps: number;
  /** rawMs / diskMs: the best durable/raw the disk allows. */
  diskBound: number;
  /** Share of each source's time (until its last Received ack) spent waiting for a Want, %. */
  wantWaitPct: number;
  ratioReceived: number;
  ratioDurable: number;
  checkpoints: number;
  flushes: number;
  fsyncs: number;
  fsyncsPerCheckpoint: number;
  /** CPU seconds (user + system, both processes) per GiB moved: independent of other load on the machine. */
  rawCpuSPerGiB: number;
  /** Same for the mirror, from the first offer to the last durable ack (includes flushes). */
  mirrorCpuSPerGiB: number;
  /** The server process's part of mirrorCpuSPerGiB (the rest is the sources, in this process). */
  serverCpuSPerGiB: number;
  /** Runs of the case; times, rates, ratios and CPU figures are their medians. */
  repeats: number;
  ratiosReceived: number[];
  ratiosDurable: number[];
}

/** CPU time (user + system) a process has used, in ms (Linux /proc; clock ticks of 10 ms). */
function procCpuMs(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return ((Number(f[11]) + Number(f[12])) * 1000) / 100;
}

/** CPU time this process has used, in ms. */
function selfCpuMs(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
}

function makeCheckpoints(sources: number, perSource: number, pages: number, pageSize: number, round: number): MirrorCheckpoint[][] {
  return Array.from({ length: sources }, (_, k) => {
    const gen = new SyntheticSource(`bench${k}`, { pages, pageSize, sharedFraction: 0, dirtyFraction: 1, seed: `bench-${pageSize}-${round}` });
    return Array.from({ length: perSource }, () => renumber(gen.next(), round * perSource));
  });
}

/** The same checkpoint with its seq (and id, parent) moved up by `by`: later rounds continue each source's sequence. */
function renumber(c: MirrorCheckpoint, by: number): MirrorCheckpoint {
  const name = (seq: number): string => `ck${String(seq).padStart(6, "0")}`;
  return { ...c, id: name(c.seq + by), seq: c.seq + by, ...(c.seq + by > 1 ? { parent: name(c.seq + by - 1) } : {}) };
}

/**
 * Checkpoints made of store-block-sized chunks: what a CasStore checkpoint is on the wire
 * (compressed page blocks of 100–600 KiB, incompressible bytes), about 4 MiB each.
 */
function makeBlockCheckpoints(sources: number, perSource: number, bytesPerCheckpoint: number, round: number): MirrorCheckpoint[][] {
  return Array.from({ length: sources }, (_, k) =>
    Array.from({ length: perSource }, (_, i) => {
      const chunks = new Map<string, Buffer>();
      for (let n = 0; n < bytesPerCheckpoint; ) {
        const size = Math.min(bytesPerCheckpoint - n, (100 + Math.floor(Math.random() * 501)) * 1024);
        const data = randomBytes(size);
        chunks.set(sha256hex(data), data);
        n += size;
      }
      const seq = round * perSource + i + 1;
      const id = `ck${String(seq).padStart(6, "0")}`;
      const parent = seq > 1 ? { parent: `ck${String(seq - 1).padStart(6, "0")}` } : {};
      return { source: `bench${k}`, id, seq, ...parent, manifest: Buffer.from(JSON.stringify({ id, chunks: [...chunks.keys()] })), chunks };
    }),
  );
}

/** A process that accepts connections and discards everything (the raw TCP baseline). */
async function startSink(): Promise<{ port: number; pid: number; stop(): void }> {
  const code = `
    const net = require("node:net");
    const s = net.createServer((c) => { c.on("data", () => {}); c.on("end", () => c.end("k")); });
    s.listen(0, "127.0.0.1", () => console.log(s.address().port));`;
  const child = spawn(process.execPath, ["-e", code], { stdio: ["ignore", "pipe", "inherit"] });
  const port = await new Promise<number>((resolve) => child.stdout.once("data", (d: Buffer) => resolve(Number(d.toString().trim()))));
  return { port, pid: child.pid as number, stop: () => child.kill("SIGKILL") };
}

/** Sends every chunk and manifest of each source's checkpoints over one plain connection per source. */
async function rawCopy(port: number, perSource: MirrorCheckpoint[][]): Promise<number> {
  const t0 = performance.now();
  await Promise.all(
    perSource.map(
      (cks) =>
        new Promise<void>((resolve, reject) => {
          const s = connect({ host: "127.0.0.1", port }, async () => {
            for (const c of cks) {
              s.cork();
              for (const d of c.chunks.values()) s.write(d);
              s.write(c.manifest);
              s.uncork();
              if (s.writableNeedDrain) await new Promise((r) => s.once("drain", r));
            }
            s.end();
          });
          s.on("data", () => undefined);
          s.on("close", () => resolve());
          s.on("error", reject);
        }),
    ),
  );
  return performance.now() - t0;
}

/** Writes every chunk to one file as the mirror's pack writer does (O_DIRECT where possible), then fsyncs. */
async function diskWrite(path: string, perSource: MirrorCheckpoint[][]): Promise<number> {
  const t0 = performance.now();
  const w = await PackWriter.create(path);
  try {
    for (const l of perSource) for (const c of l) for (const d of c.chunks.values()) await w.add(d);
    await w.finish();
  } finally {
    await w.close();
  }
  return performance.now() - t0;
}

async function mirrorIngest(srv: ServerProcess, perSource: MirrorCheckpoint[][]): Promise<{ receivedMs: number; durableMs: number; wantWaitMs: number }> {
  const clients = perSource.map((_, k) => new MirrorClient({ url: srv.url, source: `bench${k}`, token: `token-bench${k}-0123456789` }));
  try {
    const t0 = performance.now();
    let receivedMs = 0;
    const received = perSource.map((cks, k) => {
      const client = clients[k] as MirrorClient;
      const durable = cks.map((c) => client.send(c, "durable"));
      const last = cks[cks.length - 1] as MirrorCheckpoint;
      return {
        durable,
        received: new Promise<void>((resolve) => {
          const on = (e: { id: string; state: string }): void => {
            if (e.id === last.id && e.state !== "queued") {
              client.off("state", on);
              resolve();
            }
          };
          client.on("state", on);
        }),
      };
    });
    await Promise.all(received.map((r) => r.received));
    receivedMs = performance.now() - t0;
    const wantWaitMs = clients.reduce((n, c) => n + c.stats.wantWaitMs, 0);
    await Promise.all(received.flatMap((r) => r.durable));
    return { receivedMs, durableMs: performance.now() - t0, wantWaitMs };
  } finally {
    await Promise.all(clients.map((c) => c.close()));
  }
}

// A full collection before each timed copy: making 512 MiB of fresh bytes leaves V8
// marking and sweeping them, and whichever copy ran next paid for it (measured: the raw
// copy's CPU per GiB moved 0.4-1.3 s/GiB between cases without this).
setFlagsFromString("--expose-gc");
const fullGc = runInNewContext("gc") as () => void;
async function settle(): Promise<void> {
  fullGc();
  await new Promise((r) => setTimeout(r, 100));
}

interface Run {
  /** Share of the sources' time until the last Received ack spent waiting for a Want (%). */
  wantWaitPct: number;
  rawMs: number;
  diskMs: number;
  receivedMs: number;
  durableMs: number;
  rawCpuMs: number;
  mirrorCpuMs: number;
  serverCpuMs: number;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2;
}

async function runCase(name: string, sources: number, totalBytes: number, pages: number, pageSize: number, repeats: number, cacheBytes: number): Promise<Row> {
  // pages = 0: store-block-sized chunks (pageSize = bytes per checkpoint).
  const perCheckpoint = pages === 0 ? pageSize : pages * pageSize;
  const perSource = Math.max(1, Math.round(totalBytes / sources / perCheckpoint));
  const make = (round: number): MirrorCheckpoint[][] =>
    pages === 0 ? makeBlockCheckpoints(sources, perSource, pageSize, round) : makeCheckpoints(sources, perSource, pages, pageSize, round);
  const tmp = tempDir("tg-mirror-bench-");
  const sink = await startSink();
  const tokens = writeTokens(tmp.dir, Object.fromEntries(Array.from({ length: sources }, (_, k) => [`bench${k}`, `token-bench${k}-0123456789`])));
  const srv = await startServerProcess([
    "--listen", "127.0.0.1:0", "--store", join(tmp.dir, "store"), "--tokens", tokens,
    "--cache-max", String(cacheBytes), "--max-delay", "200ms", "--max-queued", "32",
  ]);
  const runs: Run[] = [];
  let bytes = 0;
  let total = 0;
  try {
    // Round 0 warms up both paths (the server's slabs and pack stages fault their pages
    // in, JIT; the raw copy gets the same) and is not counted.
    for (let round = 0; round <= repeats; round++) {
      let cks: MirrorCheckpoint[][] | undefined = make(round);
      bytes = 0;
      for (const l of cks) for (const c of l) for (const d of c.chunks.values()) bytes += d.length;
      total += cks.reduce((n, l) => n + l.length, 0);
      await rawCopy(sink.port, cks.map((l) => l.slice(0, 1))); // warm-up
      await settle();
      const rawCpu0 = procCpuMs(sink.pid) + selfCpuMs();
      const rawMs = await rawCopy(sink.port, cks);
      const rawCpuMs = procCpuMs(sink.pid) + selfCpuMs() - rawCpu0;
      const diskMs = await diskWrite(join(tmp.dir, "disk-baseline"), cks);
      rmSync(join(tmp.dir, "disk-baseline"), { force: true });
      await settle();
      const serverCpu0 = procCpuMs(srv.pid);
      const clientCpu0 = selfCpuMs();
      const { receivedMs, durableMs, wantWaitMs } = await mirrorIngest(srv, cks);
      const serverCpuMs = procCpuMs(srv.pid) - serverCpu0;
      const mirrorCpuMs = serverCpuMs + selfCpuMs() - clientCpu0;
      const run: Run = { wantWaitPct: (100 * wantWaitMs) / (sources * receivedMs), rawMs, diskMs, receivedMs, durableMs, rawCpuMs, mirrorCpuMs, serverCpuMs };
      if (round > 0) runs.push(run);
      cks = undefined; // (let the next round's bytes replace these)
      console.log(`  ${name} ${round === 0 ? "warm-up" : `#${round}`}: recv/raw ${(rawMs / receivedMs).toFixed(2)} durable/raw ${(rawMs / durableMs).toFixed(2)} ` +
        `(raw ${rawMs.toFixed(0)} ms, disk ${diskMs.toFixed(0)} ms, received ${receivedMs.toFixed(0)} ms, durable ${durableMs.toFixed(0)} ms)`);
    }
    // The durable acks can arrive before the last flush's log line does.
    const committedSoFar = (): number =>
      srv.logs.filter((l) => typeof l.msg === "string" && l.msg.startsWith("flush committed")).reduce((n, l) => n + Number(l.checkpoints), 0);
    for (let i = 0; i < 200 && committedSoFar() < total; i++) await new Promise((r) => setTimeout(r, 10));
    const flushes = srv.logs.filter((l) => typeof l.msg === "string" && l.msg.startsWith("flush committed"));
    const fsyncs = flushes.reduce((n, l) => n + Number(l.fsyncs), 0);
    const committed = flushes.reduce((n, l) => n + Number(l.checkpoints), 0);
    const m = (f: (r: Run) => number): number => median(runs.map(f));
    const gib = bytes / 2 ** 30;
    return {
      case: name,
      sources,
      chunkSize: pages === 0 ? -1 : pageSize,
      bytes,
      repeats,
      rawMs: m((r) => r.rawMs),
      receivedMs: m((r) => r.receivedMs),
      durableMs: m((r) => r.durableMs),
      rawMBps: bytes / MiB / (m((r) => r.rawMs) / 1000),
      ingestMBps: bytes / MiB / (m((r) => r.receivedMs) / 1000),
      cacheBytes,
      diskMs: m((r) => r.diskMs),
      diskMBps: bytes / MiB / (m((r) => r.diskMs) / 1000),
      diskBound: m((r) => r.rawMs / r.diskMs),
      wantWaitPct: m((r) => r.wantWaitPct),
      ratioReceived: m((r) => r.rawMs / r.receivedMs),
      ratioDurable: m((r) => r.rawMs / r.durableMs),
      ratiosReceived: runs.map((r) => Number((r.rawMs / r.receivedMs).toFixed(3))),
      ratiosDurable: runs.map((r) => Number((r.rawMs / r.durableMs).toFixed(3))),
      checkpoints: committed,
      flushes: flushes.length,
      fsyncs,
      fsyncsPerCheckpoint: fsyncs / Math.max(1, committed),
      rawCpuSPerGiB: m((r) => r.rawCpuMs) / 1000 / gib,
      mirrorCpuSPerGiB: m((r) => r.mirrorCpuMs) / 1000 / gib,
      serverCpuSPerGiB: m((r) => r.serverCpuMs) / 1000 / gib,
    };
  } finally {
    sink.stop();
    srv.kill("SIGKILL");
    await srv.exited;
    tmp.cleanup();
  }
}

export async function main(): Promise<void> {
  const rows: Row[] = [];
  const totalBytes = Number(process.env.TG_BENCH_MIRROR_MIB ?? 512) * MiB;
  const repeats = Math.max(1, Number(process.env.TG_BENCH_MIRROR_REPEAT ?? 3));
  // [name, sources, pages per checkpoint (0: blocks), page size (blocks: bytes per checkpoint), cache]; same bytes in every case.
  // Burst: the cache holds the run. Sustained: the run is twice the cache.
  const burst = 2 * totalBytes;
  const sustained = Math.max(64 * MiB, Math.floor(totalBytes / 2));
  const cases: [string, number, number, number, number][] = [
    ["1 source, 4 KiB pages", 1, 512, 4096, burst],
    ["4 sources, 4 KiB pages", 4, 512, 4096, burst],
    ["1 source, 64 KiB chunks", 1, 32, 65536, burst],
    ["4 sources, 64 KiB chunks", 4, 32, 65536, burst],
    // What a CasStore checkpoint is on the wire: compressed blocks of 100-600 KiB (docs/mirror.md).
    ["1 source, 100-600 KiB blocks", 1, 0, 4 * MiB, burst],
    ["4 sources, 100-600 KiB blocks", 4, 0, 4 * MiB, burst],
    ["1 source, blocks, sustained", 1, 0, 4 * MiB, sustained],
    ["4 sources, blocks, sustained", 4, 0, 4 * MiB, sustained],
  ];
  // TG_BENCH_MIRROR_CASES=blocks (a substring of the case names) runs only the matching cases.
  const only = process.env.TG_BENCH_MIRROR_CASES;
  for (const [name, sources, pages, size, cache] of cases) {
    if (!only || name.includes(only)) rows.push(await runCase(name, sources, totalBytes, pages, size, repeats, cache));
  }
  const f = (n: number, d = 0): string => n.toFixed(d);
  console.log(
    ["case".padEnd(30), "MiB".padStart(5), "cache".padStart(6), "raw MB/s".padStart(9), "ingest MB/s".padStart(12), "recv/raw".padStart(9),
      "durable/raw".padStart(12), "disk/raw".padStart(9), "ckpts".padStart(6), "flushes".padStart(8), "fsync/ckpt".padStart(11),
      "raw CPU s/GiB".padStart(14), "mirror CPU s/GiB".padStart(17), "(server)".padStart(9), "want wait".padStart(10)].join(" "),
  );
  for (const r of rows) {
    console.log(
      [r.case.padEnd(30), f(r.bytes / MiB).padStart(5), `${f(r.cacheBytes / MiB)}M`.padStart(6), f(r.rawMBps).padStart(9), f(r.ingestMBps).padStart(12),
        f(r.ratioReceived, 2).padStart(9), f(r.ratioDurable, 2).padStart(12), f(r.diskBound, 2).padStart(9), String(r.checkpoints).padStart(6),
        String(r.flushes).padStart(8), f(r.fsyncsPerCheckpoint, 2).padStart(11),
        f(r.rawCpuSPerGiB, 2).padStart(14), f(r.mirrorCpuSPerGiB, 2).padStart(17), f(r.serverCpuSPerGiB, 2).padStart(9),
        `${f(r.wantWaitPct)}%`.padStart(10)].join(" "),
    );
  }
  console.log(`medians of ${repeats} runs per case; ratios: raw TCP time / mirror time for the same bytes in the same run (1.0 = as fast as raw TCP); target 4-source >= 0.7`);
  console.log("disk/raw: raw TCP time / time to write the same bytes to the store's disk (O_DIRECT + fsync): the best durable/raw this disk allows; sustained runs (twice the cache) cannot receive much faster than it either");
  console.log("want wait: share of the sources' time spent waiting for a Want, with nothing else to send (offers run ahead of chunks, so ~0)");
  console.log("CPU s/GiB: user+system CPU of both processes per GiB (mirror: until the last durable ack, flushes included); not affected by other load");
  const out = join(here, "..", "..", "bench", "results");
  mkdirSync(out, { recursive: true });
  // A filtered run keeps the other cases' rows of the previous results.
  let kept: Row[] = [];
  if (only) {
    try {
      kept = (JSON.parse(readFileSync(join(out, "mirror.json"), "utf8")) as { rows: Row[] }).rows.filter((r) => !rows.some((x) => x.case === r.case));
    } catch {
      kept = [];
    }
  }
  writeFileSync(join(out, "mirror.json"), JSON.stringify({ date: new Date().toISOString(), rows: [...kept, ...rows] }, null, 2) + "\n");
}
