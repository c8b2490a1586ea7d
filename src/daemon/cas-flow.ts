// Checkpoint and restore through the content-addressed store, streamed: the agent
// writes the raw image into a FIFO that the store ingests as it arrives (no
// intermediate file), and a restore pipes the store's composed full image into
// tardigrade-restore's stdin (no intermediate file either).
import { spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { closeSync, constants, openSync } from "node:fs";
import { mkdir, rm } from "node:fs/promises";
import { join } from "node:path";
import type { Readable } from "node:stream";
import { TgError, errMessage } from "../errors.js";
import type { CasStore } from "../store/cas/store.js";
import type { CasCheckpoint, IngestInfo } from "../store/cas/types.js";
import { checkpoint as agentCheckpoint, type CheckpointEvent, type CheckpointOptions } from "./agent.js";

export interface CasCapture {
  checkpoint: CasCheckpoint;
  events: CheckpointEvent[];
  /** What the agent reported in its final event. */
  done: Extract<CheckpointEvent, { event: "done"; ok: true }>;
}

function mkfifo(path: string): void {
  const r = spawnSync("mkfifo", ["-m", "600", path], { encoding: "utf8" });
  if (r.status !== 0) throw new TgError("cannot create the image FIFO", `mkfifo ${path}: ${r.stderr || r.error?.message || `exit ${r.status}`}`, "Check that coreutils' mkfifo is installed and the store is writable", "checkpoint-failed");
}

/** Lets a reader blocked in open() of the FIFO go (it then reads EOF). */
function releaseReader(fifo: string): void {
  try {
    closeSync(openSync(fifo, constants.O_WRONLY | constants.O_NONBLOCK));
  } catch {
    /* no reader waiting: nothing to release */
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
): Promise<CasCapture> {
  const dir = join(stagingRoot, `${app}.${randomBytes(6).toString("hex")}`);
  await mkdir(dir, { recursive: true });
  const fifo = join(dir, `pid${pid}.img`);
  try {
    mkfifo(fifo);
    // The agent's final reply decides whether the ingested image may be committed.
    let verdict!: (e: Error | null) => void;
    const agentDone = new Promise<void>((resolve, reject) => (verdict = (e) => (e ? reject(e) : resolve())));
    agentDone.catch(() => {}); // awaited by the ingest
    const ingestInfo: IngestInfo = { ...info, beforeCommit: () => agentDone };
    // The store opens the read end now (it blocks until the agent opens the write end).
    const ingest = cas.ingestNext(app, fifo, ingestInfo);
    ingest.catch(() => {}); // awaited below
    let events: CheckpointEvent[] = [];
    let failure: TgError | null = null;
    try {
      events = await agentCheckpoint(sock, fifo, (e) => {
        if (e.event === "resumed") ingestInfo.downtimeNs = e.downtime_ns;
        if (e.event === "done" && e.ok) {
          ingestInfo.totalNs = e.total_ns;
          if (typeof e.pages_written === "number") ingestInfo.pagesWritten = e.pages_written;
        }
        onEvent(e);
      }, { ...agentOpts, fifo: true });
      const last = events[events.length - 1];
      if (!last || last.ok === false || last.event !== "done") {
        const why = last && last.ok === false ? last.error : "the agent gave no final reply";
        failure = new TgError(`checkpoint of ${app} failed`, why, "Nothing was committed; the app keeps running and earlier checkpoints are intact", "checkpoint-failed");
      }
    } catch (e) {
      failure = new TgError(`checkpoint of ${app} failed`, `lost contact with the agent (${errMessage(e)})`, "Nothing was committed; earlier checkpoints are intact", "checkpoint-failed");
    }
    if (failure) {
      verdict(failure);
      // The store's open() of the read end may not have started yet when the agent refuses
      // before opening the write end (a refusal is quick; a busy machine delays the open):
      // release it until the ingest has ended, or it blocks forever.
      let ended = false;
      const settled = ingest.then(() => {}, () => {}).finally(() => (ended = true));
      for (let i = 0; !ended && i < 3000; i++) {
        releaseReader(fifo);
        await Promise.race([settled, new Promise((r) => setTimeout(r, 20))]);
      }
      await settled;
      throw failure;
    }
    verdict(null);
    const checkpoint = await ingest;
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
