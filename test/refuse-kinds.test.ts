// Kinds of fd tardigrade does not restore yet are refused by name, nothing committed, the app
// running on: a POSIX message queue (it looks like a regular file named "/NAME": recorded as one,
// the restore reopened that path on the root filesystem), a pidfd, an io_uring instance, a memfd held only as an fd (not taken for a deleted file) and a terminal from outside the app (a pty of the
// host's, reopened through /proc/PID/fd/N of a process the test starts: the app's own ptys are
// restored, test/pty-*.test.ts). Every process started is killed by PID (helpers/tree.ts, helpers/home.ts).
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { describe, test } from "node:test";
import { fixture } from "./helpers/native.js";
import { runApp, status, waitLines } from "./helpers/scenario.js";
import { ids, setup } from "./helpers/tree.js";

const CASES: [kind: string, named: RegExp][] = [
  ["mq", /fd \d+ \(POSIX message queue \/tg-fdkinds-\d+( \(deleted\))?\) cannot be checkpointed: message queues are not supported yet/],
  ["pidfd", /fd \d+ \(anon_inode:\[pidfd\].*\) cannot be checkpointed: this kind of file descriptor is not supported yet/],
  ["memfd", /fd \d+ \(memfd \/memfd:tg-fdkinds \(deleted\)\) cannot be checkpointed: a memfd held as an fd is not supported yet/],
  ["pty", /fd \d+: terminal \/dev\/pts\/\d+ is not supported: it is not one of the app's own ptys/],
  ["uring", /fd \d+ \(anon_inode:\[io_uring\].*\) cannot be checkpointed: this kind of file descriptor is not supported yet/],
];

describe("fd kinds refused by name", { timeout: 600_000 }, () => {
  for (const [kind, named] of CASES)
    test(`${kind}: the checkpoint refuses naming the fd, nothing is committed, the app runs on`, async (t) => {
      const { h } = setup(t);
      const extra: string[] = [];
      if (kind === "pty") {
        // a pty of the host's devpts, held by a process outside the app: the app opens it through /proc
        const holder = spawn("python3", ["-c", "import os, sys, time\nm, s = os.openpty()\nprint(s, flush=True)\ntime.sleep(600)"], { stdio: ["ignore", "pipe", "inherit"] });
        t.after(() => holder.kill("SIGKILL"));
        const fd = await new Promise<string>((resolve, reject) => {
          holder.stdout.setEncoding("utf8").once("data", (d: string) => resolve(d.trim()));
          holder.once("error", reject);
        });
        extra.push(`/proc/${holder.pid}/fd/${fd}`);
      }
      await runApp(h, kind, [fixture("fdkinds"), kind, ...extra]);
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
