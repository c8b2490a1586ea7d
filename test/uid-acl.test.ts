// A daemon restart and the ACL entries of an app's users (issues 12/13, processes of another user;
// src/daemon/private-acl.ts): the app's child became uid 65534, and the agent let that user into the
// app's directory (POSIX ACL). The daemon, killed and started again while the app runs, locks its
// home down at start: that used to clear the ACL mask (chmod 0700), so uid 65534 could no longer
// make its socket there until the app's next restore. Now uid 65534 keeps write and search on the
// app's directory across the restart, while the rights the lock-down is for are still taken away
// (others' bits, added by hand before the restart; another user stays out). Every wait is on a
// condition.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { chmodSync, statSync } from "node:fs";
import { join } from "node:path";
import { describe, test } from "node:test";
import { fixture } from "./helpers/native.js";
import { runApp, status, waitExited, waitLines } from "./helpers/scenario.js";
import { isAlive, waitFor } from "./helpers/home.js";
import { checkpointOk, setup } from "./helpers/tree.js";

/** Can uid `uid` (gid the same, no groups) make and remove a file in dir? */
function canWrite(uid: number, dir: string): boolean {
  try {
    execFileSync("setpriv", [`--reuid=${uid}`, `--regid=${uid}`, "--clear-groups", "--", "sh", "-c", `touch "$1/acl-probe" && rm "$1/acl-probe"`, "sh", dir], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
}

const skip = process.getuid?.() !== 0 ? "needs root (tardigrade run does)" : false;

describe("ACL entries of an app's users across a daemon restart", { timeout: 900_000 }, () => {
  test("uid 65534 keeps write and search on the app's directory after the daemon's lock-down; others are still shut out", { skip }, async (t) => {
    const { h, dir, release } = setup(t);
    chmodSync(dir, 0o777);
    await runApp(h, "acl", [fixture("asnobody"), dir]);
    await waitLines(h, "acl", (l) => l.some((x) => x.startsWith("asnobody child n ")), "the child became uid 65534", 120_000);
    const appDir = join(h.home, "apps", "acl");
    assert.ok(canWrite(65534, appDir), "the agent let uid 65534 into the app's directory");
    assert.ok(!canWrite(65533, appDir), "another user stays out");
    // rights the lock-down must take away: others may search and read (by hand)
    chmodSync(appDir, statSync(appDir).mode | 0o005);
    const old = h.daemonPid()!;
    process.kill(old, "SIGKILL");
    await waitFor("the daemon gone", () => !isAlive(old));
    assert.equal((await status(h, "acl")).state, "running"); // (a daemon again: started by the CLI or the watchdog)
    await waitFor("a new daemon", () => {
      const p = h.daemonPid();
      return p !== null && p !== old && isAlive(p);
    });
    assert.equal(statSync(appDir).mode & 0o007, 0, "the lock-down took others' rights away");
    assert.ok(canWrite(65534, appDir), "uid 65534 can still make its socket in the app's directory");
    assert.ok(!canWrite(65533, appDir), "another user stays out");
    await checkpointOk(h, "acl");
    release();
    await waitExited(h, "acl", 120_000);
  });
});
