// Open file descriptions shared by two processes of a tree (inherited through fork: one offset,
// one set of flags, one socket or eventfd seen by both). The restorer makes pipes and shared
// memory once for the whole tree; every other kind is made again in each process, so a shared
// one would come back as two: the checkpoint refuses it by name instead. Exempt: pipes (shared
// on restore), files opened for appending (every write goes to the end: the offset does not
// matter), character devices (/dev/null: no offset) and named FIFOs (reopened by path). Sharing is asked of the kernel with
// kcmp(KCMP_FILE) through koffi (node has no binding), between fds that name the same object.
import { readFileSync, readdirSync, readlinkSync, statSync } from "node:fs";
import koffi from "koffi";
import type { TreeProcess } from "./tree.js";

const SYS_KCMP = 312; // x86_64
const KCMP_FILE = 0;
const O_APPEND = 0o2000;

type Kcmp = (nr: number, ...args: unknown[]) => number;
let kcmp: Kcmp | null = null;

function sameDescription(pid1: number, fd1: number, pid2: number, fd2: number): boolean {
  // a raw syscall: glibc has no kcmp wrapper
  kcmp ??= koffi.load("libc.so.6").func("long syscall(long nr, ...)") as Kcmp;
  return kcmp(SYS_KCMP, "int", pid1, "int", pid2, "int", KCMP_FILE, "ulong", fd1, "ulong", fd2) === 0;
}

interface OpenFd {
  proc: TreeProcess;
  fd: number;
  target: string;
  key: string;
  exempt: boolean;
}

function openFds(p: TreeProcess): OpenFd[] {
  const out: OpenFd[] = [];
  let fds: string[] = [];
  try {
    fds = readdirSync(`/proc/${p.hostPid}/fd`);
  } catch {
    return out;
  }
  for (const f of fds) {
    const fd = Number(f);
    try {
      const target = readlinkSync(`/proc/${p.hostPid}/fd/${f}`);
      const st = statSync(`/proc/${p.hostPid}/fd/${f}`);
      const flags = Number.parseInt(/^flags:\s*([0-7]+)/m.exec(readFileSync(`/proc/${p.hostPid}/fdinfo/${f}`, "utf8"))?.[1] ?? "0", 8);
      // (a named FIFO is reopened by path: the pipe behind it is the same for every opener)
      const exempt = target.startsWith("pipe:[") || st.isCharacterDevice() || st.isFIFO() || (st.isFile() && (flags & O_APPEND) !== 0);
      out.push({ proc: p, fd, target, key: `${st.dev}:${st.ino}`, exempt });
    } catch {
      /* closed meanwhile, or not ours to read */
    }
  }
  return out;
}

/**
 * "fd 3 of pid 2 (bash) and fd 3 of pid 5 (cat) share one open file description of
 * /tmp/data (offset and flags)", or null. Meant for a tree whose every thread is parked.
 */
export function sharedDescriptionProblem(procs: TreeProcess[]): string | null {
  const byKey = new Map<string, OpenFd[]>();
  for (const p of procs) {
    if (p.zombie) continue;
    for (const o of openFds(p)) {
      if (o.exempt) continue;
      const l = byKey.get(o.key) ?? [];
      l.push(o);
      byKey.set(o.key, l);
    }
  }
  for (const l of byKey.values()) {
    for (let i = 0; i < l.length; i++)
      for (let j = i + 1; j < l.length; j++) {
        const a = l[i]!;
        const b = l[j]!;
        if (a.proc.pid === b.proc.pid) continue; // dups inside one process: restored as dups
        if (sameDescription(a.proc.hostPid, a.fd, b.proc.hostPid, b.fd))
          return `fd ${a.fd} of pid ${a.proc.pid} (${a.proc.comm}) and fd ${b.fd} of pid ${b.proc.pid} (${b.proc.comm}) share one open file description of ${a.target} (inherited through fork: one offset, one object); sharing it between processes is not supported yet`;
      }
  }
  return null;
}
