// The daemon's app manager: run, checkpoint, restore, stop and status of apps.
// All state is read from and written to disk (AppDir), never only kept in memory.
import type { CasStore } from "../store/cas/store.js";
import { holdConnections, type HeldConnections } from "./hold-connections.js";
import { treeRestoreNotes, unreadableConnectionNotes } from "../image/inet.js";
import { mkdir, rm, writeFile } from "node:fs/promises";
import { basename, join } from "node:path";
import type { Logger } from "pino";
import { TgError, errMessage } from "../errors.js";
import { parseImage } from "../image/parser.js";
import { stableAgent } from "../native/agent-copy.js";
import { nativeBinary } from "../native/paths.js";
import { CasStoreAdapter, toManifest } from "../store/cas/adapter.js";
import { DEFAULT_MERGE_POLICY } from "../store/cas/merge.js";
import type { CheckpointStats, GcReport, MergePolicy } from "../store/cas/types.js";
import type { Manifest, Store } from "../store/types.js";
import { parseCheckpointId, unknownCheckpoint, validAppName } from "../store/types.js";
import { EXTERNAL_UNIX_POLICIES, TRACKING_MODES, checkpoint as agentCheckpoint, ping, type CheckpointEvent, type ExternalUnixPolicy, type TrackingMode } from "./agent.js";
import { externalUnixNotes } from "./unix-notes.js";
import { ptyNotes } from "./pty-notes.js";
import { captureIntoCas, metaForFileCheck, restoreInput, type RestoreInput } from "./cas-flow.js";
import { checkWhilePlanning } from "./restore-overlap.js";
import { noSpaceError } from "./disk-full.js";
import { checkImportFile } from "./import-source.js";
import { testDelay } from "./test-hooks.js";
import { daemonStartUmask, validUmask } from "./private-fs.js";
import { checkFiles, writeRestoreFailed, writeRestoreMarker } from "./file-check.js";
import { MirrorShipper, pullFromMirror, readShipperState, type PullFromMirrorResult, type ShipRecord } from "../mirror/bridge.js";
import type { FencedInfo } from "../mirror/client.js";
import { parseMirrorUrl } from "../mirror/address.js";
import { appDialOptions, checkCaPem, saveAppCa } from "../mirror/tls-ca.js";
import { DEFAULT_LEASE_MS, clearFenced, describeFenced, readAppLease, readFenced, standbysOf, writeAppLease } from "../ha/app-lease.js";
import { fenceApp, type Takeover } from "../ha/fence.js";
import { hostId } from "../ha/host.js";
import { BeatSender, parseHostPort } from "../ha/heartbeat.js";
import { addServiceAddress, parseServiceAddress, removeServiceAddress, type ServiceAddress } from "../ha/address.js";
import { constants as fsc, existsSync, openSync, readFileSync } from "node:fs";
import { AppDir, describeExit, listAppNames, type AppRecord, type AppState } from "./appdir.js";
import { LaunchFailure, launch, type Launched } from "./launch.js";
import { isAlive, trySignal, waitGone } from "./procs.js";
import { checkpointFailure } from "./checkpoint-failure.js";
import { saveFacts } from "./restore-undo.js";
import { restoredBases } from "./restored-base.js";
import { lazyProgress, lazyRestoreArgs, refuseCheckpointWhileLoading, type LazyProgress } from "./lazy-restore.js";
import { appProcesses, describeProcesses, isAgentTreeRefusal, treeRefusal } from "./tree.js";
import { checkpointTree } from "./tree-checkpoint.js";
import { sweepLeftovers } from "./leftovers-sweep.js";
import { treeOf, zombieArg } from "./tree-info.js";
import { FileIdentityCache } from "./mapped-files.js";
import { clearRanges } from "./files-ranges.js";
import { removeStagingLeft } from "./files-deleted.js";
import { FilesCapture, filesApp, filesRefOf, nextSeq, restoreFiles, type FilesRef } from "./files-flow.js";
import type { FilesRollback } from "./files-restore.js";
import { DEFAULT_FILES, journalPath, type FilesConfig } from "./files-set.js";
import { runFilesConfig } from "./files-config.js";

export interface RunRequest {
  name?: string;
  argv: string[];
  cwd: string;
  env: Record<string, string>;
  /** Checkpoint every this many ms (0 or absent: only on demand). */
  everyMs?: number;
  /** Dirty-page tracking: "uffd" (default; hash where the kernel lacks it), "hash", or "none" (every checkpoint full). */
  tracking?: TrackingMode;
  /** Keep this many newest checkpoints (older ones are reclaimed after each commit). */
  keep?: number;
  /** Stream every committed checkpoint to this mirror destination. */
  mirror?: { url: string; token: string; ack?: "received" | "durable"; ca?: string; /** lease length on the mirror (docs/ha.md; default 3 s) */ leaseMs?: number; /** HOST:PORT of each standby: heartbeats go there directly too */ standby?: string | string[]; /** service address held with the lease */ address?: ServiceAddress };
  /** The app's umask (the client's); default: the one the daemon was started with. */
  umask?: number;
  /** Data files (issue 14): `enabled: false` is `--files none`; `dirs` (`--files DIR`), `exclude` (`--files-exclude GLOB`). */
  files?: { enabled?: boolean; dirs?: string[]; exclude?: string[] };
  /** Unix stream sockets connected outside the app: "refuse" (default) or "closed" (restored as closed connections). */
  externalUnix?: ExternalUnixPolicy;
}

export interface RunResult {
  name: string;
  pid: number;
  initHostPid: number;
  appHostPid: number;
  threads: number;
  startNs: number;
}

/** A checkpoint's state on the app's mirror destination, for `ls`. */
export type MirrorView = Pick<ShipRecord, "state" | "updatedAt" | "error"> & { url: string };

export interface CheckpointResult extends Manifest {
  /** Where the mirror is with this checkpoint when the call returns (if the app has a mirror). */
  mirror?: MirrorView;
  /** Daemon-side wall time from request to commit (capture + write + verify + commit). */
  commitNs: number;
  /** Why a checkpoint that could have been incremental is full (from the agent). */
  fullReason?: string;
  /** The app's files at this checkpoint (issue 14). */
  files?: FilesRef;
  /** What a restore of it will not do by itself (a process tree's connections without TCP_REPAIR state). */
  notes?: string[];
}

export interface RestoreResult {
  name: string;
  checkpoint: string;
  pid: number;
  initHostPid: number;
  appHostPid: number;
  threads: number;
  /** Spawn of tardigrade-restore to the restored agent answering PING. */
  restoreNs: number;
  /** Image verification (parse + CRC). */
  verifyNs: number;
  /** True when verification ran while tardigrade-restore read the image (no app was running). */
  verifyOverlapped: boolean;
  /** Request to running: everything the caller waited for (lookup, verify, kill, restore). */
  wallNs: number;
  /** What the restore did that the app may notice (TCP connections restored closed). */
  notes?: string[];
  /** restore --lazy: the page loading when the app answered (the rest goes on in the background; `status` shows it). */
  lazy?: LazyProgress;
  /** The app's files rolled back to the checkpoint before its processes were restored (issue 14). */
  files?: FilesRollback & { id: string };
  /** Why the checkpoint's files were not rolled back (its files image is not in this store: a standby). */
  filesSkipped?: string;
  /** Where the wall time went (ns from the request): checks and plans done, files rolled back, restorer started, app answering, members' bases known, notes made (the reply). */
  phases?: { checkedNs: number; filesNs: number; spawnNs: number; launchedNs: number; basesNs: number; notesNs: number };
}

const SOCK_MAX = 107;
/** How long a checkpoint waits for the mirror's acknowledgement before returning with the state it has. */
/** Warm copies a standby keeps of an app (`standby --keep`). */
export const DEFAULT_WARM_KEEP = 2;
const MIRROR_WAIT_MS = Number(process.env.TARDIGRADE_MIRROR_WAIT_MS ?? 10_000);

/** What a long operation is doing, for progress displays. */
export interface ProgressEvent {
  phase: "capture" | "write" | "verify" | "kill" | "start";
  /** Bytes done / total, when the phase has a size. */
  done?: number;
  total?: number;
  downtimeNs?: number;
}

export type Progress = (e: ProgressEvent) => void;

const noProgress: Progress = () => {};

/** Per-key promise chain: one operation at a time per app. */
class KeyedLock {
  private tails = new Map<string, Promise<void>>();
  async run<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.tails.get(key) ?? Promise.resolve();
    let release!: () => void;
    const mine = new Promise<void>((r) => (release = r));
    const tail = prev.then(() => mine);
    this.tails.set(key, tail);
    await prev;
    try {
      return await fn();
    } finally {
      release();
      if (this.tails.get(key) === tail) this.tails.delete(key);
    }
  }
}

/** The app record of a restore: the app's settings carry over; the process facts start anew. */
function restoreRecord(name: string, prev: AppRecord | null, checkpoint: string, filesId?: string): AppRecord {
  const now = new Date().toISOString();
  return {
    everyMs: prev?.everyMs,
    tracking: prev?.tracking,
    ...(prev?.externalUnix ? { externalUnix: prev.externalUnix } : {}),
    keep: prev?.keep,
    mirrorUrl: prev?.mirrorUrl,
    mirrorAck: prev?.mirrorAck,
    ...(prev?.files ? { files: prev.files } : {}),
    ...(filesId ? { lastFilesId: filesId } : {}),
    name,
    argv: prev?.argv ?? [],
    cwd: prev?.cwd ?? "/",
    createdAt: prev?.createdAt ?? now,
    startedAt: now,
    mode: "restore",
    checkpoint,
    launcherPid: 0,
    launcherStart: null,
  };
}

export class AppManager {
  private readonly lock = new KeyedLock();
  private readonly timers = new Map<string, NodeJS.Timeout>();
  private readonly periodicInFlight = new Set<string>();
  private readonly fileIds = new FileIdentityCache();

  constructor(
    readonly home: string,
    readonly store: Store,
    private readonly log: Logger,
  ) {}

  private dir(name: string): AppDir {
    if (!validAppName(name)) throw new TgError(`invalid app name ${JSON.stringify(name)}`, "names are 1-64 characters of letters, digits, '.', '_' and '-', starting with a letter or digit", "Pick another --name", "bad-request");
    return new AppDir(this.home, name);
  }

  private known(name: string): { dir: AppDir; state: AppState } {
    const dir = this.dir(name);
    const state = dir.state();
    if (!state) throw new TgError(`no app named ${name}`, `nothing was started under that name in ${this.home}`, "See the apps with `tardigrade status`, or start one with `tardigrade run --name NAME -- CMD`", "unknown-app");
    return { dir, state };
  }

  status(name: string): AppState {
    return this.known(name).state;
  }

  list(): AppState[] {
    return listAppNames(this.home)
      .map((n) => new AppDir(this.home, n).state())
      .filter((s): s is AppState => s !== null);
  }

  /** Re-arms periodic checkpoints of running apps after a daemon restart. */
  resumeSchedules(): void {
    for (const n of listAppNames(this.home)) {
      const dir = new AppDir(this.home, n);
      const r = dir.record() as AppRecord | null;
      if (r?.everyMs && dir.state()?.state === "running") this.schedule(n, r.everyMs);
      // a mirror shipper goes on where it stopped (checkpoints committed meanwhile are backfilled)
      if (r?.mirrorUrl && this.store instanceof CasStoreAdapter && !readFenced(dir.dir))
        this.shipper(this.store, n, r).catch((e) => this.log.warn({ app: n, err: errMessage(e) }, "mirror shipper not started"));
    }
  }

  /** The leftovers of the running apps' ended processes (leftovers-sweep.ts): run every few seconds. */
  sweepEnded(): void {
    for (const n of listAppNames(this.home)) {
      const dir = new AppDir(this.home, n);
      const st = dir.state();
      if (st?.state !== "running" || !st.initHostPid) continue;
      try {
        sweepLeftovers(dir.sock, appProcesses(st.initHostPid));
      } catch (e) {
        this.log.warn({ app: n, err: errMessage(e) }, "cannot sweep the leftovers of ended processes");
      }
    }
  }

  private schedule(name: string, everyMs: number | undefined): void {
    clearInterval(this.timers.get(name));
    this.timers.delete(name);
    if (!everyMs) return;
    const t = setInterval(() => {
      // A tick is skipped while the previous periodic checkpoint still runs (no pile-up).
      if (this.periodicInFlight.has(name)) return;
      const st = new AppDir(this.home, name).state();
      if (st?.state !== "running") return;
      this.periodicInFlight.add(name);
      this.checkpoint(name)
        .then(
          (m) => this.log.info({ app: name, id: m.id }, "periodic checkpoint"),
          (e) => this.log.warn({ app: name, err: errMessage(e) }, "periodic checkpoint failed"),
        )
        .finally(() => this.periodicInFlight.delete(name));
    }, everyMs);
    t.unref();
    this.timers.set(name, t);
  }

  stopTimers(): void {
    for (const t of this.timers.values()) clearInterval(t);
    this.timers.clear();
  }

  private freeName(base: string): string {
    const clean = basename(base).replace(/[^A-Za-z0-9._-]/g, "_").replace(/^[._-]+/, "").slice(0, 60) || "app";
    for (let i = 1; ; i++) {
      const n = i === 1 ? clean : `${clean}-${i}`;
      if (new AppDir(this.home, n).state()?.state !== "running") return n;
    }
  }

  async run(req: RunRequest): Promise<RunResult> {
    if (!Array.isArray(req.argv) || req.argv.length === 0 || req.argv.some((a) => typeof a !== "string"))
      throw new TgError("cannot run the app", "no command given", "Put the command after `--`: tardigrade run --name NAME -- CMD ARGS...", "bad-request");
    if (req.tracking !== undefined && !(TRACKING_MODES as readonly string[]).includes(req.tracking))
      throw new TgError("cannot run the app", `unknown tracking mode ${JSON.stringify(req.tracking)}`, "Use --tracking uffd, hash or none", "bad-request");
    if (req.externalUnix !== undefined && req.externalUnix !== null && !(EXTERNAL_UNIX_POLICIES as readonly string[]).includes(req.externalUnix))
      throw new TgError("cannot run the app", `unknown --external-unix policy ${JSON.stringify(req.externalUnix)}`, "Use --external-unix refuse or closed", "bad-request");
    if (req.keep !== undefined && req.keep !== null && (!Number.isSafeInteger(req.keep) || req.keep < 1))
      throw new TgError("cannot run the app", `--keep must be a whole number ≥ 1 (got ${JSON.stringify(req.keep)})`, "Pass e.g. --keep 3", "bad-request");
    if (req.mirror) {
      try {
        parseMirrorUrl(req.mirror.url);
      } catch (e) {
        throw new TgError("cannot run the app", `bad --mirror address: ${errMessage(e)}`, "Use tg://HOST:PORT (or tgs:// for TLS)", "bad-request");
      }
      if (!req.mirror.token) throw new TgError("cannot run the app", "no mirror token", "Pass --token-file FILE or set TARDIGRADE_MIRROR_TOKEN", "bad-request");
      if (req.mirror.ack && req.mirror.ack !== "received" && req.mirror.ack !== "durable") throw new TgError("cannot run the app", `unknown --mirror-ack ${req.mirror.ack}`, "Use received or durable", "bad-request");
      for (const s of standbysOf(req.mirror)) {
        try {
          parseHostPort(s, "--standby");
        } catch (e) {
          throw new TgError("cannot run the app", errMessage(e), "Pass the standby's heartbeat address, e.g. --standby 10.0.0.2:7071", "bad-request");
        }
      }
      if (req.mirror.address !== undefined) {
        try {
          req.mirror.address = parseServiceAddress(req.mirror.address.cidr, req.mirror.address.dev);
        } catch (e) {
          throw new TgError("cannot run the app", errMessage(e), "Pass e.g. --address 10.0.0.100/24 --dev eth0", "bad-request");
        }
      }
      if (req.mirror.leaseMs !== undefined && (!Number.isSafeInteger(req.mirror.leaseMs) || req.mirror.leaseMs < 200 || req.mirror.leaseMs > 60_000)) throw new TgError("cannot run the app", `--failover-after must be 200ms to 60s (got ${JSON.stringify(req.mirror.leaseMs)} ms)`, "Pass e.g. --failover-after 3s", "bad-request");
      if (req.mirror.ca !== undefined) {
        try {
          checkCaPem(req.mirror.ca, "--tls-ca");
        } catch (e) {
          throw new TgError("cannot run the app", errMessage(e), "Pass the PEM file of the CA that signed the mirror's certificate", "bad-request");
        }
      }
    }
    const files = runFilesConfig(req.files, req.cwd);
    const name = req.name ?? this.freeName(req.argv[0]!);
    const dir = this.dir(name);
    if (dir.sock.length > SOCK_MAX) throw new TgError(`cannot run ${name}`, `the agent socket path ${dir.sock} is longer than ${SOCK_MAX} bytes`, "Use a shorter TARDIGRADE_HOME or app name", "bad-request");
    return this.lock.run(name, async () => {
      const st = dir.state();
      if (st && st.state !== "exited")
        throw new TgError(`cannot run ${name}`, `an app with that name is already ${st.state} (host pid ${st.appHostPid ?? st.launcherPid})`, `Stop it with \`tardigrade stop ${name}\` or pick another --name`, "conflict");
      const init = nativeBinary("tardigrade-init");
      const agent = await stableAgent(this.home);
      await mkdir(dir.dir, { recursive: true });
      await rm(journalPath(dir.dir), { force: true }); // a new run: the files the last one touched are not this one's
      clearRanges(dir.dir); // (nor the ranges it wrote)
      const now = new Date().toISOString();
      const record: AppRecord = {
        name,
        argv: req.argv,
        cwd: req.cwd,
        createdAt: now,
        startedAt: now,
        mode: "run",
        checkpoint: null,
        launcherPid: 0,
        launcherStart: null,
        everyMs: req.everyMs,
        ...(req.tracking ? { tracking: req.tracking } : {}),
        ...(req.externalUnix === "closed" ? { externalUnix: req.externalUnix } : {}),
        ...(req.keep ? { keep: req.keep } : {}),
        files,
        ...(req.mirror ? { mirrorUrl: req.mirror.url, mirrorAck: req.mirror.ack ?? "durable" } : {}),
      };
      if (req.mirror) {
        await mkdir(dir.dir, { recursive: true });
        await writeFile(join(dir.dir, "mirror-token"), req.mirror.token + "\n", { mode: 0o600 });
        await rm(join(dir.dir, "mirror-ca.pem"), { force: true });
        if (req.mirror.ca !== undefined) await saveAppCa(dir.dir, req.mirror.ca);
        // a new run takes a new lease (docs/ha.md)
        const standbys = standbysOf(req.mirror);
        await writeAppLease(dir.dir, { ttlMs: req.mirror.leaseMs ?? DEFAULT_LEASE_MS, ...(standbys.length ? { standby: standbys } : {}), ...(req.mirror.address ? { address: req.mirror.address } : {}) });
        await clearFenced(dir.dir);
      }
      try {
        const umask = (validUmask(req.umask) ?? daemonStartUmask()).toString(8);
        const l = await launch(dir, init, ["--status", dir.statusFile, "--sock", dir.sock, "--pidfile", dir.pidfile, "--agent", agent, "--umask", umask, "--", ...req.argv], {
          cwd: req.cwd,
          // (the agents note their writes' ranges for the files' cut: files-ranges.ts)
          env: files.enabled ? { ...(req.env ?? process.env), TARDIGRADE_FILES_RANGES: "1" } : req.env,
          timeoutMs: 60_000,
          onSpawn: async (pid, start) => {
            record.launcherPid = pid;
            record.launcherStart = start;
            await dir.writeRecord(record);
          },
        });
        record.initStart = l.initStart;
        await dir.writeRecord(record);
        this.schedule(name, req.everyMs);
        // the lease is taken as shipping starts, not at the first checkpoint
        if (req.mirror && this.store instanceof CasStoreAdapter) this.shipper(this.store, name, record).catch((e) => this.log.warn({ app: name, err: errMessage(e) }, "mirror shipper not started"));
        this.log.info({ app: name, argv: req.argv, hostPid: l.appHostPid }, "app started");
        return { name, pid: l.ping.pid, initHostPid: l.initHostPid, appHostPid: l.appHostPid, threads: l.ping.threads, startNs: l.elapsedNs };
      } catch (e) {
        if (e instanceof LaunchFailure) {
          const execError = e.status?.exec_error;
          // A command that could not be executed leaves nothing behind; an app that ran
          // keeps its state directory so `tardigrade logs` can show what it printed.
          if (execError || !e.status) await rm(dir.dir, { recursive: true, force: true });
          if (execError)
            throw new TgError(`cannot run ${name}`, `cannot execute ${JSON.stringify(req.argv[0])}: ${execError.replace(/^cannot execute .*?: (?=[^:]+$)/, "")}`, "Check the command name, its path (relative paths start from the current directory) and that it is executable", "run-failed");
          const detail = e.messages.length ? `: ${e.messages.join("; ")}` : "";
          throw new TgError(
            `cannot run ${name}`,
            `the app ended (${describeExit(e.status)}) before its agent answered on ${dir.sock}${detail}`,
            `See its output with \`tardigrade logs ${name}\`. The agent must be loaded into the program itself: statically linked programs are not supported yet (wrapper scripts that exec the real program, e.g. pyenv shims, do work: the agent follows the launched PID across exec)`,
            "run-failed",
          );
        }
        await rm(dir.dir, { recursive: true, force: true });
        throw e;
      }
    });
  }

  async checkpoint(name: string, progress: Progress = noProgress, opts: { full?: boolean; signal?: AbortSignal } = {}): Promise<CheckpointResult> {
    // an app that exited meanwhile, or a refusal of the agent for child processes, is told as such
    return this.checkpointOnce(name, progress, opts).catch(async (e: unknown) => Promise.reject(await checkpointFailure(this.dir(name), e)));
  }

  private async checkpointOnce(name: string, progress: Progress, opts: { full?: boolean; signal?: AbortSignal }): Promise<CheckpointResult> {
    return this.lock.run(name, async () => {
      const t0 = process.hrtime.bigint();
      // Queued behind another operation of this app while its client went away: nothing to do.
      if (opts.signal?.aborted) throw new TgError(`checkpoint of ${name} cancelled`, "the client went away while it waited", "Nothing was captured", "cancelled");
      const { dir, state } = this.known(name);
      if (state.state !== "running") {
        const why = state.state === "exited" ? `the app has exited (${describeExit(state.exit)})` : "the app is still starting";
        throw new TgError(`cannot checkpoint ${name}`, why, state.state === "exited" ? `Restore its last checkpoint with \`tardigrade restore ${name}\` or start it again with \`tardigrade run\`` : "Try again in a moment", "not-running");
      }
      if (state.mode === "restore") refuseCheckpointWhileLoading(dir.dir, name);
      // A process tree: one consistent cut over all its processes (tree-checkpoint.ts).
      const procs = state.initHostPid ? appProcesses(state.initHostPid) : [];
      const main = procs.find((p) => p.hostPid === state.appHostPid);
      if (procs.length > 1 && main) {
        if (!(this.store instanceof CasStoreAdapter)) throw treeRefusal(name, `the app has ${procs.length - 1} other process(es): ${describeProcesses(procs.filter((p) => p !== main))}`, "This store keeps single processes only");
        return this.checkpointTreeCas(this.store, name, dir, state.initHostPid!, main.hostPid, t0, progress, opts.full === true);
      }
      let pid: number;
      try {
        pid = (await ping(dir.sock)).pid;
      } catch (e) {
        throw new TgError(`cannot checkpoint ${name}`, `its agent does not answer on ${dir.sock} (${errMessage(e)})`, `Check the app's log with \`tardigrade logs ${name}\``, "agent-unreachable");
      }
      if (this.store instanceof CasStoreAdapter) {
        const store = this.store;
        return this.checkpointCas(store, name, dir, pid, t0, progress, opts.full === true).catch((e: unknown) => {
          // a process started between our look and the park (the agent found it, parked): the tree way
          const again = state.initHostPid ? appProcesses(state.initHostPid) : [];
          const m = again.find((p) => p.hostPid === state.appHostPid);
          if (e instanceof TgError && isAgentTreeRefusal(e.why) && m && again.length > 1) return this.checkpointTreeCas(store, name, dir, state.initHostPid!, m.hostPid, t0, progress, opts.full === true);
          throw e;
        });
      }
      const staging = await this.store.stage(name);
      let events: CheckpointEvent[];
      progress({ phase: "capture" });
      try {
        // opened here and passed to the agent (a process of another user could not create it in the store)
        const imageFd = openSync(staging.imagePath(pid), fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL, 0o600);
        events = await agentCheckpoint(dir.sock, staging.imagePath(pid), (e) => {
          this.log.debug({ app: name, event: e }, "agent event");
          if (e.event === "resumed") progress({ phase: "write", downtimeNs: e.downtime_ns });
        }, { imageFd });
      } catch (e) {
        await this.store.discard(staging);
        throw new TgError(`checkpoint of ${name} failed`, `lost contact with the agent (${errMessage(e)})`, "Nothing was committed; earlier checkpoints are intact", "checkpoint-failed");
      }
      const last = events[events.length - 1];
      const resumed = events.find((e) => e.event === "resumed");
      if (!last || last.ok === false || last.event !== "done") {
        await this.store.discard(staging);
        const why = last && last.ok === false ? last.error : "the agent gave no final reply";
        throw new TgError(`checkpoint of ${name} failed`, why, "Nothing was committed; the app keeps running and earlier checkpoints are intact", "checkpoint-failed");
      }
      try {
        const m = await this.store.put(staging, {
          onProgress: (done, total) => progress({ phase: "verify", done, total }),
          downtimeNs: resumed && resumed.event === "resumed" ? resumed.downtime_ns : 0,
          totalNs: last.total_ns,
          // threads: counted from the image (application threads, without the agent's own)
        });
        this.log.info({ app: name, id: m.id, bytes: m.bytes, pages: m.pages, downtimeNs: m.downtimeNs }, "checkpoint committed");
        return { ...m, commitNs: Number(process.hrtime.bigint() - t0) };
      } catch (e) {
        await this.store.discard(staging);
        throw e;
      }
    });
  }

  /** Streamed capture into the content-addressed store: incremental on the last committed image. */
  private async checkpointCas(store: CasStoreAdapter, name: string, dir: AppDir, pid: number, t0: bigint, progress: Progress, full: boolean): Promise<CheckpointResult> {
    const rec = dir.record() as AppRecord | null;
    const base = mainBase(store.cas, name, rec, pid);
    const incrementalOn = full ? undefined : base.on?.agentSeq;
    progress({ phase: "capture" });
    // the app's files (files-flow.ts): queued in the store first, read while the app is parked
    const seq = nextSeq(store.cas, name);
    const files = this.filesCapture(store, name, dir, rec, seq, full);
    const initHostPid = dir.state()?.initHostPid;
    const extra: { files?: FilesRef } = {};
    let cutError: unknown = null;
    // The files are read while the app is parked, beside the agent's own capture: CAPTURE goes
    // out first, the (synchronous) files' cut runs next on this thread, and RESUME waits for it.
    let filesCut: Promise<void> = Promise.resolve();
    const hold = async (e: { event: "parked" | "captured" }): Promise<string> => {
      if (e.event === "captured") {
        await filesCut;
        if (cutError) throw cutError;
        files?.released(); // (its deferred reads start once RESUME is out)
        return "RESUME";
      }
      if (!files) return "CAPTURE";
      try {
        // (with hold the agent leaves the check for child processes to us)
        // (zombies count: the tree way restores them)
        const procs = initHostPid ? appProcesses(initHostPid) : [];
        const others = procs.filter((p) => p.pid !== pid);
        // (the agent's own words: the checkpoint is then taken the tree way, isAgentTreeRefusal)
        if (others.length) throw new Error(`the app has ${others.length} other process${others.length === 1 ? "" : "es"}: ${describeProcesses(others)}`);
        // (listed now: the snapshot writer forked after CAPTURE has the app's name for an instant)
        const hostPids = procs.map((p) => p.hostPid);
        filesCut = new Promise<void>((done) =>
          setImmediate(() => {
            try {
              extra.files = files.cut(hostPids);
            } catch (err) {
              cutError = err;
            }
            done();
          }),
        );
      } catch (err) {
        cutError = err;
        throw err;
      }
      return "CAPTURE";
    };
    let cap: Awaited<ReturnType<typeof captureIntoCas>>;
    try {
      cap = await captureIntoCas(
        store.cas,
        name,
        dir.sock,
        pid,
        join(store.root, "staging"),
        { ...(incrementalOn ? { incrementalOn } : {}), ...(rec?.tracking ? { tracking: rec.tracking } : {}), ...(rec?.externalUnix ? { externalUnix: rec.externalUnix } : {}), ...(files ? { hold } : {}) },
        {
          ...(incrementalOn && rec?.lastId ? { parent: rec.lastId } : {}),
          onProgress: (done, total) => progress({ phase: "verify", done, total }),
          describeFiles: (v) => this.fileIds.describe(v),
          ...(files ? { extra, beforeCommit: async () => void (await files.committed) } : {}),
        },
        (e) => {
          this.log.debug({ app: name, event: e }, "agent event");
          if (e.event === "resumed") progress({ phase: "write", downtimeNs: e.downtime_ns });
          if (e.ok === false) files?.abort(e.error); // (the store is held for the files image: end it now)
        },
        files ? { storeApp: name, seq } : undefined,
      );
    } catch (e) {
      files?.abort(e);
      if (cutError instanceof Error && isAgentTreeRefusal(cutError.message))
        throw new TgError(`checkpoint of ${name} failed`, cutError.message, "Nothing was committed", "checkpoint-failed"); // (taken again the tree way)
      const full = cutError ? noSpaceError(cutError, `checkpoint of ${name} failed`, [store.root]) : null;
      if (full) throw full;
      if (cutError)
        throw new TgError(`checkpoint of ${name} failed`, `the app's files could not be captured: ${errMessage(cutError)}`, "Nothing was committed; the app keeps running. Leave the file out with run --files-exclude, or run with --files none", "checkpoint-failed");
      throw e;
    }
    const c = cap.checkpoint;
    const fullReason = full
      ? "full checkpoint requested"
      : base.on
        ? cap.done.full_reason
        : base.why;
    if (rec) {
      rec.lastAgentSeq = cap.done.seq;
      rec.lastId = c.id;
      if (files?.ref) rec.lastFilesId = files.ref.id;
      await dir.writeRecord(rec);
    }
    this.log.info({ app: name, id: c.id, kind: c.kind, pages: c.stats.pages, storedBytes: c.stats.storedBytes, downtimeNs: c.stats.downtimeNs }, "checkpoint committed");
    this.afterCommit(store, c.id, c.kind === "incremental");
    if (files?.ref) this.afterCommitFiles(store, files.ref.id);
    const mirror = rec?.mirrorUrl ? await this.ship(store, name, rec, c.id) : undefined;
    return { ...toManifest(c), commitNs: Number(process.hrtime.bigint() - t0), ...(c.kind === "full" && fullReason ? { fullReason } : {}), ...(mirror ? { mirror } : {}), ...(files?.ref ? { files: files.ref } : {}) };
  }

  /** Paths never in an app's file set: its log, tardigrade's home. */
  private filesNever(dir: AppDir): string[] {
    return [dir.logFile, this.home];
  }

  /** The app's file capture for a checkpoint at seq (files-flow.ts), or null with --files none. */
  private filesCapture(store: CasStoreAdapter, name: string, dir: AppDir, rec: AppRecord | null, seq: number, full: boolean): FilesCapture | null {
    const cfg: FilesConfig = rec?.files ?? DEFAULT_FILES;
    if (!cfg.enabled) return null;
    return new FilesCapture({ cas: store.cas, app: name, seq, appDir: dir.dir, cfg, parentId: full ? null : (rec?.lastFilesId ?? null), never: this.filesNever(dir), stagingRoot: join(store.root, "staging") });
  }

  /** A process tree's checkpoint (tree-checkpoint.ts): incremental per process on its last committed image. */
  private async checkpointTreeCas(store: CasStoreAdapter, name: string, dir: AppDir, initHostPid: number, mainHostPid: number, t0: bigint, progress: Progress, full: boolean): Promise<CheckpointResult> {
    const rec = dir.record() as AppRecord | null;
    progress({ phase: "capture" });
    const cap0Pid = appProcesses(initHostPid).find((p) => p.hostPid === mainHostPid)?.pid;
    const base = mainBase(store.cas, name, rec, cap0Pid);
    let lastFiles = null as FilesCapture | null; // (set in a callback)
    const cap = await checkpointTree({
      cas: store.cas,
      app: name,
      sock: dir.sock,
      stagingRoot: join(store.root, "staging"),
      list: () => appProcesses(initHostPid),
      mainHostPid,
      mainIncremental: base.on,
      lineage: rec?.treeLineage ?? {},
      full,
      ...(rec?.tracking ? { tracking: rec.tracking } : {}),
      ...(rec?.externalUnix ? { externalUnix: rec.externalUnix } : {}),
      describeFiles: (v) => this.fileIds.describe(v),
      onProgress: (done, total) => progress({ phase: "verify", done, total }),
      onEvent: (pid, e) => {
        this.log.debug({ app: name, pid, event: e }, "agent event");
        if (e.event === "resumed" && pid === cap0Pid) progress({ phase: "write", downtimeNs: e.downtime_ns });
      },
      ...((rec?.files ?? DEFAULT_FILES).enabled
        ? {
            files: (seq: number) => {
              const f = this.filesCapture(store, name, dir, rec, seq, full)!;
              lastFiles = f;
              return {
                atCut: async (hostPids: number[]) => {
                  f.cut(hostPids);
                  f.released(); // (the tree resumes once this returns: the files' second half starts then)
                },
                beforeMainCommit: async () => {
                  f.released();
                  await f.committed;
                  return { files: f.ref };
                },
                abort: (why: unknown) => f.abort(why),
              };
            },
          }
        : {}),
    });
    const c = cap.main.checkpoint;
    if (rec) {
      rec.lastAgentSeq = cap.main.done.seq;
      rec.lastId = c.id;
      if (lastFiles?.ref) rec.lastFilesId = lastFiles.ref.id;
      rec.treeLineage = cap.lineage;
      await dir.writeRecord(rec);
    }
    this.log.info({ app: name, id: c.id, processes: cap.info.tree.length, treeDowntimeNs: cap.info.treeDowntimeNs }, "process tree checkpoint committed");
    for (const o of cap.others) this.afterCommit(store, o.checkpoint.id, o.checkpoint.kind === "incremental", false);
    this.afterCommit(store, c.id, c.kind === "incremental");
    if (lastFiles?.ref) this.afterCommitFiles(store, lastFiles.ref.id);
    // shipped with every process's checkpoint and the files image, as one mirror checkpoint (src/mirror/bundle.ts)
    const mirror = rec?.mirrorUrl ? await this.ship(store, name, rec, c.id) : undefined;
    const notes = unreadableConnectionNotes([{ socks: c.stats.sockets }, ...cap.others.map((o) => ({ pid: o.checkpoint.pid, socks: o.checkpoint.stats.sockets }))]);
    return { ...toManifest(c), ...(mirror ? { mirror } : {}), ...(notes.length ? { notes } : {}), ...(lastFiles?.ref ? { files: lastFiles.ref } : {}), downtimeNs: cap.info.treeDowntimeNs, commitNs: Number(process.hrtime.bigint() - t0), ...(c.kind === "full" ? { fullReason: full ? "full checkpoint requested" : !base.on ? base.why : cap.main.done.full_reason || "first checkpoint of this process" } : {}) };
  }

  private readonly shippers = new Map<string, Promise<MirrorShipper>>();

  private mirrorStatePath(name: string): string {
    return join(new AppDir(this.home, name).dir, "mirror-state.json");
  }

  /** The app's mirror shipper (opened on first use, also after a daemon restart: it backfills). */
  private shipper(store: CasStoreAdapter, name: string, rec: AppRecord): Promise<MirrorShipper> {
    let p = this.shippers.get(name);
    if (!p) {
      const token = readFileSync(join(new AppDir(this.home, name).dir, "mirror-token"), "utf8").trim();
      const dial = appDialOptions(new AppDir(this.home, name).dir);
      const appDir = new AppDir(this.home, name).dir;
      const fenced = readFenced(appDir);
      if (fenced) return Promise.reject(new Error(`${name} is ${describeFenced(fenced)}: its checkpoints are not shipped`));
      const lease = readAppLease(appDir) ?? { ttlMs: DEFAULT_LEASE_MS };
      p = MirrorShipper.open({ store: store.cas, app: name, url: rec.mirrorUrl!, token, statePath: this.mirrorStatePath(name), ack: rec.mirrorAck ?? "durable", logger: this.log, membersOf: (id) => membersOf(store.cas, id), ...(dial ? { dial } : {}), lease: { host: hostId(), ...lease, keep: () => new AppDir(this.home, name).state()?.state !== "exited" } });
      p.then((sh) => {
        sh.on("fatal", (e: unknown) => this.log.error({ app: name, err: errMessage(e) }, "mirror refused this source"));
        // docs/ha.md: the epoch is kept for a daemon restart; losing the lease stops the app for good
        let addressHeld = false;
        sh.on("lease", (l: { epoch: number }) => {
          // the service address goes with the lease (docs/ha.md, decision 4)
          if (lease.address && !addressHeld && !sh.fenced) {
            addressHeld = true;
            const a = lease.address;
            addServiceAddress(a).then((r) => this.log.info({ app: name, address: a.cidr, dev: a.dev, arp: r.arp }, "service address added"), (e) => this.log.error({ app: name, err: errMessage(e) }, "service address not added"));
          }
          if (l.epoch !== lease.epoch) writeAppLease(appDir, { ...lease, epoch: (lease.epoch = l.epoch) }).catch((e) => this.log.error({ app: name, err: errMessage(e) }, "cannot record the lease epoch"));
        });
        // every standby gets the beats (each watches on its own; the mirror grants the lease to one)
        const standbys = standbysOf(lease);
        const beats = standbys.length ? new BeatSender(standbys.map((s) => parseHostPort(s, "standby")), token, lease.ttlMs / 6, () => (sh.leaseEpoch !== undefined && !sh.fenced && new AppDir(this.home, name).state()?.state === "running" ? { app: name, host: hostId(), epoch: sh.leaseEpoch } : null)) : undefined;
        sh.once("closed", () => beats?.stop());
        sh.on("fenced", (f: FencedInfo) => {
          beats?.stop();
          this.schedule(name, undefined);
          this.shippers.delete(name);
          fenceApp(new AppDir(this.home, name), f, this.log)
            .then(() => lease.address && removeServiceAddress(lease.address).then(() => this.log.info({ app: name, address: lease.address!.cidr }, "service address removed")))
            .catch((e) => this.log.error({ app: name, err: errMessage(e) }, "fencing: service address not removed"))
            .finally(() => void sh.close());
        });
        sh.connect();
      }, () => this.shippers.delete(name));
      this.shippers.set(name, p);
    }
    return p;
  }

  /** Queues a committed checkpoint for the mirror and waits (up to MIRROR_WAIT_MS) for the app's ack level; a mirror that is down or slow leaves it queued (it ships in the background and `ls` shows where it is). */
  private async ship(store: CasStoreAdapter, name: string, rec: AppRecord, id: string): Promise<MirrorView> {
    const url = rec.mirrorUrl!;
    const want = rec.mirrorAck ?? "durable";
    try {
      const sh = await this.shipper(store, name, rec);
      const reached = (st: string | undefined): boolean => st === "failed" || st === "durable" || (want === "received" && st === "received");
      const done = new Promise<void>((resolve) => {
        const on = (e: { id: string; state: string }): void => {
          if (e.id === id && reached(e.state)) {
            sh.off("state", on);
            resolve();
          }
        };
        sh.on("state", on);
        setTimeout(() => {
          sh.off("state", on);
          resolve();
        }, MIRROR_WAIT_MS).unref();
      });
      sh.enqueue(id);
      if (!reached(sh.state(id)?.state)) await done;
      const r = sh.state(id);
      return { url, state: r?.state ?? "queued", updatedAt: r?.updatedAt ?? new Date().toISOString(), ...(r?.error ? { error: r.error } : {}) };
    } catch (e) {
      this.log.warn({ app: name, err: errMessage(e) }, "mirror unavailable");
      return { url, state: "failed", updatedAt: new Date().toISOString(), error: errMessage(e) };
    }
  }

  /** Mirror state of each checkpoint of the app (from the running shipper or its state file). */
  mirrorStates(name: string): Map<string, MirrorView> {
    const out = new Map<string, MirrorView>();
    const rec = new AppDir(this.home, name).record() as AppRecord | null;
    if (!rec?.mirrorUrl) return out;
    for (const r of readShipperState(this.mirrorStatePath(name))) out.set(r.id, { url: rec.mirrorUrl, state: r.state, updatedAt: r.updatedAt, ...(r.error ? { error: r.error } : {}) });
    return out;
  }

  /** Checkpoints with their mirror state, for `ls`. */
  async listCheckpoints(app?: string): Promise<(Manifest & { mirror?: MirrorView })[]> {
    const list = await this.store.list(app);
    const states = new Map<string, Map<string, MirrorView>>();
    return list.map((m) => {
      if (!states.has(m.app)) states.set(m.app, this.mirrorStates(m.app));
      const v = states.get(m.app)!.get(m.id);
      return v ? { ...m, mirror: v } : m;
    });
  }

  /** Fetches a checkpoint (and what it needs) from a mirror into the local store. */
  async pullFromMirror(name: string, url: string, token: string, id?: string, ca?: string, what = "restore"): Promise<PullFromMirrorResult> {
    if (!(this.store instanceof CasStoreAdapter)) throw new TgError(`cannot ${what} ${name} from ${url}`, "this store cannot import", "", "bad-request");
    try {
      parseMirrorUrl(url);
    } catch (e) {
      throw new TgError(`cannot ${what} ${name} from ${url}`, `bad mirror address: ${errMessage(e)}`, "Use tg://HOST:PORT (or tgs:// for TLS)", "bad-request");
    }
    try {
      const r = await pullFromMirror(url, token, name, id ?? "latest", this.store.cas, { logger: this.log, ...(ca !== undefined ? { dial: { ca: Buffer.from(ca) } } : {}) });
      this.log.info({ app: name, id: r.id, fetched: r.blocksFetched, bytes: r.bytesFetched }, "pulled from the mirror");
      return r;
    } catch (e) {
      if (e instanceof TgError) throw e;
      throw new TgError(`cannot ${what} ${name} from ${url}`, errMessage(e), "Check the address, the token, and `tardigrade mirror ls --server URL`", "restore-failed");
    }
  }

  /**
   * A standby's warm copy (src/ha/standby.ts, docs/ha.md): a checkpoint of an app that runs on
   * another host pulled from the mirror into this store ahead of a takeover, whose restore then
   * fetches only what came after it. Refused while the app runs here (only a standby does this).
   */
  async prefetch(name: string, from: { url: string; token: string; ca?: string }, checkpoint: string | undefined, keep = DEFAULT_WARM_KEEP): Promise<{ id: string; imported: number; alreadyPresent: boolean; blocksFetched: number; bytesFetched: number; ms: number }> {
    const dir = this.dir(name);
    if (!Number.isSafeInteger(keep) || keep < 1) throw new TgError(`cannot prefetch ${name}`, `keep must be a whole number ≥ 1 (got ${JSON.stringify(keep)})`, "Pass e.g. --keep 2", "bad-request");
    const r = await this.lock.run(name, async () => {
      const st = dir.state();
      if (st && st.state !== "exited") throw new TgError(`cannot prefetch ${name}`, `the app runs on this host (${st.state}, host pid ${st.appHostPid ?? st.launcherPid})`, "Prefetch is for a standby host, where the app does not run", "conflict");
      const t0 = performance.now();
      const r = await this.pullFromMirror(name, from.url, from.token, checkpoint, from.ca, "prefetch");
      return { id: r.id, imported: r.imported.length, alreadyPresent: r.alreadyPresent, blocksFetched: r.blocksFetched, bytesFetched: r.bytesFetched, ms: Math.round(performance.now() - t0) };
    });
    // The warm copies' own retention (a standby pulls every second, for days): the chain is merged
    // like a primary's, and only the newest `keep` warm copies (and the chains they stand on) stay.
    // In the background, outside the app's lock: a takeover's restore never waits for it.
    if (r.imported > 0) this.afterCommit(this.store as CasStoreAdapter, r.id, true, true, { [name]: keep });
    return r;
  }

  async closeMirrors(): Promise<void> {
    for (const p of this.shippers.values()) await p.then((s) => s.close()).catch(() => {});
    this.shippers.clear();
  }

  private async mirrorPins(): Promise<string[]> {
    const pins: string[] = [];
    for (const p of this.shippers.values()) {
      try {
        pins.push(...(await p).unshipped());
      } catch {
        /* a shipper that never opened pins nothing */
      }
    }
    return pins;
  }

  private background: Promise<unknown> = Promise.resolve();
  /** Merge policy for incremental chains (configurable through TARDIGRADE_MERGE_CHAIN / _BYTES_RATIO / _MAX_READ_AMP). */
  readonly mergePolicy: MergePolicy = {
    maxChainLength: Number(process.env.TARDIGRADE_MERGE_CHAIN ?? DEFAULT_MERGE_POLICY.maxChainLength),
    maxChainBytesRatio: Number(process.env.TARDIGRADE_MERGE_BYTES_RATIO ?? DEFAULT_MERGE_POLICY.maxChainBytesRatio),
    maxReadAmplification: Number(process.env.TARDIGRADE_MERGE_MAX_READ_AMP ?? DEFAULT_MERGE_POLICY.maxReadAmplification),
  };

  /** Background work after a commit, one job at a time: merge a long chain, then apply retention. */
  private afterCommit(store: CasStoreAdapter, id: string, incremental: boolean, retain = true, keepOverride: Record<string, number> = {}): void {
    this.background = this.background
      .then(async () => {
        if (incremental && (await store.cas.mergeIfNeeded(id, this.mergePolicy))) this.log.info({ id }, "chain merged into a synthetic full checkpoint");
        if (!retain) return;
        const keepPerApp = { ...this.keepPerApp(), ...keepOverride };
        if (Object.keys(keepPerApp).length) {
          const pin = await this.mirrorPins();
          // a warm copy's pull (every second or so): gc's live-page scan, which reads every page
          // table, only when retention drops something
          if (Object.keys(keepOverride).length && store.cas.wouldDrop({ keep: Infinity, keepPerApp, pin }).length === 0) return;
          const r = await store.cas.gc({ keep: Infinity, keepPerApp, pin });
          if (r.dropped.length) this.log.info({ dropped: r.dropped, freedBytes: r.bytesFreed }, "retention");
        }
      })
      .catch((e) => this.log.warn({ id, err: errMessage(e) }, "background merge/retention failed"));
  }

  /** A files image's chain is merged like the processes' (files-flow.ts). */
  private afterCommitFiles(store: CasStoreAdapter, id: string): void {
    let incremental = false;
    try {
      incremental = store.cas.get(id).kind === "incremental";
    } catch {
      return;
    }
    this.afterCommit(store, id, incremental, false);
  }

  /** Waits for background merges and retention (tests, shutdown). */
  async idle(): Promise<void> {
    await this.background;
  }

  private keepPerApp(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const n of listAppNames(this.home)) {
      const r = new AppDir(this.home, n).record() as AppRecord | null;
      if (r?.keep) out[n] = r.keep;
    }
    return out;
  }

  /** Adds a raw image file (docs/format.md) to the store as the app's next checkpoint. */
  async importImage(name: string, path: string): Promise<Manifest> {
    this.dir(name); // validates the name
    if (typeof path !== "string" || !path.startsWith("/")) throw new TgError(`cannot import into ${name}`, "the image path must be absolute", "", "bad-request");
    if (!(this.store instanceof CasStoreAdapter)) throw new TgError(`cannot import into ${name}`, "this store cannot import images", "", "bad-request");
    const store = this.store;
    await checkImportFile(name, path);
    return this.lock.run(name, async () => {
      const c = await store.cas.ingestNext(name, path, {}).catch((e: unknown) => {
        throw noSpaceError(e, `cannot import ${path} into ${name}`, [store.cas.root]) ?? e;
      });
      this.log.info({ app: name, id: c.id, from: path }, "image imported");
      return toManifest(c);
    });
  }

  /** Store-wide garbage collection: `keep` newest per app (apps' own --keep win when smaller). */
  async gc(keep?: number): Promise<GcReport> {
    if (!(this.store instanceof CasStoreAdapter)) throw new TgError("cannot run gc", "this store keeps no shared data to collect", "", "bad-request");
    const store = this.store;
    const job = this.background.then(async () => {
      const per = this.keepPerApp();
      if (keep !== undefined) for (const n of listAppNames(this.home)) per[n] = Math.min(per[n] ?? keep, keep);
      return store.cas.gc({ keep: keep ?? Infinity, keepPerApp: per, minDeadFraction: 0, pin: await this.mirrorPins() });
    });
    this.background = job.catch(() => {});
    return job;
  }

  private async pick(name: string, id?: string): Promise<Manifest> {
    if (id !== undefined) {
      const parsed = parseCheckpointId(id);
      if (!parsed) throw unknownCheckpoint(id, "checkpoint ids look like APP@SEQ");
      if (parsed && parsed.app !== name) throw unknownCheckpoint(id, `it belongs to app ${parsed.app}, not ${name}`);
      return this.store.get(id);
    }
    const all = await this.store.list(name);
    const m = all[all.length - 1];
    if (!m) throw new TgError(`cannot restore ${name}`, "the store has no checkpoint of this app", `Take one with \`tardigrade checkpoint ${name}\` while it runs`, "unknown-checkpoint");
    return m;
  }

  async restore(name: string, opts: { checkpoint?: string; replace?: boolean; allowFileChanges?: boolean; allowClosedTcp?: boolean; keepFileChanges?: string[]; from?: { url: string; token: string; ca?: string; takeover?: Takeover }; lazy?: boolean }, progress: Progress = noProgress): Promise<RestoreResult> {
    const dir = this.dir(name);
    const r = await this.lock.run(name, async () => {
      const fenced = readFenced(dir.dir);
      if (fenced && !opts.from?.takeover)
        throw new TgError(`cannot restore ${name}`, `it is ${describeFenced(fenced)}: ${fenced.reason}`, `Another host runs it now; take it back with \`tardigrade standby --mirror URL --app ${name}\` (a takeover under a new lease)`, "conflict");
      if (opts.from?.takeover) await this.prepareTakeover(dir, opts.from, opts.from.takeover);
      const t0 = process.hrtime.bigint();
      let checkpointId = opts.checkpoint;
      if (opts.from) {
        const st0 = dir.state();
        if (st0 && st0.state !== "exited" && !opts.replace)
          throw new TgError(`cannot restore ${name}`, `the app is still ${st0.state} (host pid ${st0.appHostPid ?? st0.launcherPid})`, `Stop it first (\`tardigrade stop ${name}\`) or pass --replace to kill it and restore`, "conflict");
        progress({ phase: "verify" });
        checkpointId = (await this.pullFromMirror(name, opts.from.url, opts.from.token, opts.checkpoint, opts.from.ca)).id;
      }
      const m = await this.pick(name, checkpointId);
      const st = dir.state();
      const running = st && st.state !== "exited";
      if (running && !opts.replace)
        throw new TgError(`cannot restore ${name}`, `the app is still ${st.state} (host pid ${st.appHostPid ?? st.launcherPid})`, `Stop it first (\`tardigrade stop ${name}\`) or pass --replace to kill it and restore`, "conflict");
      const allow = opts.allowFileChanges === true;
      if (this.store instanceof CasStoreAdapter) return this.restoreCas(this.store, dir, m, st, running === true, t0, progress, allow, opts.keepFileChanges ?? [], opts.lazy === true, opts.allowClosedTcp === true);
      if (opts.lazy) throw new TgError(`cannot restore ${name} lazily`, "this store has no restore plans", "Restore without --lazy", "bad-request");
      const opened = await this.store.openImage(m.id);
      try {
        const restoreBin = nativeBinary("tardigrade-restore");
        // files written since the checkpoint: refuse before anything is killed or started
        await checkFiles({ app: name, checkpoint: m.id, image: opened.path, logFile: dir.logFile, allow });
        // The image is verified (every bound and CRC; names the file and offset of any
        // damage) before anything else when a running app would be killed for it;
        // otherwise while tardigrade-restore reads it (the restorer checks every CRC
        // too, so it never resumes a damaged image; ours gives the clear error).
        const tv = process.hrtime.bigint();
        const verify = parseImage(opened.path, { onProgress: (done, total) => progress({ phase: "verify", done, total }) }).then(() => Number(process.hrtime.bigint() - tv));
        verify.catch(() => {}); // awaited below; no unhandled rejection meanwhile
        if (running) {
          await verify;
          progress({ phase: "kill" });
          await this.kill(dir, st);
        }
        progress({ phase: "start" });
        await mkdir(dir.dir, { recursive: true });
        const record = restoreRecord(name, dir.record() as AppRecord | null, m.id);
        // A damaged image stops the restorer at once instead of waiting for it to notice.
        verify.catch(() => this.killLaunch(dir, record.launcherPid));
        const facts = saveFacts(dir);
        let l: Launched;
        try {
          await writeRestoreMarker(dir.logFile, m.id);
          l = await launch(dir, restoreBin, ["--image", opened.path, "--status", dir.statusFile, "--sock", dir.sock, "--pidfile", dir.pidfile, "--stdio-log", dir.logFile, ...(allow ? ["--allow-file-changes"] : []), ...(opts.allowClosedTcp ? ["--allow-closed-tcp"] : [])], {
            timeoutMs: 120_000,
            onSpawn: async (pid, start) => {
              record.launcherPid = pid;
              record.launcherStart = start;
              await dir.writeRecord(record);
            },
          });
        } catch (e) {
          // Nothing of the failed attempt may look alive; the replaced app's exit status stays.
          await facts.putBack();
          await writeRestoreFailed(dir.logFile, m.id);
          await verify; // a damaged image is the real cause: report it (file, offset, what)
          if (e instanceof LaunchFailure) {
            const detail = e.messages.length ? e.messages.join("; ") : `${describeExit(e.status)}: ${e.message}`;
            throw new TgError(`cannot restore ${name} from ${m.id}`, detail, `See \`tardigrade logs ${name}\`; try an earlier checkpoint with --checkpoint`, "restore-failed");
          }
          throw e;
        }
        let verifyNs: number;
        try {
          verifyNs = await verify;
        } catch (e) {
          this.killLaunch(dir, record.launcherPid); // cannot happen unless the file changed under us
          throw e;
        }
        record.initStart = l.initStart;
        record.restoreNs = l.elapsedNs;
        await dir.writeRecord(record);
        this.schedule(name, record.everyMs); // periodic checkpoints go on after a restore
        const wallNs = Number(process.hrtime.bigint() - t0);
        this.log.info({ app: name, id: m.id, restoreNs: l.elapsedNs, verifyNs, wallNs }, "app restored");
        return {
          name,
          checkpoint: m.id,
          pid: l.ping.pid,
          initHostPid: l.initHostPid,
          appHostPid: l.appHostPid,
          threads: l.ping.threads,
          restoreNs: l.elapsedNs,
          verifyNs,
          verifyOverlapped: !running,
          wallNs,
        };
      } finally {
        await opened.release();
      }
    });
    // A takeover ships the restored app's checkpoints under its new epoch from now on (the shipper renews the lease).
    if (opts.from?.takeover && this.store instanceof CasStoreAdapter) {
      const rec = dir.record() as AppRecord | null;
      if (rec?.mirrorUrl) await this.shipper(this.store, name, rec).catch((e) => this.log.warn({ app: name, err: errMessage(e) }, "mirror shipper not started"));
    }
    return r;
  }

  /** Restore from the content-addressed store: its composed full image is piped into the restorer. */
  /** A standby's takeover (src/ha/standby.ts): the restored app ships under the lease epoch it was granted. */
  private async prepareTakeover(dir: AppDir, from: { url: string; token: string }, t: Takeover): Promise<void> {
    await mkdir(dir.dir, { recursive: true });
    await writeFile(join(dir.dir, "mirror-token"), from.token + "\n", { mode: 0o600 });
    await writeAppLease(dir.dir, { epoch: t.epoch, ttlMs: t.ttlMs, ...(t.address ? { address: parseServiceAddress(t.address.cidr, t.address.dev) } : {}) });
    await clearFenced(dir.dir);
    const prev = dir.record() as AppRecord | null;
    const now = new Date().toISOString();
    await dir.writeRecord({ ...(prev ?? { name: dir.name, argv: [], cwd: "/", createdAt: now, startedAt: now, mode: "restore", checkpoint: null, launcherPid: 0, launcherStart: null }), mirrorUrl: from.url, mirrorAck: t.ack ?? prev?.mirrorAck ?? "durable", ...(t.everyMs !== undefined ? { everyMs: t.everyMs } : {}) });
    await this.shippers.get(dir.name)?.then((s) => s.close()).catch(() => undefined);
    this.shippers.delete(dir.name);
  }

  private async restoreCas(store: CasStoreAdapter, dir: AppDir, m: Manifest, st: AppState | null, running: boolean, t0: bigint, progress: Progress, allow: boolean, keepChanged: string[] = [], lazy = false, closedTcp = false): Promise<RestoreResult> {
    // Pinned from the pre-read until the restorer has consumed the image: a gc meanwhile
    // must not take it away from an app already killed for it (issue 11, defect 12).
    const unpin = await store.cas.hold(m.id);
    const unpins: (() => void)[] = [];
    try {
      // a process tree: every process's checkpoint, pinned as well
      const tree = treeOf((m as { stats?: CheckpointStats }).stats?.extra, m.id);
      for (const e of tree?.tree ?? []) {
        if (!e.id || e.id === m.id) continue;
        if (!store.cas.list(parseCheckpointId(e.id)?.app).some((c) => c.id === e.id))
          throw new TgError(`cannot restore ${dir.name} from ${m.id}`, `it is a process tree, and the checkpoint of its process ${e.pid} (${e.comm}), ${e.id}, is not in this store`, "Restore another checkpoint (`tardigrade ls`), or pull this one again from the mirror", "restore-failed");
        unpins.push(await store.cas.hold(e.id));
      }
      // its files image too (absent only if it was taken out of the store: restored without rollback, said so)
      const files = filesRefOf((m as { stats?: CheckpointStats }).stats?.extra, m.id);
      if (files && store.cas.list(filesApp(dir.name)).some((c) => c.id === files.id)) unpins.push(await store.cas.hold(files.id));
      return await this.restoreCasHeld(store, dir, m, st, running, t0, progress, allow, keepChanged, lazy, closedTcp);
    } finally {
      unpin();
      for (const u of unpins) u();
    }
  }

  private async restoreCasHeld(store: CasStoreAdapter, dir: AppDir, m: Manifest, st: AppState | null, running: boolean, t0: bigint, progress: Progress, allowAsked: boolean, keepChanged: string[], lazy: boolean, closedTcp: boolean): Promise<RestoreResult> {
    let allow = allowAsked;
    const name = dir.name;
    // a process tree: the main process's image first, then every other live process's; zombies by their status
    const tree = treeOf((m as { stats?: CheckpointStats }).stats?.extra, m.id);
    const others = (tree?.tree ?? []).filter((e) => e.id && e.id !== m.id);
    const lazyArgs = lazyRestoreArgs(dir.dir, name, m.id, (tree?.tree.length ?? 1) > 1, lazy);
    const zombies = (tree?.tree ?? []).filter((e) => e.zombie);
    // the app's files are rolled back to the checkpoint (files-flow.ts): the checkpoint wins over
    // changes made since, which the file check would otherwise refuse
    const named = filesRefOf((m as { stats?: CheckpointStats }).stats?.extra, m.id);
    const filesRef = named && store.cas.list(filesApp(name)).some((c) => c.id === named.id) ? named : null;
    if (named && !filesRef) this.log.warn({ app: name, id: m.id, files: named.id }, "the checkpoint's files image is not in this store: files are not rolled back");
    if (filesRef) allow = true;
    if (keepChanged.length && !filesRef)
      throw new TgError(`cannot restore ${name} from ${m.id}`, `--keep-file-changes was given but the checkpoint has no files image${named ? " in this store" : " (the app runs with --files none)"}: no file would be rolled back anyway`, "Restore without --keep-file-changes", "bad-request");
    // mapped executables and libraries must be the ones the app ran with (mapped-files.ts); files
    // written since the checkpoint: refused before anything is killed or started. The restore
    // plan is composed meanwhile (restore-overlap.ts), where the app's directory exists already.
    const early = await checkWhilePlanning({
      mappedFiles: async () => {
        await this.fileIds.check((m as { stats?: CheckpointStats }).stats?.mappedFiles, `cannot restore ${name} from ${m.id}`);
        for (const e of others) await this.fileIds.check(store.cas.get(e.id!).stats.mappedFiles, `cannot restore ${name} from ${m.id} (pid ${e.pid})`);
      },
      fileCheck: async () => {
        // every process's check at once (child processes), its errors in the tree's order
        const checks = await Promise.allSettled([m.id, ...others.map((e) => e.id!)].map((id) => checkFiles({ app: name, checkpoint: id, image: metaForFileCheck(store.cas, id), logFile: dir.logFile, allow })));
        const failed = checks.find((c) => c.status === "rejected");
        if (failed) throw (failed as PromiseRejectedResult).reason;
      },
      // every process's plan while the checks run
      plan: existsSync(dir.dir) ? [() => restoreInput(store.cas, m.id, dir.dir), ...others.map((e) => () => restoreInput(store.cas, e.id!, dir.dir, `restore-plan-${e.pid}.bin`))] : null,
    });
    const since = (): number => Number(process.hrtime.bigint() - t0);
    const phases = { checkedNs: since(), filesNs: 0, spawnNs: 0, launchedNs: 0, basesNs: 0, notesNs: 0 };
    let held: HeldConnections | null = null;
    try {
      if (running && st) {
        // Read the whole composed image once before killing the running app: damaged store
        // data (checked block by block as it is read) must not cost the app its life.
        progress({ phase: "verify" });
        // (the store's generator itself: a Readable's async iterator would concatenate what it buffered)
        for await (const chunk of store.cas.exportChunks(m.id)) void chunk;
        for (const e of others) for await (const chunk of store.cas.exportChunks(e.id!)) void chunk;
        if (filesRef) for await (const chunk of store.cas.exportChunks(filesRef.id)) void chunk;
        // a planned restore keeps the connections that can be kept (src/daemon/hold-connections.ts)
        if (st.appHostPid) held = await holdConnections(name, st.appHostPid, (m as { stats?: CheckpointStats }).stats?.sockets);
        progress({ phase: "kill" });
        await this.kill(dir, st);
        await testDelay("restore-after-kill");
      }
      progress({ phase: "start" });
      await mkdir(dir.dir, { recursive: true });
      const prevRecord = dir.record() as AppRecord | null;
      let rolledBack: RestoreResult["files"];
      if (filesRef) {
        // before any process exists: every fd offset then agrees with its file
        try {
          const r = await restoreFiles(store.cas, filesRef, dir.dir, prevRecord?.files ?? DEFAULT_FILES, this.filesNever(dir), keepChanged);
          rolledBack = { id: filesRef.id, ...r };
        } catch (e) {
          await writeRestoreFailed(dir.logFile, m.id);
          throw new TgError(`cannot restore ${name} from ${m.id}`, `rolling its files back failed: ${errMessage(e)}`, "No process was started; run the restore again (it rolls the files back from the start)", "restore-failed");
        }
        this.log.info({ app: name, id: filesRef.id, rewritten: rolledBack.rewritten, recreated: rolledBack.recreated, renamedBack: rolledBack.renamedBack, removed: rolledBack.removed, leftAsIs: rolledBack.leftAsIs, dirsMade: rolledBack.dirsMade, dirsRemoved: rolledBack.dirsRemoved, relinked: rolledBack.relinked, kept: rolledBack.kept, unchanged: rolledBack.unchanged, ns: rolledBack.ns }, "files rolled back");
      }
      phases.filesNs = since();
      // the files the rollback made anew: a shared writable mapping of one is mapped from it (native/restore)
      const recreatedList = join(dir.dir, "restore-recreated.list");
      const recreatedArgs: string[] = [];
      if (rolledBack?.recreated.length) {
        await writeFile(recreatedList, rolledBack.recreated.map((p) => `${p}\0`).join(""), { mode: 0o600 });
        recreatedArgs.push("--recreated-list", recreatedList);
      }
      const record = restoreRecord(name, prevRecord, m.id, filesRef?.id);
      await stableAgent(this.home); // the agent the image maps (same build) must exist on this host too
      const input = early?.[0] ?? (await restoreInput(store.cas, m.id, dir.dir)); // pages read from the packs by the restorer, the rest piped
      const image = input.image;
      // a tree's other processes: their images on fds 3, 4, ..., each with its own restore plan
      const memberInputs: RestoreInput[] = early ? early.slice(1) : [];
      if (!early)
        try {
          for (const e of others) memberInputs.push(await restoreInput(store.cas, e.id!, dir.dir, `restore-plan-${e.pid}.bin`));
        } catch (e) {
          for (const mi of [input, ...memberInputs]) await mi.release();
          throw e;
        }
      const images = memberInputs.map((mi) => mi.image);
      // (the Nth --direct is the Nth image's: all or none have one)
      const directArgs = [...input.args, ...memberInputs.flatMap((mi) => mi.args)];
      const explain = (ms: string[]): string[] => [input, ...memberInputs].reduce((acc, mi) => mi.explain(acc), ms);
      const releaseAll = async (): Promise<void> => {
        for (const mi of [input, ...memberInputs]) await mi.release();
      };
      const facts = saveFacts(dir);
      let exportError: unknown = null;
      for (const im of [image, ...images])
        im.on("error", (e) => {
          exportError = e;
          this.killLaunch(dir, record.launcherPid);
        });
      const treeArgs = [...images.flatMap((_, i) => ["--image", `/dev/fd/${3 + i}`]), ...zombies.flatMap((z) => ["--zombie", zombieArg(z)]), ...(tree?.shared ?? []).flatMap((g) => ["--shared", g.map(([pid, fd]) => `${pid}:${fd}`).join(",")])];
      let l: Launched;
      try {
        await writeRestoreMarker(dir.logFile, m.id);
        l = await launch(dir, nativeBinary("tardigrade-restore"), ["--image", "-", ...treeArgs, "--status", dir.statusFile, "--sock", dir.sock, "--pidfile", dir.pidfile, "--stdio-log", dir.logFile, ...(allow ? ["--allow-file-changes"] : []), ...(closedTcp ? ["--allow-closed-tcp"] : []), ...(rolledBack ? ["--files-rolled-back"] : []), ...recreatedArgs, ...(held?.args ?? []), ...directArgs, ...(lazyArgs.length && input.args.length ? lazyArgs : [])], {
          timeoutMs: 120_000,
          stdin: image,
          images,
          onSpawn: async (pid, start) => {
            phases.spawnNs = since();
            record.launcherPid = pid;
            record.launcherStart = start;
            await dir.writeRecord(record);
          },
        });
      } catch (e) {
        if (rolledBack) removeStagingLeft([...rolledBack.recreated, ...rolledBack.rewritten]);
        if (recreatedArgs.length) await rm(recreatedList, { force: true });
        await releaseAll();
        await facts.putBack(); // the replaced app's exit status stays
        await writeRestoreFailed(dir.logFile, m.id);
        if (exportError) throw exportError;
        if (e instanceof LaunchFailure) {
          const detail = e.messages.length ? explain(e.messages).join("; ") : `${describeExit(e.status)}: ${e.message}`;
          throw new TgError(`cannot restore ${name} from ${m.id}`, detail, `See \`tardigrade logs ${name}\`; try an earlier checkpoint with --checkpoint`, "restore-failed");
        }
        throw e;
      }
      if (rolledBack) removeStagingLeft([...rolledBack.recreated, ...rolledBack.rewritten]);
      if (recreatedArgs.length) await rm(recreatedList, { force: true });
      phases.launchedNs = since();
      await releaseAll();
      record.initStart = l.initStart;
      record.restoreNs = l.elapsedNs;
      // the restored agents track written pages from the restored images on (blob.c, track.c):
      // the next checkpoint is incremental on this one
      await testDelay("restore-before-bases");
      Object.assign(record, await restoredBases(dir.sock, l.ping, m.id, others, l.initHostPid));
      phases.basesNs = since();
      await dir.writeRecord(record);
      this.schedule(name, record.everyMs);
      const wallNs = Number(process.hrtime.bigint() - t0);
      this.log.info({ app: name, id: m.id, restoreNs: l.elapsedNs, wallNs, phases }, "app restored");
      await held?.release();
      const notes = treeRestoreNotes([{ socks: (m as { stats?: CheckpointStats }).stats?.sockets }, ...others.map((e) => ({ pid: e.pid, socks: store.cas.get(e.id!).stats.sockets }))], held?.fate, closedTcp);
      notes.push(...(await externalUnixNotes(store.cas.exportMeta(m.id)).catch(() => [])));
      for (const e of others) notes.push(...(await externalUnixNotes(store.cas.exportMeta(e.id!), e.pid).catch(() => [])));
      notes.push(...(await ptyNotes(store.cas.exportMeta(m.id)).catch(() => [])));
      for (const e of others) notes.push(...(await ptyNotes(store.cas.exportMeta(e.id!), e.pid).catch(() => [])));
      const lazyNow = lazyArgs.length ? lazyProgress(dir.dir) : null;
      phases.notesNs = since();
      return { name, checkpoint: m.id, pid: l.ping.pid, initHostPid: l.initHostPid, appHostPid: l.appHostPid, threads: l.ping.threads, restoreNs: l.elapsedNs, verifyNs: 0, verifyOverlapped: true, wallNs, phases, ...(lazyNow ? { lazy: lazyNow } : {}), ...(notes.length ? { notes } : {}), ...(rolledBack ? { files: rolledBack } : {}), ...(named && !filesRef ? { filesSkipped: `${named.id} is not in this store: files were not rolled back` } : {}) };
    } finally {
      for (const i of early ?? []) await i.release(); // (a failure before the launch: done already otherwise)
      await held?.release(); // the traffic goes through again, whatever happened
    }
  }

  /** Kills a launcher we spawned and whatever it started (by host PID), without waiting. */
  private killLaunch(dir: AppDir, launcherPid: number): void {
    const pids = dir.pids();
    for (const pid of [launcherPid ? -launcherPid : 0, pids?.init ?? 0, pids?.app ?? 0]) if (pid) trySignal(pid, "SIGKILL");
  }

  /** SIGKILL the app's init (taking its whole PID namespace down) and wait for it. */
  private async kill(dir: AppDir, st: AppState): Promise<void> {
    const r = dir.record();
    if (st.initHostPid) trySignal(st.initHostPid, "SIGKILL");
    if (st.appHostPid) trySignal(st.appHostPid, "SIGKILL");
    if (!st.initHostPid && r) trySignal(r.launcherPid, "SIGKILL");
    const ok = (!st.initHostPid || (await waitGone(st.initHostPid, 10_000))) && (!st.appHostPid || (await waitGone(st.appHostPid, 10_000)));
    if (r) await waitGone(r.launcherPid, 5_000, r.launcherStart);
    if (!ok) throw new TgError(`cannot stop ${dir.name}`, `host pid ${st.initHostPid ?? st.appHostPid} survived SIGKILL for 10 s`, "Check the process with `ps` and kill it by hand");
  }

  async stop(name: string, timeoutMs = 10_000): Promise<AppState> {
    return this.lock.run(name, async () => {
      const { dir, state } = this.known(name);
      this.schedule(name, undefined);
      if (state.state === "exited") return state;
      const target = state.initHostPid ?? state.launcherPid;
      trySignal(target, "SIGTERM");
      const gone = await waitGone(target, timeoutMs);
      if (!gone || (state.appHostPid && isAlive(state.appHostPid))) await this.kill(dir, state);
      const r = dir.record();
      if (r) await waitGone(r.launcherPid, 5_000, r.launcherStart);
      return dir.state() ?? state;
    });
  }
}

/**
 * The checkpoints committed with checkpoint `id` and restored with it, which the mirror carries
 * with it (src/mirror/bundle.ts): every other live process of its tree, its files image.
 */
export function membersOf(cas: CasStore, id: string): string[] {
  const extra = cas.get(id).stats.extra;
  const out = (treeOf(extra, id)?.tree ?? []).map((e) => e.id).filter((x): x is string => x !== undefined && x !== id);
  const files = filesRefOf(extra, id);
  if (files) out.push(files.id);
  return out;
}

/**
 * What the app's main process's next checkpoint can be incremental on: its last checkpoint, if it
 * is still in the store and is the same process's (a daemonizing app's main process may have
 * changed, init.c) and tracking is on; else why the next one is full.
 */
function mainBase(cas: CasStore, app: string, rec: AppRecord | null, pid: number | undefined): { on: { agentSeq: number; id: string } | null; why: string } {
  if (rec?.tracking === "none") return { on: null, why: "dirty-page tracking is off (run --tracking none)" };
  if (!rec?.lastId || !rec.lastAgentSeq) return { on: null, why: "first checkpoint since the app started or was restored" };
  const last = cas.list(app).find((c) => c.id === rec.lastId);
  if (!last) return { on: null, why: `its base ${rec.lastId} is no longer in the store` };
  if (last.pid !== pid) return { on: null, why: `the app's main process is another one than at ${rec.lastId} (the process it started exited, leaving this one)` };
  return { on: { agentSeq: rec.lastAgentSeq, id: last.id }, why: "" };
}
