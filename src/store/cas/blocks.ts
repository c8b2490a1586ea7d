// Decompressed blocks for readers (export, gc), with an LRU cache and one load per block
// in flight. Block ids are never reused (AUTOINCREMENT), so a cached block never goes stale.
import { join } from "node:path";
import type { Catalog } from "./catalog.js";
import { decodeBlock } from "./codec.js";
import { packName, type PackReaders } from "./pack.js";
import { storeCorrupt } from "./util.js";

export class BlockCache {
  private readonly lru = new Map<number, Promise<Buffer>>();
  hits = 0;
  misses = 0;

  constructor(
    private readonly catalog: Catalog,
    private readonly readers: PackReaders,
    private readonly packDir: string,
    private readonly capacity = 64,
    /** Told about a block that exists in the index but cannot be read or fails its checks. */
    private readonly onBad?: (id: number, e: unknown) => void,
  ) {}

  get(id: number): Promise<Buffer> {
    const hit = this.lru.get(id);
    if (hit) {
      this.hits++;
      this.lru.delete(id);
      this.lru.set(id, hit);
      return hit;
    }
    this.misses++;
    const p = this.load(id);
    p.catch(() => this.lru.delete(id));
    this.lru.set(id, p);
    while (this.lru.size > this.capacity) this.lru.delete(this.lru.keys().next().value as number);
    return p;
  }

  private async load(id: number): Promise<Buffer> {
    const row = this.catalog.block(id);
    if (!row) throw storeCorrupt(`cannot read block ${id}`, "the index has no such block (removed by a concurrent gc?)");
    try {
      const buf = await this.readers.read(row.pack, row.offset, row.len);
      return await decodeBlock(buf, row.npages, `${join(this.packDir, packName(row.pack))} offset ${row.offset}`);
    } catch (e) {
      this.onBad?.(id, e);
      throw e;
    }
  }
}
