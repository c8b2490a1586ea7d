// `mirror pull`: fetch one checkpoint into a local directory and verify it.
// Layout: DIR/<source>/<id>/{checkpoint.json, manifest, chunks/<hh>/<hash>}; chunks
// already present under DIR/<source>/*/chunks are not fetched again.
import { mkdir, readdir, readFile, rename, writeFile } from "node:fs/promises";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { withAdmin, type AdminOptions } from "./admin.js";
import { isValidName, sha256hex } from "./objects.js";

export interface PullResult {
  source: string;
  id: string;
  seq: number;
  dir: string;
  chunks: number;
  fetchedChunks: number;
  bytes: number;
}

async function localChunks(root: string): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  if (!existsSync(root)) return out;
  for (const ck of await readdir(root)) {
    const cdir = join(root, ck, "chunks");
    if (!existsSync(cdir)) continue;
    for (const sub of await readdir(cdir)) for (const h of await readdir(join(cdir, sub))) out.set(h, join(cdir, sub, h));
  }
  return out;
}

/** `admin` says how to reach and authenticate; `opts` which checkpoint to pull, and where. */
export async function pullCheckpoint(admin: AdminOptions, opts: { source: string; id: string; dir: string }): Promise<PullResult> {
  if (!isValidName(opts.source)) throw new Error(`invalid source name ${JSON.stringify(opts.source)}`);
  if (opts.id !== "latest" && !isValidName(opts.id)) throw new Error(`invalid checkpoint id ${JSON.stringify(opts.id)}`);
  const root = join(opts.dir, opts.source);
  const have = await localChunks(root);
  const got = await withAdmin(admin, (a) => a.fetch(opts.source, opts.id, have.keys()));
  const h = got.header;
  const final = join(root, h.id);
  const tmp = join(root, `.${h.id}.partial-${process.pid}`);
  await mkdir(join(tmp, "chunks"), { recursive: true });
  let bytes = 0;
  for (const c of h.chunks) {
    let data = got.chunks.get(c.hash);
    if (!data) {
      const path = have.get(c.hash);
      if (!path) throw new Error(`mirror did not send chunk ${c.hash} of ${opts.source}/${h.id} and it is not local`);
      data = await readFile(path);
    }
    if (data.length !== c.size || sha256hex(data) !== c.hash) {
      throw new Error(`verification failed: chunk ${c.hash} of ${opts.source}/${h.id} is damaged`);
    }
    bytes += data.length;
    await mkdir(join(tmp, "chunks", c.hash.slice(0, 2)), { recursive: true });
    await writeFile(join(tmp, "chunks", c.hash.slice(0, 2), c.hash), data);
  }
  await writeFile(join(tmp, "manifest"), h.manifest);
  const info = {
    source: opts.source,
    id: h.id,
    seq: h.seq,
    ...(h.parent !== undefined ? { parent: h.parent } : {}),
    chunks: h.chunks.length,
    bytes,
    manifestSha256: sha256hex(h.manifest),
    verified: new Date().toISOString(),
  };
  await writeFile(join(tmp, "checkpoint.json"), JSON.stringify(info, null, 2) + "\n");
  if (existsSync(final)) throw new Error(`${final} already exists; remove it or pull into another --store`);
  await rename(tmp, final);
  return { source: opts.source, id: h.id, seq: h.seq, dir: final, chunks: h.chunks.length, fetchedChunks: got.chunks.size, bytes };
}

/** Re-reads a pulled checkpoint and checks every chunk against its hash. */
export async function verifyPulled(dir: string): Promise<{ chunks: number; bytes: number }> {
  const info = JSON.parse(await readFile(join(dir, "checkpoint.json"), "utf8")) as { manifestSha256: string };
  const manifest = await readFile(join(dir, "manifest"));
  if (sha256hex(manifest) !== info.manifestSha256) throw new Error(`${dir}/manifest does not match checkpoint.json`);
  let chunks = 0;
  let bytes = 0;
  for (const sub of await readdir(join(dir, "chunks"))) {
    for (const h of await readdir(join(dir, "chunks", sub))) {
      const d = await readFile(join(dir, "chunks", sub, h));
      if (sha256hex(d) !== h) throw new Error(`${dir}/chunks/${sub}/${h} is damaged`);
      chunks++;
      bytes += d.length;
    }
  }
  return { chunks, bytes };
}
