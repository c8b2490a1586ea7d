// Node API: `import { run, checkpoint, restore, ls } from "tardigrade"`.
// Every call talks to the per-host daemon (started on first use).
import type { TrackingMode } from "./daemon/agent.js";
import type { AppState } from "./daemon/appdir.js";
import type { CheckpointResult, ProgressEvent, RestoreResult, RunResult } from "./daemon/apps.js";
import { DaemonClient } from "./daemon/client.js";
import type { ImageSummary } from "./image/summary.js";
import { tardigradeHome } from "./store/home.js";
import type { Manifest } from "./store/types.js";
import type { GcReport } from "./store/cas/types.js";
import { currentUmask } from "./daemon/private-fs.js";
import type { VerifyReport } from "./store/cas/verify.js";
import type { DamageSummary } from "./daemon/integrity.js";

export { TgError } from "./errors.js";
export { ImageError, parseImage } from "./image/parser.js";
export type { AppState, CheckpointResult, DamageSummary, GcReport, VerifyReport, ImageSummary, Manifest, ProgressEvent, RestoreResult, RunResult };

export interface CommonOptions {
  /** State directory (default: $TARDIGRADE_HOME, /var/lib/tardigrade as root, ~/.local/state/tardigrade). */
  home?: string;
}

export interface ProgressOptions {
  /** Called while the daemon works (capture, write, verify, commit; verify, kill, start). */
  onProgress?: (e: ProgressEvent) => void;
}

function client(o: CommonOptions = {}): DaemonClient {
  return new DaemonClient(o.home ?? tardigradeHome());
}

const enc = encodeURIComponent;

export interface RunOptions extends CommonOptions {
  name?: string;
  cwd?: string;
  env?: Record<string, string>;
  /** Checkpoint every this many milliseconds. */
  everyMs?: number;
  /** Dirty-page tracking for incremental checkpoints: "uffd" (default) or "hash". */
  tracking?: TrackingMode;
  /** Keep only this many newest checkpoints of the app (older ones are reclaimed). */
  keep?: number;
  /** Stream every committed checkpoint to a mirror destination (tg://HOST:PORT). */
  mirror?: { url: string; token: string; ack?: "received" | "durable"; ca?: string; /** lease length on the mirror (ms, default 3000: docs/ha.md) */ leaseMs?: number; /** HOST:PORT of each standby to send heartbeats to directly (one or more) */ standby?: string | string[]; /** service address held with the lease (docs/ha.md) */ address?: { cidr: string; dev: string } };
  /** The app's data files (issue 14, on by default): `enabled: false` keeps them out; `dirs` trees snapshotted whole; `exclude` globs left out. */
  files?: { enabled?: boolean; dirs?: string[]; exclude?: string[] };
  /** Unix stream sockets connected to a process outside the app: "refuse" the checkpoint (default) or record them to be restored "closed". */
  externalUnix?: "refuse" | "closed";
}

/** Starts `argv` under tardigrade; resolves once its agent answers. */
export function run(argv: string[], o: RunOptions = {}): Promise<RunResult> {
  const env = o.env ?? (Object.fromEntries(Object.entries(process.env).filter(([, v]) => v !== undefined)) as Record<string, string>);
  return client(o).request("POST", "/v1/apps", { name: o.name, argv, cwd: o.cwd ?? process.cwd(), env, everyMs: o.everyMs, tracking: o.tracking, keep: o.keep, mirror: o.mirror, files: o.files, externalUnix: o.externalUnix, umask: currentUmask() });
}

export interface CheckpointOptions extends CommonOptions, ProgressOptions {
  /** A full checkpoint even when an incremental one is possible. */
  full?: boolean;
}

/** Checkpoints the app: incremental on its last checkpoint when possible, else full. */
export function checkpoint(name: string, o: CheckpointOptions = {}): Promise<CheckpointResult> {
  return client(o).request("POST", `/v1/apps/${enc(name)}/checkpoint`, { full: o.full === true }, o.onProgress);
}

/** Adds a raw image file to the store as the app's next checkpoint (checked record by record). */
export function importImage(name: string, path: string, o: CommonOptions = {}): Promise<Manifest> {
  return client(o).request("POST", `/v1/apps/${enc(name)}/import`, { path });
}

/** Reclaims space: keeps the newest `keep` checkpoints per app (and what they need). */
export function gc(o: CommonOptions & { keep?: number } = {}): Promise<GcReport> {
  return client(o).request("POST", "/v1/gc", { keep: o.keep });
}

/**
 * Full scrub: reads and checks every block the chosen checkpoints need (`target`: a
 * checkpoint id APP@SEQ, an app name, or all), sets aside damaged blocks and reports the
 * checkpoints that depend on damaged data (`ok` false).
 */
export function verify(target?: string, o: CommonOptions = {}): Promise<VerifyReport> {
  return client(o).request("POST", "/v1/verify", { target });
}

/** `ls` and `storeDamage` in one request (what the CLI's `ls` uses). */
export function lsWithDamage(app?: string, o: CommonOptions = {}): Promise<{ checkpoints: Manifest[]; damage: DamageSummary }> {
  return client(o).request("GET", `/v1/checkpoints?damage=1${app ? `&app=${enc(app)}` : ""}`);
}

/** Damaged data the store knows of (blocks set aside, packs found short): cheap, no scrub. */
export function storeDamage(o: CommonOptions = {}): Promise<DamageSummary> {
  return client(o).request("GET", "/v1/store/damage");
}

export { restore, type RestoreOptions } from "./restore-api.js";

export interface PrefetchResult {
  /** The checkpoint now in the local store. */
  id: string;
  /** Checkpoints imported (0: it was here already). */
  imported: number;
  alreadyPresent: boolean;
  blocksFetched: number;
  bytesFetched: number;
  ms: number;
}

/** A standby's warm copy: pulls a checkpoint (default: the newest) of an app running elsewhere from its mirror into this host's store. */
export function prefetch(name: string, from: { url: string; token: string; ca?: string }, o: CommonOptions & { checkpoint?: string; /** warm copies kept (default 2); older ones are dropped in the background */ keep?: number } = {}): Promise<PrefetchResult> {
  return client(o).request("POST", `/v1/apps/${enc(name)}/prefetch`, { from, ...(o.checkpoint !== undefined ? { checkpoint: o.checkpoint } : {}), ...(o.keep !== undefined ? { keep: o.keep } : {}) });
}

/** Committed checkpoints, oldest first; all apps unless `app` is given. */
export function ls(app?: string, o: CommonOptions = {}): Promise<Manifest[]> {
  return client(o).request("GET", `/v1/checkpoints${app ? `?app=${enc(app)}` : ""}`);
}

export function inspect(id: string, o: CommonOptions = {}): Promise<{ manifest: Manifest; image: ImageSummary }> {
  return client(o).request("GET", `/v1/checkpoints/${enc(id)}?image=1`);
}

export function status(name: string, o: CommonOptions = {}): Promise<AppState> {
  return client(o).request("GET", `/v1/apps/${enc(name)}`);
}

export function apps(o: CommonOptions = {}): Promise<AppState[]> {
  return client(o).request("GET", "/v1/apps");
}

export function stop(name: string, o: CommonOptions & { timeoutMs?: number } = {}): Promise<AppState> {
  return client(o).request("POST", `/v1/apps/${enc(name)}/stop`, { timeoutMs: o.timeoutMs });
}
