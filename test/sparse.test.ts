// Large sparse address spaces (issue 10, item 7): a JVM-like C fixture reserves 4 GiB (PROT_NONE,
// the first quarter made read-write) and touches 32 MiB of it, one MiB of that behind PROT_NONE.
// The capture walks only populated pages (PAGEMAP_SCAN); these tests check that what it stores is
// still exact: memory after a restore, from a full checkpoint and from a chain of incrementals.
// Timing is measured by bench/sparse.bench.ts, not here.
import assert from "node:assert/strict";
import { describe, test, type TestContext } from "node:test";
import { makeHome, type TestHome } from "./helpers/home.js";
import { fixture, requireNative } from "./helpers/native.js";
import { baseline, killApp, logLines, logSize, runApp, waitExited, waitLines } from "./helpers/scenario.js";

const TIMEOUT = 1_800_000; // per describe block (all its tests): generous for a busy machine; every wait inside is on a condition
const STEPS = 600; // 30 s at 50 ms: room for four checkpoints on a busy machine

function setup(t: TestContext): TestHome {
  requireNative();
  const h = makeHome();
  t.after(() => h.cleanup());
  return h;
}

interface Manifest {
  id: string;
  kind: string;
  pages: number;
}

const stepOf = (l: string): number | null => {
  const m = /^step (\d+) sum [0-9a-f]{16}$/.exec(l);
  return m ? Number(m[1]) : null;
};

async function checkpoint(h: TestHome, name: string, args: string[] = []): Promise<Manifest> {
  const r = await h.cli(["checkpoint", name, "--json", ...args]);
  assert.equal(r.code, 0, `checkpoint ${name}: ${r.stderr}`);
  return JSON.parse(r.stdout) as Manifest;
}

async function waitSteps(h: TestHome, name: string, more: number): Promise<void> {
  const last = (ls: string[]): number => ls.map(stepOf).filter((n): n is number => n !== null).pop() ?? 0;
  const n0 = last(logLines(h, name));
  await waitLines(h, name, (ls) => last(ls) >= n0 + more, `${more} more steps`, 60_000);
}

/** Kill -9, restore, and check the restored run ends exactly like an uninterrupted one. */
async function killRestoreCompare(h: TestHome, name: string, base: Promise<{ lines: string[]; code: number | null }>, id: string): Promise<void> {
  await killApp(h, name);
  const from = logSize(h, name);
  const r = await h.cli(["restore", name, "--json"]);
  assert.equal(r.code, 0, `restore: ${r.stderr}\n${h.log(name)}`);
  assert.equal((JSON.parse(r.stdout) as { checkpoint: string }).checkpoint, id);
  const restored = await waitLines(h, name, (ls) => ls.some((l) => l.startsWith("done")), "the restored run to finish", 120_000, from);
  assert.deepEqual((await waitExited(h, name)).exit, { exit_code: 0 });
  const b = await base;
  assert.equal(b.code, 0);
  const first = stepOf(restored[0]!);
  assert.ok(first !== null && first > 1, `restored output starts mid-run: ${restored[0]}`);
  const at = b.lines.indexOf(restored[0]!);
  assert.ok(at > 0, `restored first line ${restored[0]} is a line of the uninterrupted run`);
  assert.deepEqual(restored, b.lines.slice(at), "memory after restore: every later checksum (and the PROT_NONE run's) as in an uninterrupted run");
}

describe("sparse address space (4 GiB reserved, 32 MiB touched)", { timeout: TIMEOUT }, () => {
  const argv = (): string[] => [fixture("sparse"), "4096", "32", String(STEPS), "50"];

  test("full checkpoint: kill -9, restore, the memory is exact", async (t) => {
    const h = setup(t);
    const base = baseline(argv());
    await runApp(h, "jvm", argv());
    await waitLines(h, "jvm", (ls) => ls.some((l) => stepOf(l) === 5), "running", 60_000);
    const m = await checkpoint(h, "jvm");
    assert.equal(m.kind, "full");
    // 32 MiB touched: the image holds those pages (plus the program's own), not the 4 GiB
    assert.ok(m.pages >= 8192 && m.pages < 8192 + 2048, `pages stored: ${m.pages}`);
    await waitSteps(h, "jvm", 2);
    await killRestoreCompare(h, "jvm", base, m.id);
  });

  test("one full and three incremental checkpoints: the newest restores exactly", async (t) => {
    const h = setup(t);
    const base = baseline(argv());
    await runApp(h, "jvm", argv());
    await waitLines(h, "jvm", (ls) => ls.some((l) => stepOf(l) === 5), "running", 60_000);
    const full = await checkpoint(h, "jvm");
    assert.equal(full.kind, "full");
    let last = full;
    for (let i = 0; i < 3; i++) {
      await waitSteps(h, "jvm", 3);
      last = await checkpoint(h, "jvm");
      assert.equal(last.kind, "incremental", `checkpoint ${i + 2}: ${JSON.stringify(last)}`);
      assert.ok(last.pages < 2048, `incremental stores only written pages: ${last.pages}`);
    }
    await waitSteps(h, "jvm", 2);
    await killRestoreCompare(h, "jvm", base, last.id);
  });
});
