// Durable-write helpers: fsync of files and directories, atomic small-file writes.
import { mkdirSync, statSync } from "node:fs";
import { open, rename, writeFile } from "node:fs/promises";
import { dirname } from "node:path";

export async function fsyncPath(path: string): Promise<void> {
  const fh = await open(path, "r");
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** Writes `data` to `path` so that readers see either the old or the new content, durably. */
export async function writeFileAtomic(path: string, data: string | Buffer): Promise<void> {
  const tmp = `${path}.tmp.${process.pid}`;
  const fh = await open(tmp, "w", 0o644);
  try {
    await fh.writeFile(data);
    await fh.sync();
  } finally {
    await fh.close();
  }
  await rename(tmp, path);
  await fsyncPath(dirname(path));
}

/** Plain write + fsync (for files inside a directory that is renamed into place afterwards). */
export async function writeFileSynced(path: string, data: string | Buffer): Promise<void> {
  await writeFile(path, data, { mode: 0o644 });
  await fsyncPath(path);
}

/**
 * mkdir -p without `{ recursive: true }`, which loops forever in Node 20 on some
 * paths (e.g. under /proc, where mkdir fails with ENOENT although the parent exists).
 */
export function mkdirp(path: string, mode = 0o755): void {
  try {
    mkdirSync(path, { mode });
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "EEXIST" && statSync(path).isDirectory()) return;
    if (code !== "ENOENT" || dirname(path) === path) throw e;
    mkdirp(dirname(path), mode);
    mkdirSync(path, { mode }); // once more, now that the parent exists; errors propagate
  }
}
