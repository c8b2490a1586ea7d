// `tardigrade logs NAME [-f]`: prints the app's log file, optionally following it.
import { createReadStream, existsSync, statSync, watch } from "node:fs";
import { AppDir } from "../daemon/appdir.js";
import { TgError } from "../errors.js";
import { checkAppName } from "./validate.js";

function copy(file: string, from: number, to: number): Promise<void> {
  if (to <= from) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const s = createReadStream(file, { start: from, end: to - 1 });
    s.on("error", reject);
    s.on("end", resolve);
    s.pipe(process.stdout, { end: false });
  });
}

export async function showLogs(home: string, name: string, follow: boolean): Promise<void> {
  const dir = new AppDir(home, checkAppName(name));
  if (!existsSync(dir.logFile)) {
    throw new TgError(`no log for ${name}`, `${dir.logFile} does not exist`, "See the apps with `tardigrade status`", "unknown-app");
  }
  let pos = 0;
  const size = statSync(dir.logFile).size;
  await copy(dir.logFile, 0, size);
  pos = size;
  if (!follow) return;
  await new Promise<void>(() => {
    let busy = false;
    const tick = async (): Promise<void> => {
      if (busy) return;
      busy = true;
      try {
        const now = statSync(dir.logFile).size;
        if (now < pos) pos = 0; // truncated
        await copy(dir.logFile, pos, now);
        pos = now;
      } catch {
        /* log replaced; retry next tick */
      } finally {
        busy = false;
      }
    };
    watch(dir.logFile, () => void tick());
    setInterval(() => void tick(), 500);
  });
}
