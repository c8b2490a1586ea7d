// `restore` of the Node API (re-exported by index.ts), in a module of its own: the CLI's restore
// path (src/cli/restore-run.ts) loads only this and the daemon client (issue 15: a restore is
// timed from the CLI's start).
import type { RestoreResult } from "./daemon/apps.js";
import { DaemonClient } from "./daemon/client.js";
import type { CommonOptions, ProgressOptions } from "./index.js";
import { tardigradeHome } from "./store/home.js";

export interface RestoreOptions extends CommonOptions, ProgressOptions {
  /** Checkpoint id (APP@SEQ); default: the app's latest. */
  checkpoint?: string;
  /** Kill the running app first. */
  replace?: boolean;
  /** Restore even if files the app holds for writing changed since the checkpoint (they are not rolled back). */
  allowFileChanges?: boolean;
  /** A TCP connection with both ends in the app that cannot be restored whole (no TCP_REPAIR state) comes back closed by its peer instead of refusing the restore. */
  allowClosedTcp?: boolean;
  /** Absolute paths (files, or directories: everything under them) of the app's set that keep their current state instead of the checkpoint's. */
  keepFileChanges?: string[];
  /** Fetch the checkpoint (default: the newest) from this mirror destination first. */
  from?: { url: string; token: string; ca?: string; /** a standby's takeover under the lease epoch it was granted (src/ha/standby.ts) */ takeover?: { epoch: number; ttlMs: number; everyMs?: number; ack?: "received" | "durable"; address?: { cidr: string; dev: string } } };
  /** Lazy restore: the app runs before its memory is all in (docs/engine.md, "Lazy restore"). */
  lazy?: boolean;
}

export function restore(name: string, o: RestoreOptions = {}): Promise<RestoreResult> {
  return new DaemonClient(o.home ?? tardigradeHome()).request("POST", `/v1/apps/${encodeURIComponent(name)}/restore`, { checkpoint: o.checkpoint, replace: o.replace === true, allowFileChanges: o.allowFileChanges === true, ...(o.allowClosedTcp ? { allowClosedTcp: true } : {}), ...(o.keepFileChanges?.length ? { keepFileChanges: o.keepFileChanges } : {}), from: o.from, lazy: o.lazy === true }, o.onProgress);
}
