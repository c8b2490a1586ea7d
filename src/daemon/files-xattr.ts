// Extended attributes of the user namespace (`user.*`) of the app's files and directories (issue
// 14, docs/files.md): read at the cut for files that changed, set back by the rollback. Through
// koffi (node has no binding for the xattr calls); symlinks are never followed (the l* calls).
// Other namespaces (security.*, trusted.*, system.* such as POSIX ACLs) are not kept.
import koffi from "koffi";

interface Xattr {
  list: (path: string, buf: Buffer | null, size: number) => number;
  get: (path: string, name: string, buf: Buffer | null, size: number) => number;
  set: (path: string, name: string, value: Buffer, size: number, flags: number) => number;
  remove: (path: string, name: string) => number;
}
let x: Xattr | null = null;

function lib(): Xattr {
  if (x) return x;
  const c = koffi.load("libc.so.6");
  x = {
    list: c.func("long llistxattr(const char *path, _Out_ uint8_t *list, size_t size)") as Xattr["list"],
    get: c.func("long lgetxattr(const char *path, const char *name, _Out_ uint8_t *value, size_t size)") as Xattr["get"],
    set: c.func("int lsetxattr(const char *path, const char *name, const uint8_t *value, size_t size, int flags)") as Xattr["set"],
    remove: c.func("int lremovexattr(const char *path, const char *name)") as Xattr["remove"],
  };
  return x;
}

function userNames(path: string): string[] {
  const l = lib();
  const n = l.list(path, null, 0);
  if (n <= 0) return []; // none, or not supported by the filesystem
  const buf = Buffer.alloc(n);
  const m = l.list(path, buf, n);
  if (m <= 0) return [];
  return buf
    .subarray(0, m)
    .toString("utf8")
    .split("\0")
    .filter((s) => s.startsWith("user."));
}

/** The path's user.* attributes (name -> base64), or undefined when it has none. */
export function readUserXattrs(path: string): Record<string, string> | undefined {
  const names = userNames(path);
  if (!names.length) return undefined;
  const l = lib();
  const out: Record<string, string> = {};
  for (const name of names) {
    const n = l.get(path, name, null, 0);
    if (n < 0) continue; // removed meanwhile
    const buf = Buffer.alloc(n);
    const m = n ? l.get(path, name, buf, n) : 0;
    if (m >= 0) out[name] = buf.subarray(0, m).toString("base64");
  }
  return out;
}

/** Makes the path's user.* attributes exactly `want` (removing the others). */
export function writeUserXattrs(path: string, want: Record<string, string> | undefined): void {
  const l = lib();
  const w = want ?? {};
  for (const name of userNames(path)) if (!(name in w) && l.remove(path, name) !== 0) throw new Error(`${path}: cannot remove the extended attribute ${name}`);
  for (const [name, v] of Object.entries(w)) {
    const b = Buffer.from(v, "base64");
    if (l.set(path, name, b, b.length, 0) !== 0) throw new Error(`${path}: cannot set the extended attribute ${name} (${b.length} bytes)`);
  }
}
