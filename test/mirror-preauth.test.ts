// Issue 11, defect 7: memory held by frames still arriving. Many connections that each
// start a 15 MiB frame and stall must not grow the server (measured: its RSS), neither
// before Hello (frames limited to a few KiB) nor after (a budget shared by connections).
import { test } from "node:test";
import assert from "node:assert/strict";
import { connect, type Socket } from "node:net";
import { join } from "node:path";
import { FrameType, encodeJsonFrame } from "../src/mirror/frames.js";
import { rssOf, startServerProcess, tempDir, writeTokens, type ServerProcess } from "../src/mirror/testing.js";

const TOKEN = "token-alpha-0123456789";
const MiB = 1024 * 1024;

function frameHeader(type: FrameType, len: number): Buffer {
  const h = Buffer.alloc(12);
  h.write("TG", 0, "latin1");
  h[2] = 2;
  h[3] = type;
  h.writeUInt32LE(len, 4);
  return h;
}

function open(port: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = connect({ host: "127.0.0.1", port }, () => resolve(s));
    s.once("error", reject);
  });
}

/** Writes header + `bytes` of a frame that never completes; resolves when written or the server closed. */
function stallFrame(s: Socket, type: FrameType, len: number, bytes: number): Promise<void> {
  return new Promise((resolve) => {
    s.on("error", () => resolve());
    s.on("close", () => resolve());
    s.write(frameHeader(type, len));
    s.write(Buffer.alloc(bytes, 0x41), () => resolve());
  });
}

async function peakWhile(pid: number, work: Promise<unknown>): Promise<number> {
  let peak = await rssOf(pid);
  let done = false;
  void work.finally(() => (done = true));
  while (!done) {
    peak = Math.max(peak, await rssOf(pid));
    await new Promise((r) => setTimeout(r, 20));
  }
  // What the server still holds once everything was sent.
  for (let i = 0; i < 25; i++) {
    peak = Math.max(peak, await rssOf(pid));
    await new Promise((r) => setTimeout(r, 20));
  }
  return peak;
}

async function withServer(fn: (srv: ServerProcess) => Promise<void>): Promise<void> {
  const tmp = tempDir();
  const tokens = writeTokens(tmp.dir, { alpha: TOKEN });
  const srv = await startServerProcess(["--listen", "127.0.0.1:0", "--store", join(tmp.dir, "store"), "--tokens", tokens, "--cache-max", "64M"]);
  try {
    await fn(srv);
  } finally {
    srv.kill("SIGKILL");
    await srv.exited;
    tmp.cleanup();
  }
}

test("40 unauthenticated connections each starting a 15 MiB frame: refused at the header, the server does not grow", { timeout: 120_000 }, async () => {
  await withServer(async (srv) => {
    const base = await rssOf(srv.pid);
    const socks = await Promise.all(Array.from({ length: 40 }, () => open(srv.port)));
    try {
      const peak = await peakWhile(srv.pid, Promise.all(socks.map((s) => stallFrame(s, FrameType.Hello, 15 * MiB, 14 * MiB))));
      const grew = peak - base;
      console.log(`unauthenticated: server RSS ${(base / MiB).toFixed(0)} MiB -> peak ${(peak / MiB).toFixed(0)} MiB`);
      assert.ok(grew < 100 * MiB, `server RSS grew by ${(grew / MiB).toFixed(0)} MiB (base ${(base / MiB).toFixed(0)} MiB) for 40 x 14 MiB sent`);
      await srv.waitForLog((l) => l.code === "frame-too-large", 20_000);
    } finally {
      for (const s of socks) s.destroy();
    }
  });
});

test("20 authenticated connections each starting a 15 MiB frame: held within the shared budget, the server does not grow", { timeout: 120_000 }, async () => {
  await withServer(async (srv) => {
    const base = await rssOf(srv.pid);
    const socks = await Promise.all(Array.from({ length: 20 }, () => open(srv.port)));
    try {
      // Hello (role client: many per token), and wait for each HelloOk.
      await Promise.all(
        socks.map(
          (s) =>
            new Promise<void>((resolve, reject) => {
              let got = Buffer.alloc(0);
              const onData = (d: Buffer): void => {
                got = Buffer.concat([got, d]);
                if (got.length >= 12 && got.length >= 12 + got.readUInt32LE(4)) {
                  s.off("data", onData);
                  if (got[3] === FrameType.HelloOk) resolve();
                  else reject(new Error(`expected HelloOk, got frame type ${got[3]}: ${got.subarray(12).toString()}`));
                }
              };
              s.on("data", onData);
              s.write(encodeJsonFrame(FrameType.Hello, { token: TOKEN, role: "client" }));
            }),
        ),
      );
      const sent = socks.map((s) => stallFrame(s, FrameType.Chunks, 15 * MiB, 14 * MiB));
      // The frames the budget (32 MiB here) admits are read in; the others wait paused.
      const peak = await peakWhile(srv.pid, Promise.race([Promise.all(sent), new Promise((r) => setTimeout(r, 8000))]));
      const grew = peak - base;
      console.log(`authenticated: server RSS ${(base / MiB).toFixed(0)} MiB -> peak ${(peak / MiB).toFixed(0)} MiB`);
      assert.ok(grew < 120 * MiB, `server RSS grew by ${(grew / MiB).toFixed(0)} MiB (base ${(base / MiB).toFixed(0)} MiB) for 20 x 14 MiB sent`);
      // The server still serves: a new connection gets its HelloOk.
      const probe = await open(srv.port);
      const answered = new Promise<number>((resolve) => probe.once("data", (d: Buffer) => resolve(d[3] as number)));
      probe.write(encodeJsonFrame(FrameType.Hello, { token: TOKEN, role: "client" }));
      assert.equal(await answered, FrameType.HelloOk);
      probe.destroy();
    } finally {
      for (const s of socks) s.destroy();
    }
  });
});
