// Local directory store. Layout under <root> ($TARDIGRADE_HOME/store):
//   staging/<app>.<random>/        images being written by the agent (never visible)
//   checkpoints/<app>@<seq>/       committed: manifest.json + pid<N>.img
//   seq/<app>                      last seq handed out for the app (seqs never repeat)
// Commit: verify images, fsync them, write + fsync manifest.json, fsync the staging
// dir, rename it into checkpoints/, fsync checkpoints/. A crash at any point leaves
// either no trace in checkpoints/ or a complete checkpoint.
import { randomBytes } from "node:crypto";
import { mkdir, readFile, readdir, rename, rm, stat } from "node:fs/promises";
import { join } from "node:path";
import { TgError, errMessage } from "../errors.js";
import { parseImage } from "../image/parser.js";
import { fsyncPath, writeFileAtomic, writeFileSynced } from "./fsutil.js";
import { Mutex } from "./mutex.js";
import {
  checkpointId,
  parseCheckpointId,
  unknownCheckpoint,
  validAppName,
  type ImageEntry,
  type Manifest,
  type OpenedImage,
  type PutInfo,
  type Staging,
  type Store,
} from "./types.js";

const IMAGE_RE = /^pid([0-9]+)\.img$/;


export class LocalStore implements Store {
  private readonly lock = new Mutex();
  readonly stagingDir: string;
  readonly checkpointsDir: string;
  private readonly seqDirPath: string;

  constructor(readonly root: string) {
    this.stagingDir = join(root, "staging");
    this.checkpointsDir = join(root, "checkpoints");
    this.seqDirPath = join(root, "seq");
  }

  /** Directory of the per-app seq counters. */
  seqDir(): string {
    return this.seqDirPath;
  }

  private async init(): Promise<void> {
    for (const d of [this.root, this.stagingDir, this.checkpointsDir, this.seqDirPath]) await mkdir(d, { recursive: true, mode: 0o755 });
  }

  async recover(): Promise<string[]> {
    await this.init();
    const removed: string[] = [];
    for (const name of await readdir(this.stagingDir)) {
      await rm(join(this.stagingDir, name), { recursive: true, force: true });
      removed.push(name);
    }
    // Stray temp files of atomic writes.
    for (const name of await readdir(this.seqDirPath)) if (name.includes(".tmp.")) await rm(join(this.seqDirPath, name), { force: true });
    return removed;
  }

  async stage(app: string): Promise<Staging> {
    if (!validAppName(app)) throw new TgError(`cannot stage a checkpoint for ${JSON.stringify(app)}`, "invalid app name", "Use letters, digits, '.', '_' and '-'");
    await this.init();
    const dir = join(this.stagingDir, `${app}.${randomBytes(6).toString("hex")}`);
    await mkdir(dir, { mode: 0o700 });
    return { app, dir, imagePath: (pid: number) => join(dir, `pid${pid}.img`) };
  }

  async discard(staging: Staging): Promise<void> {
    await rm(staging.dir, { recursive: true, force: true });
  }

  async put(staging: Staging, info: PutInfo): Promise<Manifest> {
    const files = (await readdir(staging.dir)).filter((f) => IMAGE_RE.test(f)).sort();
    if (files.length === 0) throw new TgError(`cannot commit checkpoint of ${staging.app}`, `no image was written to ${staging.dir}`, "Check the app's log (`tardigrade logs NAME`) and the daemon log");
    const images: ImageEntry[] = [];
    let threads = 0;
    let incremental = false;
    const sizes = await Promise.all(files.map(async (f) => (await stat(join(staging.dir, f))).size));
    const totalBytes = sizes.reduce((a, b) => a + b, 0);
    let before = 0;
    for (const [i, file] of files.entries()) {
      const path = join(staging.dir, file);
      const base = before;
      // Verifies every CRC; throws ImageError.
      const img = await parseImage(path, { onProgress: (done) => info.onProgress?.(base + done, totalBytes) });
      before += sizes[i]!;
      await fsyncPath(path);
      images.push({ file, pid: Number(IMAGE_RE.exec(file)![1]), bytes: img.size, pages: img.pagesTotal });
      threads += img.threads.filter((t) => (t.flags & 1) === 0).length;
      incremental ||= (img.header.flags & 1) !== 0;
    }
    return this.lock.run(async () => {
      const seq = await this.nextSeq(staging.app);
      const manifest: Manifest = {
        format: 1,
        id: checkpointId(staging.app, seq),
        app: staging.app,
        seq,
        kind: info.kind ?? (incremental ? "incremental" : "full"),
        parent: info.parent ?? null,
        createdAt: new Date().toISOString(),
        bytes: images.reduce((n, i) => n + i.bytes, 0),
        pages: images.reduce((n, i) => n + i.pages, 0),
        threads: info.threads ?? threads,
        downtimeNs: info.downtimeNs,
        totalNs: info.totalNs,
        images,
      };
      await writeFileAtomic(join(this.seqDirPath, staging.app), `${seq}\n`);
      await writeFileSynced(join(staging.dir, "manifest.json"), JSON.stringify(manifest, null, 2) + "\n");
      await fsyncPath(staging.dir);
      await rename(staging.dir, join(this.checkpointsDir, manifest.id));
      await fsyncPath(this.checkpointsDir);
      return manifest;
    });
  }

  private async nextSeq(app: string): Promise<number> {
    let last = 0;
    try {
      last = Number((await readFile(join(this.seqDirPath, app), "utf8")).trim()) || 0;
    } catch {
      /* no counter yet */
    }
    for (const m of await this.list(app)) last = Math.max(last, m.seq);
    return last + 1;
  }

  async list(app?: string): Promise<Manifest[]> {
    let names: string[];
    try {
      names = await readdir(this.checkpointsDir);
    } catch {
      return [];
    }
    const out: Manifest[] = [];
    for (const name of names) {
      const id = parseCheckpointId(name);
      if (!id || (app !== undefined && id.app !== app)) continue;
      const m = await this.readManifest(name);
      if (m) out.push(m);
    }
    return out.sort((a, b) => (a.app === b.app ? a.seq - b.seq : a.app < b.app ? -1 : 1));
  }

  private async readManifest(id: string): Promise<Manifest | null> {
    try {
      const m = JSON.parse(await readFile(join(this.checkpointsDir, id, "manifest.json"), "utf8")) as Manifest;
      return m.id === id ? m : null;
    } catch {
      return null;
    }
  }

  async get(id: string): Promise<Manifest> {
    if (!parseCheckpointId(id)) throw unknownCheckpoint(id, "checkpoint ids look like APP@SEQ (e.g. calc@3)");
    const m = await this.readManifest(id);
    if (!m) throw unknownCheckpoint(id);
    return m;
  }

  async openImage(id: string, pid?: number): Promise<OpenedImage> {
    const m = await this.get(id);
    const entry = pid === undefined ? m.images[0] : m.images.find((i) => i.pid === pid);
    if (!entry) throw unknownCheckpoint(id, pid === undefined ? "the checkpoint has no image" : `the checkpoint has no image for pid ${pid}`);
    const path = join(this.checkpointsDir, id, entry.file);
    try {
      await stat(path);
    } catch (e) {
      throw new TgError(`checkpoint ${id} is damaged`, `its image ${path} cannot be read (${errMessage(e)})`, "Use an earlier checkpoint (`tardigrade ls`)", "bad-image");
    }
    return { path, release: async () => {} };
  }
}
