// A restore that fails must not change what `status` says about the app it replaces: the exited
// app's exit status, record and host pids are put back (the failure itself is the restore
// command's error).
import { readFileSync } from "node:fs";
import { rm } from "node:fs/promises";
import { writeFileAtomic } from "../store/fsutil.js";
import type { AppDir } from "./appdir.js";

function read(path: string): string | null {
  try {
    return readFileSync(path, "utf8");
  } catch {
    return null;
  }
}

export interface AppFacts {
  /** Puts the saved files back (after a failed restore); nothing to do for a new app. */
  putBack(): Promise<void>;
}

/** Saves the app's record, status and pidfile as they are before a restore starts. */
export function saveFacts(dir: AppDir): AppFacts {
  const files = [dir.recordFile, dir.statusFile, dir.pidfile];
  const saved = files.map(read);
  return {
    async putBack() {
      await rm(dir.sock, { force: true });
      // a first restore (no earlier record: a standby host) keeps the restorer's status
      if (saved[0] === null) return void (await rm(dir.pidfile, { force: true }));
      for (let i = 0; i < files.length; i++) {
        const content = saved[i];
        if (content === null || content === undefined) await rm(files[i]!, { force: true });
        else await writeFileAtomic(files[i]!, content);
      }
    },
  };
}
