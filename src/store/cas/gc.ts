// gc: retention then space reclaim.
//  1. keep the newest `keep` checkpoints per app (plus pins), and every checkpoint a kept
//     incremental needs (its chain back to a full or merged one); drop the others in one
//     transaction;
//  2. live pages = the hashes in the remaining page tables; a pack whose dead fraction
//     reaches `minDeadFraction` is rewritten: its live pages go into new blocks in a new
//     pack (written and fsynced first), then one transaction points pages at the new
//     blocks, forgets dead pages and the old blocks and packs; only then are the old pack
//     files unlinked. A crash before the switch leaves a new pack still recorded pending
//     (removed by open()); after it, old packs the switch recorded pending (also removed).
//     A block that cannot be read is skipped and set aside at the switch (damage.ts).
import { rm } from "node:fs/promises";
import { join } from "node:path";
import { fsyncPath } from "../fsutil.js";
import { BlockPipeline, PackAppender } from "./block-writer.js";
import { BlockCache } from "./blocks.js";
import type { CheckpointRow } from "./catalog.js";
import type { StoreContext } from "./context.js";
import { PACK_HEADER_SIZE, packName } from "./pack.js";
import type { GcOptions, GcReport } from "./types.js";
import { HASH_LEN, PAGE, ZERO_HASH, crashPoint } from "./util.js";
import { TgError } from "../../errors.js";
import { parseMemberApp } from "../types.js";
import { isDamageError, setAsideBlocks, shortWhy } from "./damage.js";

/** Which checkpoints stay: newest `keep` per app, pins, and the chains they need. */
export function retention(rows: CheckpointRow[], keep: number, pin: string[] = [], keepPerApp: Record<string, number> = {}): { kept: Set<string>; forChains: string[] } {
  const byId = new Map(rows.map((r) => [r.id, r]));
  const byApp = new Map<string, CheckpointRow[]>();
  for (const r of rows) {
    const l = byApp.get(r.app) ?? [];
    l.push(r);
    byApp.set(r.app, l);
  }
  const roots = new Set<string>(pin.filter((id) => byId.has(id)));
  for (const l of byApp.values()) {
    if (parseMemberApp(l[0]!.app)) continue; // a tree's other processes follow its main one (below)
    l.sort((a, b) => b.seq - a.seq);
    const n = keepPerApp[l[0]!.app] ?? keep;
    for (const r of l.slice(0, Number.isFinite(n) ? n : l.length)) roots.add(r.id);
  }
  // A member process's checkpoint stays while the tree checkpoint of its seq does; one whose
  // tree checkpoint never committed (a failed tree checkpoint) or is dropped goes.
  for (const r of rows) {
    const m = parseMemberApp(r.app);
    if (m && (roots.has(`${m.app}@${r.seq}`) || pin.includes(`${m.app}@${r.seq}`))) roots.add(r.id);
  }
  const kept = new Set<string>(roots);
  const forChains: string[] = [];
  for (const id of roots) {
    let r = byId.get(id);
    while (r && r.kind === "incremental" && r.parent !== null) {
      const p = byId.get(r.parent);
      if (!p) break;
      if (!kept.has(p.id)) {
        kept.add(p.id);
        forChains.push(p.id);
      }
      r = p;
    }
  }
  return { kept, forChains };
}

export async function collectGarbage(ctx: StoreContext, opts: GcOptions): Promise<GcReport> {
  const validKeep = (k: number): boolean => k === Infinity || (Number.isSafeInteger(k) && k >= 1);
  if (!validKeep(opts.keep) || !Object.values(opts.keepPerApp ?? {}).every(validKeep)) throw new TgError("cannot run gc", `keep must be a positive integer (got ${opts.keep})`, "Pass --keep N with N ≥ 1", "bad-request");
  const cat = ctx.catalog;
  const minDead = opts.minDeadFraction ?? 0.25;
  const rows = cat.list();
  const { kept, forChains } = retention(rows, opts.keep, opts.pin, opts.keepPerApp);
  const drop = rows.filter((r) => !kept.has(r.id));
  cat.transaction(() => {
    for (const r of drop) cat.deleteCheckpoint(r.cid);
  });
  ctx.filter = null; // pages are about to be forgotten: rebuild on next use
  crashPoint("gc-dropped");
  const report: GcReport = { dropped: drop.map((r) => r.id), keptForChains: forChains, packsRewritten: 0, packsRemoved: [], pagesMoved: 0, pagesDropped: 0, bytesFreed: 0 };

  // Live set.
  const live = new Set<string>();
  for (const hashes of cat.allExtentHashes()) {
    for (let o = 0; o < hashes.length; o += HASH_LEN) {
      const h = hashes.subarray(o, o + HASH_LEN);
      if (!h.equals(ZERO_HASH)) live.add(h.toString("latin1"));
    }
  }
  const liveInBlock = new Map<number, number>();
  for (const [hash, block] of cat.allPages()) {
    if (live.has(hash.toString("latin1"))) liveInBlock.set(block, (liveInBlock.get(block) ?? 0) + 1);
  }
  // Packs worth rewriting.
  const packs = cat.packs();
  const doomed: { id: number; size: number }[] = [];
  for (const p of packs) {
    let liveBytes = 0;
    for (const b of cat.blocksOfPack(p.id)) liveBytes += (b.len * (liveInBlock.get(b.id) ?? 0)) / b.npages;
    const data = p.size - PACK_HEADER_SIZE;
    const dead = data - liveBytes;
    if (dead > 0 && (data === 0 || dead / data >= minDead)) doomed.push(p);
  }
  if (doomed.length === 0) return finish(ctx, report);
  const doomedIds = new Set(doomed.map((p) => p.id));
  const doomedBlocks = new Set<number>();
  for (const p of doomed) for (const b of cat.blocksOfPack(p.id)) doomedBlocks.add(b.id);
  const move: { hash: Buffer; block: number; idx: number }[] = [];
  const dead: Buffer[] = [];
  for (const [hash, block, idx] of cat.allPages()) {
    if (!doomedBlocks.has(block)) continue;
    if (live.has(hash.toString("latin1"))) move.push({ hash, block, idx });
    else dead.push(hash);
  }
  move.sort((a, b) => a.block - b.block || a.idx - b.idx);

  const appender = new PackAppender(ctx, true);
  const pipeline = new BlockPipeline(appender, ctx.opts.blockPages, ctx.opts.level, ctx.opts.inflight);
  const cache = new BlockCache(cat, ctx.readers, ctx.packDir, 8);
  const at: [number, number][] = [];
  const moved: typeof move = [];
  /** Blocks that cannot be read or fail their checks: skipped, set aside at the switch (their pages are lost). */
  const bad = new Map<number, string>();
  let switched = false;
  try {
    for (const m of move) {
      if (bad.has(m.block)) continue;
      let block: Buffer;
      try {
        block = await cache.get(m.block);
      } catch (e) {
        if (!isDamageError(e)) throw e;
        bad.set(m.block, shortWhy(e)); // gc holds the store's lock: no concurrent gc moved it
        continue;
      }
      at.push(await pipeline.add(block.subarray(m.idx * PAGE, (m.idx + 1) * PAGE)));
      moved.push(m);
    }
    await pipeline.finish();
    crashPoint("gc-written");
    await appender.sync();
    crashPoint("gc-synced");
    cat.transaction(() => {
      for (const w of appender.writers) cat.upsertPack(w.id, w.size);
      const ids = pipeline.blocks.map((b) => cat.insertBlock(b.pack, b.offset, b.len, b.npages));
      if (bad.size > 0) report.damaged = setAsideBlocks(cat, [...bad].map(([id, why]) => ({ id, why })));
      moved.forEach((m, i) => cat.movePage(m.hash, ids[at[i]![0]]!, at[i]![1]));
      for (const h of dead) cat.deletePage(h);
      for (const b of doomedBlocks) cat.deleteBlock(b);
      for (const id of doomedIds) cat.deletePack(id);
    });
    switched = true;
    crashPoint("gc-switched");
    await appender.close();
  } catch (e) {
    if (!switched) {
      await pipeline.abandon();
      await appender.rollback();
    }
    throw e;
  }
  for (const p of doomed) {
    ctx.readers.forget(p.id);
    if (ctx.heldPacks.has(p.id)) {
      // a restorer is about to read it (restore-plan.ts): unlinked on release; pending until then
      ctx.deferredUnlinks.add(p.id);
      report.packsRemoved.push(packName(p.id));
      continue;
    }
    await rm(join(ctx.packDir, packName(p.id)), { force: true });
    cat.clearPending(p.id);
    report.packsRemoved.push(packName(p.id));
    crashPoint("gc-unlinked-one");
  }
  await fsyncPath(ctx.packDir);
  report.packsRewritten = doomed.length;
  report.pagesMoved = moved.length;
  report.pagesDropped = dead.length;
  report.bytesFreed = doomed.reduce((n, p) => n + p.size, 0) - appender.writers.reduce((n, w) => n + w.size, 0);
  return finish(ctx, report);
}

function finish(ctx: StoreContext, report: GcReport): GcReport {
  const db = ctx.catalog.db;
  db.pragma("incremental_vacuum");
  db.pragma("wal_checkpoint(TRUNCATE)");
  return report;
}
