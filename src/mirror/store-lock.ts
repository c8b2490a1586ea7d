// One mirror server per store. Two servers on one store lose durable checkpoints (the
// second one's start deletes the first one's in-flight generation as "interrupted", and
// both write generation N+1), so the store is locked exclusively for the server's life.
//
// The lock is a Unix socket in the abstract namespace named after the store directory's
// device and inode: binding it fails while another process holds it, and the kernel
// releases it when that process exits (also on kill -9), so there is no stale lock to
// take over and no race in taking one over. STORE/LOCK only records who holds it (pid,
// host, start time) for the error message. Limit: the abstract namespace belongs to one
// host (and network namespace): two hosts sharing a store over a network filesystem are
// not stopped by it (docs/mirror.md).
import { createServer, type Server } from "node:net";
import { stat, writeFile, readFile } from "node:fs/promises";
import { hostname } from "node:os";
import { join } from "node:path";

export interface StoreLock {
  release(): Promise<void>;
}

export class StoreBusyError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "StoreBusyError";
  }
}

/** Takes the store's lock or throws StoreBusyError naming the holder. `dir` must exist. */
export async function lockMirrorStore(dir: string): Promise<StoreLock> {
  const st = await stat(dir);
  const name = `\0tardigrade-mirror-store:${st.dev}:${st.ino}`;
  const info = join(dir, "LOCK");
  const srv: Server = createServer();
  await new Promise<void>((resolve, reject) => {
    srv.once("error", (err: NodeJS.ErrnoException) => {
      if (err.code !== "EADDRINUSE") {
        reject(err);
        return;
      }
      readFile(info, "utf8")
        .catch(() => "")
        .then((holder) => {
          const who = holder.trim() ? ` (${holder.trim()})` : "";
          reject(
            new StoreBusyError(
              `mirror store ${dir} is in use by another mirror server${who}; ` +
                `two servers on one store would lose durable checkpoints. Stop the other server or give this one its own --store`,
            ),
          );
        }, reject);
    });
    srv.listen(name, () => resolve());
  });
  srv.unref();
  await writeFile(info, `pid ${process.pid} on ${hostname()} since ${new Date().toISOString()}\n`, { mode: 0o600 });
  return {
    release: () => new Promise<void>((resolve) => srv.close(() => resolve())),
  };
}
