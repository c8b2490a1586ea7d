// Kinds of fd tardigrade does not restore yet are refused by name, nothing committed, the app
// running on: a POSIX message queue (it looks like a regular file named "/NAME": recorded as one,
// the restore reopened that path on the root filesystem), a pidfd, an io_uring instance, a memfd held only as an fd (not taken for a deleted file) and a pseudo-terminal (tmux, screen, script, python's pty).
// Every process started is killed by PID (helpers/tree.ts, helpers/home.ts).
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { fixture } from "./helpers/native.js";
import { runApp, status, waitLines } from "./helpers/scenario.js";
import { ids, setup } from "./helpers/tree.js";

const CASES: [kind: string, named: RegExp][] = [
  ["mq", /fd \d+ \(POSIX message queue \/tg-fdkinds-\d+( \(deleted\))?\) cannot be checkpointed: message queues are not supported yet/],
  ["pidfd", /fd \d+ \(anon_inode:\[pidfd\].*\) cannot be checkpointed: this kind of file descriptor is not supported yet/],
  ["memfd", /fd \d+ \(memfd \/memfd:tg-fdkinds \(deleted\)\) cannot be checkpointed: a memfd held as an fd is not supported yet/],
  ["pty", /fd \d+: terminal \/dev\/(ptmx|pts\/\d+) is not supported/],
  ["uring", /fd \d+ \(anon_inode:\[io_uring\].*\) cannot be checkpointed: this kind of file descriptor is not supported yet/],
];

describe("fd kinds refused by name", { timeout: 600_000 }, () => {
  for (const [kind, named] of CASES)
    test(`${kind}: the checkpoint refuses naming the fd, nothing is committed, the app runs on`, async (t) => {
      const { h } = setup(t);
      await runApp(h, kind, [fixture("fdkinds"), kind]);
      await waitLines(h, kind, (ls) => ls.some((l) => l.startsWith("ready ")), "ready", 120_000);
      const r = await h.cli(["checkpoint", kind]);
      assert.equal(r.code, 1, `refused: ${r.stdout}`);
      assert.match(r.stderr, named);
      assert.match(r.stderr, /Nothing was committed/);
      assert.deepEqual(await ids(h, kind), []);
      const n = (await waitLines(h, kind, (ls) => ls.some((l) => l.startsWith("alive ")), "alive", 60_000)).filter((l) => l.startsWith("alive ")).length;
      await waitLines(h, kind, (ls) => ls.filter((l) => l.startsWith("alive ")).length > n + 2, "alive on after the refusal", 60_000);
      assert.equal((await status(h, kind)).state, "running");
    });
});
