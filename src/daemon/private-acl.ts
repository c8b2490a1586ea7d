// The daemon's lock-down of its home (private-fs.ts) and the POSIX ACL entries the agent gives the
// users an app switches to (native/common/agentdir.c, docs/engine.md "Processes of another user").
// On a file with an ACL the mode's group bits are the ACL's mask: a chmod to 0700 set the mask to
// nothing and so took those users' access away until the app's next restore (a worker that execs
// could no longer listen in the app's directory). Here the lock-down keeps, on the paths the agent
// grants and only with the rights it grants there, the named-user entries and the mask, and takes
// away everything else: the owning group's and others' rights, named groups, and named users on any
// other path. Through koffi (node has no xattr binding).
import koffi from "koffi";
import { relative } from "node:path";

const ACL_XATTR = "system.posix_acl_access";
const ACL_VERSION = 2;
const T_USER_OBJ = 1,
  T_USER = 2,
  T_GROUP_OBJ = 4,
  T_MASK = 0x10,
  T_OTHER = 0x20;

interface Entry {
  tag: number;
  perm: number;
  id: number;
}

type Get = (path: string, name: string, buf: Buffer | null, size: number) => number;
type Set = (path: string, name: string, value: Buffer, size: number, flags: number) => number;
let calls: { get: Get; set: Set } | null | undefined;

function lib(): { get: Get; set: Set } | null {
  if (calls !== undefined) return calls;
  try {
    const c = koffi.load("libc.so.6");
    calls = {
      get: c.func("long lgetxattr(const char *path, const char *name, _Out_ uint8_t *value, size_t size)") as Get,
      set: c.func("int lsetxattr(const char *path, const char *name, const uint8_t *value, size_t size, int flags)") as Set,
    };
  } catch {
    calls = null; // no FFI: the plain chmod, as before
  }
  return calls;
}

/** The path's access ACL, or null when it has none (or it cannot be read). */
export function readAcl(path: string): Entry[] | null {
  const l = lib();
  if (!l) return null;
  const buf = Buffer.alloc(4 + 8 * 128);
  const n = l.get(path, ACL_XATTR, buf, buf.length);
  if (n < 4 || (n - 4) % 8 !== 0 || buf.readUInt32LE(0) !== ACL_VERSION) return null;
  const out: Entry[] = [];
  for (let o = 4; o < n; o += 8) out.push({ tag: buf.readUInt16LE(o), perm: buf.readUInt16LE(o + 2), id: buf.readUInt32LE(o + 4) });
  return out;
}

function writeAcl(path: string, acl: Entry[]): boolean {
  const l = lib();
  if (!l) return false;
  const buf = Buffer.alloc(4 + 8 * acl.length);
  buf.writeUInt32LE(ACL_VERSION, 0);
  acl.forEach((e, i) => {
    buf.writeUInt16LE(e.tag, 4 + 8 * i);
    buf.writeUInt16LE(e.perm, 6 + 8 * i);
    buf.writeUInt32LE(e.id, 8 + 8 * i);
  });
  return l.set(path, ACL_XATTR, buf, buf.length, 0) === 0;
}

/**
 * The most a named user may have on `path` of the home (what agentdir.c grants), or 0: search on
 * the home, apps/ and lib/; write and search on an app's directory; read and write on its
 * files.journal, files.cow and files.cow-log; read on the agent library.
 */
export function grantedPerm(home: string, path: string): number {
  const rel = relative(home, path);
  if (rel === "" || rel === "apps" || rel === "lib") return 1;
  const parts = rel.split("/");
  if (parts.length === 2 && parts[0] === "apps") return 3;
  if (parts.length === 3 && parts[0] === "apps" && (parts[2] === "files.journal" || parts[2] === "files.cow" || parts[2] === "files.cow-log")) return 6;
  if (parts.length === 2 && parts[0] === "lib" && /^libtardigrade-agent-[0-9a-f]+\.so$/.test(parts[1]!)) return 4;
  return 0;
}

/**
 * Locks down a path that has an ACL, keeping what the agent granted there: the owner's entry as
 * it is (its mode bits), the owning group and others nothing, named groups gone, named users cut to
 * grantedPerm (gone where that is 0), the mask their union. Returns null when the agent grants
 * nothing on the path or it has no ACL (the caller chmods: on a path with an ACL that takes the mask,
 * and so every named entry's rights, away), else whether it changed anything; throws if the ACL
 * cannot be written. (Only the few granted paths are read: the lock-down walks the whole home.)
 */
export function lockDownAcl(home: string, path: string): boolean | null {
  const max = grantedPerm(home, path);
  if (max === 0) return null;
  const acl = readAcl(path);
  if (!acl) return null;
  const out: Entry[] = [];
  let mask = 0;
  for (const e of acl) {
    if (e.tag === T_USER_OBJ) out.push(e);
    else if (e.tag === T_USER) {
      const perm = e.perm & max;
      if (perm) {
        out.push({ ...e, perm });
        mask |= perm;
      }
    } else if (e.tag === T_GROUP_OBJ || e.tag === T_OTHER) out.push({ ...e, perm: 0 });
    // (named groups, tag 8, dropped; the mask set below)
  }
  if (out.some((e) => e.tag === T_USER)) out.push({ tag: T_MASK, perm: mask, id: 0xffffffff });
  out.sort((a, b) => a.tag - b.tag || a.id - b.id);
  const same = out.length === acl.length && out.every((e, i) => e.tag === acl[i]!.tag && e.perm === acl[i]!.perm && e.id === acl[i]!.id);
  if (same) return false;
  if (!writeAcl(path, out)) throw new Error(`cannot set the ACL of ${path}`);
  return true;
}

/**
 * Gives every user named in the ACL of `dir` (the app's directory: the agent names there each user
 * a process of the app switched to) read and write on `path` (a file of it the agents append to),
 * keeping the rest of its ACL. A no-op when the directory names nobody; throws when the ACL is
 * needed and cannot be set. (Two lgetxattr calls when nothing is to change.)
 */
export function grantDirUsers(dir: string, path: string): void {
  const users = (readAcl(dir) ?? []).filter((e) => e.tag === T_USER).map((e) => e.id);
  if (!users.length) return;
  const acl = readAcl(path) ?? [
    { tag: T_USER_OBJ, perm: 6, id: 0xffffffff },
    { tag: T_GROUP_OBJ, perm: 0, id: 0xffffffff },
    { tag: T_OTHER, perm: 0, id: 0xffffffff },
  ];
  let changed = false;
  for (const id of users) {
    const e = acl.find((x) => x.tag === T_USER && x.id === id);
    if (!e) {
      acl.push({ tag: T_USER, perm: 6, id });
      changed = true;
    } else if ((e.perm & 6) !== 6) {
      e.perm |= 6;
      changed = true;
    }
  }
  const mask = acl.filter((e) => e.tag === T_USER || e.tag === T_GROUP_OBJ || e.tag === 8).reduce((m, e) => m | e.perm, 0);
  const m = acl.find((e) => e.tag === T_MASK);
  if (!m) {
    acl.push({ tag: T_MASK, perm: mask, id: 0xffffffff });
    changed = true;
  } else if ((m.perm & 6) !== 6) {
    m.perm |= 6;
    changed = true;
  }
  if (!changed) return;
  acl.sort((a, b) => a.tag - b.tag || a.id - b.id);
  if (!writeAcl(path, acl)) throw new Error(`cannot let the app's users (uids ${users.join(", ")}) write ${path} (setting its ACL): check that its file system has POSIX ACLs`);
}
