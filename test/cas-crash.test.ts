// Crash safety of the content-addressed store: a child process ingests, merges and gcs in a
// loop and is killed with SIGKILL at random moments; after each kill the store is reopened
// (repairing leftovers) and every listed checkpoint must export exactly its memory, every
// checkpoint the child saw committed must still be there unless gc was entitled to drop it,
// and no pack file may be unknown to the index.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createWriteStream, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pipeline } from "node:stream/promises";
import { fileURLToPath } from "node:url";
import { test } from "node:test";
import { CasStore, type RepairReport } from "../src/store/cas/index.js";
import { churnChain, memoryDiff, readImageMemory, rng } from "./helpers/cas-images.js";

const CHILD = fileURLToPath(new URL("./helpers/cas-crash-child.js", import.meta.url));
const APPS = ["alpha", "beta"];
const COUNT = 20;
const PER_RUN = 6;
const KILLS = Number(process.env.TG_CAS_CRASH_KILLS ?? 8);

/** True when the run ended with nothing left to ingest (its last gc saw no work). */
function nothingLeft(lines: string[]): boolean {
  return !lines.some((l) => l.startsWith("committed "));
}

function runChild(root: string, images: string, killAfterMs: number | null, env: NodeJS.ProcessEnv = {}): Promise<{ lines: string[]; killed: boolean; code: number | null; stderr: string; ms: number }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [CHILD, root, images, APPS.join(","), String(COUNT), String(PER_RUN)], { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, ...env } });
    let out = "";
    let opened = 0;
    child.stdout.on("data", () => {
      if (!opened && out.includes("opened ")) opened = performance.now();
    });
    let err = "";
    child.stdout.on("data", (d: Buffer) => (out += d.toString()));
    child.stderr.on("data", (d: Buffer) => (err += d.toString()));
    let killed = false;
    let timer: NodeJS.Timeout | null = null;
    // The clock starts when the store is open (node's own startup is not what we test).
    child.stdout.on("data", () => {
      if (timer || killAfterMs === null || !out.includes("opened ")) return;
      timer = setTimeout(() => {
        killed = child.kill("SIGKILL");
      }, killAfterMs);
    });
    child.on("exit", (code, signal) => {
      if (timer) clearTimeout(timer);
      resolve({ lines: out.split("\n").filter((l) => l.length > 0), killed: (killed || env.TG_CAS_CRASH_AT !== undefined) && signal === "SIGKILL", code, stderr: err, ms: opened ? performance.now() - opened : 0 });
    });
  });
}

type Expected = Map<string, Map<number, Buffer>>;

/** Reopens the store and checks every listed checkpoint and the committed-then-missing ones. */
async function verifyStore(root: string, expected: Expected, seen: Set<string>, when: string): Promise<RepairReport> {
  const store = await CasStore.open(root);
  try {
    const listed = store.list();
    const ids = new Set(listed.map((c) => c.id));
    for (const c of listed) {
      const want = expected.get(c.id);
      assert.ok(want, `unexpected checkpoint ${c.id}`);
      const f = join(root, "..", "export.img");
      await pipeline(store.exportImage(c.id), createWriteStream(f));
      const mem = await readImageMemory(f);
      assert.equal(memoryDiff(mem.pages, want), null, `${c.id} ${when}: ${memoryDiff(mem.pages, want)}`);
    }
    for (const app of APPS) {
      const mine = listed.filter((c) => c.app === app).map((c) => c.seq).sort((a, b) => b - a);
      const newestSeen = Math.max(0, ...[...seen].filter((id) => id.startsWith(`${app}@`)).map((id) => Number(id.split("@")[1])));
      if (newestSeen > 0) assert.ok(mine[0]! >= newestSeen, `${app}@${newestSeen} was committed but is gone ${when}`);
      // Anything seen committed and now missing must be older than the 3 newest (gc's right to drop it).
      for (const id of seen) {
        if (!id.startsWith(`${app}@`) || ids.has(id)) continue;
        assert.ok(Number(id.split("@")[1]) < (mine[2] ?? 0), `${id} disappeared ${when} but is among the 3 newest of ${app}`);
      }
    }
    assert.deepEqual(store.repairs.damaged, [], `damaged packs ${when}`);
    assert.ok(readdirSync(join(root, "packs")).every((n) => /^pack-\d{6}\.dat$/.test(n)));
    return store.repairs;
  } finally {
    await store.close();
  }
}

function makeImages(dir: string): Expected {
  mkdirSync(dir);
  const expected: Expected = new Map();
  APPS.forEach((app, k) => {
    const chain = churnChain(100 + k, COUNT);
    chain.images.forEach((img, i) => {
      writeFileSync(join(dir, `${app}-${i + 1}.img`), img);
      expected.set(`${app}@${i + 1}`, chain.expected[i]!);
    });
  });
  return expected;
}

// Budgets: 84 s for the crash-point test at load average 4 on 2 cores; it timed out at 120 s in a
// full-suite run at load 6 (a benchmark on the same cores). The limit only catches a hang.
test("kill -9 during ingest, merge and gc leaves every committed checkpoint intact", { timeout: 600_000 }, async (t) => {
  const tmp = mkdtempSync(join(tmpdir(), "tg-cas-crash-"));
  try {
    const images = join(tmp, "images");
    const root = join(tmp, "store");
    const expected = makeImages(images);
    const r = rng(7);
    const seen = new Set<string>();
    let kills = 0;
    let finished = false;
    let runMs = 0;
    const repairs = { removedPacks: 0, truncated: 0 };
    const lastOp: string[] = [];
    let first = 0;
    for (let round = 0; round < KILLS * 6 && (kills < KILLS || !finished); round++) {
      if (finished && kills < KILLS) {
        // All the work is done but kills are missing (delays longer than the runs): start again on a new store.
        rmSync(root, { recursive: true, force: true });
        seen.clear();
        finished = false;
        first = round;
      }
      // The first run is not killed: it measures how long a run takes, to kill the others anywhere in it.
      const delay = round > first && kills < KILLS ? Math.floor(runMs * r()) : null;
      const res = await runChild(root, images, delay);
      if (round === first) runMs = res.ms;
      if (res.killed) {
        kills++;
        const last = res.lines[res.lines.length - 1] ?? "";
        lastOp.push(last.startsWith("begin ") ? last.split(" ")[1]! : `after ${last.split(" ")[0]}`);
      } else assert.equal(res.code, 0, `child failed: ${res.stderr}`);
      if (res.lines.includes("done") && nothingLeft(res.lines)) finished = true;
      for (const l of res.lines) if (l.startsWith("committed ")) seen.add(l.slice(10));

      // Verify after every run, killed or not.
      const rep = await verifyStore(root, expected, seen, `after ${kills} kills`);
      repairs.removedPacks += rep.removedPacks.length;
      repairs.truncated += rep.truncated.length;
    }
    t.diagnostic(`${kills} kills (during: ${lastOp.join(", ")}); repairs on reopen: ${JSON.stringify(repairs)}`);
    assert.ok(kills >= KILLS, `only ${kills} kills landed`);
    assert.ok(finished, "the child never completed a run");
    // The end state: 3 newest per app (plus what their chains need), all exporting correctly (checked above).
    const store = await CasStore.open(root);
    for (const app of APPS) assert.ok(store.list(app).some((c) => c.seq === COUNT));
    await store.close();
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
});

const POINTS = [
  "ingest-written",
  "ingest-synced",
  "ingest-committed",
  // merge with the page table only, then one that rewrites a scattered chain's pages into new blocks (relayout.ts)
  "merge-in-transaction",
  "merge-committed",
  "merge-rewrite-partial",
  "merge-rewrite-written",
  "merge-rewrite-synced",
  "merge-rewrite-in-transaction",
  "merge-rewrite-committed",
  "gc-dropped",
  "gc-written",
  "gc-synced",
  "gc-switched",
  "gc-unlinked-one",
];

test("a crash at each commit step of ingest, merge and gc", { timeout: 600_000 }, async () => {
  const tmp = mkdtempSync(join(tmpdir(), "tg-cas-crashpt-"));
  try {
    const images = join(tmp, "images");
    const expected = makeImages(images);
    for (const point of POINTS) {
      const root = join(tmp, point);
      const seen = new Set<string>();
      // Some history first, so that gc has packs to rewrite; then the run that crashes at `point`.
      const warm = await runChild(root, images, null);
      assert.equal(warm.code, 0, warm.stderr);
      for (const l of warm.lines) if (l.startsWith("committed ")) seen.add(l.slice(10));
      const res = await runChild(root, images, null, { TG_CAS_CRASH_AT: point });
      assert.ok(res.killed, `the child did not reach ${point}: ${res.lines.slice(-3).join(" | ")} ${res.stderr}`);
      for (const l of res.lines) if (l.startsWith("committed ")) seen.add(l.slice(10));
      const rep = await verifyStore(root, expected, seen, `after a crash at ${point}`);
      if (point === "ingest-written" || point === "ingest-synced") assert.ok(rep.truncated.length + rep.removedPacks.length > 0, `${point}: nothing to repair? ${JSON.stringify(rep)}`);
      if (point === "gc-written" || point === "gc-synced" || point === "gc-switched") assert.ok(rep.removedPacks.length > 0, `${point}: ${JSON.stringify(rep)}`);
      // The merge's new pack is unknown to the index until its commit: open() removes it.
      if (point === "merge-rewrite-written" || point === "merge-rewrite-synced") assert.ok(rep.removedPacks.length > 0, `${point}: ${JSON.stringify(rep)}`);
      // The store goes on: the rest of the images, then verify again.
      const rest = await runChild(root, images, null);
      assert.equal(rest.code, 0, rest.stderr);
      for (const l of rest.lines) if (l.startsWith("committed ")) seen.add(l.slice(10));
      await verifyStore(root, expected, seen, `after resuming from a crash at ${point}`);
    }
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
});
