// Apps preload a private, content-addressed copy of the agent
// ($TARDIGRADE_HOME/lib/libtardigrade-agent-<hash>.so) rather than native/build's:
// restore requires every mapped file to be unchanged since the checkpoint, so
// rebuilding or upgrading tardigrade must not invalidate existing checkpoints.
import { createHash } from "node:crypto";
import { copyFile, mkdir, readFile, rename, stat, utimes } from "node:fs/promises";
import { join } from "node:path";
import { fsyncPath } from "../store/fsutil.js";
import { nativeBinary } from "./paths.js";

const FIXED_TIME = new Date("2000-01-01T00:00:00Z");

export async function stableAgent(home: string): Promise<string> {
  const src = nativeBinary("libtardigrade-agent.so");
  const hash = createHash("sha256").update(await readFile(src)).digest("hex").slice(0, 16);
  const dir = join(home, "lib");
  const dst = join(dir, `libtardigrade-agent-${hash}.so`);
  try {
    await stat(dst);
    return dst;
  } catch {
    /* first use of this build */
  }
  await mkdir(dir, { recursive: true, mode: 0o755 });
  const tmp = `${dst}.tmp.${process.pid}`;
  await copyFile(src, tmp);
  // A fixed mtime: the same build has the same size and mtime on every host, which is what a
  // restore on another host checks for mapped files.
  await utimes(tmp, FIXED_TIME, FIXED_TIME);
  await fsyncPath(tmp);
  await rename(tmp, dst);
  await fsyncPath(dir);
  return dst;
}
