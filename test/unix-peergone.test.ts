// A Unix stream socket whose peer closed its end (a worker that exited) with nothing left to read
// is checkpointed whatever `--external-unix` says (it was refused: "its peer is gone"), and
// restored the same: the app's next read gets end of file, a write EPIPE. A python app
// (test/fixtures/peergone.py); every process started is killed by PID (helpers/tree.ts).
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, test } from "node:test";
import { fixtureScript } from "./helpers/native.js";
import { logSize, runApp, waitLines } from "./helpers/scenario.js";
import { checkpointOk, crashAndRestore, setup } from "./helpers/tree.js";

describe("a Unix socket whose peer closed its end", { timeout: 600_000 }, () => {
  test("checkpointed with the default policy, restored as end of file and EPIPE", async (t) => {
    const { h, dir, release } = setup(t);
    await runApp(h, "pg", ["python3", fixtureScript("peergone.py"), dir]);
    await waitLines(h, "pg", (l) => l.some((x) => x.startsWith("tick ")), "ticking", 120_000);
    const id = await checkpointOk(h, "pg");
    const seen = JSON.stringify(JSON.parse((await h.cli(["inspect", id, "--json"])).stdout) as unknown);
    assert.match(seen, /Unix stream socket whose peer closed its end/, "inspect says what it is");
    const from = logSize(h, "pg");
    await crashAndRestore(h, "pg");
    await waitLines(h, "pg", (l) => l.some((x) => x.startsWith("tick ")), "ticking after the restore", 120_000, from);
    writeFileSync(join(dir, "go"), "");
    const after = await waitLines(h, "pg", (l) => l.some((x) => x.startsWith("write ")), "read and write done", 120_000, from);
    assert.ok(after.includes("read eof"), after.join("\n"));
    assert.ok(after.includes("write epipe"), after.join("\n"));
    release();
  });
});
