// A zombie of another user (issue 12, processes of another user): a python parent (root) whose
// child became uid 65534 (groups and gid too) and exited 3 without being reaped. Checkpoint, kill -9
// of the tree, restore: the zombie is back with its own ids (/proc/PID/status), not the restorer's,
// and the parent's waitid() reports its pid, uid 65534 and status 3. Every wait is on a condition.
import assert from "node:assert/strict";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, test } from "node:test";
import { logLines, runApp, waitExited, waitLines } from "./helpers/scenario.js";
import { waitFor } from "./helpers/home.js";
import { checkpointOk, crashAndRestore, others, setup } from "./helpers/tree.js";

const PARENT = `
import os, sys, time
d = sys.argv[1]
pid = os.fork()
if pid == 0:
    os.setgroups([100])
    os.setgid(65534)
    os.setuid(65534)
    os._exit(3)
print("child", pid, flush=True)
n = 0
while not os.path.exists(os.path.join(d, "reap")):
    n += 1
    print("tick", n, flush=True)
    time.sleep(0.05)
r = os.waitid(os.P_PID, pid, os.WEXITED)
print("reaped", r.si_pid, r.si_uid, r.si_status, flush=True)
while not os.path.exists(os.path.join(d, "release")):
    time.sleep(0.05)
`;

/** The Uid, Gid and Groups lines of host process pid's /proc status. */
const idLines = (hostPid: number): string =>
  readFileSync(`/proc/${hostPid}/status`, "utf8")
    .split("\n")
    .filter((l) => /^(Uid|Gid|Groups):/.test(l))
    .join("\n");

const skip = process.getuid?.() !== 0 ? "needs root (tardigrade run does)" : false;

describe("zombies of another user", { timeout: 900_000 }, () => {
  test("a zombie that was uid 65534 comes back as uid 65534; its parent's waitid() sees its uid and status", { skip }, async (t) => {
    const { h, dir, release } = setup(t);
    const script = join(dir, "zparent.py");
    writeFileSync(script, PARENT);
    await runApp(h, "zu", ["python3", script, dir]);
    const ls = await waitLines(h, "zu", (l) => l.some((x) => x.startsWith("child ")), "the parent forks", 120_000);
    const zpid = Number(ls.find((x) => x.startsWith("child "))!.split(" ")[1]);
    const zombie = await waitFor("the child is a zombie", () => others(h, "zu").find((p) => p.pid === zpid && p.zombie));
    const before = idLines(zombie.hostPid);
    assert.match(before, /^Uid:\s+65534\s+65534\s+65534\s+65534$/m, "the child became uid 65534");
    assert.match(before, /^Gid:\s+65534\s+65534\s+65534\s+65534$/m);
    await checkpointOk(h, "zu");
    await crashAndRestore(h, "zu");
    const back = await waitFor("the zombie is back", () => others(h, "zu").find((p) => p.pid === zpid && p.zombie));
    assert.equal(idLines(back.hostPid), before, "the restored zombie's uids, gids and groups are its own");
    writeFileSync(join(dir, "reap"), "");
    const after = await waitLines(h, "zu", (l) => l.some((x) => x.startsWith("reaped ")), "the parent reaps the zombie", 120_000);
    assert.equal(after.filter((x) => x.startsWith("reaped ")).pop(), `reaped ${zpid} 65534 3`, "waitid: pid, uid 65534, status 3");
    assert.ok(!logLines(h, "zu").some((l) => /Traceback|Error/.test(l)), logLines(h, "zu").join("\n"));
    assert.ok(existsSync(dir));
    release();
    await waitExited(h, "zu", 120_000);
  });
});
