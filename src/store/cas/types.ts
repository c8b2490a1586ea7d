// Public types of the content-addressed store.
import type { SocketStat } from "../../image/inet.js";
import type { DamageEvent } from "./damage.js";

export interface CasOptions {
  /** zstd level for new blocks (default 1; see docs/store.md for the measurements). */
  level?: number;
  /** Pages per block (1..256, default 256). */
  blockPages?: number;
  /** A pack is closed for appends once it reaches this size (default 256 MiB). */
  packMaxBytes?: number;
  /** Blocks being compressed at once during ingest (default 4). */
  inflight?: number;
  /** Decompressed blocks kept by each export (default 64 = 64 MiB at 256 pages per block). */
  cacheBlocks?: number;
  /** Hash pages in a worker thread during ingest (default true). */
  hashWorker?: boolean;
}

/** What the caller knows about a capture, beyond what the image says. */
export interface IngestInfo {
  /** App downtime of the capture (ns). */
  downtimeNs?: number;
  /** Whole checkpoint time (ns). */
  totalNs?: number;
  /** Pages written since the parent, as the producer counted them (overrides the TRACKING record). */
  pagesWritten?: number;
  /** Pages of mappings the agent's adaptive tracking copied whole (written wholesale between checkpoints). */
  hotPages?: number;
  /** Thread count to record (default: THREAD records of the image minus the agent's manager thread). */
  threads?: number;
  /** Parent checkpoint id of an incremental image (default: `<app>@<parent_seq from the image header>`). */
  parent?: string;
  /** Creation time (default: now). */
  createdAt?: Date;
  /** Free-form JSON-serialisable data kept with the manifest. */
  extra?: unknown;
  /**
   * Awaited after the data is durable and before the commit: a rejection aborts the ingest
   * (nothing becomes visible). The daemon waits here for the agent's final reply.
   */
  beforeCommit?: () => Promise<void>;
  /**
   * Called before the commit with the image's file mappings (VMA records with a path); its
   * result is kept with the checkpoint as `stats.mappedFiles` (the daemon records the
   * identity of mapped executables and libraries, checked before a restore).
   */
  describeFiles?: (vmas: VmaFile[]) => Promise<MappedFile[]>;
  /** Called as the image is read: bytes done, total (0 when unknown: a stream). */
  onProgress?: (done: number, total: number) => void;
}

/** A file mapping as an image's VMA record gives it. */
export interface VmaFile {
  path: string;
  prot: number;
  kind: number;
  vflags: number;
}

/** The identity of a mapped executable file recorded with a checkpoint. */
export interface MappedFile {
  path: string;
  size: number;
  /** GNU build-id (hex) from the ELF's PT_NOTE segments. */
  buildId?: string;
  /** SHA-256 of the whole file, when it has no build-id. */
  sha256?: string;
}

export interface CheckpointStats {
  /** Size of the raw image ingested. */
  imageBytes: number;
  /** Pages in the image's PAGES records (zero pages included). */
  pages: number;
  zeroPages: number;
  /** Pages not already in the store, stored by this checkpoint. */
  newPages: number;
  /** Bytes appended to packs by this checkpoint (block headers + compressed data). */
  storedBytes: number;
  clearExtents: number;
  downtimeNs: number;
  totalNs: number;
  threads: number;
  /** From the TRACKING record: "none" | "uffd" | "hash" | "unknown" | null (no record). */
  tracking: string | null;
  pagesScanned: number | null;
  pagesWritten: number | null;
  /** Pages copied whole by adaptive tracking (absent: none, or an agent that does not say). */
  hotPages?: number;
  /** Identity of the executables and libraries mapped at the checkpoint (see IngestInfo.describeFiles). */
  mappedFiles?: MappedFile[];
  /** TCP/UDP sockets of the image and what a restore does with them (src/image/inet.ts). */
  sockets?: SocketStat[];
  freshMappings: number | null;
  /** Ingest wall time (ns). */
  ingestNs: number;
  /**
   * Set by merge: chain length composed and when; the read amplification the composed page
   * table had (pages an export would read / distinct pages needed), and the bytes written if
   * merge rewrote the pages into new blocks because that was above `maxReadAmplification`
   * (0 = page table only). Absent on checkpoints merged by older versions.
   */
  merged?: { chainLength: number; pages: number; mergedAt: string; readAmplification?: number; rewrittenBytes?: number };
  extra?: unknown;
}

export interface CasCheckpoint {
  id: string;
  app: string;
  seq: number;
  /** "full" for captured full images and for merged (synthetic) ones. */
  kind: "full" | "incremental";
  /**
   * Parent id for an incremental. A merged checkpoint keeps its former parent here for
   * lineage only: it no longer needs it (and gc may have removed it).
   */
  parent: string | null;
  /** True once merge() made it a synthetic full checkpoint. */
  synthetic: boolean;
  createdAt: string;
  /** PID (in the app's namespace) of the process the image describes. */
  pid: number;
  stats: CheckpointStats;
}

export interface MergePolicy {
  /** Merge once the chain (incrementals since the last full, this one included) is at least this long (default 8). */
  maxChainLength?: number;
  /** Merge once the chain's stored bytes reach this multiple of its base's (default 2). */
  maxChainBytesRatio?: number;
  /**
   * When merging: if exporting the merged checkpoint from where its pages already are would
   * read more than this many pages per page needed (blocks of 256 pages, most of them
   * superseded, in random order across packs), rewrite its pages in address order into new
   * blocks, so that it restores as fast as a fresh full checkpoint (default 1.25; Infinity:
   * never rewrite, the page table only; 1: rewrite unless already laid out like a full).
   */
  maxReadAmplification?: number;
}

/** How scattered a checkpoint's pages are: what exporting it reads (CasStore.readCost). */
export interface ReadCost {
  /** Distinct non-zero pages of the checkpoint: the least an export must read. */
  pages: number;
  /** Distinct blocks holding them. */
  blocks: number;
  /** The least number of blocks that could hold them (pages / blockPages, rounded up). */
  minBlocks: number;
  /** Pages an export decompresses: block loads (in address order, through an LRU of `cacheBlocks` blocks) × their pages. */
  pagesRead: number;
  /** pagesRead / pages: 1 for a fresh full checkpoint (and when there is nothing to read). */
  amplification: number;
}

export interface GcOptions {
  /** Checkpoints to keep per app, newest first by seq (at least 1; Infinity keeps all). */
  keep: number;
  /** Per-app overrides of `keep`. */
  keepPerApp?: Record<string, number>;
  /** Ids kept whatever their age (e.g. a restore in progress). */
  pin?: string[];
  /** Rewrite a pack when at least this fraction of its bytes is dead (default 0.25; 0 = any dead byte). */
  minDeadFraction?: number;
}

export interface GcReport {
  /** Checkpoint ids removed. */
  dropped: string[];
  /** Checkpoint ids kept beyond `keep` because a kept incremental needs them. */
  keptForChains: string[];
  packsRewritten: number;
  packsRemoved: string[];
  /** Live blocks copied to new packs (their live pages recompressed). */
  pagesMoved: number;
  pagesDropped: number;
  /** Pack bytes before minus after. */
  bytesFreed: number;
  /** Blocks gc could not read (or that failed their checks): skipped and set aside, their pages lost. */
  damaged?: DamageEvent[];
}

export interface StoreStats {
  checkpoints: number;
  packs: number;
  packBytes: number;
  indexBytes: number;
  bytesOnDisk: number;
  /** Σ image bytes of the checkpoints listed. */
  logicalBytes: number;
  /** Σ 4 KiB × (non-zero pages of every checkpoint's page table). */
  logicalPageBytes: number;
  uniquePages: number;
  /** logicalPageBytes / (uniquePages × 4 KiB). */
  dedupRatio: number;
  /** (uniquePages × 4 KiB) / packBytes. */
  compressionRatio: number;
}
