// The agent's own file descriptors must never get in the app's way. Its manager used to wait for
// the daemon in accept(), which holds the lowest free fd number reserved while it waits: every
// dup2() of the app onto that number failed with EBUSY (bash's `exec 3<file`, node's spawn with a
// fourth stdio pipe, hence node's cluster module). Real programs, under tardigrade.
import assert from "node:assert/strict";
import { request } from "node:http";
import { join } from "node:path";
import { writeFileSync } from "node:fs";
import { describe, test, type TestContext } from "node:test";
import { makeHome, waitFor, type TestHome } from "./helpers/home.js";
import { freePort } from "./helpers/net.js";
import { fixtureScript, requireNative } from "./helpers/native.js";
import { killApp, logLines, runApp, status, waitLines } from "./helpers/scenario.js";

function setup(t: TestContext): TestHome {
  requireNative();
  const h = makeHome();
  t.after(() => h.cleanup());
  return h;
}

function get(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = request({ host: "127.0.0.1", port, path: "/", agent: false }, (res) => {
      let body = "";
      res.on("data", (d: Buffer) => (body += d.toString()));
      res.on("end", () => resolve(body));
    });
    req.on("error", reject);
    req.setTimeout(10_000, () => req.destroy(new Error("no answer in 10 s")));
    req.end();
  });
}

const lastHits = (ls: string[]): number => {
  const m = ls.filter((l) => /^hits \d+$/.test(l));
  return m.length ? Number(m[m.length - 1]!.slice(5)) : -1;
};

describe("the agent's fds stay out of the app's way", { timeout: 300_000 }, () => {
  test("bash `exec 3<file` and node's spawn with a fourth stdio pipe work under the agent", async (t) => {
    const h = setup(t);
    const file = join(h.home, "input.txt");
    writeFileSync(file, "first line\n");
    await runApp(h, "ex3", ["bash", "-c", `exec 3<${file}; read -u 3 line; echo "read: $line"; exec 3<&-; while :; do read -t 0.1 _ <> <(:) || true; done`]);
    await waitLines(h, "ex3", (l) => l.some((x) => x === "read: first line" || /busy/i.test(x)), "bash read through fd 3");
    assert.ok(logLines(h, "ex3").includes("read: first line"), logLines(h, "ex3").join("\n"));
    const js = `const c = require("child_process").spawn("cat", [], { stdio: ["pipe", "pipe", "inherit", "pipe"] }); c.on("error", (e) => console.log("spawn failed:", e.message)); c.on("spawn", () => console.log("spawned")); c.stdout.on("data", (d) => console.log("cat says", d.toString().trim())); c.stdin.write("hello\\n"); setInterval(() => {}, 1000);`;
    await runApp(h, "sp4", ["node", "-e", js]);
    await waitLines(h, "sp4", (l) => l.some((x) => x === "cat says hello" || x.startsWith("spawn failed")), "node spawned cat with 4 stdio fds");
    assert.ok(logLines(h, "sp4").includes("cat says hello"), logLines(h, "sp4").join("\n"));
  });

  test("node's cluster (a primary and 2 workers sharing a port): checkpointed, killed and restored, the workers answer from the checkpoint's counts and the primary's tally goes on", async (t) => {
    const h = setup(t);
    const port = await freePort();
    await runApp(h, "cl", ["node", fixtureScript("cluster.mjs"), String(port)]);
    await waitFor("both workers answer", async () => {
      const seen = new Set<string>();
      for (let i = 0; i < 6; i++) seen.add((await get(port).catch(() => "")).split(" ")[1] ?? "");
      seen.delete("");
      return seen.size === 2;
    });
    // each worker's count at the checkpoint: the last answer of each before it
    const atCheckpoint = new Map<string, number>();
    for (let i = 0; i < 6; i++) {
      const [, pid, n] = (await get(port)).trim().split(" ");
      atCheckpoint.set(pid!, Number(n));
    }
    const cp = await h.cli(["checkpoint", "cl", "--json"]);
    assert.equal(cp.code, 0, cp.stderr);
    const hitsAtCheckpoint = await waitFor("the primary's tally", () => {
      const n = lastHits(logLines(h, "cl"));
      return n >= 0 ? n : undefined;
    });
    for (let i = 0; i < 4; i++) await get(port); // answered after the checkpoint: forgotten by the restore
    await killApp(h, "cl");
    const rs = await h.cli(["restore", "cl"]);
    assert.equal(rs.code, 0, rs.stderr);
    const from = h.log("cl").length;
    const answers: string[] = [];
    for (let i = 0; i < 4; i++) answers.push((await get(port)).trim());
    const first = new Map<string, number>();
    for (const a of answers) {
      const [, pid, n] = a.split(" ");
      if (!first.has(pid!)) first.set(pid!, Number(n));
    }
    for (const [pid, n] of first) assert.equal(n, (atCheckpoint.get(pid) ?? NaN) + 1, `worker ${pid} goes on from its count at the checkpoint: ${answers.join(" | ")}`);
    await waitLines(h, "cl", (l) => lastHits(l) >= hitsAtCheckpoint + 4, "the restored primary counts the new hits over IPC", 120_000, from);
    assert.equal((await status(h, "cl")).state, "running");
  });
});
