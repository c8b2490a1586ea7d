// One look at the app's processes for a files cut (issue 14, docs/files.md): every fd of every
// process (where it points, its open flags, the inode behind it) and every process's memory map,
// read once while the app is held. The set (files-set.ts), the deleted files held open
// (files-deleted.ts) and the files written where no agent sees (files-ranges.ts) are all made from
// it: before, each walked /proc/PID/fd again (three readdirs, up to three system calls per fd each).
import { readFileSync, readdirSync, readlinkSync, statSync } from "node:fs";

export interface OpenFd {
  hostPid: number;
  fd: number;
  /** readlink of /proc/PID/fd/N ("/path", "/path (deleted)", "pipe:[N]"...). */
  target: string;
  /** Open flags (fdinfo, octal there). */
  flags: number;
  /** The inode behind the fd (null: not a regular file, or gone). */
  dev: bigint | null;
  ino: bigint | null;
  nlink: bigint;
}

export interface ProcScan {
  fds: OpenFd[];
  /** /proc/PID/maps of each process (absent: gone). */
  maps: Map<number, string>;
}

export function scanProcesses(hostPids: number[]): ProcScan {
  const out: ProcScan = { fds: [], maps: new Map() };
  for (const pid of hostPids) {
    let names: string[] = [];
    try {
      names = readdirSync(`/proc/${pid}/fd`);
    } catch {
      continue; // gone
    }
    for (const n of names) {
      const path = `/proc/${pid}/fd/${n}`;
      try {
        const target = readlinkSync(path);
        const info = readFileSync(`/proc/${pid}/fdinfo/${n}`, "utf8");
        const flags = parseInt(/flags:\s+([0-7]+)/.exec(info)?.[1] ?? "0", 8);
        let dev: bigint | null = null;
        let ino: bigint | null = null;
        let nlink = 0n;
        if (target.startsWith("/")) {
          const st = statSync(path, { bigint: true });
          if (st.isFile()) ({ dev, ino, nlink } = st);
        }
        out.fds.push({ hostPid: pid, fd: Number(n), target, flags, dev, ino, nlink });
      } catch {
        /* closed meanwhile */
      }
    }
    try {
      out.maps.set(pid, readFileSync(`/proc/${pid}/maps`, "utf8"));
    } catch {
      /* gone */
    }
  }
  return out;
}
