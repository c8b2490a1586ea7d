// Incremental checkpoints end to end, through the daemon and its content-addressed store,
// with the real C core: the churn fixture changes its memory between 10 successive
// checkpoints (random pages, a sweep, new mmaps, munmap, mremap, MADV_DONTNEED, brk up
// and down, a new thread, mprotect splits) and prints a digest of all its memory at each;
// the first checkpoint is full, the others incremental (in both tracking modes); the daemon
// merges the chain in the background (a short merge policy here); restoring checkpoints
// from every part of the chain, merged or not, must give back exactly that step's digest.
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { makeHome, waitFor, type TestHome } from "./helpers/home.js";
import { fixture, requireNative } from "./helpers/native.js";

function lastMatch(log: string, re: RegExp): RegExpExecArray | null {
  let m: RegExpExecArray | null = null;
  for (const line of log.split("\n")) m = re.exec(line) ?? m;
  return m;
}

interface Listed {
  id: string;
  kind: string;
  parent: string | null;
  synthetic?: boolean;
  stats?: { tracking: string | null; pagesWritten: number | null; storedBytes: number };
}

type Checkpoint = Listed & { fullReason?: string };

/** Runs the churn fixture under the daemon with `tracking` and waits until it is ready. */
async function startChurn(h: TestHome, app: string, tracking: string): Promise<void> {
  const run = await h.cli(["run", "--name", app, "--tracking", tracking, "--", fixture("churn"), "16"]);
  assert.equal(run.code, 0, run.stderr);
  await waitFor("churn ready", () => /^ready [0-9a-f]{16}$/m.test(h.log(app)));
}

/** Makes churn take step k, then checkpoints it: the checkpoint and the step's memory digest. */
async function stepAndCheckpoint(h: TestHome, app: string, k: number): Promise<{ c: Checkpoint; digest: string }> {
  process.kill(h.pids(app)!.app, "SIGUSR1");
  const m = await waitFor(`step ${k}`, () => lastMatch(h.log(app), new RegExp(`^step ${k} ([0-9a-f]{16})$`)));
  const cp = await h.cli(["checkpoint", app, "--json"]);
  assert.equal(cp.code, 0, cp.stderr);
  return { c: JSON.parse(cp.stdout) as Checkpoint, digest: m[1]! };
}

/** Restores checkpoint `id` over the running app and returns the memory digest churn then prints. */
async function restoreDigest(h: TestHome, app: string, id: string, what: string): Promise<string> {
  const before = h.log(app).split("\n").length;
  const rs = await h.cli(["restore", app, "--checkpoint", id, "--replace"]);
  assert.equal(rs.code, 0, `${what}: ${rs.stderr}`);
  process.kill(h.pids(app)!.app, "SIGUSR2");
  const got = await waitFor(`digest after restoring ${id}`, () => lastMatch(h.log(app).split("\n").slice(before - 1).join("\n"), /^digest ([0-9a-f]{16})$/));
  return got[1]!;
}

describe("incremental checkpoints through the daemon (churn fixture)", () => {
  for (const mode of ["uffd", "hash"] as const) {
    test(`${mode} tracking: 10 checkpoints, background merge, restore of each part of the chain`, { timeout: 1_200_000 }, async () => {
      requireNative();
      const h = makeHome("tg-inc-", { TARDIGRADE_MERGE_CHAIN: "4" });
      try {
        const app = "ch";
        await startChurn(h, app, mode);
        const steps = new Map<number, { id: string; digest: string }>();
        for (let k = 1; k <= 10; k++) {
          const { c, digest } = await stepAndCheckpoint(h, app, k);
          assert.equal(c.kind, k === 1 ? "full" : "incremental", `step ${k}: ${c.fullReason ?? ""}`);
          assert.equal(c.stats?.tracking, mode);
          steps.set(k, { id: c.id, digest });
        }
        // the daemon merged the chain in the background (policy: 4 incrementals)
        const listed = await waitFor("a merged checkpoint", async () => {
          const l = JSON.parse((await h.cli(["ls", app, "--json"])).stdout) as Listed[];
          return l.some((x) => x.synthetic) ? l : null;
        });
        assert.equal(listed.length, 10);
        const merged = listed.filter((x) => x.synthetic).map((x) => x.id);
        const unmerged = listed.filter((x) => x.kind === "incremental").map((x) => x.id);
        assert.ok(unmerged.length > 0, "some checkpoints are still incremental");
        // restore: the full one, an unmerged incremental, a merged one, and the newest
        const byId = new Map([...steps].map(([k, v]) => [v.id, k]));
        const picks = new Set<number>([1, byId.get(unmerged[0]!)!, byId.get(merged[0]!)!, 10]);
        for (const k of picks) {
          const { id, digest } = steps.get(k)!;
          const got = await restoreDigest(h, app, id, `restore of ${id} (step ${k})`);
          assert.equal(got, digest, `memory of ${id} (step ${k}${merged.includes(id) ? ", merged" : ""}) after restore`);
        }
        assert.doesNotMatch(h.log(app), /^(CORRUPT|INVARIANT|ERROR)/m);
        // after a restore the next checkpoint is incremental on the restored one with uffd tracking
        // (the restorer arms it: docs/engine.md "Checkpoints after a restore"), full with hash; then incremental
        const a = JSON.parse((await h.cli(["checkpoint", app, "--json"])).stdout) as Checkpoint;
        if (mode === "uffd") assert.equal(a.kind, "incremental", a.fullReason ?? "");
        else {
          assert.equal(a.kind, "full");
          assert.match(a.fullReason ?? "", /restored/);
        }
        const b = JSON.parse((await h.cli(["checkpoint", app, "--json"])).stdout) as Listed;
        assert.equal(b.kind, "incremental");
        assert.equal(b.parent, a.id);
        const full = JSON.parse((await h.cli(["checkpoint", app, "--full", "--json"])).stdout) as Listed;
        assert.equal(full.kind, "full");
      } finally {
        await h.cleanup();
      }
    });
  }

  test("--tracking none: every checkpoint is full, says why, and restores", { timeout: 900_000 }, async () => {
    requireNative();
    const h = makeHome("tg-inc-none-");
    try {
      const app = "nt";
      await startChurn(h, app, "none");
      const steps: { id: string; digest: string }[] = [];
      for (let k = 1; k <= 3; k++) {
        const { c, digest } = await stepAndCheckpoint(h, app, k);
        assert.equal(c.kind, "full", `step ${k}`);
        assert.equal(c.stats?.tracking, "none");
        if (k > 1) assert.match(c.fullReason ?? "", /tracking is off/);
        steps.push({ id: c.id, digest });
      }
      const ins = await h.cli(["inspect", steps[1]!.id]);
      assert.equal(ins.code, 0, ins.stderr);
      assert.match(ins.stdout, /tracking none/);
      const { id, digest } = steps[1]!;
      assert.equal(await restoreDigest(h, app, id, `restore of ${id}`), digest);
      // the restored process keeps tracking off
      const after = JSON.parse((await h.cli(["checkpoint", app, "--json"])).stdout) as Listed;
      assert.equal(after.kind, "full");
      assert.equal(after.stats?.tracking, "none");
    } finally {
      await h.cleanup();
    }
  });
});
