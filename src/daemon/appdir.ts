// On-disk state of one app: $TARDIGRADE_HOME/apps/<name>/. Everything the daemon
// knows about an app is here, so a daemon killed with -9 loses nothing.
//   app.json   what was started (argv, cwd, launcher pid, from which checkpoint)
//   pidfile    "<init host pid> <app host pid>" (written by tardigrade-init/-restore)
//   status     exit status JSON (written by tardigrade-init/-restore when the app ends)
//   log        the app's stdout and stderr
//   agent.sock the agent's control socket
import { readFenced, type FencedRecord } from "../ha/app-lease.js";
import type { FilesConfig } from "./files-set.js";
import { existsSync, readFileSync, readdirSync } from "node:fs";
import { constants } from "node:os";
import { join } from "node:path";
import { writeFileAtomic } from "../store/fsutil.js";
import type { ExternalUnixPolicy, TrackingMode } from "./agent.js";
import { isAlive } from "./procs.js";
import { lazyProgress, type LazyProgress } from "./lazy-restore.js";

export interface AppRecord {
  name: string;
  argv: string[];
  cwd: string;
  createdAt: string;
  startedAt: string;
  /** "run": started from argv; "restore": rebuilt from `checkpoint`. */
  mode: "run" | "restore";
  checkpoint: string | null;
  launcherPid: number;
  launcherStart: string | null;
  initStart?: string | null;
  /** Periodic checkpoints (run --every), kept across restores. */
  everyMs?: number;
  /** Restores: spawn of tardigrade-restore to the agent answering PING. */
  restoreNs?: number;
  /** Dirty-page tracking asked for at run (default uffd, with hash as the kernel fallback). */
  tracking?: TrackingMode;
  /** run --external-unix: "closed" records Unix stream sockets connected outside the app to come back closed (absent: refuse them). */
  externalUnix?: ExternalUnixPolicy;
  /** Retention: keep this many newest checkpoints of the app (gc after each commit). */
  keep?: number;
  /** Mirror destination (tg://HOST:PORT) every committed checkpoint is streamed to; token in mirror-token. */
  mirrorUrl?: string;
  /** Wait for this acknowledgement of the mirror before a checkpoint returns. */
  mirrorAck?: "received" | "durable";
  /** The running process's last committed image: agent seq and store id (incrementals build on it). */
  lastAgentSeq?: number;
  /** A process tree: every other process's agent seq and checkpoint of its last committed image (its next incremental's base), by pid. */
  treeLineage?: Record<string, { agentSeq: number; id: string }>;
  lastId?: string;
  /** The app's data files (issue 14): on by default; `run --files none|DIR`, `--files-exclude GLOB`. */
  files?: FilesConfig;
  /** The last committed files image (`<app>~files@SEQ`): the next one is incremental on it. */
  lastFilesId?: string;
}

export interface ExitStatus {
  exit_code?: number;
  signal?: number;
  exec_error?: string;
  restore_error?: string;
  /** Processes still running in the app's namespace when it ended (a daemonizing app): how many, and "pid N (command), ...". */
  left?: number;
  left_desc?: string;
}

export interface AppState {
  name: string;
  state: "starting" | "running" | "exited";
  argv: string[];
  mode: "run" | "restore";
  checkpoint: string | null;
  startedAt: string;
  initHostPid: number | null;
  appHostPid: number | null;
  launcherPid: number;
  exit: ExitStatus | null;
  log: string;
  /** A lazy restore's page loading (restore --lazy). */
  lazy?: LazyProgress;
  /** The app was stopped because this host lost its lease on the mirror (docs/ha.md): it stays stopped. */
  fenced?: FencedRecord;
}

export class AppDir {
  readonly dir: string;
  constructor(
    home: string,
    readonly name: string,
  ) {
    this.dir = join(home, "apps", name);
  }
  get recordFile(): string {
    return join(this.dir, "app.json");
  }
  get pidfile(): string {
    return join(this.dir, "pidfile");
  }
  get statusFile(): string {
    return join(this.dir, "status");
  }
  get logFile(): string {
    return join(this.dir, "log");
  }
  get sock(): string {
    return join(this.dir, "agent.sock");
  }

  exists(): boolean {
    return existsSync(this.recordFile);
  }

  record(): AppRecord | null {
    try {
      return JSON.parse(readFileSync(this.recordFile, "utf8")) as AppRecord;
    } catch {
      return null;
    }
  }

  async writeRecord(r: AppRecord): Promise<void> {
    await writeFileAtomic(this.recordFile, JSON.stringify(r, null, 2) + "\n");
  }

  pids(): { init: number; app: number } | null {
    try {
      const [a, b] = readFileSync(this.pidfile, "utf8").trim().split(/\s+/).map(Number);
      if (!a || !b) return null;
      return { init: a, app: b };
    } catch {
      return null;
    }
  }

  exitStatus(): ExitStatus | null {
    try {
      return JSON.parse(readFileSync(this.statusFile, "utf8")) as ExitStatus;
    } catch {
      return null;
    }
  }

  state(): AppState | null {
    const r = this.record();
    if (!r) return null;
    const pids = this.pids();
    const exit = this.exitStatus();
    let state: AppState["state"];
    if (exit) state = "exited";
    // (the init ends with the app; its main process may be changing: a daemonizing app, init.c)
    else if (pids) state = isAlive(pids.init, r.initStart) ? "running" : "exited";
    else state = isAlive(r.launcherPid, r.launcherStart) ? "starting" : "exited";
    return {
      name: r.name,
      state,
      argv: r.argv,
      mode: r.mode,
      checkpoint: r.checkpoint,
      startedAt: r.startedAt,
      initHostPid: pids?.init ?? null,
      appHostPid: pids?.app ?? null,
      launcherPid: r.launcherPid,
      exit: state === "exited" ? (exit ?? {}) : null,
      log: this.logFile,
      ...lazyOf(this.dir, r.mode, state === "exited" && !isAlive(r.launcherPid, r.launcherStart)),
      ...fencedField(this.dir),
    };
  }
}

/** ended: the app and its restorer (whose thread is the page server) are gone. */
function lazyOf(dir: string, mode: AppState["mode"], ended: boolean): { lazy?: LazyProgress } {
  const p = mode === "restore" ? lazyProgress(dir) : null;
  // the page server ended with the app's memory half in, without a word (killed): the app went with it
  if (p && ended && p.state === "loading")
    return { lazy: { ...p, state: "failed", error: "the page server (tardigrade-restore) ended before the memory was all in; the app was killed with it rather than left to read zeros" } };
  return p ? { lazy: p } : {};
}

function fencedField(dir: string): { fenced?: FencedRecord } {
  const f = readFenced(dir);
  return f ? { fenced: f } : {};
}

export function listAppNames(home: string): string[] {
  try {
    return readdirSync(join(home, "apps")).filter((n) => existsSync(join(home, "apps", n, "app.json"))).sort();
  } catch {
    return [];
  }
}

/** "exit status 3", "killed by signal 9 (SIGKILL)", "could not execute: ...", and what a daemonizing app left. */
export function describeExit(e: ExitStatus | null): string {
  const how = describeEnd(e);
  if (!e?.left) return how;
  const n = e.left;
  return `${how}, leaving ${n} process${n === 1 ? "" : "es"} in the background, stopped with it: ${e.left_desc ?? "?"} (tardigrade goes on with the processes an app leaves only when the process it follows exits with status 0, as a daemonizing app's does)`;
}

function describeEnd(e: ExitStatus | null): string {
  if (!e) return "unknown exit status";
  if (e.exec_error) return `could not execute the command (${e.exec_error})`;
  if (e.restore_error) return `restore failed at step ${e.restore_error} (exit code ${e.exit_code ?? "?"})`;
  if (e.signal !== undefined) {
    const name = Object.entries(constants.signals).find(([, n]) => n === e.signal)?.[0];
    return `killed by signal ${e.signal}${name ? ` (${name})` : ""}`;
  }
  if (e.exit_code !== undefined) return `exit status ${e.exit_code}`;
  return "exit status unknown (the launcher ended without writing one)";
}
