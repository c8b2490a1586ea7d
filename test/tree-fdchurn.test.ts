// A checkpoint's precheck lists the app's fds while the app runs: an fd closed between the listing
// and its look-up is no reason to refuse (it failed with "fd N: cannot read its link: No such file
// or directory", seen once with nginx workers). A python parent and child each churn an fd in a
// thread; twenty checkpoints in a row must all commit. Every wait is on a condition.
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { waitFor } from "./helpers/home.js";
import { fixtureScript } from "./helpers/native.js";
import { logLines, waitLines } from "./helpers/scenario.js";
import { others, setup } from "./helpers/tree.js";

const TIMEOUT = 900_000; // generous for a busy machine; every wait inside is on a condition

describe("fds closed while the precheck lists them", { timeout: TIMEOUT }, () => {
  test("a parent and child churning an fd in a thread: twenty checkpoints in a row commit", async (t) => {
    const { h } = setup(t);
    const r0 = await h.cli(["run", "--name", "fc", "--json", "--", "python3", fixtureScript("fdchurn.py")]);
    assert.equal(r0.code, 0, r0.stderr);
    await waitLines(h, "fc", (l) => l.length >= 5, "ticks");
    await waitFor("the child", () => others(h, "fc").some((p) => !p.zombie));
    const failures: string[] = [];
    for (let i = 0; i < 20; i++) {
      const r = await h.cli(["checkpoint", "fc"]);
      if (r.code !== 0) failures.push(r.stderr.trim());
    }
    assert.deepEqual(failures, [], failures.join("\n"));
    const k = logLines(h, "fc").length;
    await waitLines(h, "fc", (l) => l.length >= k + 3, "the app runs on");
  });
});
