// verify: a full scrub on demand. For each chosen checkpoint, compose its memory (the
// pages its export needs, from its chain), find every page's block, then read every such
// block once: length, header, CRC-32C and decompression (as export does) and the SHA-256
// of every needed page against its hash (which export does not do). Also parses each
// checkpoint's metadata blob. Blocks found bad are returned for the store to set aside
// (damage.ts); the report names the damaged blocks and the checkpoints that depend on them.
import { createHash } from "node:crypto";
import { join } from "node:path";
import type { BadBlockRow, BlockRow } from "./catalog.js";
import { decodeBlock } from "./codec.js";
import { composeRecords } from "./compose.js";
import type { StoreContext } from "./context.js";
import { isDamageError, shortWhy } from "./damage.js";
import { metaRecords } from "./meta.js";
import { packName } from "./pack.js";
import { HASH_LEN, LOC_LEN, PAGE, ZERO_HASH } from "./util.js";

export interface VerifyDamagedBlock {
  block: number;
  pack: string;
  offset: number;
  why: string;
  /** "now": found by this scrub; "earlier": set aside before (a read failed, or a pack was short at open). */
  found: "now" | "earlier";
  foundAt: string;
  /** The chosen checkpoints that need a page of it. */
  checkpoints: string[];
}

export interface VerifyAffected {
  id: string;
  /** Pages of its memory that cannot be read back. */
  badPages: number;
  /** Other problems (broken chain, unreadable metadata). */
  problems: string[];
}

export interface VerifyReport {
  /** Checkpoints checked. */
  checkpoints: string[];
  blocksChecked: number;
  /** Distinct (block, page) pairs whose content was hashed. */
  pagesChecked: number;
  bytesRead: number;
  damagedBlocks: VerifyDamagedBlock[];
  /** Packs found short or missing (at open), still in the index. */
  damagedPacks: { pack: string; why: string; foundAt: string }[];
  /** Checkpoints that cannot be restored as stored (sorted by id). */
  affected: VerifyAffected[];
  /** Blocks set aside earlier that none of the chosen checkpoints needs any more. */
  setAsideUnused: number;
  /** Whether every chosen checkpoint reads back intact. */
  ok: boolean;
  ms: number;
}

/** The scrub's findings before the store sets the new bad blocks aside. */
export interface ScrubResult {
  report: VerifyReport;
  /** Blocks found bad now (to set aside under the store's lock). */
  bad: { id: number; why: string }[];
}

interface Need {
  /** Page index in the block → its expected hash. */
  pages: Map<number, Buffer>;
  /** Checkpoint → pages of its memory in this block. */
  checkpoints: Map<string, number>;
}

export async function scrub(ctx: StoreContext, ids: string[]): Promise<ScrubResult> {
  const t0 = Date.now();
  const cat = ctx.catalog;
  const need = new Map<number, Need>();
  const affected = new Map<string, VerifyAffected>();
  const hit = (id: string): VerifyAffected => {
    let a = affected.get(id);
    if (!a) affected.set(id, (a = { id, badPages: 0, problems: [] }));
    return a;
  };
  const earlier = new Map<number, BadBlockRow>(cat.badBlocks().map((b) => [b.id, b]));
  /** Set-aside block → checkpoints whose missing pages point at it (location hints). */
  const earlierUsers = new Map<number, Set<string>>();
  const alive = new Map<number, boolean>();
  const blockAlive = (b: number): boolean => {
    let ok = alive.get(b);
    if (ok === undefined) alive.set(b, (ok = cat.blockExists(b)));
    return ok;
  };
  for (const id of ids) {
    const row = cat.checkpoint(id);
    if (!row) continue; // dropped by a gc since the list was taken (pinned afterwards)
    try {
      for (const r of metaRecords(cat.headerAndMeta(row.cid).meta, id)) void r;
    } catch (e) {
      hit(id).problems.push(shortWhy(e));
    }
    let records;
    try {
      records = composeRecords(ctx, id).records;
    } catch (e) {
      hit(id).problems.push(shortWhy(e));
      continue;
    }
    for (const r of records) {
      for (let i = 0; i < r.npages; i++) {
        const h = r.hashes.subarray(i * HASH_LEN, (i + 1) * HASH_LEN);
        if (h.equals(ZERO_HASH)) continue;
        const hint = r.locs.readUInt32LE(i * LOC_LEN);
        let loc: [number, number] | undefined = hint !== 0 && blockAlive(hint) ? [hint, r.locs.readUInt32LE(i * LOC_LEN + 4)] : undefined;
        loc ??= cat.pageLoc(h);
        if (!loc) {
          hit(id).badPages++;
          if (earlier.has(hint)) {
            const s = earlierUsers.get(hint) ?? new Set<string>();
            s.add(id);
            earlierUsers.set(hint, s);
          } else if (!hit(id).problems.some((p) => p.startsWith("pages not in the store"))) hit(id).problems.push("pages not in the store (their block is unknown)");
          continue;
        }
        let n = need.get(loc[0]);
        if (!n) need.set(loc[0], (n = { pages: new Map(), checkpoints: new Map() }));
        n.pages.set(loc[1], h);
        n.checkpoints.set(id, (n.checkpoints.get(id) ?? 0) + 1);
      }
    }
  }
  const damagedBlocks: VerifyDamagedBlock[] = [];
  const bad: { id: number; why: string }[] = [];
  let bytesRead = 0;
  let pagesChecked = 0;
  let blocksChecked = 0;
  const rows = [...need.keys()].map((b) => cat.block(b)).filter((b): b is BlockRow => b !== undefined);
  rows.sort((a, b) => a.pack - b.pack || a.offset - b.offset);
  for (const row of rows) {
    const n = need.get(row.id)!;
    const where = `${join(ctx.packDir, packName(row.pack))} offset ${row.offset}`;
    let why: string | null = null;
    try {
      const buf = await ctx.readers.read(row.pack, row.offset, row.len);
      bytesRead += buf.length;
      const data = await decodeBlock(buf, row.npages, where);
      for (const [idx, h] of n.pages) {
        pagesChecked++;
        const got = createHash("sha256").update(data.subarray(idx * PAGE, (idx + 1) * PAGE)).digest();
        if (!got.equals(h)) {
          why = `cannot read the block at ${where}: page ${idx} does not match its SHA-256`;
          break;
        }
      }
    } catch (e) {
      if (!isDamageError(e)) throw e;
      why = shortWhy(e);
    }
    blocksChecked++;
    if (why === null) continue;
    bad.push({ id: row.id, why });
    const users = [...n.checkpoints.keys()].sort();
    for (const [id, pages] of n.checkpoints) hit(id).badPages += pages;
    damagedBlocks.push({ block: row.id, pack: packName(row.pack), offset: row.offset, why, found: "now", foundAt: new Date().toISOString(), checkpoints: users });
  }
  for (const [id, users] of earlierUsers) {
    const b = earlier.get(id)!;
    damagedBlocks.push({ block: id, pack: packName(b.pack), offset: b.offset, why: b.why, found: "earlier", foundAt: b.found_at, checkpoints: [...users].sort() });
  }
  const list = [...affected.values()].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  const report: VerifyReport = {
    checkpoints: ids,
    blocksChecked,
    pagesChecked,
    bytesRead,
    damagedBlocks,
    damagedPacks: cat.damagedPacks().map((p) => ({ pack: packName(p.id), why: p.why, foundAt: p.found_at })),
    affected: list,
    setAsideUnused: [...earlier.keys()].filter((b) => !earlierUsers.has(b)).length,
    ok: list.length === 0,
    ms: Date.now() - t0,
  };
  return { report, bad };
}
