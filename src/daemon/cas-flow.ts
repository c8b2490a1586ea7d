// Checkpoint and restore through the content-addressed store, streamed: the agent
// writes the raw image into a FIFO that the store ingests as it arrives (no
// intermediate file), and a restore pipes the store's composed full image into
// tardigrade-restore's stdin (no intermediate file either).
import { constants as fsc, existsSync, openSync } from "node:fs";
import koffi from "koffi";
import { randomBytes } from "node:crypto";
import { mkdir, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import type { Readable } from "node:stream";
import { TgError, errMessage } from "../errors.js";
import type { CasStore } from "../store/cas/store.js";
import type { CasCheckpoint, IngestInfo } from "../store/cas/types.js";
import { checkpoint as agentCheckpoint, type CheckpointEvent, type CheckpointOptions } from "./agent.js";
import { noSpaceError } from "./disk-full.js";
import { openFifoReader } from "./fifo-reader.js";
import { testDelay } from "./test-hooks.js";

export interface CasCapture {
  checkpoint: CasCheckpoint;
  events: CheckpointEvent[];
  /** What the agent reported in its final event. */
  done: Extract<CheckpointEvent, { event: "done"; ok: true }>;
}

/** libc's mkfifo(3) through koffi (node has none; spawning mkfifo(1) cost ~5-10 ms per image, too slow for a tree's cut). */
let libcMkfifo: ((path: string, mode: number) => number) | null = null;
function mkfifo(path: string): void {
  libcMkfifo ??= koffi.load("libc.so.6").func("int mkfifo(const char *path, uint32_t mode)") as (path: string, mode: number) => number;
  if (libcMkfifo(path, 0o600) !== 0) {
    if (!existsSync(join(path, ".."))) throw Object.assign(new Error(`mkfifo ${path}: no such directory`), { code: "ENOENT" });
    throw new TgError("cannot create the image FIFO", `mkfifo ${path} failed`, "Check that the store is writable and not full", "checkpoint-failed");
  }
}

export async function captureIntoCas(
  cas: CasStore,
  app: string,
  sock: string,
  pid: number,
  stagingRoot: string,
  agentOpts: Omit<CheckpointOptions, "fifo">,
  info: Omit<IngestInfo, "downtimeNs" | "totalNs">,
  onEvent: (e: CheckpointEvent) => void,
  /** A process of a tree: stored under this name (`<app>~<pid>` for all but the main process) at the tree's seq. */
  at?: {
    storeApp: string;
    seq: number;
    /** Awaited before this image is queued for the store (a tree's main process: after every other one, whose commits it waits for). */
    after?: Promise<unknown>;
    /** Told once this image is queued for the store. */
    queued?: () => void;
    /** Awaited before the agent is asked (a tree: every process asked at once, once all are set up). */
    go?: Promise<unknown>;
  },
): Promise<CasCapture> {
  const dir = join(stagingRoot, `${app}.${randomBytes(6).toString("hex")}`);
  const fifo = join(dir, `pid${pid}.img`);
  try {
    // (not mkdir -p for dir itself: on a full disk it fails with ENOENT instead of ENOSPC)
    await mkdir(stagingRoot, { recursive: true });
    await mkdir(dir);
    mkfifo(fifo);
  } catch (e) {
    await rm(dir, { recursive: true, force: true });
    throw noSpaceError(e, `checkpoint of ${app} failed`, [stagingRoot]) ?? e;
  }
  try {
    // The agent's final reply decides whether the ingested image may be committed.
    let verdict!: (e: Error | null) => void;
    const agentDone = new Promise<void>((resolve, reject) => (verdict = (e) => (e ? reject(e) : resolve())));
    agentDone.catch(() => {}); // awaited by the ingest
    const also = info.beforeCommit;
    const ingestInfo: IngestInfo = {
      ...info,
      beforeCommit: async () => {
        await agentDone;
        await also?.(); // a tree's main process: every other process committed first
      },
    };
    // Our end of the FIFO is open before the agent is asked (it never waits for the store);
    // the ingest reads it once it holds the store's lock.
    const reader = openFifoReader(fifo);
    let ingestError: unknown = null;
    // (the store takes images in the order they are queued: a tree's main process must come last,
    // or its commit, which waits for the others', would hold the store while they wait for it)
    if (at?.after) await at.after;
    const ingest = at ? cas.ingest(at.storeApp, at.seq, reader.stream, ingestInfo) : cas.ingestNext(app, reader.stream, ingestInfo);
    at?.queued?.();
    if (at?.go) await at.go;
    ingest.catch((e: unknown) => {
      // The store stopped reading (bad image, full disk...): the agent must not wait on a full pipe.
      ingestError = e;
      reader.abort("the store stopped reading the image");
    });
    let events: CheckpointEvent[] = [];
    let failure: TgError | null = null;
    try {
      // The FIFO's write end, opened here (the reader is open: no wait) and passed to the agent with
      // the request: a process of another user could not open it in the private store.
      const imageFd = openSync(fifo, fsc.O_WRONLY | fsc.O_NONBLOCK);
      events = await agentCheckpoint(sock, fifo, (e) => {
        if (e.event === "resumed") ingestInfo.downtimeNs = e.downtime_ns;
        if (e.event === "done" && e.ok) {
          ingestInfo.totalNs = e.total_ns;
          if (typeof e.pages_written === "number") ingestInfo.pagesWritten = e.pages_written;
          if (typeof e.hot_pages === "number") ingestInfo.hotPages = e.hot_pages;
        }
        onEvent(e);
      }, { ...agentOpts, fifo: true, imageFd });
      const last = events[events.length - 1];
      if (!last || last.ok === false || last.event !== "done") {
        const why = last && last.ok === false ? last.error : "the agent gave no final reply";
        failure = new TgError(`checkpoint of ${app} failed`, why, "Nothing was committed; the app keeps running and earlier checkpoints are intact", "checkpoint-failed");
      }
    } catch (e) {
      failure = new TgError(`checkpoint of ${app} failed`, `lost contact with the agent (${errMessage(e)})`, "Nothing was committed; earlier checkpoints are intact", "checkpoint-failed");
      onEvent({ event: "error", ok: false, error: failure.why }); // a tree's cut learns it now, not after the store gave up
    }
    if (failure) {
      await testDelay("checkpoint-agent-failed"); // lets the store see the image end first (tests)
      // The store failed first and the agent then saw its pipe closed: the store's reason is the
      // one that matters. An agent that stopped for a reason of its own (a refusal, after the
      // image's first records) makes the store see the image end early, maybe before the agent's
      // reply arrives here: then the agent's reason is the one that matters.
      const storeFirst = ingestError !== null && /Broken pipe|killed by signal 13\b/.test(failure.why);
      verdict(failure);
      reader.abort("the checkpoint was abandoned");
      await ingest.catch(() => {});
      // A store that ran out of space stops reading: the agent then saw only "Broken pipe".
      // (The ingest's other errors here come from the agent's failure: its verdict, the abort.)
      if (ingestError && ingestError !== failure) {
        const full = noSpaceError(ingestError, `checkpoint of ${app} failed`, [cas.root]);
        if (full) throw full;
        if (storeFirst) {
          throw new TgError(`checkpoint of ${app} failed`, `the store refused the image: ${errMessage(ingestError)}`, "Nothing was committed; the app keeps running and earlier checkpoints are intact", "checkpoint-failed");
        }
      }
      throw failure;
    }
    verdict(null);
    const checkpoint = await ingest.catch((e: unknown) => {
      throw noSpaceError(e, `checkpoint of ${app} failed`, [cas.root]) ?? e;
    });
    const done = events[events.length - 1] as CasCapture["done"];
    return { checkpoint, events, done };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** The full image of `id`, composed by the store, for tardigrade-restore's stdin. */
export function exportForRestore(cas: CasStore, id: string): Readable {
  return cas.exportImage(id);
}

/** The metadata of `id` (no pages), for `tardigrade-restore --check-files`. */
export function metaForFileCheck(cas: CasStore, id: string): Readable {
  return cas.exportMeta(id);
}

export interface RestoreInput {
  /** tardigrade-restore's stdin. */
  image: Readable;
  /** Extra arguments (--direct PLAN). */
  args: string[];
  /** Names the pack file and offset of a block the restorer named by its index in the plan. */
  explain(messages: string[]): string[];
  /** Once the restorer has read everything (or failed): the plan file goes, gc may take the packs again. */
  release(): Promise<void>;
}

/**
 * What a restore from the store hands tardigrade-restore: the raw blocks' pages through a
 * plan it reads from the pack files itself (src/store/cas/restore-plan.ts), the rest as the
 * image on its stdin. TARDIGRADE_RESTORE_DIRECT=0 pipes the whole composed image instead
 * (the former path, kept for comparison: `npm run bench -- engine`).
 */
export async function restoreInput(cas: CasStore, id: string, appDir: string, planName = "restore-plan.bin"): Promise<RestoreInput> {
  if (process.env.TARDIGRADE_RESTORE_DIRECT === "0") {
    return { image: exportForRestore(cas, id), args: [], explain: (m) => m, release: async () => undefined };
  }
  const { plan, image, release } = cas.restoreWithPlan(id);
  const file = join(appDir, planName);
  try {
    await writeFile(file, plan.file, { mode: 0o600 });
  } catch (e) {
    image.destroy();
    release();
    throw e;
  }
  return {
    image,
    args: ["--direct", file],
    explain: (messages) =>
      messages.map((m) =>
        m.replace(/block (\d+) of the restore plan/, (all, n: string) => {
          const b = plan.blocks[Number(n)];
          if (!b) return all;
          cas.suspectBlock(b.id, m);
          return `the block at ${cas.packPath(b.pack)} offset ${b.offset}`;
        }),
      ),
    release: async () => {
      image.destroy();
      release();
      await rm(file, { force: true });
    },
  };
}
