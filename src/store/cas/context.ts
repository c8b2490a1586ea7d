// What the store's modules share: paths, the index, pack readers and the options.
import { TgError } from "../../errors.js";
import type { Catalog, CheckpointRow } from "./catalog.js";
import type { PageFilter } from "./bloom.js";
import type { Hasher } from "./hasher.js";
import type { PackReaders } from "./pack.js";
import type { CasCheckpoint, CasOptions, CheckpointStats } from "./types.js";

export interface StoreContext {
  root: string;
  packDir: string;
  catalog: Catalog;
  readers: PackReaders;
  opts: Required<CasOptions>;
  /** A pack id never used before in this store. */
  allocPackId(): number;
  /** Filter of stored page hashes (built on first use, dropped by gc). */
  filter: PageFilter | null;
  /** The page hasher (a worker thread), started on first use. */
  hasher(): Hasher;
  /**
   * A reader found block `id` unreadable or failing its checks: the store re-checks it
   * under its lock and, if it is still bad, sets it aside (src/store/cas/damage.ts).
   */
  reportBad(id: number, e: unknown): void;
  /** Pack ids a restorer is reading (restore-plan.ts), with counts: gc defers unlinking them. */
  heldPacks: Map<number, number>;
  /** Packs gc dropped from the index while held: unlinked (and their pending mark cleared) on release. */
  deferredUnlinks: Set<number>;
}

export function toCheckpoint(r: CheckpointRow): CasCheckpoint {
  return {
    id: r.id,
    app: r.app,
    seq: r.seq,
    kind: r.kind,
    parent: r.parent,
    synthetic: r.synthetic !== 0,
    createdAt: r.created_at,
    pid: r.pid,
    stats: JSON.parse(r.stats) as CheckpointStats,
  };
}

export function unknownCheckpointError(id: string, why = "no such checkpoint in the store"): TgError {
  return new TgError(`unknown checkpoint ${id}`, why, "List the checkpoints with `tardigrade ls`", "unknown-checkpoint");
}

export function requireCheckpoint(ctx: StoreContext, id: string): CheckpointRow {
  const r = ctx.catalog.checkpoint(id);
  if (!r) throw unknownCheckpointError(id);
  return r;
}
