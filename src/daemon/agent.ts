// Client of the agent control protocol (docs/native-interface.md): one request
// per connection over the app's Unix socket, replies are JSON lines.
import { closeSync, rmSync } from "node:fs";
import { createConnection } from "node:net";
import { sendLineWithFd } from "./send-fd.js";

export interface PingReply {
  ok: true;
  pid: number;
  hostpid: number;
  threads: number;
  restored: boolean | number;
  seq: number;
  /** The image seq the agent's dirty-page tracking is relative to (0: none, its next checkpoint is full). */
  base?: number;
}

export type CheckpointEvent =
  | { event: "parked"; ok: true }
  /** unix (part of a tree's cut): [fd, inode, peer inode] of each Unix socket whose peer is in no fd of this process, or a word when there were too many to list. */
  | { event: "captured"; ok: true; unix?: [number, number, number][] | string }
  | { event: "resumed"; ok: true; downtime_ns: number; threads: number; stop_ns?: number; resumed_ns?: number }
  | { event: "error"; ok: false; error: string }
  | {
      event: "done";
      ok: true;
      bytes: number;
      pages: number;
      total_ns: number;
      seq?: number;
      kind?: "full" | "incremental";
      parent?: number;
      tracking?: TrackingMode;
      pages_scanned?: number;
      pages_written?: number;
      /** Pages of mappings copied whole by adaptive tracking (docs/engine.md) */
      hot_pages?: number;
      full_reason?: string;
    }
  | { event: "done"; ok: false; error: string };

/** Sends one request and calls onLine for each JSON reply until it returns true (finished) or the socket ends; onLine may send more lines. */
function request(sock: string, line: string, onLine: (obj: Record<string, unknown>, send: (line: string) => void) => boolean, timeoutMs: number, passFd?: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const c = createConnection(sock);
    let buf = "";
    let finished = false;
    const timer = setTimeout(() => fail(new Error(`no reply from the agent within ${timeoutMs} ms`)), timeoutMs);
    const fail = (e: Error): void => {
      if (finished) return;
      finished = true;
      clearTimeout(timer);
      c.destroy();
      reject(e);
    };
    c.setEncoding("utf8");
    c.on("connect", () => {
      if (passFd === undefined) {
        c.write(line + "\n");
        return;
      }
      try {
        sendLineWithFd(c, line + "\n", passFd);
      } catch (e) {
        fail(e instanceof Error ? e : new Error(String(e)));
      }
    });
    c.on("data", (d: string) => {
      buf += d;
      let nl: number;
      while (!finished && (nl = buf.indexOf("\n")) >= 0) {
        const text = buf.slice(0, nl).trim();
        buf = buf.slice(nl + 1);
        if (!text) continue;
        let obj: Record<string, unknown>;
        try {
          obj = JSON.parse(text) as Record<string, unknown>;
        } catch {
          fail(new Error(`the agent sent a malformed reply: ${JSON.stringify(text.slice(0, 200))}`));
          return;
        }
        if (onLine(obj, (l) => c.write(l + "\n"))) {
          finished = true;
          clearTimeout(timer);
          c.end();
          resolve();
        }
      }
    });
    c.on("error", (e) => fail(e));
    c.on("close", () => fail(new Error("the agent closed the connection before replying")));
  });
}

export async function ping(sock: string, timeoutMs = 2000): Promise<PingReply> {
  let reply: PingReply | null = null;
  await request(sock, "PING", (o) => {
    reply = o as unknown as PingReply;
    return true;
  }, timeoutMs);
  const r = reply as PingReply | null;
  if (!r || r.ok !== true) throw new Error(`the agent answered PING with ${JSON.stringify(r)}`);
  return r;
}

/** Dirty-page trackers the agent knows (`tracking=` of CHECKPOINT); "none" makes every checkpoint full. */
export const TRACKING_MODES = ["uffd", "hash", "none"] as const;
export type TrackingMode = (typeof TRACKING_MODES)[number];
/** run --external-unix: what a checkpoint does with a Unix stream socket connected outside the app. */
export const EXTERNAL_UNIX_POLICIES = ["refuse", "closed"] as const;
export type ExternalUnixPolicy = (typeof EXTERNAL_UNIX_POLICIES)[number];

/** Options of a CHECKPOINT request (docs/native-interface.md). */
export interface CheckpointOptions {
  /** Ask for an image relative to the agent's image of this seq (the last one committed). */
  incrementalOn?: number;
  /** Dirty-page tracker, taken at the process's first checkpoint. */
  tracking?: TrackingMode;
  /** imagePath is a FIFO the caller reads. */
  fifo?: boolean;
  /** The image (file or FIFO write end) the caller opened: passed to the agent with the request (SCM_RIGHTS). checkpoint() owns it and closes it when the request is over. */
  imageFd?: number;
  /**
   * Part of a process tree's cut: the agent says "parked" once every thread of its process is
   * stopped and "captured" once its snapshot is taken, and waits at each for the word this
   * returns ("CAPTURE", "RESUME", or "ABORT <why>").
   */
  hold?: (e: Extract<CheckpointEvent, { event: "parked" | "captured" }>) => Promise<string>;
  /** run --external-unix: "closed" records Unix stream sockets connected outside the app as closed connections instead of refusing. */
  externalUnix?: ExternalUnixPolicy;
  /** With hold: part of a process tree's cut (an fd whose other end is in another process is then the daemon's to check, not a refusal). */
  tree?: boolean;
}

/** One CHECKPOINT request. */
async function checkpointOnce(sock: string, imagePath: string, onEvent: (e: CheckpointEvent) => void, opts: CheckpointOptions = {}, timeoutMs = 30 * 60_000): Promise<CheckpointEvent[]> {
  const events: CheckpointEvent[] = [];
  const words = [imagePath, opts.incrementalOn ? `incremental parent=${opts.incrementalOn}` : "full"];
  if (opts.tracking) words.push(`tracking=${opts.tracking}`);
  if (opts.fifo) words.push("fifo");
  if (opts.imageFd !== undefined) words.push("fd");
  if (opts.hold) words.push("hold");
  if (opts.tree) words.push("tree");
  if (opts.externalUnix === "closed") words.push("external-unix=closed");
  const hold = opts.hold;
  await request(`${sock}`, `CHECKPOINT ${words.join(" ")}`, (o, send) => {
    const e = o as unknown as CheckpointEvent;
    events.push(e);
    onEvent(e);
    if (hold && (e.event === "parked" || e.event === "captured")) {
      hold(e).then(send, (err: unknown) => send(`ABORT ${err instanceof Error ? err.message : String(err)}`.replace(/\n/g, " ")));
    }
    return e.event === "done" || e.event === "error";
  }, timeoutMs, opts.imageFd);
  return events;
}

/** Returns the events of one CHECKPOINT request; the last one is "done" or "error". */
export async function checkpoint(sock: string, imagePath: string, onEvent: (e: CheckpointEvent) => void, opts: CheckpointOptions = {}, timeoutMs = 30 * 60_000): Promise<CheckpointEvent[]> {
  // The caller's copy of the image fd stays open until the request is over: a FIFO's reader sees
  // the end only once the agent's copy and this one are closed (an agent that opens the path
  // itself, as earlier versions, comes and goes before the reader has seen anything otherwise).
  const imageFd = opts.imageFd;
  try {
    const oldAgent = (e: CheckpointEvent): boolean => imageFd !== undefined && e.event === "error" && e.error.includes("unknown CHECKPOINT option 'fd'");
    const events = await checkpointOnce(sock, imagePath, (e) => {
      if (!oldAgent(e)) onEvent(e); // (answered again below)
    }, opts, timeoutMs);
    const last = events[events.length - 1];
    if (!last || !oldAgent(last)) return events;
    // An agent of an earlier version (an app started before an upgrade) opens the image itself, as
    // it always did (it refused before touching anything): the file the caller made goes first.
    if (!opts.fifo) rmSync(imagePath, { force: true });
    return await checkpointOnce(sock, imagePath, onEvent, { ...opts, imageFd: undefined }, timeoutMs);
  } finally {
    if (imageFd !== undefined) closeSync(imageFd);
  }
}

