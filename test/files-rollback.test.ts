// Issue 14: the app's data files are part of the checkpoint and rolled back on restore. Real
// programs: sqlite3 (python3) in DELETE, PERSIST and WAL modes checkpointed in the middle of a
// transaction with a page cache much smaller than the database; a python3 app appending to a log
// and replacing a result file by write-temp-then-rename, creating and deleting files. Each app
// checks the files against its own memory, so each test can fail: it is also run with
// `--files none`, where the files are left as the crash left them, and must then fail. And a
// `--files DIR` tree changed by another program, with `--files-exclude`.
import assert from "node:assert/strict";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, test, type TestContext } from "node:test";
import { isAlive, makeHome, waitFor, type TestHome } from "./helpers/home.js";
import { fixture, fixtureScript, requireNative } from "./helpers/native.js";
import { killApp, logLines, logSize, status, waitLines } from "./helpers/scenario.js";

const TIMEOUT = 400_000;
const WAIT = 90_000;

function setup(t: TestContext): { h: TestHome; dir: string } {
  requireNative();
  const h = makeHome("tg-");
  const dir = mkdtempSync(join(tmpdir(), "tg-fr-"));
  t.after(async () => {
    await h.cleanup();
    rmSync(dir, { recursive: true, force: true });
  });
  return { h, dir };
}

async function run(h: TestHome, name: string, flags: string[], argv: string[]): Promise<void> {
  const r = await h.cli(["run", "--name", name, ...flags, "--json", "--", ...argv]);
  assert.equal(r.code, 0, `run ${name} failed: ${r.stderr}`);
}

interface Ckpt {
  id: string;
  files?: { id: string; files: number; changed: number; bytesRead: number };
}

async function checkpoint(h: TestHome, name: string): Promise<Ckpt> {
  const r = await h.cli(["checkpoint", name, "--json"]);
  assert.equal(r.code, 0, `checkpoint ${name}: ${r.stderr}`);
  return JSON.parse(r.stdout) as Ckpt;
}

interface Restored {
  checkpoint: string;
  files?: { rewritten: string[]; recreated: string[]; renamedBack: string[]; removed: string[]; leftAsIs: string[]; unchanged: number };
}

async function restore(h: TestHome, name: string, args: string[] = []): Promise<Restored> {
  const r = await h.cli(["restore", name, "--json", ...args]);
  assert.equal(r.code, 0, `restore ${name}: ${r.stderr}`);
  return JSON.parse(r.stdout) as Restored;
}

function lastNum(ls: string[], re: RegExp): number {
  for (let i = ls.length - 1; i >= 0; i--) {
    const m = re.exec(ls[i]!);
    if (m) return Number(m[1]);
  }
  return 0;
}

/** The files manifest of a checkpoint's files image (inspect of the files checkpoint). */
async function filesOf(h: TestHome, id: string): Promise<{ path: string; present: boolean; size: number }[]> {
  const r = await h.cli(["inspect", id, "--json"]);
  assert.equal(r.code, 0, r.stderr);
  const m = JSON.parse(r.stdout) as { manifest: { stats?: { extra?: { files?: { path: string; present: boolean; size: number }[] } } } };
  return m.manifest.stats?.extra?.files ?? [];
}

/**
 * sqlite3 writer checkpointed inside a transaction, more commits, kill -9, restore: the app's
 * verification of the database against its own view. Returns the verification line (or the
 * app's end when it died).
 */
async function sqliteScenario(t: TestContext, mode: "delete" | "persist" | "wal", files: "on" | "none"): Promise<{ verdict: string; restored: Restored; cp: Ckpt }> {
  const { h, dir } = setup(t);
  const db = join(dir, "bank.db");
  await run(h, "sql", files === "none" ? ["--files", "none"] : [], ["python3", fixtureScript("sqlbank.py"), db, mode]);
  // a database several times the page cache (8 pages): ~60 commits of ~40 KiB
  await waitLines(h, "sql", (ls) => ls.includes(`mode ${mode}`) && lastNum(ls, /^commit (\d+) rows/) >= 60, "the database grows", WAIT);
  let cp: Ckpt | null = null;
  for (let attempt = 0; attempt < 10 && !cp; attempt++) {
    const c = await checkpoint(h, "sql");
    if (files === "none" || mode === "wal") {
      cp = c;
      break;
    }
    // rollback-journal modes: in the middle of a transaction, the journal holds data
    // (DELETE: the journal exists; PERSIST: its header is not zeroed, size > 0 is enough to retry less)
    const f = await filesOf(h, c.files!.id);
    const j = f.find((x) => x.path === `${db}-journal`);
    if (j?.present && j.size > 0) cp = c;
  }
  assert.ok(cp, "a checkpoint taken inside a transaction (the journal present) within 10 attempts");
  if (files === "on") {
    assert.ok(cp.files && cp.files.files >= 2, `the database and its journal/WAL are in the checkpoint's files: ${JSON.stringify(cp.files)}`);
  }
  const n = lastNum(logLines(h, "sql"), /^commit (\d+) rows/);
  await waitLines(h, "sql", (ls) => lastNum(ls, /^commit (\d+) rows/) >= n + 8, "more commits after the checkpoint", WAIT);
  await killApp(h, "sql");
  const from = logSize(h, "sql");
  if (files === "none") {
    // without rollback the restore may fail outright (DELETE mode: the journal open at the checkpoint was deleted since)
    const rr = await h.cli(["restore", "sql", "--json", "--allow-file-changes"]);
    if (rr.code !== 0) return { verdict: `restore failed: ${rr.stderr.trim()}`, restored: { checkpoint: cp.id }, cp };
  }
  const restored: Restored = files === "none" ? { checkpoint: cp.id } : await restore(h, "sql");
  assert.equal(restored.checkpoint, cp.id);
  // the restored app commits on, then checks the database against its own view
  const ended = async (): Promise<boolean> => (await status(h, "sql")).state === "exited";
  await waitFor("the restored app commits or ends", async () => logLines(h, "sql", from).some((l) => /^commit \d+ rows/.test(l)) || (await ended()), WAIT);
  writeFileSync(`${db}.check`, "");
  let verdict = "";
  await waitFor("the app's verification (or its end)", async () => {
    verdict = logLines(h, "sql", from).find((l) => l.startsWith("verify ")) ?? "";
    if (verdict) return true;
    if (await ended()) {
      verdict = `app ended: ${logLines(h, "sql", from).slice(-2).join(" | ")}`;
      return true;
    }
    return false;
  }, WAIT);
  if (!(await ended())) {
    // it carries on after the check
    const m = lastNum(logLines(h, "sql", from), /^commit (\d+) rows/);
    await waitLines(h, "sql", (ls) => lastNum(ls, /^commit (\d+) rows/) >= m + 3, "the app carries on", WAIT, from);
  }
  return { verdict, restored, cp };
}

describe("files rolled back on restore (issue 14)", { timeout: TIMEOUT }, () => {
  for (const mode of ["delete", "persist", "wal"] as const) {
    test(`sqlite3 ${mode.toUpperCase()} mode, checkpointed inside a transaction, more commits, kill -9, restore: the database is what the app held`, async (t) => {
      const { verdict, restored } = await sqliteScenario(t, mode, "on");
      assert.match(verdict, /^verify ok \d+$/, verdict);
      assert.ok(restored.files, "the restore says what it did to the files");
      assert.ok(restored.files.rewritten.some((p) => p.endsWith("bank.db")), JSON.stringify(restored.files));
    });
  }

  test("sqlite3 WAL mode with --files none (no rollback, --allow-file-changes): the same scenario fails", async (t) => {
    const { verdict, restored } = await sqliteScenario(t, "wal", "none");
    assert.equal(restored.files, undefined);
    assert.doesNotMatch(verdict, /^verify ok/, `without rollback the database cannot match the app's memory: ${verdict}`);
  });

  test("sqlite3 DELETE mode with --files none: the same scenario fails", async (t) => {
    const { verdict } = await sqliteScenario(t, "delete", "none");
    assert.doesNotMatch(verdict, /^verify ok/, `without rollback the database cannot match the app's memory: ${verdict}`);
  });

  test("--files DIR snapshots a whole tree (changed by another program too), --files-exclude leaves files out; inspect lists the files", async (t) => {
    const { h, dir } = setup(t);
    const data = join(dir, "data");
    mkdirSync(join(data, "sub"), { recursive: true });
    writeFileSync(join(data, "a.txt"), "a at the checkpoint\n");
    writeFileSync(join(data, "sub", "b.bin"), Buffer.alloc(100_000, 7));
    writeFileSync(join(data, "scratch.tmp"), "tmp at the checkpoint\n");
    await run(h, "ctr", ["--files", data, "--files-exclude", "*.tmp"], [fixture("counter"), "1000000", "50"]);
    await waitLines(h, "ctr", (ls) => ls.length >= 3, "first counts", WAIT);
    const cp = await checkpoint(h, "ctr");
    assert.equal(cp.files?.files, 2, `a.txt and sub/b.bin, not scratch.tmp: ${JSON.stringify(cp.files)}`);
    const ins = await h.cli(["inspect", cp.id]);
    assert.equal(ins.code, 0, ins.stderr);
    assert.ok(ins.stdout.includes(join(data, "sub", "b.bin")) && !ins.stdout.includes("scratch.tmp"), ins.stdout);
    // another program changes the tree
    writeFileSync(join(data, "a.txt"), "changed by someone else\n");
    writeFileSync(join(data, "sub", "new.txt"), "new\n");
    writeFileSync(join(data, "scratch.tmp"), "tmp changed\n");
    await killApp(h, "ctr");
    const r = await restore(h, "ctr");
    assert.equal(readFileSync(join(data, "a.txt"), "utf8"), "a at the checkpoint\n");
    assert.deepEqual(readFileSync(join(data, "sub", "b.bin")), Buffer.alloc(100_000, 7));
    assert.ok(!existsSync(join(data, "sub", "new.txt")), `created after the checkpoint: removed (${JSON.stringify(r.files)})`);
    assert.equal(readFileSync(join(data, "scratch.tmp"), "utf8"), "tmp changed\n", "excluded: untouched");
    assert.equal(r.files?.unchanged, 1, JSON.stringify(r.files));
  });

  for (const files of ["on", "none"] as const) {
    test(`append-log, write-temp-then-rename, files created and deleted (${files === "on" ? "rolled back" : "--files none: the app sees the mismatch"}); another app's file in the same directory untouched`, async (t) => {
      const { h, dir } = setup(t);
      const other = join(dir, "other.txt");
      writeFileSync(other, "before\n");
      await run(h, "lr", files === "none" ? ["--files", "none"] : [], ["python3", fixtureScript("logrename.py"), dir, "0.1"]);
      await waitLines(h, "lr", (ls) => lastNum(ls, /^step (\d+)$/) >= 8, "first steps", WAIT);
      const cp = await checkpoint(h, "lr");
      if (files === "on") {
        const set = await filesOf(h, cp.files!.id);
        assert.ok(set.some((f) => f.path === join(dir, "app.log") && f.present), JSON.stringify(set));
        assert.ok(set.some((f) => f.path === join(dir, "result.json") && f.present), JSON.stringify(set));
        assert.ok(!set.some((f) => f.path === other), "another app's file is not in the set");
      }
      const n = lastNum(logLines(h, "lr"), /^step (\d+)$/);
      await waitLines(h, "lr", (ls) => lastNum(ls, /^step (\d+)$/) >= n + 6, "more steps", WAIT);
      // another program changes its own file in the same directory, and makes a new one
      writeFileSync(other, "after\n");
      writeFileSync(join(dir, "other-new.txt"), "new\n");
      await killApp(h, "lr");
      const from = logSize(h, "lr");
      if (files === "none") {
        // without rollback: the restore fails (a file the app had open was replaced since), or the app finds its files changed
        const rr = await h.cli(["restore", "lr", "--json", "--allow-file-changes"]);
        if (rr.code !== 0) {
          assert.match(rr.stderr, /is not the file the application had open|cannot restore/, rr.stderr);
          return;
        }
      }
      if (files === "none") {
        // the app finds its files changed (MISMATCH), or dies on them (a part file it deletes is gone)
        let seen = "";
        await waitFor("the app sees its files changed, or ends", async () => {
          const ls = logLines(h, "lr", from);
          seen = ls.find((l) => l.startsWith("MISMATCH")) ?? ((await status(h, "lr")).state === "exited" ? `ended: ${ls.slice(-1).join("")}` : "");
          return seen !== "";
        }, WAIT);
        assert.equal(readFileSync(other, "utf8"), "after\n");
        return;
      }
      const r = await restore(h, "lr");
      await waitLines(h, "lr", (ls) => ls.filter((l) => /^step \d+$/.test(l)).length >= 4, "steps after the restore", WAIT, from).catch((e: unknown) => {
        throw new Error(`${String(e)}\n${h.log("lr").slice(-1500)}`);
      });
      const after = logLines(h, "lr", from);
      const mismatches = after.filter((l) => l.startsWith("MISMATCH"));
      assert.equal(readFileSync(other, "utf8"), "after\n", "another app's file is untouched");
      assert.ok(existsSync(join(dir, "other-new.txt")), "another app's new file is untouched");
      const lines = readFileSync(join(dir, "app.log"), "utf8").split("\n").filter(Boolean);
      const dups = lines.length - new Set(lines).size;
      {
        assert.deepEqual(mismatches, [], `the files are the checkpoint's: ${mismatches.join("; ")}`);
        assert.equal(dups, 0, "no duplicated lines in the log");
        lines.forEach((l, i) => assert.equal(l, `line ${i + 1}`));
        assert.ok(r.files && r.files.removed.some((p) => /part-\d+\.dat$/.test(p)), `files created after the checkpoint removed: ${JSON.stringify(r.files)}`);
        assert.ok(r.files.recreated.some((p) => /part-\d+\.dat$/.test(p)), `files deleted after the checkpoint recreated: ${JSON.stringify(r.files)}`);
        assert.ok(isAlive(h.pids("lr")!.app));
      }
    });
  }
});
