// Issue 11 (daemon side): no hang, no lost restore, no stop of periodic checkpoints.
//  - several apps of very different sizes checkpointing at once all commit, and later
//    checkpoints and gc still work (defect 2: the daemon used to hang for good);
//  - `import` of a FIFO is refused at once, a missing file is said so (defects 2, 16);
//  - `restore --replace` racing with gc keeps its checkpoint (defect 12);
//  - kill -9 of the daemon of an app run with --every: checkpoints go on with no CLI command (15);
//  - error messages in the usual form (16).
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, readdirSync, statSync, truncateSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, test } from "node:test";
import { fixture, requireNative } from "./helpers/native.js";
import { isAlive, makeHome, waitFor, type TestHome } from "./helpers/home.js";
import { status } from "./helpers/scenario.js";

requireNative();
const FIX = { bigmem: fixture("bigmem"), counter: fixture("counter") };

function home(t: { after(fn: () => Promise<void>): void }, env: NodeJS.ProcessEnv = {}): TestHome {
  const h = makeHome("tg-s-", env);
  t.after(() => h.cleanup());
  return h;
}

async function ok(h: TestHome, args: string[], timeoutMs = 300_000): Promise<string> {
  const r = await h.cli(args, { timeoutMs });
  assert.equal(r.code, 0, `${args.join(" ")}: ${r.stderr}`);
  return r.stdout;
}

const ids = async (h: TestHome, app?: string): Promise<string[]> => (JSON.parse(await ok(h, ["ls", ...(app ? [app] : []), "--json"])) as { id: string }[]).map((m) => m.id);

/** Every line of stderr is one `tardigrade: <what>: <why>. <fix>` message: no stack, no warning. */
function wellFormed(stderr: string): void {
  assert.match(stderr, /^tardigrade: [^\n]+: [^\n]+/, stderr);
  assert.doesNotMatch(stderr, /\n\s+at |DeprecationWarning|DEP0\d+|internal daemon error|Broken pipe/, stderr);
}

describe("daemon: no hang, no lost restore", { timeout: 900_000 }, () => {
  test("apps of very different sizes checkpointing at once all commit; later checkpoints and gc work", async (t) => {
    const h = home(t);
    const apps: [string, string[]][] = [
      ["big", [FIX.bigmem, "1024", "1000"]],
      ["mid", [FIX.bigmem, "4", "200"]],
      ["s1", [FIX.counter, "100000000", "50"]],
      ["s2", [FIX.counter, "100000000", "50"]],
      ["s3", [FIX.counter, "100000000", "50"]],
    ];
    for (const [name, argv] of apps) await ok(h, ["run", "--name", name, "--", ...argv]);
    for (const name of ["big", "mid"]) await waitFor(`${name} ready`, () => /ready /.test(h.log(name)), 120_000, 100);
    // The big capture first; the others once its image streams into the store (they queue behind it).
    const big = h.cliSpawn(["checkpoint", "big", "--json"]);
    const staging = join(h.home, "store", "staging");
    await waitFor("big's capture to start", () => existsSync(staging) && readdirSync(staging).length > 0, 120_000, 20);
    const t0 = Date.now();
    const others = apps.slice(1).map(([name]) => h.cli(["checkpoint", name, "--json"], { timeoutMs: 400_000 }));
    const results = await Promise.all([big.done, ...others]);
    for (const [i, r] of results.entries()) assert.equal(r.code, 0, `checkpoint ${apps[i]![0]}: ${r.stderr}`);
    t.diagnostic(`all five committed ${Date.now() - t0} ms after the small ones were asked`);
    assert.deepEqual((await ids(h)).sort(), ["big@1", "mid@1", "s1@1", "s2@1", "s3@1"]);
    // The store is not stuck: more checkpoints (at once again), gc and a stop all finish.
    const again = await Promise.all(apps.map(([name]) => h.cli(["checkpoint", name], { timeoutMs: 400_000 })));
    for (const [i, r] of again.entries()) assert.equal(r.code, 0, `second checkpoint of ${apps[i]![0]}: ${r.stderr}`);
    await ok(h, ["gc", "--keep", "1"]);
    await ok(h, ["stop", "s3", "--timeout", "5"]);
    assert.equal((await ids(h, "s1")).at(-1), "s1@2");
    for (const [name] of apps.slice(0, 4)) assert.equal((await status(h, name)).state, "running");
  });

  test("import refuses a FIFO at once and names a missing file; the store keeps working", async (t) => {
    const h = home(t);
    await ok(h, ["run", "--name", "c", "--", FIX.counter, "100000000", "50"]);
    const dir = join(h.home, "fifo");
    mkdirSync(dir);
    const fifo = join(dir, "image.fifo");
    execFileSync("mkfifo", [fifo]);
    const t0 = Date.now();
    const r = await h.cli(["import", "c", fifo], { timeoutMs: 60_000 });
    assert.equal(r.code, 1);
    assert.match(r.stderr, /FIFO/);
    wellFormed(r.stderr);
    assert.ok(Date.now() - t0 < 30_000, "refused at once");
    const missing = await h.cli(["import", "c", join(dir, "nope.img")]);
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /no such file/);
    wellFormed(missing.stderr);
    // nothing holds the store: checkpoint and gc go through
    const c = await h.cli(["checkpoint", "c"], { timeoutMs: 60_000 });
    assert.equal(c.code, 0, c.stderr);
    await ok(h, ["gc"], 60_000);
  });

  test("restore --replace racing with gc keeps its checkpoint until the restorer has it", async (t) => {
    // The daemon pauses 3 s after killing the running app (TG_TEST_DELAY_AT): a gc runs then.
    const h = home(t, { TG_TEST_DELAY_AT: "restore-after-kill:3000" });
    await ok(h, ["run", "--name", "c", "--", FIX.counter, "100000000", "50"]);
    await ok(h, ["checkpoint", "c"]);
    await ok(h, ["checkpoint", "c", "--full"]);
    await ok(h, ["checkpoint", "c", "--full"]);
    const before = (await status(h, "c")).appHostPid!;
    const restore = h.cliSpawn(["restore", "c", "--checkpoint", "c@1", "--replace", "--json"]);
    await waitFor("the running app to be killed", () => !isAlive(before), 60_000, 20);
    const gc = await ok(h, ["gc", "--keep", "1", "--json"]);
    t.diagnostic(`gc during the restore: ${gc.trim()}`);
    const r = await restore.done;
    assert.equal(r.code, 0, `restore after a racing gc: ${r.stderr}`);
    const st = await status(h, "c");
    assert.equal(st.state, "running");
    await waitFor("the restored counter to print", () => /count \d+/.test(h.log("c")), 30_000);
    // once the restorer had it, gc may take c@1 away
    await ok(h, ["gc", "--keep", "1"]);
    assert.deepEqual(await ids(h, "c"), ["c@3"]);
  });

  test("kill -9 of the daemon: an app run with --every goes on being checkpointed with no command", async (t) => {
    const h = home(t, { TARDIGRADE_WATCHDOG_MS: "300" });
    await ok(h, ["run", "--name", "tick", "--every", "1s", "--", FIX.counter, "100000000", "50"]);
    const log = join(h.home, "daemon.log");
    const periodic = (pid: number): number =>
      readFileSync(log, "utf8")
        .split("\n")
        .filter((l) => l.includes('"periodic checkpoint"') && l.includes(`"pid":${pid},`)).length;
    const first = h.daemonPid()!;
    await waitFor("a periodic checkpoint", () => periodic(first) >= 1, 60_000, 100);
    const wd = await waitFor("the watchdog", () => {
      try {
        const pid = Number(readFileSync(join(h.home, "watchdog.pid"), "utf8").split(" ")[0]);
        return isAlive(pid) ? pid : 0;
      } catch {
        return 0;
      }
    }, 30_000, 50);
    process.kill(first, "SIGKILL");
    // no CLI command from here until new checkpoints appear
    const second = await waitFor("a new daemon", () => {
      const p = h.daemonPid();
      return p && p !== first && isAlive(p) ? p : 0;
    }, 60_000, 100);
    await waitFor("periodic checkpoints from the new daemon", () => periodic(second) >= 2, 60_000, 100);
    assert.ok(isAlive(wd), "the watchdog keeps watching");
    const list = await ids(h, "tick");
    assert.ok(list.length >= 3, `checkpoints: ${list.join(" ")}`);
    // A daemon stopped on purpose (SIGTERM) is not restarted, and its watchdog goes too.
    await ok(h, ["stop", "tick", "--timeout", "5"]);
    process.kill(second, "SIGTERM");
    await waitFor("the daemon and watchdog to stop", () => !isAlive(second) && !isAlive(wd), 30_000, 50);
  });

  test("error messages: --timeout, logs NAME, a damaged index, a short pack, tgs:// to an IP", async (t) => {
    const h = home(t);
    let r = await h.cli(["stop", "x", "--timeout", "abc"]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /invalid --timeout "abc"/);
    wellFormed(r.stderr);
    r = await h.cli(["logs", "../../etc"]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /invalid app name/);
    wellFormed(r.stderr);
    // tgs:// to an IP: no DEP0123 warning (SNI only for names)
    const tok = join(h.home, "token");
    writeFileSync(tok, "secret\n");
    r = await h.cli(["mirror", "ls", "--server", "tgs://127.0.0.1:1", "--token-file", tok], { timeoutMs: 60_000 });
    assert.equal(r.code, 1);
    assert.doesNotMatch(r.stderr, /DEP0123|DeprecationWarning/, r.stderr);
    // a pack shorter than the index says: the error gives the real end of the file
    await ok(h, ["run", "--name", "m", "--", FIX.bigmem, "8", "200"]);
    await waitFor("m ready", () => /ready /.test(h.log("m")), 60_000, 50);
    await ok(h, ["checkpoint", "m"]);
    const packs = join(h.home, "store", "packs");
    const pack = join(packs, readdirSync(packs).filter((n) => n.endsWith(".dat")).sort()[0]!);
    const cut = Math.floor(statSync(pack).size / 2);
    truncateSync(pack, cut);
    r = await h.cli(["restore", "m", "--replace"], { timeoutMs: 120_000 });
    assert.equal(r.code, 1);
    assert.match(r.stderr, new RegExp(`file ends at ${cut}\\b`), r.stderr);
    wellFormed(r.stderr);
    await ok(h, ["stop", "m", "--timeout", "5"]);

    // A damaged index: a message, not a stack trace.
    const bad = makeHome("tg-s-");
    t.after(() => bad.cleanup());
    mkdirSync(join(bad.home, "store"), { recursive: true });
    writeFileSync(join(bad.home, "store", "index.sqlite"), Buffer.alloc(8192, 0x5a));
    r = await bad.cli(["status"], { timeoutMs: 60_000 });
    assert.equal(r.code, 1);
    wellFormed(r.stderr);
  });
});
