// Open file descriptions shared by two processes of a tree (inherited through fork: one offset,
// one set of flags, one socket or eventfd seen by both). Found while the tree is parked, by asking
// the kernel (kcmp(KCMP_FILE), through koffi: node has no binding) about fds that name the same
// object in two processes; each group is recorded with the checkpoint and made once by the
// restorer's init, before the tree is cloned (native/restore/tree-fds.c), so both processes hold
// one description again. Kinds made that way: regular files and directories (one offset),
// sockets, eventfds, timerfds, epoll sets (each process adds back its own entries). Not grouped: pipes (the restorer shares them its own way), files opened for
// appending (every write goes to the end; the app's log among them), character devices (no offset)
// and named FIFOs (reopened by path). Any other kind shared (a signalfd, an inotify instance...) refuses the
// checkpoint by name.
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
}

/** Every fd of a process with what it points at (one readlink each: the cheap part, done for all). */
function openFds(p: TreeProcess): OpenFd[] {
  const out: OpenFd[] = [];
  let fds: string[] = [];
  try {
    fds = readdirSync(`/proc/${p.hostPid}/fd`);
  } catch {
    return out;
  }
  for (const f of fds) {
    try {
      out.push({ proc: p, fd: Number(f), target: readlinkSync(`/proc/${p.hostPid}/fd/${f}`) });
    } catch {
      /* closed meanwhile */
    }
  }
  return out.sort((a, b) => a.fd - b.fd);
}

/**
 * An epoll set shared by processes (made once at restore; each process adds back the entries its
 * own fds registered: native/resources/epoll.c): an entry whose watched file no sharing process
 * holds at that fd number could not be added back. Why, or null.
 */
function epollUnheld(holders: OpenFd[]): string | null {
  const a = holders[0]!;
  let info = "";
  try {
    info = readFileSync(`/proc/${a.proc.hostPid}/fdinfo/${a.fd}`, "utf8");
  } catch {
    return null; // closed meanwhile: the tree changed, which the cut sees
  }
  for (const m of info.matchAll(/^tfd:\s*(\d+)\s.*\bino:([0-9a-f]+)/gm)) {
    const ino = BigInt(`0x${m[2]}`);
    const held = holders.some((o) => {
      try {
        return statSync(`/proc/${o.proc.hostPid}/fd/${m[1]}`, { bigint: true }).ino === ino;
      } catch {
        return false;
      }
    });
    if (!held)
      return `the epoll set at fd ${a.fd} of pid ${a.proc.pid} (${a.proc.comm}), shared with ${holders.length - 1} other process${holders.length > 2 ? "es" : ""}, watches a file (inode ${ino}) that none of them holds at fd ${m[1]} any more; a restore could not add it back`;
  }
  return null;
}

/** "made" (grouped and made once), "exempt" (restored apart, rightly) or "refused". */
function howShared(o: OpenFd): "made" | "exempt" | "refused" {
  const t = o.target;
  if (t.startsWith("pipe:[")) return "exempt";
  if (t.startsWith("socket:[") || t === "anon_inode:[eventfd]" || t === "anon_inode:[timerfd]" || t === "anon_inode:[eventpoll]") return "made";
  if (t.startsWith("anon_inode:")) return "refused";
  const path = `/proc/${o.proc.hostPid}/fd/${o.fd}`;
  const st = statSync(path);
  if (st.isCharacterDevice() || st.isFIFO()) return "exempt";
  if (st.isFile()) {
    const flags = Number.parseInt(/^flags:\s*([0-7]+)/m.exec(readFileSync(`/proc/${o.proc.hostPid}/fdinfo/${o.fd}`, "utf8"))?.[1] ?? "0", 8);
    return (flags & O_APPEND) !== 0 ? "exempt" : "made";
  }
  return st.isDirectory() ? "made" : "refused";
}

export interface SharedDescriptions {
  /** Each group: [pid, fd] of every process holding that description (its lowest fd there; higher ones are dups the image records as such). */
  groups: [number, number][][];
  /** Why the checkpoint must refuse (a kind the restorer cannot share), or null. */
  problem: string | null;
}

/** The tree's shared open file descriptions. Meant for a tree whose every thread is parked. */
export function sharedDescriptions(procs: TreeProcess[]): SharedDescriptions {
  const byTarget = new Map<string, OpenFd[]>();
  for (const p of procs) {
    if (p.zombie) continue;
    for (const o of openFds(p)) {
      const l = byTarget.get(o.target) ?? [];
      l.push(o);
      byTarget.set(o.target, l);
    }
  }
  const groups: [number, number][][] = [];
  for (const l of byTarget.values()) {
    if (new Set(l.map((o) => o.proc.pid)).size < 2) continue; // in one process only (dups there are the image's business)
    // clusters of one description each, by kcmp against each cluster's first fd
    const clusters: OpenFd[][] = [];
    for (const o of l) {
      const c = clusters.find((c) => {
        try {
          return sameDescription(c[0]!.proc.hostPid, c[0]!.fd, o.proc.hostPid, o.fd);
        } catch {
          return false;
        }
      });
      if (c) c.push(o);
      else clusters.push([o]);
    }
    for (const c of clusters) {
      const first = new Map<number, OpenFd>(); // per process its lowest fd (openFds sorts)
      for (const o of c) if (!first.has(o.proc.pid)) first.set(o.proc.pid, o);
      if (first.size < 2) continue;
      let how: ReturnType<typeof howShared>;
      try {
        how = howShared(c[0]!);
      } catch {
        continue; // closed meanwhile: the tree changed, which the cut sees
      }
      if (how === "exempt") continue;
      const [a, b] = [...first.values()];
      if (how === "refused")
        return {
          groups: [],
          problem: `fd ${a!.fd} of pid ${a!.proc.pid} (${a!.proc.comm}) and fd ${b!.fd} of pid ${b!.proc.pid} (${b!.proc.comm}) share one open file description of ${a!.target} (inherited through fork); sharing this kind between processes is not supported yet`,
        };
      if (c[0]!.target === "anon_inode:[eventpoll]") {
        const lost = epollUnheld([...first.values()]);
        if (lost) return { groups: [], problem: lost };
      }
      groups.push([...first.values()].map((o) => [o.proc.pid, o.fd]));
    }
  }
  return { groups, problem: null };
}
