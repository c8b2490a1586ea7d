// After a restore: what each restored process's next checkpoint is incremental on (issue 16,
// docs/engine.md "Checkpoints after a restore"). The restorer arms dirty-page tracking on the
// restored memory before any thread runs (native/restore/blob.c) and the agent adopts it with the
// restored image's seq as its base (native/agent/track.c); its PING says so (`base`). A process
// whose agent has no base (tracking off, no userfaultfd, an image of an older agent) gets none:
// its next checkpoint is full, as before.
import { ping, type PingReply } from "./agent.js";
import { appProcesses } from "./tree.js";
import type { TreeEntry } from "./tree-info.js";

export interface RestoredBases {
  lastAgentSeq?: number;
  lastId?: string;
  treeLineage?: Record<string, { agentSeq: number; id: string }>;
}

const MEMBER_WAIT_MS = 30_000;

/**
 * The pids (in the app's namespace) of the tree's processes that still run, looked up at most
 * every 100 ms whoever asks. A restored member may end before it is asked (a child that lived
 * 30 ms more): its agent never answers, and waiting the whole limit for it, one member after the
 * other, made a restore of a tree of short-lived children take minutes (tree-forkstorm, clone).
 */
function liveMembers(initHostPid: number): () => Set<number> {
  let at = 0;
  let live = new Set<number>();
  return () => {
    if (Date.now() - at >= 100) {
      live = new Set(appProcesses(initHostPid).filter((p) => !p.zombie).map((p) => p.pid));
      at = Date.now();
    }
    return live;
  };
}

/** The agent of a tree member listens once its manager has resumed: asked until it answers, the member is gone, or the limit. */
async function pingWhenUp(sock: string, limitMs: number, alive: () => boolean): Promise<PingReply | null> {
  const until = Date.now() + limitMs;
  for (;;) {
    try {
      return await ping(sock, 2000);
    } catch {
      if (Date.now() > until || !alive()) return null;
      await new Promise((r) => setTimeout(r, 20));
    }
  }
}

function baseOf(p: PingReply | null): number {
  return p && typeof p.base === "number" && p.base > 0 && p.base === p.seq ? p.base : 0;
}

/**
 * The record fields that make the next checkpoint incremental on the restored one: the main
 * process's (`main`, its PING after the restore), and each other live process's of a tree
 * (`members`, asked on their own sockets, `sock.PID`, all at once; one that has ended since the
 * restore gets none).
 */
export async function restoredBases(sock: string, main: PingReply, id: string, members: TreeEntry[], initHostPid: number): Promise<RestoredBases> {
  const out: RestoredBases = {};
  const seq = baseOf(main);
  if (seq) {
    out.lastAgentSeq = seq;
    out.lastId = id;
  }
  const lineage: Record<string, { agentSeq: number; id: string }> = {};
  const live = liveMembers(initHostPid);
  await Promise.all(
    members.map(async (e) => {
      if (!e.id || e.zombie) return;
      const s = baseOf(await pingWhenUp(`${sock}.${e.pid}`, MEMBER_WAIT_MS, () => live().has(e.pid)));
      if (s) lineage[String(e.pid)] = { agentSeq: s, id: e.id };
    }),
  );
  if (Object.keys(lineage).length) out.treeLineage = lineage;
  return out;
}
