// The daemon's own logic against a stand-in for the C core (test/helpers/fake-native.ts):
// agent refusals and failures, corrupt images from the agent, apps that end before
// their agent answers, restore/--replace, rediscovery after kill -9 of the daemon,
// and one daemon per home when many CLIs start at once. Runs without native/build.
import assert from "node:assert/strict";
import { readFileSync, readdirSync, rmSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { fakeNativeDir } from "./helpers/fake-native.js";
import { isAlive, makeHome, waitFor, type TestHome } from "./helpers/home.js";
import { status } from "./helpers/scenario.js";

let native: string;
before(() => {
  native = fakeNativeDir();
});
after(() => rmSync(native, { recursive: true, force: true }));

function home(t: { after(fn: () => Promise<void>): void }): TestHome {
  const h = makeHome("tg-d-", { TARDIGRADE_NATIVE_DIR: native });
  t.after(() => h.cleanup());
  return h;
}

const ids = async (h: TestHome, app?: string): Promise<string[]> =>
  (JSON.parse((await h.cli(["ls", ...(app ? [app] : []), "--json"])).stdout) as { id: string }[]).map((m) => m.id);

const staging = (h: TestHome): string[] => readdirSync(join(h.home, "store", "staging"));

describe("daemon with a stand-in C core", { timeout: 120_000 }, () => {
  test("run, checkpoint, ls: the manifest records what the agent measured and the image holds", async (t) => {
    const h = home(t);
    const r = await h.cli(["run", "--name", "app", "--json", "--", "/bin/true"]);
    assert.equal(r.code, 0, r.stderr);
    const st = await status(h, "app");
    assert.equal(st.state, "running");
    assert.ok(st.appHostPid && isAlive(st.appHostPid));
    assert.match(h.log("app"), /fake app tardigrade-init running/);
    const c = await h.cli(["checkpoint", "app", "--json"]);
    assert.equal(c.code, 0, c.stderr);
    const m = JSON.parse(c.stdout) as Record<string, unknown>;
    assert.equal(m.id, "app@1");
    assert.equal(m.pages, 20);
    assert.equal(m.threads, 1);
    assert.equal(m.downtimeNs, 1234);
    assert.equal(m.totalNs, 5678);
    assert.equal(m.kind, "full");
    assert.equal(m.parent, null);
    assert.deepEqual(await ids(h), ["app@1"]);
    assert.deepEqual(staging(h), []);
    // The agent is preloaded from a content-addressed copy under the home.
    const lib = readdirSync(join(h.home, "lib"));
    assert.equal(lib.length, 1);
    assert.match(lib[0]!, /^libtardigrade-agent-[0-9a-f]{16}\.so$/);
  });

  test("agent refusals and failures commit nothing and leave the app running", async (t) => {
    const h = home(t);
    await h.cli(["run", "--name", "ok", "--", "x"]);
    assert.equal((await h.cli(["checkpoint", "ok"])).code, 0);
    for (const [mode, re] of [
      ["refuse", /^tardigrade: checkpoint of bad-refuse failed: fd 3: TCP socket 127\.0\.0\.1:4000 \(listening\) is not supported\. Nothing was committed; the app keeps running/],
      ["fail-late", /^tardigrade: checkpoint of bad-fail-late failed: write: No space left on device\. Nothing was committed/],
      ["corrupt", /^tardigrade: invalid checkpoint image .*\/store\/staging\/bad-corrupt\.[0-9a-f]+\/pid2\.img: payload CRC mismatch in record PAGES .* at offset \d+ \(0x[0-9a-f]+\)/],
    ] as const) {
      const name = `bad-${mode}`;
      const r0 = await h.cli(["run", "--name", name, "--", "x"], { env: { FAKE_AGENT: mode } });
      assert.equal(r0.code, 0, r0.stderr);
      const r = await h.cli(["checkpoint", name]);
      assert.equal(r.code, 1, mode);
      assert.match(r.stderr, re);
      assert.equal((await status(h, name)).state, "running", `${mode}: app keeps running`);
      assert.deepEqual(staging(h), [], `${mode}: staging cleaned`);
    }
    assert.deepEqual(await ids(h), ["ok@1"], "only the good checkpoint");
  });

  test("an app that ends before its agent answers: clear error, its log kept", async (t) => {
    const h = home(t);
    const r = await h.cli(["run", "--name", "quick", "--", "x"], { env: { FAKE_AGENT: "exit:3" } });
    assert.equal(r.code, 1);
    assert.match(r.stderr, /^tardigrade: cannot run quick: the app ended \(exit status 3\) before its agent answered on .*agent\.sock\. See its output with `tardigrade logs quick`/);
    const st = await status(h, "quick");
    assert.equal(st.state, "exited");
    assert.deepEqual(st.exit, { exit_code: 3 });
    const ck = await h.cli(["checkpoint", "quick"]);
    assert.match(ck.stderr, /cannot checkpoint quick: the app has exited \(exit status 3\)/);
  });

  test("a command that cannot be executed leaves nothing", async (t) => {
    const h = home(t);
    const r = await h.cli(["run", "--name", "nx", "--", "/no/such"], { env: { FAKE_AGENT: "exec-error" } });
    assert.equal(r.code, 1);
    assert.match(r.stderr, /^tardigrade: cannot run nx: cannot execute "\/no\/such": No such file or directory\./);
    assert.deepEqual(readdirSync(join(h.home, "apps")), []);
  });

  test("restore: refused while running, --replace kills by host pid, restore after stop", async (t) => {
    const h = home(t);
    await h.cli(["run", "--name", "r", "--", "x"]);
    assert.equal((await h.cli(["checkpoint", "r"])).code, 0);
    const first = h.pids("r")!;
    const refused = await h.cli(["restore", "r"]);
    assert.equal(refused.code, 1);
    assert.match(refused.stderr, /cannot restore r: the app is still running \(host pid \d+\)\. Stop it first/);
    assert.ok(isAlive(first.app));
    const rep = await h.cli(["restore", "r", "--replace", "--json"]);
    assert.equal(rep.code, 0, rep.stderr);
    assert.ok(!isAlive(first.app), "old copy killed");
    const second = h.pids("r")!;
    assert.notEqual(second.app, first.app);
    assert.equal((await status(h, "r")).state, "running");
    assert.match(h.log("r"), /fake app tardigrade-restore running/);
    const stop = await h.cli(["stop", "r", "--json"]);
    assert.equal(stop.code, 0, stop.stderr);
    assert.deepEqual((JSON.parse(stop.stdout) as { exit: unknown }).exit, { signal: 15 });
    const again = await h.cli(["restore", "r", "--checkpoint", "r@1"]);
    assert.equal(again.code, 0, again.stderr);
    assert.match(again.stdout, /^restored r from r@1 in /);
  });

  test("kill -9 of the daemon: a new one finds the running apps", async (t) => {
    const h = home(t);
    await h.cli(["run", "--name", "a", "--", "x"]);
    await h.cli(["run", "--name", "b", "--", "x"]);
    const d = h.daemonPid()!;
    process.kill(d, "SIGKILL");
    await waitFor("daemon gone", () => !isAlive(d), 5000);
    const all = JSON.parse((await h.cli(["status", "--json"])).stdout) as { name: string; state: string }[];
    assert.deepEqual(all.map((a) => [a.name, a.state]), [["a", "running"], ["b", "running"]]);
    assert.notEqual(h.daemonPid(), d);
    assert.equal((await h.cli(["checkpoint", "b"])).code, 0);
    assert.equal((await h.cli(["stop", "a"])).code, 0);
    assert.equal((await status(h, "a")).state, "exited");
  });

  test("many CLIs at once start exactly one daemon", async (t) => {
    const h = home(t);
    const rs = await Promise.all(Array.from({ length: 6 }, () => h.cli(["ls", "--json"])));
    rs.forEach((r) => assert.equal(r.code, 0, r.stderr));
    // losers exit after finding the winner (on a busy machine, some are still starting now)
    const daemons = (): string[] => readdirSync("/proc")
      .filter((p) => /^\d+$/.test(p))
      .filter((p) => {
        try {
          const cmd = readFileSync(`/proc/${p}/cmdline`, "utf8");
          return cmd.includes("cli/main.js\0daemon") && readFileSync(`/proc/${p}/environ`, "utf8").split("\0").includes(`TARDIGRADE_HOME=${h.home}`);
        } catch {
          return false;
        }
      });
    await waitFor("the losing daemons to exit", () => daemons().length === 1, 30_000, 50);
    assert.deepEqual(daemons(), [String(h.daemonPid())]);
  });
});
