// What a restore did with the Unix sockets whose peer was outside the app (FD kind 14,
// docs/format.md): read from the checkpoint's metadata after the restore, so that a datagram
// socket's path is looked at as the restored app found it.
import { lstatSync } from "node:fs";
import type { Readable } from "node:stream";
import { decodeUnixExternal, externalUnixNote } from "../image/unix.js";
import { metaFdRecords } from "./meta-fds.js";

const FD_KIND_UNIX_EXT = 14;

function isSocketFile(path: string): boolean {
  try {
    return lstatSync(path).isSocket();
  } catch {
    return false;
  }
}

/** The restore output's lines for the kind-14 fds of an image's metadata (`meta`: an image without pages). */
export async function externalUnixNotes(meta: Readable, pid?: number): Promise<string[]> {
  const notes: string[] = [];
  for (const p of await metaFdRecords(meta)) {
    if (p.readUInt32LE(4) !== FD_KIND_UNIX_EXT) continue;
    const u = decodeUnixExternal(p.subarray(80, 80 + p.readUInt32LE(72)));
    if (typeof u !== "string") notes.push(externalUnixNote(p.readUInt32LE(0), u, isSocketFile, pid));
  }
  return notes;
}
