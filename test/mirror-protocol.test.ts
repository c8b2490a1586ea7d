// Unit tests of the frame codec, value parsing and tokens; the CLI client commands
// end to end; TLS.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { FrameDecoder, FrameType, PROTOCOL_VERSION, ProtocolError, encodeFrame } from "../src/mirror/frames.js";
import { decodeCheckpointHeader, encodeCheckpointHeader, decodeWant, encodeWant } from "../src/mirror/messages.js";
import { parseBytes, parseDuration, parseMirrorUrl } from "../src/mirror/address.js";
import { TokenTable } from "../src/mirror/tokens.js";
import { SyntheticSource } from "../src/mirror/synthetic.js";
import { headerOf } from "../src/mirror/objects.js";
import { MirrorServer } from "../src/mirror/server.js";
import { MirrorClient } from "../src/mirror/client.js";
import { here, tempDir } from "../src/mirror/testing.js";

test("frames round-trip across arbitrary splits; bad ones are refused with a code", { timeout: 10_000 }, () => {
  const frames = [encodeFrame(FrameType.Hello, Buffer.from("{}")), encodeFrame(FrameType.Chunk, Buffer.alloc(70_000, 3))];
  const all = Buffer.concat(frames);
  for (const step of [1, 7, 12, 13, 4096, all.length]) {
    const d = new FrameDecoder();
    const got = [];
    for (let i = 0; i < all.length; i += step) {
      d.push(all.subarray(i, i + step));
      let f;
      while ((f = d.next()) !== undefined) got.push(f);
    }
    assert.deepEqual(got.map((f) => [f.type, f.payload.length]), [[FrameType.Hello, 2], [FrameType.Chunk, 70_000]]);
  }
  const code = (b: Buffer, max?: number): string => {
    const d = new FrameDecoder(max);
    d.push(b);
    try {
      d.next();
      return "none";
    } catch (err) {
      return (err as ProtocolError).code;
    }
  };
  assert.equal(code(Buffer.from("hello world!!")), "bad-magic");
  assert.equal(code(encodeFrame(FrameType.Chunk, Buffer.alloc(100)), 50), "frame-too-large");
  const v = Buffer.from(encodeFrame(FrameType.Hello, Buffer.from("{}")));
  v[2] = 9;
  assert.equal(code(v), "bad-version");
  const t = Buffer.from(v);
  t[2] = PROTOCOL_VERSION;
  t[3] = 200;
  assert.equal(code(t), "bad-frame-type");
});

test("checkpoint header and want bitmap codecs", () => {
  const c = new SyntheticSource("alpha", { pages: 20 }).next();
  const h = decodeCheckpointHeader(FrameType.Offer, encodeCheckpointHeader(headerOf(c)));
  assert.equal(h.id, c.id);
  assert.deepEqual(h.chunks.map((x) => x.hash), [...c.chunks.keys()]);
  assert.ok(h.manifest.equals(c.manifest));
  assert.deepEqual(decodeWant(encodeWant("x", 20, [0, 3, 19]), 20), { id: "x", wanted: [0, 3, 19] });
  const bad = encodeCheckpointHeader(headerOf(c));
  assert.throws(() => decodeCheckpointHeader(FrameType.Offer, bad.subarray(0, bad.length - 1)), /payload is .* bytes but its header describes/);
});

test("addresses, durations, sizes, tokens", () => {
  assert.deepEqual(parseMirrorUrl("tg://backup:7070"), { host: "backup", port: 7070, tls: false });
  assert.deepEqual(parseMirrorUrl("tgs://[::1]:7"), { host: "::1", port: 7, tls: true });
  assert.throws(() => parseMirrorUrl("http://x:1"), /expected tg:\/\/HOST:PORT/);
  assert.equal(parseDuration("1.5s"), 1500);
  assert.equal(parseDuration("2m"), 120_000);
  assert.equal(parseBytes("64M"), 64 * 1024 * 1024);
  assert.equal(parseBytes("1GiB"), 1024 ** 3);
  const t = TokenTable.parse("# c\nalpha:secret-aaaa\n\nbravo:secret-bbbb\n");
  assert.equal(t.sourceFor("secret-bbbb"), "bravo");
  assert.equal(t.sourceFor("nope"), undefined);
  assert.throws(() => TokenTable.parse("alpha:short"), /tokens file:1: expected SOURCE:TOKEN/);
});

test("CLI: mirror ls --json, flush, pull through registerMirrorCommands", { timeout: 30_000 }, async () => {
  const tmp = tempDir();
  const token = "token-alpha-0123456789";
  const server = await MirrorServer.start({ storeDir: join(tmp.dir, "store"), tokens: new TokenTable([["alpha", token]]), maxDelayMs: 3_600_000 });
  const url = `tg://127.0.0.1:${server.address().port}`;
  const client = new MirrorClient({ url, source: "alpha", token, ack: "received" });
  const tokenFile = join(tmp.dir, "tok");
  writeFileSync(tokenFile, token + "\n");
  const script =
    `import { Command } from "commander"; import { registerMirrorCommands } from ${JSON.stringify(join(here, "cli.js"))};` +
    `const p = new Command(); registerMirrorCommands(p); await p.parseAsync(process.argv.slice(1), { from: "user" });`;
  const cli = async (...args: string[]): Promise<{ code: number | null; out: string; err: string }> => {
    const { spawn } = await import("node:child_process");
    return new Promise((resolve) => {
      const ch = spawn(process.execPath, ["--input-type=module", "-e", script, "mirror", ...args], { cwd: join(here, "..", "..", ".."), env: { ...process.env, TARDIGRADE_MIRROR_TOKEN: "" } });
      let out = "";
      let err = "";
      ch.stdout.on("data", (d: Buffer) => (out += d.toString()));
      ch.stderr.on("data", (d: Buffer) => (err += d.toString()));
      ch.on("exit", (code) => resolve({ code, out, err }));
    });
  };
  try {
    const gen = new SyntheticSource("alpha", { pages: 8 });
    await client.send(gen.next());
    await client.send(gen.next());
    const ls = await cli("ls", "--server", url, "--token-file", tokenFile, "--json");
    assert.equal(ls.code, 0, ls.err);
    assert.deepEqual((JSON.parse(ls.out) as { state: string }[]).map((r) => r.state), ["received", "received"]);
    const fl = await cli("flush", "--server", url, "--token-file", tokenFile);
    assert.equal(fl.code, 0, fl.err);
    assert.match(fl.out, /flushed 2 checkpoint\(s\) from 1 source\(s\)/);
    const pl = await cli("pull", "--server", url, "--token-file", tokenFile, "--source", "alpha", "--checkpoint", "latest", "--store", join(tmp.dir, "local"), "--json");
    assert.equal(pl.code, 0, pl.err);
    assert.equal((JSON.parse(pl.out) as { id: string }).id, "ck000002");
    const forbidden = await cli("pull", "--server", url, "--token-file", tokenFile, "--source", "bravo", "--checkpoint", "latest", "--store", join(tmp.dir, "local"));
    assert.equal(forbidden.code, 1);
    assert.match(forbidden.err, /may not read checkpoints of source "bravo"/);
    const notoken = await cli("ls", "--server", url);
    assert.equal(notoken.code, 1);
    assert.match(notoken.err, /no mirror token: pass --token-file FILE or set TARDIGRADE_MIRROR_TOKEN/);
  } finally {
    await client.close();
    await server.close();
    tmp.cleanup();
  }
});

const haveOpenssl = spawnSync("openssl", ["version"]).status === 0;

test("TLS: tgs:// with a self-signed certificate", { timeout: 120_000, skip: haveOpenssl ? false : "openssl not installed" }, async () => {
  const tmp = tempDir();
  const key = join(tmp.dir, "key.pem");
  const cert = join(tmp.dir, "cert.pem");
  execFileSync("openssl", ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"], { stdio: "ignore" });
  const token = "token-alpha-0123456789";
  const server = await MirrorServer.start({
    storeDir: join(tmp.dir, "store"),
    tokens: new TokenTable([["alpha", token]]),
    tls: { cert: readFileSync(cert), key: readFileSync(key) },
  });
  const url = `tgs://localhost:${server.address().port}`;
  const client = new MirrorClient({ url, source: "alpha", token, dial: { ca: readFileSync(cert) } });
  const untrusting = new MirrorClient({ url, source: "alpha", token, backoff: { initialMs: 20, maxMs: 50 } });
  try {
    const gen = new SyntheticSource("alpha", { pages: 8 });
    const c = gen.next();
    const durable = client.send(c);
    // the flush must find the checkpoint received (not still on its way)
    for (const deadline = Date.now() + 60_000; client.state(c.id) !== "received" && client.state(c.id) !== "durable" && Date.now() < deadline; ) await new Promise((r) => setTimeout(r, 20));
    await (await import("../src/mirror/admin.js")).withAdmin({ url, token, dial: { ca: readFileSync(cert) } }, (a) => a.flush());
    assert.equal(await durable, "durable");
    // Without the CA the certificate is refused (the client keeps retrying; nothing is sent).
    const errs: Error[] = [];
    untrusting.on("disconnected", (e: Error) => errs.push(e));
    void untrusting.send(gen.next()).catch(() => undefined);
    // wait (on the condition, generously) for the first refusal of the certificate
    for (const deadline = Date.now() + 60_000; !errs.length && Date.now() < deadline; ) await new Promise((r) => setTimeout(r, 20));
    assert.ok(errs.some((e) => /self.signed|certificate/i.test(e.message)), errs.map((e) => e.message).join("; ") || "no connection error within 60 s");
  } finally {
    await client.close();
    await untrusting.close();
    await server.close();
    tmp.cleanup();
  }
});
