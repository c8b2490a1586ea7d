// What a restore did with the bytes queued in the app's ptys (FD kinds 16 and 17, docs/format.md):
// a terminal has no peek, so they were counted at the checkpoint, not kept; the restore output
// says how many were dropped, from the checkpoint's metadata.
import type { Readable } from "node:stream";
import { metaFdRecords } from "./meta-fds.js";

const FD_KIND_PTY_MASTER = 16;
const FD_KIND_PTY_SLAVE = 17;

/** The restore output's lines for the pty fds of an image's metadata that had bytes queued (`meta`: an image without pages). */
export async function ptyNotes(meta: Readable, pid?: number): Promise<string[]> {
  const notes: string[] = [];
  for (const p of await metaFdRecords(meta)) {
    const kind = p.readUInt32LE(4);
    if ((kind !== FD_KIND_PTY_MASTER && kind !== FD_KIND_PTY_SLAVE) || p.length < 80 + 72) continue;
    const e = p.subarray(80);
    const queued = kind === FD_KIND_PTY_MASTER ? e.readUInt32LE(12) : e.readUInt32LE(8);
    if (!queued) continue;
    const who = pid === undefined ? "" : ` of pid ${pid}`;
    notes.push(`fd ${p.readUInt32LE(0)}${who} (/dev/pts/${e.readUInt32LE(0)}${kind === FD_KIND_PTY_MASTER ? " master" : ""}): ${queued} byte${queued === 1 ? "" : "s"} ${kind === FD_KIND_PTY_MASTER ? "of output" : "of input"} it had not read at the checkpoint were dropped (a terminal's queues are not kept)`);
  }
  return notes;
}
