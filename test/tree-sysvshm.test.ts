// Issue 12, item 3: a System V shared memory segment comes back as a real segment (shmget finds it by
// its key after a restore, with its id, mode and the checkpoint's contents), not as plain shared
// memory. A C fixture (test/fixtures/sysvshm.c) counts in a segment of its own key; after the
// restore a new child looks it up by key. Every wait is on a condition.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, test } from "node:test";
import { isAlive, waitFor } from "./helpers/home.js";
import { fixture } from "./helpers/native.js";
import { logLines, logSize, waitLines } from "./helpers/scenario.js";
import { checkpointOk, others, setup } from "./helpers/tree.js";

const TIMEOUT = 900_000; // generous for a busy machine; every wait inside is on a condition

const ticks = (ls: string[]): number[] => ls.filter((l) => /^tick \d+$/.test(l)).map((l) => Number(l.split(" ")[1]));

/** The row of /proc/sysvipc/shm for a key: { id, perms (octal string), nattch }, or null. */
function segment(key: number): { id: number; perms: string; nattch: number } | null {
  for (const line of readFileSync("/proc/sysvipc/shm", "utf8").split("\n").slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length > 6 && Number(f[0]) === key) return { id: Number(f[1]), perms: f[2]!, nattch: Number(f[6]) };
  }
  return null;
}

function removeSegment(key: number): void {
  const s = segment(key);
  if (s) execFileSync("ipcrm", ["-m", String(s.id)], { stdio: "ignore" });
}

describe("System V shared memory", { timeout: TIMEOUT }, () => {
  for (const tree of [false, true]) {
  test(`a segment with a key, counted in${tree ? " by a parent, attached by its child too" : ""}: checkpointed, killed, restored; a new process finds it by its key with the same id, mode 640 and the restored ${tree ? "processes'" : "process's"} contents${tree ? "; both attached to it again" : ""}`, async (t) => {
    const { h, dir } = setup(t);
    const key = 0x74670000 + (process.pid & 0xfff) * 2 + (tree ? 1 : 0);
    const nattch = tree ? 2 : 1;
    removeSegment(key);
    t.after(() => removeSegment(key));
    const gate = join(dir, "gate");
    const r0 = await h.cli(["run", "--name", "sv", "--json", "--", fixture("sysvshm"), String(key), gate, ...(tree ? ["tree"] : [])]);
    assert.equal(r0.code, 0, r0.stderr);
    await waitLines(h, "sv", (l) => ticks(l).length >= 5, "ticks");
    const id = Number(logLines(h, "sv").find((l) => l.startsWith("id "))!.split(" ")[1]);
    if (tree) await waitFor("the child attached", () => others(h, "sv").some((q) => !q.zombie));
    assert.deepEqual(segment(key), { id, perms: "640", nattch });
    await checkpointOk(h, "sv");
    const at = ticks(logLines(h, "sv")).length;
    await waitLines(h, "sv", (l) => ticks(l).length >= at + 5, "ticks after the checkpoint");
    const p = h.pids("sv")!;
    process.kill(p.init, "SIGKILL");
    await waitFor("the app gone", () => !isAlive(p.init) && !isAlive(p.app));
    assert.equal(segment(key)?.nattch, 0, "the killed app's segment stays, attached by nobody");
    const from = logSize(h, "sv");
    const r = await h.cli(["restore", "sv"]);
    assert.equal(r.code, 0, `restore: ${r.stderr}\n--- log ---\n${h.log("sv")}`);
    await waitLines(h, "sv", (l) => ticks(l).length >= 3, "ticks after the restore", 120_000, from);
    assert.deepEqual(segment(key), { id, perms: "640", nattch }, "one segment of that key, the same id, attached by the restored app");
    writeFileSync(gate, "");
    const out = await waitLines(h, "sv", (l) => l.includes("done") || l.some((x) => /ERROR|CORRUPT/.test(x)), "the child's look-up", 120_000, from);
    if (tree) {
      const count = out.find((l) => l.startsWith("parent "))?.split(" ").pop();
      assert.ok(out.includes(`member count ${count}`), `the restored child sees the parent's count:\n${out.join("\n")}`);
    }
    const after = ticks(out);
    after.forEach((n, i) => assert.equal(n, after[0]! + i, "ticks consecutive"));
    assert.ok(after[0]! > 1 && after[0]! <= at + 1, `first tick after the restore ${after[0]}: continues from the checkpoint (${at} ticks then)`);
    const parent = out.find((l) => l.startsWith("parent "));
    assert.ok(parent, out.join("\n"));
    assert.ok(out.includes(`child ${parent.slice("parent ".length)}`), `the child sees the parent's segment:\n${out.join("\n")}`);
    assert.ok(parent.startsWith(`parent id ${id} `), parent);
  });
  }
});
