// ingest: streams one raw image into the store. Pages are hashed (SHA-256), zero pages
// only marked, new pages packed into blocks compressed concurrently and appended to the
// current pack; then the commit: packs fsynced, then one SQLite transaction (packs,
// blocks, pages, manifest, page table). Nothing is visible before that transaction.
import { stat } from "node:fs/promises";
import { endianness } from "node:os";
import type { Readable } from "node:stream";
import { TgError } from "../../errors.js";
import { RecordType } from "../../image/format.js";
import { decodeInetRepair, socketStats, type InetRepair } from "../../image/inet.js";
import { checkpointId, validStoreAppName } from "../types.js";
import type { ExtentRow } from "./catalog.js";
import { toCheckpoint, type StoreContext } from "./context.js";
import { openImageSource, readImage, recycleRecord } from "./image-stream.js";
import { BlockPipeline, PackAppender } from "./block-writer.js";
import { PageFilter } from "./bloom.js";
import { NewPages, TripleList } from "./pageset.js";
import type { CasCheckpoint, CheckpointStats, IngestInfo, VmaFile } from "./types.js";
import { HASH_LEN, LOC_LEN, PAGE, addrOf, crashPoint, hex, pageOf, putLoc } from "./util.js";
import type { Hashed } from "./hasher.js";
import { ImageError } from "../../image/parser.js";

/** Typed-array words are the page table's little-endian u32s. */
const LITTLE_ENDIAN = endianness() === "LE";
/** PAGES records being hashed ahead of the one being indexed. */
const HASH_DEPTH = 4;
const TRACKING_MODES: Record<number, string> = { 0: "none", 1: "uffd", 2: "hash" };

export async function ingestImage(ctx: StoreContext, app: string, seq: number, source: string | Readable, info: IngestInfo = {}): Promise<CasCheckpoint> {
  const t0 = process.hrtime.bigint();
  if (!validStoreAppName(app)) throw new TgError(`cannot store a checkpoint for ${JSON.stringify(app)}`, "invalid app name", "Use letters, digits, '.', '_' and '-' (at most 64)", "bad-request");
  if (!Number.isSafeInteger(seq) || seq < 1) throw new TgError(`cannot store checkpoint ${app}@${seq}`, "seq must be a positive integer", "", "bad-request");
  const id = checkpointId(app, seq);
  const cat = ctx.catalog;
  if (cat.checkpoint(id)) throw new TgError(`cannot store checkpoint ${id}`, "a checkpoint with this id is already in the store", "Use the next seq", "exists");

  if (!ctx.filter || ctx.filter.full) ctx.filter = PageFilter.fromCatalog(cat);
  const filter = ctx.filter;
  const { bytes, label } = openImageSource(source);
  const total = typeof source === "string" ? await stat(source).then((s) => (s.isFile() ? s.size : 0), () => 0) : 0;
  let lastProgress = 0;
  const appender = new PackAppender(ctx);
  const pipeline = new BlockPipeline(appender, ctx.opts.blockPages, ctx.opts.level, ctx.opts.inflight);
  /** Pages new to the store, packed (see pageset.ts). */
  const newPages = new NewPages();
  const extents: ExtentRow[] = [];
  const metaParts: Buffer[] = [];
  const vmas: VmaFile[] = [];
  const inetFds: { fd: number; extra: Buffer }[] = []; // TCP/UDP sockets (FD kind 13) and connections restored whole
  const repairs: InetRepair[] = [];
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
  /**
   * Location hints of pages in blocks of this ingest, as (extent ordinal, page index, entry
   * of newPages): block ids are known only at commit.
   */
  const fixups = new TripleList();
  const hasher = ctx.hasher();
  /** PAGES records being hashed, with the CRC their payload must have (checked by the hashing thread's result). */
  const hashing: { ext: ExtentRow; p: Promise<Hashed>; crc: number | undefined; offset: number }[] = [];
  /** The ImageError of a record whose payload CRC does not match, as readImage would have thrown it. */
  const crcError = (h: (typeof hashing)[number], got: Hashed): ImageError | null =>
    h.crc !== undefined && got.crc !== h.crc ? new ImageError(label, h.offset, `payload CRC mismatch in record PAGES (${hex(addrOf(h.ext.page))}, ${h.ext.npages} pages)`) : null;
  let fresh = new Int32Array(256);
  /** Dedup + packing of the oldest hashed PAGES record. */
  const indexPages = async (): Promise<void> => {
    const h = hashing.shift()!;
    const { ext, p } = h;
    const got = await p;
    const bad = crcError(h, got);
    if (bad) throw bad;
    const data = got.data;
    // 4-aligned (the worker's fresh buffers are): read hashes as words, no object per page
    const hashes = got.hashes.byteOffset % 4 === 0 ? got.hashes : Buffer.from(got.hashes);
    const w = new Uint32Array(hashes.buffer, hashes.byteOffset, hashes.length / 4);
    ext.hashes = hashes;
    const locs = Buffer.alloc(ext.npages * LOC_LEN); // block 0: no hint (zero pages)
    ext.locs = locs;
    if (fresh.length < ext.npages) fresh = new Int32Array(ext.npages);
    let nfresh = 0;
    for (let i = 0; i < ext.npages; i++) {
      const wo = i * 8;
      if ((w[wo]! | w[wo + 1]! | w[wo + 2]! | w[wo + 3]! | w[wo + 4]! | w[wo + 5]! | w[wo + 6]! | w[wo + 7]!) === 0) {
        stats.zeroPages++; // ZERO_HASH: a zero page
        continue;
      }
      const mine = newPages.find(w, wo);
      if (mine >= 0) {
        fixups.push(ext.ord, i, mine);
        continue;
      }
      if (filter.mayHaveWords(w, wo)) {
        const stored = cat.pageLoc(hashes.subarray(i * HASH_LEN, (i + 1) * HASH_LEN));
        if (stored) {
          putLoc(locs, i, stored[0], stored[1]);
          continue;
        }
      }
      const e = newPages.add(w, wo, -1, -1); // placed below
      fixups.push(ext.ord, i, e);
      fresh[nfresh++] = i;
    }
    const first = newPages.count - nfresh;
    if (nfresh === ext.npages && pipeline.takesWhole(nfresh)) {
      // every page new, a whole block's worth: the record's memory becomes the block (no copy)
      const slot = await pipeline.addWhole(data, got.pagesCrc); // its CRC: known from the record's check
      for (let k = 0; k < nfresh; k++) newPages.place(first + k, slot, k);
      return; // data now belongs to the pipeline
    }
    for (let k = 0; k < nfresh; k++) {
      const i = fresh[k]!;
      const [slot, idx] = await pipeline.add(data.subarray(i * PAGE, (i + 1) * PAGE));
      newPages.place(first + k, slot, idx);
    }
    recycleRecord(data); // its new pages were copied into blocks
  };
  let committed = false;
  try {
    for await (const item of readImage(bytes, label, { deferPagesCrc: true })) {
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
          if (item.type === RecordType.VMA && item.payload.length > 80)
            vmas.push({ prot: item.payload.readUInt32LE(24), kind: item.payload.readUInt32LE(28), vflags: item.payload.readUInt32LE(32), path: item.payload.toString("utf8", 80) });
          if (item.type === RecordType.THREAD && (item.payload.readUInt32LE(4) & 1) === 0) threads++;
          if (item.type === RecordType.FD && item.payload.length >= 80 && item.payload.readUInt32LE(4) === 13)
            inetFds.push({ fd: item.payload.readUInt32LE(0), extra: Buffer.from(item.payload.subarray(80, 80 + item.payload.readUInt32LE(72))) });
          if (item.type === RecordType.INET_REPAIR) {
            const r = decodeInetRepair(item.payload);
            if (typeof r !== "string") repairs.push(r);
          }
          break;
        case "tracking":
          metaParts.push(item.raw);
          stats.tracking = TRACKING_MODES[item.info.mode] ?? "unknown";
          stats.pagesScanned = Number(item.info.pagesScanned);
          stats.pagesWritten = Number(item.info.pagesWritten);
          stats.freshMappings = Number(item.info.freshMappings);
          break;
        case "clear":
          extents.push({ ord: extents.length, page: pageOf(item.addr), npages: item.npages, hashes: null, locs: null });
          stats.clearExtents++;
          break;
        case "pages": {
          const ext: ExtentRow = { ord: extents.length, page: pageOf(item.addr), npages: item.npages, hashes: null, locs: null };
          extents.push(ext);
          const p = hasher.hash(item.data, true, item.prefixCrc); // the reader is done with it
          p.catch(() => undefined); // awaited in order below
          hashing.push({ ext, p, crc: item.crc, offset: item.offset });
          stats.pages += item.npages;
          while (hashing.length > HASH_DEPTH) await indexPages();
          if (info.onProgress && item.offset - lastProgress >= 64 << 20) {
            lastProgress = item.offset;
            info.onProgress(item.offset, total);
          }
          break;
        }
        case "end":
          stats.imageBytes = item.fileSize;
          info.onProgress?.(item.fileSize, total || item.fileSize);
          break;
      }
    }
    bytes.close();
    while (hashing.length > 0) await indexPages();
    await pipeline.finish();
    crashPoint("ingest-written");
    await appender.sync();
    crashPoint("ingest-synced");
    // the caller may still be waiting for the producer's verdict (the agent's final reply)
    if (info.beforeCommit) await info.beforeCommit();
    if (info.describeFiles) stats.mappedFiles = await info.describeFiles(vmas);
    if (inetFds.length) stats.sockets = socketStats(inetFds, repairs);
    stats.downtimeNs = info.downtimeNs ?? stats.downtimeNs;
    // the hash tracker counts changed pages only while writing them (after the TRACKING record)
    if (info.pagesWritten !== undefined) stats.pagesWritten = info.pagesWritten;
    if (info.hotPages) stats.hotPages = info.hotPages;
    stats.totalNs = info.totalNs ?? stats.totalNs;
    stats.newPages = newPages.count;
    stats.storedBytes = pipeline.storedBytes;
    stats.threads = info.threads ?? threads;
    stats.ingestNs = Number(process.hrtime.bigint() - t0);
    const header = headerRaw!;
    const createdAt = (info.createdAt ?? new Date()).toISOString();
    const row = cat.transaction(() => {
      if (parent !== null && !cat.checkpoint(parent)) throw new TgError(`cannot store incremental checkpoint ${id}`, `its parent ${parent} was removed meanwhile`, "Take a full checkpoint", "missing-parent");
      for (const w of appender.writers) cat.upsertPack(w.id, w.size);
      const ids = pipeline.blocks.map((b) => cat.insertBlock(b.pack, b.offset, b.len, b.npages));
      const order = newPages.sorted();
      cat.insertPages(order.length, (k) => {
        const e = order[k]!;
        return [newPages.hash(e), ids[newPages.slot(e)]!, newPages.idx(e)];
      });
      // one location hint per new page (262,144 for a full 1 GiB image): written as words
      // through a view of each row's hints (a row's hints are a buffer of their own: aligned)
      // rather than by putLoc's two checked writeUInt32LE calls (~0.2 s per GiB)
      let row = -1;
      let words: Uint32Array | null = null;
      for (let k = 0; k < fixups.count; k++) {
        const e = fixups.z(k);
        const ord = fixups.x(k);
        if (ord !== row) {
          row = ord;
          const l = extents[ord]!.locs!;
          words = LITTLE_ENDIAN && l.byteOffset % 4 === 0 ? new Uint32Array(l.buffer, l.byteOffset, l.length / 4) : null;
        }
        const block = ids[newPages.slot(e)]!;
        if (words) {
          const i = fixups.y(k) * 2;
          words[i] = block <= 0xffffffff ? block : 0;
          words[i + 1] = newPages.idx(e);
        } else putLoc(extents[ord]!.locs!, fixups.y(k), block, newPages.idx(e));
      }
      const cid = cat.insertCheckpoint({ id, app, seq, kind, parent, synthetic: 0, created_at: createdAt, pid, stats: JSON.stringify(stats), header, meta: Buffer.concat(metaParts) });
      for (const e of extents) cat.insertExtent(cid, e);
      return cat.checkpoint(id)!;
    });
    committed = true;
    crashPoint("ingest-committed");
    for (let e = 0; e < newPages.count; e++) filter.add(newPages.hash(e));
    await appender.close();
    return toCheckpoint(row);
  } catch (e) {
    if (committed) throw e;
    bytes.close(); // a failed ingest has no use for the rest (the agent writing a FIFO gets EPIPE)
    // An earlier record whose CRC was still being checked is the first defect of the image: report it.
    let first: unknown = e;
    for (const h of hashing) {
      const got = await h.p.catch(() => null);
      const bad = got && crcError(h, got);
      if (bad) {
        first = bad;
        break;
      }
    }
    await Promise.allSettled(hashing.map((h) => h.p));
    await pipeline.abandon();
    await appender.rollback();
    throw first;
  }
}
