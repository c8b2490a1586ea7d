// Issue 11 (host side): the daemon's state is private, and a full disk does not take it down.
//  - started under umask 000, the home is 0700, the socket 0600, every file 0600 and every
//    directory 0700; an older home with 0644 files is fixed on start (defects 3, 4);
//  - a second user (created here, removed after) can neither talk to the daemon nor read a pack;
//  - the app keeps the umask of whoever ran it;
//  - on a small loop-mounted filesystem that fills up, a checkpoint fails saying which
//    directory is full, and the daemon (whose log is on the same filesystem) keeps serving (10).
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { chmodSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { request } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, test } from "node:test";
import { fixture, requireNative } from "./helpers/native.js";
import { CLI, makeHome, waitFor, type TestHome } from "./helpers/home.js";
import { status } from "./helpers/scenario.js";

requireNative();
const COUNTER = fixture("counter");
const BIGMEM = fixture("bigmem");

async function ok(h: TestHome, args: string[], timeoutMs = 120_000): Promise<string> {
  const r = await h.cli(args, { timeoutMs });
  assert.equal(r.code, 0, `${args.join(" ")}: ${r.stderr}`);
  return r.stdout;
}

/** Every entry under `root` (symlinks not followed) with its permission bits. */
function modes(root: string): { path: string; mode: number; dir: boolean }[] {
  const out: { path: string; mode: number; dir: boolean }[] = [];
  const visit = (p: string): void => {
    const st = lstatSync(p);
    if (st.isSymbolicLink()) return;
    out.push({ path: p, mode: st.mode & 0o7777, dir: st.isDirectory() });
    if (st.isDirectory()) for (const n of readdirSync(p)) visit(join(p, n));
  };
  visit(root);
  return out;
}

function umaskOf(pid: number): number {
  return parseInt(/^Umask:\s*([0-7]+)$/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"))![1]!, 8);
}

describe("daemon: private state, full disk", { timeout: 600_000 }, () => {
  test("umask 000: home 0700, socket 0600, files 0600; an old home is fixed; a second user gets nothing", async (t) => {
    const h = makeHome("tg-p-");
    t.after(() => h.cleanup());
    // An older home: world-readable app log and directory.
    const old = join(h.home, "apps", "old");
    mkdirSync(old, { recursive: true, mode: 0o755 });
    chmodSync(h.home, 0o755);
    chmodSync(join(h.home, "apps"), 0o755);
    chmodSync(old, 0o755);
    writeFileSync(join(old, "log"), "password=hunter2\n", { mode: 0o644 });
    chmodSync(join(old, "log"), 0o644);

    const saved = process.umask(0); // the CLI (and the daemon it starts) under umask 000
    let run;
    try {
      run = h.cli(["run", "--name", "c", "--", BIGMEM, "4", "200"]);
    } finally {
      process.umask(saved);
    }
    const r = await run;
    assert.equal(r.code, 0, r.stderr);
    await waitFor("c ready", () => /ready /.test(h.log("c")), 60_000, 50);
    await ok(h, ["checkpoint", "c"]);
    // the app got the umask of the command that ran it
    assert.equal(umaskOf((await status(h, "c")).appHostPid!), 0);

    const all = modes(h.home);
    const sock = all.find((e) => e.path === join(h.home, "daemon.sock"));
    assert.equal(sock?.mode, 0o600, "daemon.sock is 0600");
    assert.equal(all[0]!.mode, 0o700, "the home is 0700");
    const packs = all.filter((e) => e.path.endsWith(".dat"));
    assert.ok(packs.length > 0);
    for (const name of ["store/index.sqlite", "apps/c/log", "apps/c/app.json", "apps/c/agent.sock", "apps/old/log", "daemon.log"])
      assert.equal(all.find((e) => e.path === join(h.home, name))?.mode, 0o600, `${name} is 0600`);
    // nothing under the home is open to group or others (the agent library in lib/ is code, not data)
    const open = all.filter((e) => (e.mode & 0o077) !== 0 && !e.path.startsWith(join(h.home, "lib") + "/"));
    assert.deepEqual(open.map((e) => `${e.path} ${e.mode.toString(8)}`), []);
    for (const e of all) if (e.dir) assert.equal(e.mode & 0o777, 0o700, `${e.path} is 0700`);

    // A second user: cannot connect to the daemon (so cannot run a command as root), cannot read a pack.
    const user = `tgt${process.pid % 100000}`;
    execFileSync("useradd", ["-M", "-r", "-s", "/usr/sbin/nologin", user]);
    t.after(() => {
      spawnSync("userdel", [user]);
    });
    const marker = join(mkdtempSync(join(tmpdir(), "tg-p-m-")), "owned");
    t.after(() => rmSync(join(marker, ".."), { recursive: true, force: true }));
    const attack = `
      const http = require("node:http");
      const body = JSON.stringify({ name: "evil", argv: ["/bin/touch", ${JSON.stringify(marker)}], cwd: "/", env: {} });
      const req = http.request({ socketPath: ${JSON.stringify(join(h.home, "daemon.sock"))}, method: "POST", path: "/v1/apps",
        headers: { "content-type": "application/json", "content-length": Buffer.byteLength(body) } }, (res) => { console.log("CONNECTED", res.statusCode); process.exit(0); });
      req.on("error", (e) => { console.log("REFUSED", e.code); process.exit(0); });
      req.end(body);`;
    const a = spawnSync("runuser", ["-u", user, "--", process.execPath, "-e", attack], { encoding: "utf8", timeout: 60_000 });
    assert.match(a.stdout, /REFUSED EACCES/, `${a.stdout}${a.stderr}`);
    const catPack = spawnSync("runuser", ["-u", user, "--", "cat", packs[0]!.path], { encoding: "utf8", timeout: 60_000 });
    assert.notEqual(catPack.status, 0);
    assert.match(catPack.stderr, /Permission denied/);
    // and as that user, the CLI says what is wrong in one line, no stack trace. The second user must
    // reach the CLI: a checkout under a private directory (a `mktemp -d` clone is 0700) is opened
    // for traversal (o+x, no read) for this test and closed again after.
    for (let d = join(CLI, ".."); d !== "/"; d = join(d, "..")) {
      const mode = lstatSync(d).mode & 0o777;
      if ((mode & 0o001) === 0) {
        chmodSync(d, mode | 0o001);
        t.after(() => chmodSync(d, mode));
      }
    }
    const cli = spawnSync("runuser", ["-u", user, "--", "env", `TARDIGRADE_HOME=${h.home}`, process.execPath, CLI, "status"], { encoding: "utf8", timeout: 60_000 });
    assert.equal(cli.status, 1);
    assert.match(cli.stderr, /^tardigrade: [^\n]+\n$/, cli.stderr);
    await new Promise((res) => setTimeout(res, 100));
    assert.throws(() => lstatSync(marker), /ENOENT/, "the second user's command did not run");
    assert.equal(readdirSync(join(h.home, "apps")).includes("evil"), false);

    // Modes loosened by hand (home 0711, socket 0666): the kernel lets the second user connect,
    // the daemon's peer-credential check (SO_PEERCRED) still refuses every request.
    const dirOf = (p: string): string => join(p, "..");
    for (let d = h.home; d !== "/" && d !== tmpdir(); d = dirOf(d)) chmodSync(d, 0o711);
    chmodSync(join(h.home, "daemon.sock"), 0o666);
    const attack2 = attack.replace(`console.log("CONNECTED", res.statusCode); process.exit(0);`, `let b = ""; res.on("data", (d) => (b += d)); res.on("end", () => { console.log("STATUS", res.statusCode, b); process.exit(0); });`);
    assert.notEqual(attack2, attack);
    const a2 = spawnSync("runuser", ["-u", user, "--", process.execPath, "-e", attack2], { encoding: "utf8", timeout: 60_000 });
    assert.match(a2.stdout, /^STATUS 403 .*permission denied.*this daemon serves uid 0 \(and root\) only; the request came from uid \d+/, `${a2.stdout}${a2.stderr}`);
    const cli2 = spawnSync("runuser", ["-u", user, "--", "env", `TARDIGRADE_HOME=${h.home}`, process.execPath, CLI, "status"], { encoding: "utf8", timeout: 60_000 });
    assert.equal(cli2.status, 1, cli2.stdout);
    assert.match(cli2.stderr, /^tardigrade: cannot use the tardigrade home .*permission denied: it belongs to uid 0/, cli2.stderr); // the CLI's own check
    await ok(h, ["status"]); // its own user still gets in
    assert.throws(() => lstatSync(marker), /ENOENT/, "the second user's command did not run");
    assert.equal(readdirSync(join(h.home, "apps")).includes("evil"), false);
    assert.match(readFileSync(join(h.home, "daemon.log"), "utf8"), /refused a request from another user/);
  });

  test("a full filesystem: the checkpoint names the full directory; the daemon keeps serving", async (t) => {
    const base = mkdtempSync(join(tmpdir(), "tg-nospc-"));
    const img = join(base, "fs.img");
    const mnt = join(base, "mnt");
    mkdirSync(mnt);
    execFileSync("truncate", ["-s", "24M", img]);
    execFileSync("mkfs.ext4", ["-q", "-F", "-m", "0", img]);
    execFileSync("mount", ["-o", "loop", img, mnt]);
    let h: TestHome | null = null;
    t.after(async () => {
      await h?.cleanup();
      // a process that was killed may still be closing its files there on a busy machine
      const mounted = (): boolean => readFileSync("/proc/mounts", "utf8").split("\n").some((l) => l.split(" ")[1] === mnt);
      await waitFor("the test filesystem to unmount", () => !mounted() || spawnSync("umount", [mnt]).status === 0, 60_000, 100).catch(() => {
        spawnSync("umount", ["-l", mnt]); // still busy after a minute: detach it
      });
      rmSync(base, { recursive: true, force: true });
    });
    const savedTmp = process.env.TMPDIR;
    process.env.TMPDIR = mnt; // the home (store and daemon.log) on the small filesystem
    try {
      h = makeHome("h");
    } finally {
      if (savedTmp === undefined) delete process.env.TMPDIR;
      else process.env.TMPDIR = savedTmp;
    }
    await ok(h, ["run", "--name", "small", "--", COUNTER, "100000000", "50"]);
    await ok(h, ["checkpoint", "small"]);
    // 64 MiB of random memory cannot fit in what is left of 24 MiB
    await ok(h, ["run", "--name", "big", "--", BIGMEM, "64", "200"]);
    await waitFor("big ready", () => /ready /.test(h!.log("big")), 60_000, 50);
    const r = await h.cli(["checkpoint", "big"], { timeoutMs: 120_000 });
    assert.equal(r.code, 1);
    assert.match(r.stderr, /no space left on the filesystem of .*\/store/, r.stderr);
    assert.doesNotMatch(r.stderr, /Broken pipe|\n\s+at /, r.stderr);
    // fill up the rest too (daemon.log lives here): the daemon must go on serving
    const filler = join(mnt, "filler");
    spawnSync("dd", ["if=/dev/zero", `of=${filler}`, "bs=4k", "count=16384"], { stdio: "ignore" });
    for (let i = 0; i < 2; i++) {
      const c = await h.cli(["checkpoint", "big"], { timeoutMs: 120_000 });
      assert.equal(c.code, 1, "nothing fits");
      assert.match(c.stderr, /no space left/, c.stderr);
    }
    // a small one may or may not fit in what the filesystem still has; either way a clear answer
    const s = await h.cli(["checkpoint", "small"], { timeoutMs: 120_000 });
    if (s.code !== 0) assert.match(s.stderr, /^tardigrade: checkpoint of small failed: no space left/, s.stderr);
    // 100 refused requests, each a line for daemon.log, which cannot grow now
    const sock = join(h.home, "daemon.sock");
    for (let i = 0; i < 100; i++) {
      const code = await new Promise<number>((resolve, reject) => {
        const req = request({ socketPath: sock, path: `/v1/apps/nope-${i}` }, (res) => {
          res.resume();
          res.on("end", () => resolve(res.statusCode ?? 0));
        });
        req.on("error", reject);
        req.end();
      });
      assert.equal(code, 404);
    }
    assert.equal((await status(h, "big")).state, "running");
    assert.equal((await status(h, "small")).state, "running");
    // space again: the same daemon checkpoints and collects
    const pid = h.daemonPid();
    rmSync(filler);
    await ok(h, ["stop", "big", "--timeout", "5"]);
    await ok(h, ["checkpoint", "small"]);
    await ok(h, ["gc", "--keep", "1"]);
    assert.equal(h.daemonPid(), pid, "the daemon survived");
    // lines that could not be written were counted, and said so once the log could grow again
    assert.match(readFileSync(join(h.home, "daemon.log"), "utf8"), /\d+ log lines lost \(ENOSPC\)/);
    await ok(h, ["stop", "small", "--timeout", "5"]);
  });
});
