// Issue 11, defect 13: `run --mirror tgs://...` and `restore --from tgs://...` with a
// mirror whose certificate a private CA signed (made here with openssl): --tls-ca.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { startServerProcess, tempDir, writeTokens } from "../src/mirror/testing.js";
import { makeHome, waitFor } from "./helpers/home.js";
import { fixture, requireNative } from "./helpers/native.js";

const countOf = (log: string): number => {
  const m = [...log.matchAll(/^count (\d+)$/gm)];
  return m.length ? Number(m[m.length - 1]![1]) : 0;
};

/** A CA, and a server certificate for 127.0.0.1 signed by it. */
function makePki(dir: string): { ca: string; cert: string; key: string } {
  const f = (n: string): string => join(dir, n);
  const ossl = (...args: string[]): void => void execFileSync("openssl", args, { stdio: "pipe" });
  ossl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f("ca.key"), "-out", f("ca.pem"), "-days", "2", "-subj", "/CN=tardigrade test CA");
  ossl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f("srv.key"), "-out", f("srv.csr"), "-subj", "/CN=127.0.0.1");
  writeFileSync(f("ext.cnf"), "subjectAltName=IP:127.0.0.1\n");
  ossl("x509", "-req", "-in", f("srv.csr"), "-CA", f("ca.pem"), "-CAkey", f("ca.key"), "-CAcreateserial", "-out", f("srv.pem"), "-days", "2", "-extfile", f("ext.cnf"));
  return { ca: f("ca.pem"), cert: f("srv.pem"), key: f("srv.key") };
}

test("run --mirror tgs:// --tls-ca ships durable; restore --from tgs:// --tls-ca continues the app; without the CA it is refused", { timeout: 240_000 }, async () => {
  requireNative();
  const tmp = tempDir("tg-mirror-tls-");
  const pki = makePki(tmp.dir);
  const tokens = writeTokens(tmp.dir, { calc: "calc-token-0001" });
  const tokenFile = join(tmp.dir, "calc.token");
  writeFileSync(tokenFile, "calc-token-0001\n");
  const server = await startServerProcess([
    "--listen", "127.0.0.1:0", "--store", join(tmp.dir, "mirror"), "--tokens", tokens, "--max-delay", "200ms",
    "--tls-cert", pki.cert, "--tls-key", pki.key,
  ]);
  const url = `tgs://127.0.0.1:${server.port}`;
  const a = makeHome("tg-tls-a-");
  const b = makeHome("tg-tls-b-");
  try {
    const run = await a.cli(["run", "--name", "calc", "--mirror", url, "--token-file", tokenFile, "--tls-ca", pki.ca, "--", fixture("counter"), "100000", "50"]);
    assert.equal(run.code, 0, run.stderr);
    await waitFor("calc counts", () => countOf(a.log("calc")) >= 3);
    const cp = await a.cli(["checkpoint", "calc", "--json"]);
    assert.equal(cp.code, 0, cp.stderr);
    const m = JSON.parse(cp.stdout) as { id: string; mirror?: { state: string; error?: string } };
    assert.equal(m.mirror?.state, "durable", `acknowledged durable over TLS (${m.mirror?.error ?? ""})`);
    const atCheckpoint = countOf(a.log("calc"));
    process.kill(a.pids("calc")!.init, "SIGKILL");
    // Without the CA the mirror's certificate is not trusted: refused, with the reason.
    const untrusted = await b.cli(["restore", "calc", "--from", url, "--token-file", tokenFile]);
    assert.equal(untrusted.code, 1);
    assert.match(untrusted.stderr, /^tardigrade: cannot restore calc from tgs:\/\/.*certificate/im);
    // With it: restored, and the app continues from the checkpoint.
    const rs = await b.cli(["restore", "calc", "--from", url, "--token-file", tokenFile, "--tls-ca", pki.ca, "--json"]);
    assert.equal(rs.code, 0, rs.stderr);
    assert.equal((JSON.parse(rs.stdout) as { checkpoint: string }).checkpoint, m.id);
    await waitFor("calc continues on host B", () => countOf(b.log("calc")) > 0);
    const first = Number(/^count (\d+)$/m.exec(b.log("calc"))![1]);
    assert.ok(first > 1 && first <= atCheckpoint + 1, `continues from the checkpoint (first line on B: ${first}, at the checkpoint on A: ${atCheckpoint})`);
    // A file that is not a CA is refused before anything starts.
    const bad = await b.cli(["restore", "calc", "--from", url, "--token-file", tokenFile, "--tls-ca", tokenFile, "--replace"]);
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /^tardigrade: cannot restore with a mirror: --tls-ca .* holds no PEM certificate/m);
  } finally {
    server.kill("SIGKILL");
    await server.exited;
    await a.cleanup();
    await b.cleanup();
    tmp.cleanup();
  }
});
