// What a process tree's checkpoint records about its tree (stats.extra of the main process's
// checkpoint): read by the CLI, the restore and the capture (tree-checkpoint.ts).
import { checkpointId, memberApp, parseCheckpointId, parseMemberApp } from "../store/types.js";

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
  /** A zombie's uids and gids (real, effective, saved, fs) and groups: it ends as that user on restore. */
  creds?: { uid: number[]; gid: number[]; groups: number[] };
  downtimeNs?: number;
}

/** tardigrade-restore's --zombie value for a zombie of the tree: PID:PPID:PGID:SID:STATUS[:UIDS:GIDS[:GROUPS]]. */
export function zombieArg(z: TreeEntry): string {
  const base = `${z.pid}:${z.ppid}:${z.pgid}:${z.sid}:${z.waitStatus ?? 0}`;
  const c = z.creds;
  if (!c || c.uid.length !== 4 || c.gid.length !== 4) return base; // (a checkpoint of an older daemon: the restorer's own)
  return `${base}:${c.uid.join(",")}:${c.gid.join(",")}${c.groups.length ? ":" + c.groups.join(",") : ""}`;
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

/**
 * The tree of a checkpoint's stats.extra, or null for a single process. With `ownId` (the main
 * checkpoint's id), each process's checkpoint id is the one of the same seq under that id's app:
 * a checkpoint set aside under another app name (a diverged lineage, src/store/cas/lineage.ts)
 * had its members renamed with it, while its stats still name the old ids.
 */
export function treeOf(extra: unknown, ownId?: string): TreeInfo | null {
  const t = (extra as { tree?: unknown } | null | undefined)?.tree;
  if (!Array.isArray(t)) return null;
  const info = extra as TreeInfo;
  const own = ownId === undefined ? null : parseCheckpointId(ownId);
  if (!own) return info;
  return {
    ...info,
    tree: info.tree.map((e) => {
      if (e.id === undefined) return e;
      const app = parseCheckpointId(e.id)?.app;
      const member = app === undefined ? null : parseMemberApp(app);
      return { ...e, id: member ? checkpointId(memberApp(own.app, member.pid), own.seq) : (ownId as string) };
    }),
  };
}

