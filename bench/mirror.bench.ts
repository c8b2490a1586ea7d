// Mirror ingest benchmark: throughput from 1 and 4 sources over loopback into a real
// server process, against a raw TCP copy of the same bytes (to a process that only
// counts them) measured in the same run; fsync calls per committed checkpoint.
import { spawn } from "node:child_process";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { connect } from "node:net";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { MirrorClient } from "../src/mirror/client.js";
import { SyntheticSource } from "../src/mirror/synthetic.js";
import { startServerProcess, tempDir, writeTokens, type ServerProcess } from "../src/mirror/testing.js";
import { sha256hex, type MirrorCheckpoint } from "../src/mirror/objects.js";
import { randomBytes } from "node:crypto";

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

function makeCheckpoints(sources: number, perSource: number, pages: number, pageSize: number): MirrorCheckpoint[][] {
  return Array.from({ length: sources }, (_, k) => {
    const gen = new SyntheticSource(`bench${k}`, { pages, pageSize, sharedFraction: 0, dirtyFraction: 1, seed: `bench-${pageSize}` });
    return Array.from({ length: perSource }, () => gen.next());
  });
}

/**
 * Checkpoints made of store-block-sized chunks: what a CasStore checkpoint is on the wire
 * (compressed page blocks of 100–600 KiB, incompressible bytes), about 4 MiB each.
 */
function makeBlockCheckpoints(sources: number, perSource: number, bytesPerCheckpoint: number): MirrorCheckpoint[][] {
  return Array.from({ length: sources }, (_, k) =>
    Array.from({ length: perSource }, (_, i) => {
      const chunks = new Map<string, Buffer>();
      for (let n = 0; n < bytesPerCheckpoint; ) {
        const size = Math.min(bytesPerCheckpoint - n, (100 + Math.floor(Math.random() * 501)) * 1024);
        const data = randomBytes(size);
        chunks.set(sha256hex(data), data);
        n += size;
      }
      const id = `ck${String(i + 1).padStart(6, "0")}`;
      return { source: `bench${k}`, id, seq: i + 1, ...(i > 0 ? { parent: `ck${String(i).padStart(6, "0")}` } : {}), manifest: Buffer.from(JSON.stringify({ id, chunks: [...chunks.keys()] })), chunks };
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

async function mirrorIngest(srv: ServerProcess, perSource: MirrorCheckpoint[][]): Promise<{ receivedMs: number; durableMs: number }> {
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
    await Promise.all(received.flatMap((r) => r.durable));
    return { receivedMs, durableMs: performance.now() - t0 };
  } finally {
    await Promise.all(clients.map((c) => c.close()));
  }
}

async function runCase(name: string, sources: number, perSource: number, pages: number, pageSize: number): Promise<Row> {
  // pages = 0: store-block-sized chunks (pageSize = bytes per checkpoint).
  const cks = pages === 0 ? makeBlockCheckpoints(sources, perSource, pageSize) : makeCheckpoints(sources, perSource, pages, pageSize);
  let bytes = 0;
  for (const l of cks) for (const c of l) for (const d of c.chunks.values()) bytes += d.length;
  const tmp = tempDir("tg-mirror-bench-");
  const sink = await startSink();
  const tokens = writeTokens(tmp.dir, Object.fromEntries(cks.map((_, k) => [`bench${k}`, `token-bench${k}-0123456789`])));
  const srv = await startServerProcess([
    "--listen", "127.0.0.1:0", "--store", join(tmp.dir, "store"), "--tokens", tokens,
    "--cache-max", "256M", "--max-delay", "200ms", "--max-queued", "32",
  ]);
  try {
    await rawCopy(sink.port, cks.map((l) => l.slice(0, 1))); // warm-up
    const rawCpu0 = procCpuMs(sink.pid) + selfCpuMs();
    const rawMs = await rawCopy(sink.port, cks);
    const rawCpuMs = procCpuMs(sink.pid) + selfCpuMs() - rawCpu0;
    const serverCpu0 = procCpuMs(srv.pid);
    const clientCpu0 = selfCpuMs();
    const { receivedMs, durableMs } = await mirrorIngest(srv, cks);
    const serverCpuMs = procCpuMs(srv.pid) - serverCpu0;
    const mirrorCpuMs = serverCpuMs + selfCpuMs() - clientCpu0;
    const total = cks.reduce((n, l) => n + l.length, 0);
    // The durable acks can arrive before the last flush's log line does.
    const committedSoFar = (): number =>
      srv.logs.filter((l) => typeof l.msg === "string" && l.msg.startsWith("flush committed")).reduce((n, l) => n + Number(l.checkpoints), 0);
    for (let i = 0; i < 200 && committedSoFar() < total; i++) await new Promise((r) => setTimeout(r, 10));
    const flushes = srv.logs.filter((l) => typeof l.msg === "string" && l.msg.startsWith("flush committed"));
    const fsyncs = flushes.reduce((n, l) => n + Number(l.fsyncs), 0);
    const committed = flushes.reduce((n, l) => n + Number(l.checkpoints), 0);
    return {
      case: name,
      sources,
      chunkSize: pages === 0 ? -1 : pageSize,
      bytes,
      rawMs,
      receivedMs,
      durableMs,
      rawMBps: bytes / MiB / (rawMs / 1000),
      ingestMBps: bytes / MiB / (receivedMs / 1000),
      ratioReceived: rawMs / receivedMs,
      ratioDurable: rawMs / durableMs,
      checkpoints: committed,
      flushes: flushes.length,
      fsyncs,
      fsyncsPerCheckpoint: fsyncs / Math.max(1, committed),
      rawCpuSPerGiB: rawCpuMs / 1000 / (bytes / 2 ** 30),
      mirrorCpuSPerGiB: mirrorCpuMs / 1000 / (bytes / 2 ** 30),
      serverCpuSPerGiB: serverCpuMs / 1000 / (bytes / 2 ** 30),
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
  // Same total bytes (128 MiB) in every case.
  const cases: [string, number, number, number, number][] = [
    ["1 source, 4 KiB pages", 1, 64, 512, 4096],
    ["4 sources, 4 KiB pages", 4, 16, 512, 4096],
    ["1 source, 64 KiB chunks", 1, 64, 32, 65536],
    ["4 sources, 64 KiB chunks", 4, 16, 32, 65536],
    // What a CasStore checkpoint is on the wire: compressed blocks of 100-600 KiB (docs/mirror.md).
    ["1 source, 100-600 KiB blocks", 1, 32, 0, 4 * MiB],
    ["4 sources, 100-600 KiB blocks", 4, 8, 0, 4 * MiB],
  ];
  // TG_BENCH_MIRROR_CASES=blocks (a substring of the case names) runs only the matching cases.
  const only = process.env.TG_BENCH_MIRROR_CASES;
  for (const c of cases) if (!only || c[0].includes(only)) rows.push(await runCase(...c));
  const f = (n: number, d = 0): string => n.toFixed(d);
  console.log(
    ["case".padEnd(30), "MiB".padStart(5), "raw MB/s".padStart(9), "ingest MB/s".padStart(12), "recv/raw".padStart(9),
      "durable/raw".padStart(12), "ckpts".padStart(6), "flushes".padStart(8), "fsync/ckpt".padStart(11),
      "raw CPU s/GiB".padStart(14), "mirror CPU s/GiB".padStart(17), "(server)".padStart(9)].join(" "),
  );
  for (const r of rows) {
    console.log(
      [r.case.padEnd(30), f(r.bytes / MiB).padStart(5), f(r.rawMBps).padStart(9), f(r.ingestMBps).padStart(12),
        f(r.ratioReceived, 2).padStart(9), f(r.ratioDurable, 2).padStart(12), String(r.checkpoints).padStart(6),
        String(r.flushes).padStart(8), f(r.fsyncsPerCheckpoint, 2).padStart(11),
        f(r.rawCpuSPerGiB, 2).padStart(14), f(r.mirrorCpuSPerGiB, 2).padStart(17), f(r.serverCpuSPerGiB, 2).padStart(9)].join(" "),
    );
  }
  console.log("ratios: raw TCP time / mirror time for the same bytes in the same run (1.0 = as fast as raw TCP); target 4-source >= 0.7");
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
