// A pseudo-terminal inside the app (python's os.openpty: /dev/ptmx and /dev/pts/N) comes back from
// a checkpoint, kill -9 and restore as it was: the same /dev/pts/N (the app has its own devpts
// instance), the slave's termios (no echo, VMIN/VTIME, speed) and window size, the master's packet
// mode, both ends still joined, and a child whose controlling terminal it is, in the foreground
// (test/fixtures/ptystate.py checks all of it itself). Input queued for the slave at the checkpoint
// is dropped, and the restore says how many bytes. Every process started is killed by PID
// (helpers/tree.ts, helpers/home.ts).
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, test } from "node:test";
import { isAlive, waitFor } from "./helpers/home.js";
import { fixtureScript } from "./helpers/native.js";
import { runApp, status, waitLines } from "./helpers/scenario.js";
import { checkpointOk, setup } from "./helpers/tree.js";

describe("ptys inside the app", { timeout: 600_000 }, () => {
  test("termios, window size, packet mode, the index, the controlling terminal and its foreground group come back; queued input is dropped and said", async (t) => {
    const { h, dir } = setup(t);
    await runApp(h, "pst", ["python3", fixtureScript("ptystate.py"), dir]);
    const ready = await waitLines(h, "pst", (ls) => ls.some((l) => l.startsWith("ready ")), "ready", 120_000);
    const tty = ready.find((l) => l.startsWith("ready "))!.slice(6);
    assert.equal(tty, "/dev/pts/0", "the app's own devpts numbers its first pty 0");
    writeFileSync(join(dir, "check-1"), "");
    await waitLines(h, "pst", (ls) => ls.includes(`check 1 ok ${tty}`), "first check", 120_000);
    // (after a check the fixture queues 10 bytes of input for the slave, which nobody reads)
    const id = await checkpointOk(h, "pst");
    const ins = await h.cli(["inspect", id]);
    assert.equal(ins.code, 0, ins.stderr);
    assert.match(ins.stdout, /pty-master +\S+ +\d+ +\/dev\/pts\/0 master, 33x101, packet mode/);
    assert.match(ins.stdout, /pty +\S+ +\d+ +\/dev\/pts\/0, 33x101, 10 bytes queued \(dropped at restore\)/);
    const p = h.pids("pst")!;
    process.kill(p.init, "SIGKILL");
    await waitFor("the tree gone", () => !isAlive(p.init) && !isAlive(p.app));
    const r = await h.cli(["restore", "pst"]);
    assert.equal(r.code, 0, `restore: ${r.stderr}`);
    assert.match(r.stdout + r.stderr, /fd 4 \(\/dev\/pts\/0\): 10 bytes of input it had not read at the checkpoint were dropped/);
    writeFileSync(join(dir, "check-2"), "");
    await waitLines(h, "pst", (ls) => ls.includes(`check 2 ok ${tty}`), "the check after the restore", 120_000);
    assert.equal((await status(h, "pst")).state, "running");
  });
});
