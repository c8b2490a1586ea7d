// What a restore did with the Unix sockets whose peer was outside the app (FD kind 14,
// docs/format.md): read from the checkpoint's metadata after the restore, so that a datagram
// socket's path is looked at as the restored app found it.
import { lstatSync } from "node:fs";
import type { Readable } from "node:stream";
import { FILE_HEADER_SIZE, RECORD_HEADER_SIZE, RecordType } from "../image/format.js";
import { decodeUnixExternal, externalUnixNote } from "../image/unix.js";

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
  const parts: Buffer[] = [];
  for await (const c of meta) parts.push(c as Buffer);
  const b = Buffer.concat(parts);
  const notes: string[] = [];
  for (let off = FILE_HEADER_SIZE; off + RECORD_HEADER_SIZE <= b.length; ) {
    const type = b.readUInt32LE(off);
    const plen = Number(b.readBigUInt64LE(off + 8));
    const p = b.subarray(off + RECORD_HEADER_SIZE, Math.min(b.length, off + RECORD_HEADER_SIZE + plen));
    off += RECORD_HEADER_SIZE + ((plen + 7) & ~7);
    if (type === RecordType.END) break;
    if (type !== RecordType.FD || p.length < 80 || p.readUInt32LE(4) !== FD_KIND_UNIX_EXT) continue;
    if (p.readUInt32LE(76) !== 0) continue; // a dup of an earlier fd: one socket, one line
    const u = decodeUnixExternal(p.subarray(80, 80 + p.readUInt32LE(72)));
    if (typeof u !== "string") notes.push(externalUnixNote(p.readUInt32LE(0), u, isSocketFile, pid));
  }
  return notes;
}
