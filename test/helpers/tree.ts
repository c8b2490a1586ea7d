// Helpers of the process-tree tests: a home and a scratch directory per test, the checkpoints of
// an app, a checkpoint that must succeed, the app's other processes, and a crash and restore.
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { TestContext } from "node:test";
import { otherProcesses } from "../../src/daemon/tree.js";
import { isAlive, makeHome, waitFor, type TestHome } from "./home.js";
import { requireNative } from "./native.js";

export interface Setup {
  h: TestHome;
  /** A scratch directory for the fixtures' FIFO and release file. */
  dir: string;
  release(): void;
}

export function setup(t: TestContext, env: Record<string, string> = {}): Setup {
  requireNative();
  const h = makeHome("tg-", env);
  const dir = mkdtempSync(join(tmpdir(), "tg-tree-"));
  t.after(async () => {
    // the fixtures' helpers end once the release file exists, whatever happened
    writeFileSync(join(dir, "release"), "");
    await h.cleanup();
    rmSync(dir, { recursive: true, force: true });
  });
  return { h, dir, release: () => writeFileSync(join(dir, "release"), "") };
}

export async function ids(h: TestHome, app: string): Promise<string[]> {
  const r = await h.cli(["ls", app, "--json"]);
  assert.equal(r.code, 0, r.stderr);
  return (JSON.parse(r.stdout) as { id: string }[]).map((m) => m.id);
}

export async function checkpointOk(h: TestHome, app: string): Promise<string> {
  const r = await h.cli(["checkpoint", app, "--json"]);
  assert.equal(r.code, 0, `checkpoint of the tree: ${r.stderr}`);
  const id = (JSON.parse(r.stdout) as { id: string }).id;
  assert.match(id, new RegExp(`^${app}@\\d+$`));
  return id;
}

/** The app's other processes, from its init's host pid (what the daemon walks). */
export function others(h: TestHome, app: string): ReturnType<typeof otherProcesses> {
  const p = h.pids(app);
  assert.ok(p, `${app} has a pidfile`);
  return otherProcesses(p.init, p.app);
}

/** kill -9 of the whole tree (its namespace's init), then a restore of the last checkpoint. */
export async function crashAndRestore(h: TestHome, app: string, more: string[] = []): Promise<void> {
  const p = h.pids(app)!;
  process.kill(p.init, "SIGKILL");
  await waitFor("the tree gone", () => !isAlive(p.init) && !isAlive(p.app));
  const r = await h.cli(["restore", app, ...more]);
  assert.equal(r.code, 0, `restore: ${r.stderr}`);
}
