// The content-addressed store with the real C core: the churn fixture is checkpointed by
// its agent (a full image, then an incremental one after each of its 10 mutation steps:
// random pages, sweep, new mmaps, munmap, mremap, MADV_DONTNEED, brk up/down, a new thread,
// mprotect splits), in both tracking modes; every image goes into a CasStore (the even
// steps streamed through a FIFO, as the daemon will do); a middle
// checkpoint is merged; then exports of an unmerged, the merged and a later checkpoint
// are restored by tardigrade-restore (through the daemon, swapped into a checkpoint slot
// of its local store) and the fixture's memory digest must be the one it printed at that step.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { constants, mkdirSync, openSync } from "node:fs";
import { Socket, createConnection } from "node:net";
import { join } from "node:path";
import { describe, test } from "node:test";
import { CasStore, type CasCheckpoint } from "../src/store/cas/index.js";
import { makeHome, waitFor } from "./helpers/home.js";
import { fixture, requireNative } from "./helpers/native.js";

type Done = { event: string; ok: boolean; seq?: number; kind?: string; full_reason?: string; error?: string; tracking?: string };

/** One CHECKPOINT request on the agent's socket (docs/native-interface.md); returns the "done" reply. */
function agentCheckpoint(sock: string, args: string): Promise<Done> {
  return new Promise((resolve, reject) => {
    const c = createConnection(sock);
    let buf = "";
    c.setEncoding("utf8");
    c.on("connect", () => c.write(`CHECKPOINT ${args}\n`));
    c.on("data", (d: string) => {
      buf += d;
      for (let nl = buf.indexOf("\n"); nl >= 0; nl = buf.indexOf("\n")) {
        const o = JSON.parse(buf.slice(0, nl)) as Done;
        buf = buf.slice(nl + 1);
        if (o.event === "done" || o.event === "error") {
          c.end();
          resolve(o);
        }
      }
    });
    c.on("error", reject);
  });
}

function lastMatch(log: string, re: RegExp): RegExpExecArray | null {
  let m: RegExpExecArray | null = null;
  for (const line of log.split("\n")) m = re.exec(line) ?? m;
  return m;
}

describe("cas store with the real agent and restorer", () => {
  for (const mode of ["uffd", "hash"]) {
    test(`churn, ${mode} tracking: 10 incrementals, merge, restore from exports`, { timeout: 240_000 }, async () => {
      requireNative();
      const h = makeHome("tg-cas-");
      const store = await CasStore.open(join(h.home, "cas"));
      try {
        const app = "ch";
        const run = await h.cli(["run", "--name", app, "--", fixture("churn"), "16"]);
        assert.equal(run.code, 0, run.stderr);
        await waitFor("churn ready", () => /^ready [0-9a-f]{16}$/m.test(h.log(app)));
        const sock = join(h.home, "apps", app, "agent.sock");
        const images = join(h.home, "images");
        mkdirSync(images);
        // Seq 1: a full image, choosing the tracking mode.
        const d1 = await agentCheckpoint(sock, `${join(images, "1.img")} full tracking=${mode}`);
        assert.ok(d1.ok, JSON.stringify(d1));
        assert.equal(d1.tracking, mode);
        await store.ingest(app, d1.seq!, join(images, "1.img"));
        // Seq 2: through the daemon, so that its local store has a checkpoint slot to restore from.
        const cp = await h.cli(["checkpoint", app, "--json"]);
        assert.equal(cp.code, 0, cp.stderr);
        const slot = JSON.parse(cp.stdout) as { id: string };
        const slotImage = join(h.home, "store", "checkpoints", slot.id, "pid2.img");
        let last = (await store.ingest(app, d1.seq! + 1, slotImage)).seq;
        const digests = new Map<number, { id: string; digest: string }>();
        for (let k = 1; k <= 10; k++) {
          process.kill(h.pids(app)!.app, "SIGUSR1");
          const m = await waitFor(`step ${k}`, () => lastMatch(h.log(app), new RegExp(`^step ${k} ([0-9a-f]{16})$`)));
          const file = join(images, `s${k}.img`);
          let d: Done;
          let c: CasCheckpoint;
          if (k % 2 === 0) {
            // Streamed: the agent writes into a FIFO that ingest reads (no image file).
            execFileSync("mkfifo", [file]);
            const fd = openSync(file, constants.O_RDONLY | constants.O_NONBLOCK);
            const ingesting = store.ingest(app, last + 1, new Socket({ fd, readable: true, writable: false }));
            ingesting.catch(() => undefined);
            d = await agentCheckpoint(sock, `${file} incremental parent=${last} fifo`);
            c = await ingesting;
          } else {
            d = await agentCheckpoint(sock, `${file} incremental parent=${last}`);
            c = await store.ingest(app, d.seq!, file);
          }
          assert.ok(d.ok, JSON.stringify(d));
          assert.equal(d.kind, "incremental", `step ${k}: ${d.full_reason ?? ""}`);
          assert.equal(c.seq, d.seq);
          assert.equal(c.parent, `${app}@${last}`);
          last = c.seq;
          digests.set(k, { id: c.id, digest: m[1]! });
        }
        await store.merge(digests.get(5)!.id);
        assert.equal(store.get(digests.get(5)!.id).synthetic, true);
        for (const k of [3, 5, 10]) {
          const { id, digest } = digests.get(k)!;
          const stop = await h.cli(["stop", app]);
          assert.equal(stop.code, 0, stop.stderr);
          await store.exportToFile(id, slotImage);
          const before = h.log(app).split("\n").length;
          const rs = await h.cli(["restore", app, "--checkpoint", slot.id]);
          assert.equal(rs.code, 0, `restore of ${id} (step ${k}): ${rs.stderr}`);
          process.kill(h.pids(app)!.app, "SIGUSR2");
          const got = await waitFor(`digest after restoring ${id}`, () => lastMatch(h.log(app).split("\n").slice(before - 1).join("\n"), /^digest ([0-9a-f]{16})$/));
          assert.equal(got[1], digest, `memory of ${id} (step ${k}) after restore`);
          assert.doesNotMatch(h.log(app), /^(CORRUPT|INVARIANT|ERROR)/m);
        }
      } finally {
        await store.close();
        await h.cleanup();
      }
    });
  }
});
