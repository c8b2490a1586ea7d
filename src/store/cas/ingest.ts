// ingest: streams one raw image into the store. Pages are hashed (SHA-256), zero pages
// only marked, new pages packed into blocks compressed concurrently and appended to the
// current pack; then the commit: packs fsynced, then one SQLite transaction (packs,
// blocks, pages, manifest, page table). Nothing is visible before that transaction.
import { createHash } from "node:crypto";
import type { Readable } from "node:stream";
import { TgError } from "../../errors.js";
import { RecordType } from "../../image/format.js";
import { checkpointId, validAppName } from "../types.js";
import type { ExtentRow } from "./catalog.js";
import { toCheckpoint, type StoreContext } from "./context.js";
import { openImageSource, readImage } from "./image-stream.js";
import { BlockPipeline, PackAppender } from "./block-writer.js";
import type { CasCheckpoint, CheckpointStats, IngestInfo } from "./types.js";
import { HASH_LEN, PAGE, ZERO_HASH, ZERO_PAGE, pageOf } from "./util.js";

const TRACKING_MODES: Record<number, string> = { 0: "none", 1: "uffd", 2: "hash" };

export async function ingestImage(ctx: StoreContext, app: string, seq: number, source: string | Readable, info: IngestInfo = {}): Promise<CasCheckpoint> {
  const t0 = process.hrtime.bigint();
  if (!validAppName(app)) throw new TgError(`cannot store a checkpoint for ${JSON.stringify(app)}`, "invalid app name", "Use letters, digits, '.', '_' and '-' (at most 64)", "bad-request");
  if (!Number.isSafeInteger(seq) || seq < 1) throw new TgError(`cannot store checkpoint ${app}@${seq}`, "seq must be a positive integer", "", "bad-request");
  const id = checkpointId(app, seq);
  const cat = ctx.catalog;
  if (cat.checkpoint(id)) throw new TgError(`cannot store checkpoint ${id}`, "a checkpoint with this id is already in the store", "Use the next seq", "exists");

  const { stream, label } = openImageSource(source);
  const appender = new PackAppender(ctx);
  const pipeline = new BlockPipeline(appender, ctx.opts.blockPages, ctx.opts.level, ctx.opts.inflight);
  const pending = new Map<string, [number, number]>();
  const newPages: { hash: Buffer; at: [number, number] }[] = [];
  const extents: ExtentRow[] = [];
  const metaParts: Buffer[] = [];
  let headerRaw: Buffer | null = null;
  let kind: "full" | "incremental" = "full";
  let parent: string | null = null;
  let pid = 0;
  let threads = 0;
  const stats: CheckpointStats = {
    imageBytes: 0,
    pages: 0,
    zeroPages: 0,
    newPages: 0,
    storedBytes: 0,
    clearExtents: 0,
    downtimeNs: info.downtimeNs ?? 0,
    totalNs: info.totalNs ?? 0,
    threads: 0,
    tracking: null,
    pagesScanned: null,
    pagesWritten: null,
    freshMappings: null,
    ingestNs: 0,
    ...(info.extra !== undefined ? { extra: info.extra } : {}),
  };
  let committed = false;
  try {
    for await (const item of readImage(stream, label)) {
      switch (item.kind) {
        case "header": {
          headerRaw = item.raw;
          pid = item.header.pid;
          if (item.header.flags & 1) {
            kind = "incremental";
            parent = info.parent ?? checkpointId(app, Number(item.header.parentSeq));
            const p = cat.checkpoint(parent);
            const fix = "Take a full checkpoint (`tardigrade checkpoint NAME --full`)";
            if (!p) throw new TgError(`cannot store incremental checkpoint ${id}`, `its parent ${parent} is not in the store`, fix, "missing-parent");
            if (p.app !== app || p.seq >= seq) throw new TgError(`cannot store incremental checkpoint ${id}`, `its parent ${parent} is not an earlier checkpoint of ${app}`, fix, "missing-parent");
          }
          break;
        }
        case "meta":
          metaParts.push(item.raw);
          if (item.type === RecordType.THREAD && (item.payload.readUInt32LE(4) & 1) === 0) threads++;
          break;
        case "tracking":
          metaParts.push(item.raw);
          stats.tracking = TRACKING_MODES[item.info.mode] ?? "unknown";
          stats.pagesScanned = Number(item.info.pagesScanned);
          stats.pagesWritten = Number(item.info.pagesWritten);
          stats.freshMappings = Number(item.info.freshMappings);
          break;
        case "clear":
          extents.push({ ord: extents.length, page: pageOf(item.addr), npages: item.npages, hashes: null });
          stats.clearExtents++;
          break;
        case "pages": {
          const hashes = Buffer.allocUnsafe(item.npages * HASH_LEN);
          for (let i = 0; i < item.npages; i++) {
            const page = item.data.subarray(i * PAGE, (i + 1) * PAGE);
            if (page.equals(ZERO_PAGE)) {
              ZERO_HASH.copy(hashes, i * HASH_LEN);
              stats.zeroPages++;
              continue;
            }
            const h = createHash("sha256").update(page).digest();
            h.copy(hashes, i * HASH_LEN);
            const key = h.toString("latin1");
            if (pending.has(key) || cat.hasPage(h)) continue;
            const at = await pipeline.add(page);
            pending.set(key, at);
            newPages.push({ hash: h, at });
          }
          extents.push({ ord: extents.length, page: pageOf(item.addr), npages: item.npages, hashes });
          stats.pages += item.npages;
          break;
        }
        case "end":
          stats.imageBytes = item.fileSize;
          break;
      }
    }
    await pipeline.finish();
    await appender.sync();
    stats.newPages = newPages.length;
    stats.storedBytes = pipeline.storedBytes;
    stats.threads = info.threads ?? threads;
    stats.ingestNs = Number(process.hrtime.bigint() - t0);
    const header = headerRaw!;
    const createdAt = (info.createdAt ?? new Date()).toISOString();
    const row = cat.transaction(() => {
      if (parent !== null && !cat.checkpoint(parent)) throw new TgError(`cannot store incremental checkpoint ${id}`, `its parent ${parent} was removed meanwhile`, "Take a full checkpoint", "missing-parent");
      for (const w of appender.writers) cat.upsertPack(w.id, w.size);
      const ids = pipeline.blocks.map((b) => cat.insertBlock(b.pack, b.offset, b.len, b.npages));
      for (const p of newPages) cat.insertPage(p.hash, ids[p.at[0]]!, p.at[1]);
      const cid = cat.insertCheckpoint({ id, app, seq, kind, parent, synthetic: 0, created_at: createdAt, pid, stats: JSON.stringify(stats), header, meta: Buffer.concat(metaParts) });
      for (const e of extents) cat.insertExtent(cid, e);
      return cat.checkpoint(id)!;
    });
    committed = true;
    await appender.close();
    return toCheckpoint(row);
  } catch (e) {
    if (typeof source === "string") stream.destroy();
    if (committed) throw e;
    await pipeline.abandon();
    await appender.rollback();
    throw e;
  }
}
