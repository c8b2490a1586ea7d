// restore --lazy (issue 16, docs/engine.md "Lazy restore"): the app resumes before its memory is all
// in; tardigrade-restore's page server (native/restore/lazy.c) loads the rest on first touch and in
// the background, and reports in the app's lazy.json, which `status` shows.
import { readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { TgError } from "../errors.js";

export interface LazyProgress {
  /** stopped: the app ended (stopped, or exited on its own) before its memory was all in. */
  state: "loading" | "done" | "failed" | "stopped";
  /** Pages of the restore plan in place, of all. */
  loaded: number;
  total: number;
  /** Page faults the server answered. */
  faults: number;
  /** Since the server got the memory. */
  ms: number;
  /** Why the app was ended (state "failed"). */
  error?: string;
}

const FILE = "lazy.json";

/** tardigrade-restore's arguments for a restore of checkpoint `id`, lazy or not (the last one's progress file goes). */
export function lazyRestoreArgs(appDir: string, app: string, id: string, tree: boolean, lazy: boolean): string[] {
  if (!lazy) {
    rmSync(join(appDir, FILE), { force: true });
    return [];
  }
  if (tree)
    throw new TgError(`cannot restore ${app} lazily from ${id}`, "it is a process tree; restore --lazy restores one process for now", "Restore it without --lazy", "bad-request");
  const file = join(appDir, FILE);
  rmSync(file, { force: true });
  return ["--lazy", file];
}

/** The last lazy restore's progress, if the app was restored lazily. */
export function lazyProgress(appDir: string): LazyProgress | null {
  try {
    const o = JSON.parse(readFileSync(join(appDir, FILE), "utf8")) as LazyProgress;
    return typeof o.state === "string" && typeof o.loaded === "number" ? o : null;
  } catch {
    return null;
  }
}

/**
 * A checkpoint while a lazy restore still loads would miss the pages not loaded yet (the agent
 * takes the pages present in memory): refused until the loading is done.
 */
export function refuseCheckpointWhileLoading(appDir: string, app: string): void {
  const p = lazyProgress(appDir);
  if (p?.state === "loading")
    throw new TgError(`cannot checkpoint ${app}`, `its memory is still being loaded by a lazy restore (${p.loaded} of ${p.total} pages in)`, `Try again once \`tardigrade status ${app}\` says the memory is loaded`, "conflict");
}

/** "loading 40% (1234 faults served)", "loaded", "failed: why". */
export function describeLazy(p: LazyProgress): string {
  if (p.state === "failed") return `lazy restore failed, the app was ended: ${p.error ?? "?"}`;
  if (p.state === "stopped") return `the app ended before its memory was all loaded (${p.loaded} of ${p.total} pages)`;
  if (p.state === "done") return `memory loaded lazily in ${(p.ms / 1000).toFixed(2)} s (${p.faults} faults served first)`;
  return `loading memory lazily: ${p.total ? Math.floor((100 * p.loaded) / p.total) : 100}% of ${p.total} pages (${p.faults} faults served)`;
}
