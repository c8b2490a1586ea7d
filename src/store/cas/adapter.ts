// CasStore behind the daemon's Store contract (src/store/types.ts), so the daemon can
// switch from LocalStore by changing one constructor. Layout under <root>:
//   index.sqlite, packs/     the content-addressed store
//   staging/<app>.<rand>/    images being written by the agent (never visible)
//   exports/                 full images composed for a restore, removed on release()
// One image per checkpoint (single-process apps): put() refuses a staging dir with more.
import { randomBytes } from "node:crypto";
import { mkdir, readdir, rm } from "node:fs/promises";
import { join } from "node:path";
import { TgError } from "../../errors.js";
import { parseMemberApp, validAppName, type Manifest, type OpenedImage, type PutInfo, type Staging, type Store } from "../types.js";
import { CasStore } from "./store.js";
import type { CasCheckpoint, CasOptions } from "./types.js";

const IMAGE_RE = /^pid([0-9]+)\.img$/;

/** A CasStore checkpoint in the daemon's manifest shape (plus `synthetic` and the store's stats). */
export function toManifest(c: CasCheckpoint): Manifest & { synthetic: boolean; stats: CasCheckpoint["stats"] } {
  return {
    format: 1,
    id: c.id,
    app: c.app,
    seq: c.seq,
    kind: c.kind,
    parent: c.parent,
    createdAt: c.createdAt,
    bytes: c.stats.imageBytes,
    pages: c.stats.pages,
    threads: c.stats.threads,
    downtimeNs: c.stats.downtimeNs,
    totalNs: c.stats.totalNs,
    images: [{ file: `pid${c.pid}.img`, pid: c.pid, bytes: c.stats.imageBytes, pages: c.stats.pages }],
    synthetic: c.synthetic,
    stats: c.stats,
  };
}

export class CasStoreAdapter implements Store {
  private constructor(
    readonly root: string,
    readonly cas: CasStore,
  ) {}

  static async open(root: string, opts: CasOptions = {}): Promise<CasStoreAdapter> {
    const cas = await CasStore.open(root, opts);
    await mkdir(join(root, "staging"), { recursive: true });
    await mkdir(join(root, "exports"), { recursive: true });
    return new CasStoreAdapter(root, cas);
  }

  /** Removes staging and export leftovers (the index and packs were repaired by open()). */
  async recover(): Promise<string[]> {
    const removed: string[] = [];
    for (const sub of ["staging", "exports"]) {
      for (const name of await readdir(join(this.root, sub))) {
        await rm(join(this.root, sub, name), { recursive: true, force: true });
        removed.push(`${sub}/${name}`);
      }
    }
    return [...removed, ...this.cas.repairs.removedPacks.map((p) => `packs/${p}`)];
  }

  async stage(app: string): Promise<Staging> {
    if (!validAppName(app)) throw new TgError(`cannot stage a checkpoint for ${JSON.stringify(app)}`, "invalid app name", "Use letters, digits, '.', '_' and '-'", "bad-request");
    const dir = join(this.root, "staging", `${app}.${randomBytes(6).toString("hex")}`);
    await mkdir(dir, { recursive: true });
    return { app, dir, imagePath: (pid: number) => join(dir, `pid${pid}.img`) };
  }

  async put(staging: Staging, info: PutInfo): Promise<Manifest> {
    const images = (await readdir(staging.dir)).filter((f) => IMAGE_RE.test(f));
    if (images.length !== 1)
      throw new TgError(`cannot commit a checkpoint of ${staging.app}`, images.length === 0 ? "the agent wrote no image" : `${images.length} images (multi-process checkpoints are not supported by the content-addressed store yet)`, "", "checkpoint-failed");
    const c = await this.cas.ingestNext(staging.app, join(staging.dir, images[0]!), {
      downtimeNs: info.downtimeNs,
      totalNs: info.totalNs,
      ...(info.threads !== undefined ? { threads: info.threads } : {}),
      ...(info.parent ? { parent: info.parent } : {}),
      ...(info.onProgress ? { onProgress: info.onProgress } : {}),
    });
    await rm(staging.dir, { recursive: true, force: true });
    return toManifest(c);
  }

  async discard(staging: Staging): Promise<void> {
    await rm(staging.dir, { recursive: true, force: true });
  }

  async list(app?: string): Promise<Manifest[]> {
    // a process tree's other processes are part of their tree's checkpoint, not listed apart
    return this.cas.list(app).filter((c) => app !== undefined || !parseMemberApp(c.app)).map(toManifest);
  }

  async get(id: string): Promise<Manifest> {
    return toManifest(this.cas.get(id));
  }

  /** Composes the full image of `id` into a file for the restorer; release() deletes it. */
  async openImage(id: string, pid?: number): Promise<OpenedImage> {
    const c = this.cas.get(id);
    if (pid !== undefined && pid !== c.pid) throw new TgError(`cannot open the image of pid ${pid} in ${id}`, `the checkpoint holds only pid ${c.pid}`, "", "unknown-checkpoint");
    const path = join(this.root, "exports", `${id}.${randomBytes(6).toString("hex")}.img`);
    try {
      await this.cas.exportToFile(id, path);
    } catch (e) {
      await rm(path, { force: true });
      throw e;
    }
    return { path, release: () => rm(path, { force: true }) };
  }

  close(): Promise<void> {
    return this.cas.close();
  }
}
