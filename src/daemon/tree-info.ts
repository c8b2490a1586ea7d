// What a process tree's checkpoint records about its tree (stats.extra of the main process's
// checkpoint): read by the CLI, the restore and the capture (tree-checkpoint.ts).

/** One process of a tree checkpoint, as stats.extra.tree of the main process's checkpoint lists it. */
export interface TreeEntry {
  pid: number;
  ppid: number;
  pgid: number;
  sid: number;
  comm: string;
  threads: number;
  /** The checkpoint holding this process's image (absent for a zombie). */
  id?: string;
  zombie?: boolean;
  waitStatus?: number;
  downtimeNs?: number;
}

export interface TreeInfo {
  tree: TreeEntry[];
  /** First park request to the last process resumed, as the daemon saw it. */
  treeDowntimeNs: number;
  /** The downtime by stage: first stop to every process parked (as the daemon heard it), the daemon's checks, CAPTURE to every process captured, to the last resumed. */
  cut?: { parkNs: number; verifyNs: number; captureNs: number; resumeNs: number };
  /** Open file descriptions two or more processes share: [pid, fd] of each holder (the restorer makes each once). */
  shared?: [number, number][][];
}

/** The tree of a checkpoint's stats.extra, or null for a single process. */
export function treeOf(extra: unknown): TreeInfo | null {
  const t = (extra as { tree?: unknown } | null | undefined)?.tree;
  return Array.isArray(t) ? (extra as TreeInfo) : null;
}

