// Processes of another user (issues 12/13): a root parent and a child that became uid 65534 with
// its own groups, capabilities (bounding, permitted, effective, inheritable, ambient), securebits
// and dumpable flag (test/fixtures/asnobody.c). Checkpoint, kill -9 of the tree, restore: the
// child's credentials are the kernel's as before (/proc/PID/status), its count in memory and in
// the file it holds open go on from the checkpoint, and the store stays private to root (the child
// wrote its image through an fd the daemon opened). Every wait is on a condition.
import assert from "node:assert/strict";
import { chmodSync, lstatSync, mkdirSync, readFileSync, readdirSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, test } from "node:test";
import { nativeDir } from "../src/native/paths.js";
import { fixture } from "./helpers/native.js";
import { lines, logLines, logSize, runApp, status, waitExited, waitLines } from "./helpers/scenario.js";
import { isAlive, waitFor } from "./helpers/home.js";
import { checkpointOk, crashAndRestore, others, setup } from "./helpers/tree.js";

const CHILD = /^asnobody child n (\d+) (uid .*)$/;
const lastChild = (ls: string[]): { n: number; creds: string } | null => {
  const m = ls.map((l) => CHILD.exec(l)).filter((x) => x !== null).pop();
  return m ? { n: Number(m[1]), creds: m[2]! } : null;
};

/** The credential lines of /proc/PID/status. */
function credLines(hostPid: number): string {
  return readFileSync(`/proc/${hostPid}/status`, "utf8")
    .split("\n")
    .filter((l) => /^(Uid|Gid|Groups|CapInh|CapPrm|CapEff|CapBnd|CapAmb):/.test(l))
    .join("\n");
}

/** Every file and directory under dir that is not root's own 0600 file or 0700 directory. */
function notPrivate(dir: string): string[] {
  const bad: string[] = [];
  const walk = (d: string): void => {
    for (const name of readdirSync(d)) {
      const p = join(d, name);
      const st = lstatSync(p);
      const mode = st.mode & 0o7777;
      if (st.uid !== 0 || (st.isDirectory() ? mode !== 0o700 : mode !== 0o600)) bad.push(`${p} (uid ${st.uid}, mode ${mode.toString(8)})`);
      if (st.isDirectory()) walk(p);
    }
  };
  walk(dir);
  return bad;
}

/** A scratch directory removed after the test. */
function mkdtempDir(t: { after: (fn: () => void) => void }): string {
  const d = join(tmpdir(), `tg-uid-native-${process.pid}-${Math.random().toString(16).slice(2)}`);
  mkdirSync(d);
  t.after(() => rmSync(d, { recursive: true, force: true }));
  return d;
}

const skip = process.getuid?.() !== 0 ? "needs root (tardigrade run does)" : false;

describe("processes of another user", { timeout: 900_000 }, () => {
  test("a child that became uid 65534 with groups and capabilities: restored with the same credentials, its state goes on, the store stays root's", { skip }, async (t) => {
    const { h, dir, release } = setup(t);
    chmodSync(dir, 0o777); // the child, uid 65534, writes its file there
    await runApp(h, "asn", [fixture("asnobody"), dir]);
    const ls = await waitLines(h, "asn", (l) => lastChild(l) !== null && l.some((x) => x.startsWith("asnobody main ")), "both processes print", 120_000);
    const before = lastChild(ls)!;
    assert.match(before.creds, /^uid 65534\/65534\/65534 gid 65534\/65534\/65534 groups 100,65534 dump 1 sb 0x10$/, "the fixture became uid 65534");
    const kid = others(h, "asn")[0];
    assert.ok(kid, "the child process");
    const creds = credLines(kid.hostPid);
    assert.match(creds, /^Uid:\s+65534\s+65534\s+65534\s+65534$/m);
    assert.match(creds, /^CapAmb:\s+0000000000000400$/m);

    const beforeCheckpoint = lastChild(logLines(h, "asn"))!.n;
    const id = await checkpointOk(h, "asn");
    const atCheckpoint = lastChild(logLines(h, "asn"))!.n;
    const ins = await h.cli(["inspect", `asn~${kid.pid}@${id.split("@")[1]}`]);
    assert.match(ins.stdout, /credentials: uid 65534\/65534\/65534\/65534 gid 65534\/65534\/65534\/65534 .*groups 100,65534/, ins.stdout);
    await waitLines(h, "asn", (l) => (lastChild(l)?.n ?? 0) >= atCheckpoint + 5, "the child counts on after the checkpoint");
    const beforeKill = lastChild(logLines(h, "asn"))!.n;
    const from = logSize(h, "asn");
    await crashAndRestore(h, "asn");
    // (the lines after the daemon's restore marker: the killed child printed until the kill)
    const marker = (): number => h.log("asn").lastIndexOf("--- tardigrade: restored");
    const sinceRestore = (): string[] => (marker() < from ? [] : lines(h.log("asn").slice(marker())));
    await waitFor("the restored child counts", () => sinceRestore().filter((x) => CHILD.test(x)).length >= 5, 120_000);
    const after = sinceRestore();
    assert.ok(!after.some((l) => l.startsWith("MISMATCH")), `the file and memory agree:\n${after.filter((l) => l.startsWith("MISMATCH")).join("\n")}`);
    const first = after.map((l) => CHILD.exec(l)).find((x) => x !== null)!;
    const n0 = Number(first[1]);
    assert.ok(n0 > beforeCheckpoint && n0 <= atCheckpoint + 1 && n0 < beforeKill, `the count goes on from the checkpoint (taken between ${beforeCheckpoint} and ${atCheckpoint}, killed at ${beforeKill}): ${n0}`);
    assert.equal(lastChild(after)!.creds, before.creds, "the child's ids, groups, dumpable flag and securebits as before");
    const kid2 = others(h, "asn").find((p) => p.pid === kid.pid);
    assert.ok(kid2, "the child is back with its pid");
    assert.equal(credLines(kid2.hostPid), creds, "the kernel's view of the restored child's credentials");
    // the restored child's agent listens again as uid 65534, and its next image is taken the same way
    await checkpointOk(h, "asn");
    assert.deepEqual(notPrivate(join(h.home, "store")), [], "the store is root's, 0600/0700");
    assert.equal((await status(h, "asn")).state, "running");
    release();
    await waitExited(h, "asn", 120_000);
  });

  test("a restorer that cannot give uid 65534 back (no CAP_SETUID) refuses the restore naming the pid and the uid; nothing runs", { skip }, async (t) => {
    // the daemon's native directory, with tardigrade-restore run without CAP_SETUID and CAP_SETGID
    // in its bounding set (as a daemon that is not root, or in a restricted container)
    const native = mkdtempDir(t);
    for (const n of ["libtardigrade-agent.so", "tardigrade-init", "libtardigrade-hash.so"]) symlinkSync(join(nativeDir(), n), join(native, n));
    writeFileSync(join(native, "tardigrade-restore"), `#!/bin/sh\nexec setpriv --bounding-set -setuid,-setgid -- ${join(nativeDir(), "tardigrade-restore")} "$@"\n`, { mode: 0o755 });
    const { h, dir } = setup(t, { TARDIGRADE_NATIVE_DIR: native });
    chmodSync(dir, 0o777);
    await runApp(h, "asn", [fixture("asnobody"), dir]);
    await waitLines(h, "asn", (l) => lastChild(l) !== null, "the child prints", 120_000);
    const kid = others(h, "asn")[0]!;
    await checkpointOk(h, "asn");
    const p = h.pids("asn")!;
    process.kill(p.init, "SIGKILL");
    await waitFor("the tree gone", () => !isAlive(p.init) && !isAlive(p.app));
    const r = await h.cli(["restore", "asn"]);
    assert.notEqual(r.code, 0, `the restore must refuse: ${r.stdout}`);
    assert.match(r.stderr, new RegExp(`process ${kid.pid} ran as uid 65534 \\(gid 65534\\), not this restorer.s user.*CAP_SETUID`), r.stderr);
    assert.notEqual((await status(h, "asn")).state, "running", "nothing runs");
  });
});
