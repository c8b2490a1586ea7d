// One writer per store: <root>/lock holds the pid of the process that has the store open.
// A lock left by a dead process (kill -9) is taken over; a live one is refused.
import { open, readFile, rm } from "node:fs/promises";
import { join } from "node:path";
import { TgError } from "../../errors.js";
import { isAlive, procStartTime } from "../../daemon/procs.js";

/** The lock names its owner by pid and start time: a zombie or a reused pid is not the owner. */
function alive(pid: number, start: string | null): boolean {
  return isAlive(pid, start);
}

export async function lockStore(root: string): Promise<() => Promise<void>> {
  const path = join(root, "lock");
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      const fh = await open(path, "wx", 0o644);
      await fh.writeFile(`${process.pid} ${procStartTime(process.pid) ?? ""}\n`);
      await fh.close();
      return async () => {
        const owner = await readFile(path, "utf8").catch(() => "");
        if (Number(owner.trim().split(" ")[0]) === process.pid) await rm(path, { force: true });
      };
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e;
      const [pidText, start] = (await readFile(path, "utf8").catch(() => "")).trim().split(" ");
      const pid = Number(pidText);
      if (Number.isInteger(pid) && pid > 0 && alive(pid, start || null)) {
        const self = pid === process.pid ? " (this process: close the other CasStore first)" : "";
        throw new TgError(`cannot open the store ${root}`, `it is open in process ${pid}${self}`, `Stop that process, or if it is not a tardigrade process (pid reused), remove ${path}`, "store-busy");
      }
      await rm(path, { force: true }); // stale: its owner is gone
    }
  }
  throw new TgError(`cannot open the store ${root}`, `could not take ${path} (another process keeps taking it)`, "Make sure only one daemon uses this store", "store-busy");
}
