// Which checkpoint is which, across stores: a checkpoint id (APP@SEQ) names a position
// in one app's sequence on one host, not content. A standby that ran the app before
// (failover, then failback) holds its own APP@5; the mirror's APP@6 built on the
// mirror's APP@5 must not be composed on it (issue 11, defect 1). So a local checkpoint
// stands for a mirrored one only if their contents are the same.
//
// A checkpoint's own content is its image header, its metadata blob and its page table
// (every extent's first page, page count and page hashes; an incremental's unchanged
// extents have no hashes and are taken from its parent). Blocks are not part of it: two
// stores may compress the same pages into different blocks. contentDigest() hashes that
// content; the mirror side computes the same digest from the manifest and the table it
// fetched. Matching a chain compares every link (see pullFromMirror in
// src/mirror/bridge.ts).
//
// A local checkpoint of another lineage whose id the mirror's chain needs is not
// deleted: setAside() renames it, and its local descendants, to another app name
// (APP.diverged-<time>, see divergedAppName), in one transaction, so nothing is lost and
// `tardigrade ls` shows it.
import { createHash } from "node:crypto";
import { TgError } from "../../errors.js";
import { checkpointId, parseCheckpointId, validAppName } from "../types.js";
import type { ExtentRow } from "./catalog.js";
import type { StoreContext } from "./context.js";

/** SHA-256 hex of a checkpoint's own content: header, metadata, page table (not its blocks, not its parent). */
export function contentDigest(header: Buffer, meta: Buffer, extents: readonly Pick<ExtentRow, "page" | "npages" | "hashes">[]): string {
  const h = createHash("sha256");
  const n = Buffer.alloc(8);
  const u64 = (v: number): void => {
    n.writeUInt32LE(v % 2 ** 32, 0);
    n.writeUInt32LE(Math.floor(v / 2 ** 32), 4);
    h.update(n);
  };
  h.update("tardigrade-checkpoint-content 1\n");
  u64(header.length);
  h.update(header);
  u64(meta.length);
  h.update(meta);
  u64(extents.length);
  for (const e of extents) {
    u64(e.page);
    u64(e.npages);
    if (e.hashes) {
      u64(1);
      h.update(e.hashes);
    } else u64(0);
  }
  return h.digest("hex");
}

/**
 * A mirrored checkpoint's identity from its manifest alone (no table fetched): its id, kind,
 * parent, image header and the SHA-256 names of its table parts (the table holds the metadata
 * and page table). Recorded for a local checkpoint once it is known to be that mirror
 * checkpoint (imported, or its content digest matched), so the next pull finds where the
 * mirror's chain meets the store from the top, without fetching every link's table.
 */
export function mirrorIdent(m: { id: string; kind: string; parent: string | null; header: string; tableBytes: number; table: readonly { hash: string }[] }): string {
  const h = createHash("sha256");
  h.update(JSON.stringify(["tardigrade-mirror-ident 1", m.id, m.kind, m.kind === "incremental" ? m.parent : null, m.header, m.tableBytes, m.table.map((p) => p.hash)]));
  return h.digest("hex");
}

/** The content digest of local checkpoint `id`, with its kind and parent; undefined if absent. */
export function localIdentity(ctx: StoreContext, id: string): { digest: string; kind: string; parent: string | null } | undefined {
  const row = ctx.catalog.checkpoint(id);
  if (!row) return undefined;
  const { header, meta } = ctx.catalog.headerAndMeta(row.cid);
  return { digest: contentDigest(header, meta, ctx.catalog.extents(row.cid)), kind: row.kind, parent: row.parent };
}

/** An app name no checkpoint uses yet, for `app`'s checkpoints of another lineage. */
export function divergedAppName(ctx: StoreContext, app: string, now = new Date()): string {
  const stamp = now.toISOString().replace(/[-:]/g, "").replace(/\..*$/, "").replace("T", "-");
  const base = `${app.slice(0, 40)}.diverged-${stamp}`;
  for (let i = 0; ; i++) {
    const name = i === 0 ? base : `${base}.${i}`;
    if (!validAppName(name)) throw new TgError("cannot set aside diverged checkpoints", `no valid app name for them (tried ${name})`, "", "bad-request");
    if (ctx.catalog.list(name).length === 0) return name;
  }
}

/**
 * Renames checkpoints `ids` of one app, and every local checkpoint descending from them,
 * to app `newApp` (same seqs), in one transaction. Parents inside the moved set follow;
 * a parent outside it (an older, matching checkpoint) stays as it is. Returns the
 * renames, old id -> new id. Call under the store's lock.
 */
export function setAside(ctx: StoreContext, ids: readonly string[], newApp: string): Map<string, string> {
  const cat = ctx.catalog;
  const moved = new Map<string, string>();
  if (ids.length === 0) return moved;
  const app = parseCheckpointId(ids[0] as string)?.app;
  if (app === undefined) throw new Error(`internal error: bad checkpoint id ${ids[0]}`);
  const rows = cat.list(app);
  const todo = new Set(ids);
  // Descendants: rows are by seq, a child's seq is above its parent's.
  for (const r of rows) if (r.parent !== null && todo.has(r.parent)) todo.add(r.id);
  for (const r of rows) if (todo.has(r.id)) moved.set(r.id, checkpointId(newApp, r.seq));
  const db = cat.db;
  const upd = db.prepare("UPDATE checkpoints SET id = ?, app = ?, parent = ? WHERE cid = ?");
  cat.transaction(() => {
    for (const r of rows) {
      const to = moved.get(r.id);
      if (to === undefined) continue;
      const parent = r.parent === null ? null : (moved.get(r.parent) ?? r.parent);
      upd.run(to, newApp, parent, r.cid);
      cat.clearMirrorOrigin(r.cid);
    }
  });
  return moved;
}
