// Identity of the executables and libraries an app maps (issue 11, defect 17). Clean file
// pages are not stored in an image: restore maps the files again and the restorer checks
// only their size and mtime, so a file rewritten in place with the same size and mtime
// would resume the app on different code. At checkpoint we record, per executable file
// mapping, the ELF build-id (or, for a file without one, the SHA-256 of its content);
// before a restore starts anything we compare them with the files on this host.
// Build-ids, not inodes, so that a restore on another host with the same packages passes.
// Results are cached by dev/ino/size/mtime/ctime: libc is not re-read at every checkpoint,
// and an in-place rewrite changes ctime (which no one can set back), so it is re-read.
import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { open, stat } from "node:fs/promises";
import type { Stats } from "node:fs";
import { TgError, errMessage } from "../errors.js";
import type { MappedFile, VmaFile } from "../store/cas/types.js";

export type { MappedFile, VmaFile };

const PROT_EXEC = 4;
const FILE_KINDS = new Set([3, 4]);
const VFLAG_DELETED = 8;
const PT_NOTE = 4;
const NT_GNU_BUILD_ID = 3;
const MAX_NOTE = 64 * 1024;

/** The files of executable file mappings (deleted files excepted: their pages are stored). */
export function executablePaths(vmas: VmaFile[]): string[] {
  const out = new Set<string>();
  for (const v of vmas) if (FILE_KINDS.has(v.kind) && (v.prot & PROT_EXEC) !== 0 && (v.vflags & VFLAG_DELETED) === 0 && v.path.startsWith("/")) out.add(v.path);
  return [...out].sort();
}

/** The GNU build-id of an ELF file (hex), or null if it is not a 64-bit little-endian ELF or has none. */
export async function readBuildId(path: string): Promise<string | null> {
  const fh = await open(path, "r");
  try {
    const eh = Buffer.alloc(64);
    const { bytesRead } = await fh.read(eh, 0, 64, 0);
    if (bytesRead < 64 || eh.readUInt32BE(0) !== 0x7f454c46 || eh[4] !== 2 || eh[5] !== 1) return null;
    const phoff = Number(eh.readBigUInt64LE(32));
    const phentsize = eh.readUInt16LE(54);
    const phnum = eh.readUInt16LE(56);
    if (phentsize < 56 || phnum === 0 || phnum > 512) return null;
    const ph = Buffer.alloc(phentsize * phnum);
    if ((await fh.read(ph, 0, ph.length, phoff)).bytesRead !== ph.length) return null;
    for (let i = 0; i < phnum; i++) {
      const p = ph.subarray(i * phentsize);
      if (p.readUInt32LE(0) !== PT_NOTE) continue;
      const off = Number(p.readBigUInt64LE(8));
      const len = Math.min(Number(p.readBigUInt64LE(32)), MAX_NOTE);
      const notes = Buffer.alloc(len);
      const got = (await fh.read(notes, 0, len, off)).bytesRead;
      for (let o = 0; o + 12 <= got; ) {
        const namesz = notes.readUInt32LE(o);
        const descsz = notes.readUInt32LE(o + 4);
        const type = notes.readUInt32LE(o + 8);
        const name = o + 12;
        const desc = name + ((namesz + 3) & ~3);
        const next = desc + ((descsz + 3) & ~3);
        if (next > got) break;
        if (type === NT_GNU_BUILD_ID && namesz === 4 && notes.toString("latin1", name, name + 3) === "GNU" && descsz > 0) return notes.toString("hex", desc, desc + descsz);
        o = next;
      }
    }
    return null;
  } finally {
    await fh.close();
  }
}

async function sha256File(path: string): Promise<string> {
  const h = createHash("sha256");
  for await (const chunk of createReadStream(path) as AsyncIterable<Buffer>) h.update(chunk);
  return h.digest("hex");
}

/** Identities of files, cached by dev/ino/size/mtime/ctime. */
export class FileIdentityCache {
  private readonly cache = new Map<string, MappedFile>();

  private static key(path: string, st: Stats): string {
    return `${path}\0${st.dev}:${st.ino}:${st.size}:${st.mtimeMs}:${st.ctimeMs}`;
  }

  async identify(path: string): Promise<MappedFile> {
    const st = await stat(path);
    const key = FileIdentityCache.key(path, st);
    const hit = this.cache.get(key);
    if (hit) return hit;
    const buildId = await readBuildId(path).catch(() => null);
    const id: MappedFile = buildId ? { path, size: st.size, buildId } : { path, size: st.size, sha256: await sha256File(path) };
    // the file may have changed while it was read: cache only if it did not
    const after = await stat(path);
    if (FileIdentityCache.key(path, after) === key) {
      if (this.cache.size > 4096) this.cache.clear();
      this.cache.set(key, id);
    }
    return id;
  }

  /** What a checkpoint records: the identity of each executable mapping's file (unreadable ones skipped). */
  async describe(vmas: VmaFile[]): Promise<MappedFile[]> {
    const out: MappedFile[] = [];
    for (const path of executablePaths(vmas)) {
      try {
        out.push(await this.identify(path));
      } catch {
        /* gone or unreadable now: the restorer's own checks (size, mtime) still apply */
      }
    }
    return out;
  }

  /**
   * Refuses (naming the file) when a recorded executable or library differs on this host:
   * another build-id, no build-id any more, another content, or missing.
   */
  async check(recorded: MappedFile[] | undefined, what: string): Promise<void> {
    for (const r of recorded ?? []) {
      let now: MappedFile;
      try {
        now = await this.identify(r.path);
      } catch (e) {
        throw new TgError(what, `${r.path}, mapped by the app at the checkpoint, cannot be read on this host (${errMessage(e)})`, "Install the same version of this file at the same path, then restore again", "file-changed");
      }
      const why =
        r.buildId !== undefined
          ? now.buildId !== r.buildId && `${r.path} changed since the checkpoint (ELF build-id ${r.buildId}, now ${now.buildId ?? "none"})`
          : now.sha256 !== r.sha256 && `${r.path} changed since the checkpoint (its content differs: SHA-256 ${r.sha256?.slice(0, 16)}…, now ${now.sha256?.slice(0, 16) ?? `build-id ${now.buildId}`}…)`;
      if (why) throw new TgError(what, why, "The app would resume on different code. Put back the version it ran with (same package version on this host), or start the app anew with `tardigrade run`", "file-changed");
    }
  }
}
