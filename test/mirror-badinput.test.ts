// Bad input closes only the offending connection, with a clear error sent to the peer
// and logged, while a well-behaved source keeps streaming.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { connect, type Socket } from "node:net";
import { join } from "node:path";
import { MirrorServer } from "../src/mirror/server.js";
import { MirrorClient } from "../src/mirror/client.js";
import { SyntheticSource } from "../src/mirror/synthetic.js";
import { withAdmin } from "../src/mirror/admin.js";
import { TokenTable } from "../src/mirror/tokens.js";
import { captureLogger, tempDir, type LogLine } from "../src/mirror/testing.js";
import { FrameDecoder, FrameType, encodeFrame, encodeFrameParts, encodeJsonFrame, ProtocolError } from "../src/mirror/frames.js";
import { encodeCheckpointHeader } from "../src/mirror/messages.js";
import { headerOf } from "../src/mirror/objects.js";

const A = "token-alpha-0123456789";
const B = "token-bravo-0123456789";
let server: MirrorServer;
let lines: LogLine[];
let port: number;
let tmp: ReturnType<typeof tempDir>;
let good: MirrorClient;
let goodGen: SyntheticSource;
let goodSent = 0;

before(async () => {
  tmp = tempDir();
  const cap = await captureLogger();
  lines = cap.lines;
  server = await MirrorServer.start({
    storeDir: join(tmp.dir, "store"),
    tokens: new TokenTable([
      ["alpha", A],
      ["bravo", B],
    ]),
    maxDelayMs: 20,
    frameTimeoutMs: 300,
    logger: cap.logger,
  });
  port = server.address().port;
  good = new MirrorClient({ url: `tg://127.0.0.1:${port}`, source: "bravo", token: B, ack: "durable" });
  goodGen = new SyntheticSource("bravo", { pages: 16 });
});

after(async () => {
  await good.close();
  await server.close();
  tmp.cleanup();
});

/** The well-behaved source still gets a checkpoint made durable. */
async function goodSourceStillWorks(): Promise<void> {
  goodSent++;
  assert.equal(await good.send(goodGen.next()), "durable");
}

interface Outcome {
  error?: { code: string; message: string };
  closed: boolean;
}

/** Opens a raw socket, writes `bytes` (then half-closes if asked), collects the server's Error frame. */
function rawExchange(write: (s: Socket) => void, timeoutMs = 5000): Promise<Outcome> {
  return new Promise((resolve, reject) => {
    const s = connect({ host: "127.0.0.1", port, allowHalfOpen: true });
    const dec = new FrameDecoder();
    const out: Outcome = { closed: false };
    const timer = setTimeout(() => {
      s.destroy();
      reject(new Error(`server did not close the connection within ${timeoutMs} ms`));
    }, timeoutMs);
    s.on("connect", () => write(s));
    s.on("data", (d: Buffer) => {
      dec.push(d);
      let f;
      while ((f = dec.next()) !== undefined) {
        if (f.type === FrameType.Error) out.error = JSON.parse(f.payload.toString()) as Outcome["error"];
      }
    });
    s.on("error", () => undefined);
    s.on("end", () => s.end());
    s.on("close", () => {
      clearTimeout(timer);
      out.closed = true;
      resolve(out);
    });
  });
}

const hello = (token: string, extra: object = {}): Buffer => encodeJsonFrame(FrameType.Hello, { token, role: "source", ...extra });

function loggedError(code: string): LogLine | undefined {
  return lines.find((l) => l.code === code);
}

test("wrong token", { timeout: 15_000 }, async () => {
  const o = await rawExchange((s) => s.write(hello("not-a-real-token")));
  assert.equal(o.error?.code, "auth-failed");
  assert.match(o.error?.message ?? "", /wrong token.*--token-file or TARDIGRADE_MIRROR_TOKEN/);
  assert.ok(o.closed);
  assert.ok(loggedError("auth-failed"));
  await goodSourceStillWorks();
});

test("a token used to claim another source", { timeout: 15_000 }, async () => {
  const o = await rawExchange((s) => s.write(hello(A, { source: "bravo" })));
  assert.equal(o.error?.code, "auth-failed");
  assert.match(o.error?.message ?? "", /belongs to source "alpha", not "bravo"/);
  await goodSourceStillWorks();
});

test("a source asking for another source's checkpoint", { timeout: 15_000 }, async () => {
  await goodSourceStillWorks(); // bravo has a checkpoint now
  await assert.rejects(
    withAdmin({ url: `tg://127.0.0.1:${port}`, token: A }, (a) => a.fetch("bravo", "ck000001")),
    (err: Error & { code?: string }) => err.code === "forbidden" && /may not read checkpoints of source "bravo"/.test(err.message),
  );
  // alpha listing shows nothing of bravo's.
  const rows = await withAdmin({ url: `tg://127.0.0.1:${port}`, token: A }, (a) => a.list());
  assert.deepEqual(rows, []);
  assert.ok(loggedError("forbidden"));
  await goodSourceStillWorks();
});

test("garbage bytes", { timeout: 15_000 }, async () => {
  const o = await rawExchange((s) => s.write(Buffer.from("GET / HTTP/1.1\r\nHost: x\r\n\r\n")));
  assert.equal(o.error?.code, "bad-magic");
  assert.match(o.error?.message ?? "", /not speaking the tardigrade mirror protocol/);
  await goodSourceStillWorks();
});

test("a frame claiming 4 GiB", { timeout: 15_000 }, async () => {
  const o = await rawExchange((s) => {
    s.write(hello(A));
    const h = Buffer.from(encodeFrame(FrameType.Chunk, Buffer.alloc(0)));
    h.writeUInt32LE(0xffffffff, 4);
    s.write(h);
  });
  assert.equal(o.error?.code, "frame-too-large");
  assert.match(o.error?.message ?? "", /claims 4294967295 payload bytes, the limit is/);
  await goodSourceStillWorks();
});

test("a truncated frame (peer closes mid-frame)", { timeout: 15_000 }, async () => {
  const o = await rawExchange((s) => {
    s.write(hello(A));
    const f = encodeFrame(FrameType.Offer, Buffer.alloc(1000, 1));
    s.end(f.subarray(0, 500));
  });
  assert.equal(o.error?.code, "truncated-frame");
  assert.match(o.error?.message ?? "", /peer closed the connection after 500 of 1012 bytes/);
  await goodSourceStillWorks();
});

test("a truncated frame (peer stalls mid-frame)", { timeout: 15_000 }, async () => {
  const o = await rawExchange((s) => {
    s.write(hello(A));
    s.write(encodeFrame(FrameType.Offer, Buffer.alloc(1000, 1)).subarray(0, 100));
  });
  assert.equal(o.error?.code, "truncated-frame");
  assert.match(o.error?.message ?? "", /stalled for 300 ms/);
  await goodSourceStillWorks();
});

test("a CRC mismatch and a chunk whose bytes do not match its hash", { timeout: 15_000 }, async () => {
  const o1 = await rawExchange((s) => {
    const f = Buffer.from(hello(A));
    f[f.length - 2] = (f[f.length - 2] as number) ^ 0xff; // flip payload bits after the CRC was computed
    s.write(f);
  });
  assert.equal(o1.error?.code, "checksum-mismatch");

  const c = new SyntheticSource("alpha", { pages: 2 }).next();
  const o2 = await rawExchange((s) => {
    s.write(hello(A));
    s.write(encodeFrame(FrameType.Offer, encodeCheckpointHeader(headerOf(c))));
    const [hash] = [...c.chunks.keys()];
    const bad = Buffer.alloc(4096, 7);
    setTimeout(() => s.write(Buffer.concat(encodeFrameParts(FrameType.Chunk, [Buffer.from(hash as string, "hex"), bad]))), 100);
  });
  assert.equal(o2.error?.code, "checksum-mismatch");
  assert.match(o2.error?.message ?? "", /hashes to/);
  await goodSourceStillWorks();
});

test("out-of-order frames: chunk before offer, commit before chunks, seq going backwards", { timeout: 15_000 }, async () => {
  const o1 = await rawExchange((s) => {
    s.write(hello(A));
    s.write(Buffer.concat(encodeFrameParts(FrameType.Chunk, [Buffer.alloc(32), Buffer.alloc(10)])));
  });
  assert.equal(o1.error?.code, "out-of-order");
  assert.match(o1.error?.message ?? "", /Chunk before any Offer/);

  const gen = new SyntheticSource("alpha", { pages: 2, seed: "ooo" });
  const c = gen.next();
  const o2 = await rawExchange((s) => {
    s.write(hello(A));
    s.write(encodeFrame(FrameType.Offer, encodeCheckpointHeader(headerOf(c))));
    s.write(encodeJsonFrame(FrameType.Commit, { id: c.id }));
  });
  assert.equal(o2.error?.code, "out-of-order");
  assert.match(o2.error?.message ?? "", /before all chunks arrived/);

  const o3 = await rawExchange((s) => s.write(encodeJsonFrame(FrameType.List, {})));
  assert.equal(o3.error?.code, "out-of-order");
  assert.match(o3.error?.message ?? "", /expected Hello/);

  // alpha gets seq 1 and 2 durable; offering seq 2 again is refused as out of order.
  const alpha = new MirrorClient({ url: `tg://127.0.0.1:${port}`, source: "alpha", token: A });
  const agen = new SyntheticSource("alpha", { pages: 2, seed: "seq" });
  await alpha.send(agen.next());
  const second = agen.next();
  await alpha.send(second);
  await alpha.close();
  const o4 = await rawExchange((s) => {
    s.write(hello(A));
    s.write(encodeFrame(FrameType.Offer, encodeCheckpointHeader({ ...headerOf(second), id: "again" })));
  });
  assert.equal(o4.error?.code, "out-of-order");
  assert.match(o4.error?.message ?? "", /has seq 2 but the mirror already has seq 2; seqs must increase/);
  // A connection that said Hello as "client" may not offer checkpoints.
  const o5 = await rawExchange((s) => {
    s.write(hello(B, { role: "client" }));
    s.write(encodeFrame(FrameType.Offer, encodeCheckpointHeader(headerOf(c))));
  });
  assert.equal(o5.error?.code, "out-of-order");
  await goodSourceStillWorks();
  assert.ok(goodSent > 0);
  assert.ok(server.metrics().protocolErrors >= 10);
  assert.ok(new ProtocolError("x", "y") instanceof Error);
});
