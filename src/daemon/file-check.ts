// Files written since the checkpoint: until data files are rolled back, a restore must refuse
// when a file the app holds for writing (or maps shared and writable) changed since the
// checkpoint. The check itself is the restorer's (`tardigrade-restore --check-files`, it reads
// the image's FILE_STATE records and needs ioctl(FS_IOC_GETVERSION)); this runs it before
// anything is killed or started, and writes the restore marker into the app's log.
import { spawn } from "node:child_process";
import { appendFile, open } from "node:fs/promises";
import type { Readable } from "node:stream";
import { TgError } from "../errors.js";
import { nativeBinary } from "../native/paths.js";

/** Exit status of tardigrade-restore when files changed (docs/native-interface.md). */
export const FILES_CHANGED_STATUS = 3;

export interface FileCheck {
  app: string;
  checkpoint: string;
  /** The image: a file path, or a stream of it (only its metadata is read). */
  image: string | Readable;
  /** The app's stdout/stderr log on this host (exempt from the check). */
  logFile: string;
  allow: boolean;
}

/** The error of a refused restore: names the files and the way out. */
export function filesChanged(app: string, checkpoint: string, why: string): TgError {
  return new TgError(
    `cannot restore ${app} from ${checkpoint}`,
    `files the app writes changed since the checkpoint and are not rolled back: ${why}`,
    `Restoring would resume the app on files that do not match its memory (duplicated or lost writes, a damaged database). Restore a checkpoint taken after the change, put the files back, or pass --allow-file-changes to restore anyway`,
    "files-changed",
  );
}

/** Resolves when every file is as at the checkpoint (or at once with `allow`); throws a `files-changed` TgError naming them. */
export async function checkFiles(c: FileCheck): Promise<void> {
  // allowed (or rolled back): nothing to refuse, and a damaged image is the restorer's to report
  // (it checks every record; a running app is only killed after its whole image was read): no
  // child process to start (~6 ms of the daemon's main thread each, one per process of a tree)
  if (c.allow) {
    if (typeof c.image !== "string") c.image.destroy();
    return;
  }
  const args = ["--check-files", "--image", typeof c.image === "string" ? c.image : "-", "--stdio-log", c.logFile];
  const child = spawn(nativeBinary("tardigrade-restore"), args, { stdio: [typeof c.image === "string" ? "ignore" : "pipe", "ignore", "pipe"] });
  let stderr = "";
  child.stderr?.setEncoding("utf8");
  child.stderr?.on("data", (d: string) => (stderr += d));
  const src = typeof c.image === "string" ? null : c.image;
  let srcError: unknown = null;
  if (src && child.stdin) {
    // the checker stops reading at the first page record: the rest of the stream is not wanted
    child.stdin.on("error", () => src.destroy());
    src.on("error", (e) => {
      srcError = e; // damaged store data: its own error (pack file, offset) is the one to report
      child.stdin?.destroy();
    });
    src.pipe(child.stdin);
  }
  const status = await new Promise<number | null>((resolve, reject) => {
    child.on("error", reject);
    child.on("close", (code) => resolve(code));
  });
  src?.destroy();
  if (status === 0) return;
  if (srcError) throw srcError;
  const lines = stderr.split("\n").filter((l) => l.startsWith("tardigrade-restore:"));
  const changed = lines.find((l) => l.includes("FILES-CHANGED "));
  if (status === FILES_CHANGED_STATUS && changed) throw filesChanged(c.app, c.checkpoint, changed.slice(changed.indexOf("FILES-CHANGED ") + 14));
  throw new TgError(`cannot restore ${c.app} from ${c.checkpoint}`, lines.join("; ") || `the file check exited with status ${status}`, "Try an earlier checkpoint with --checkpoint", "restore-failed");
}

/** The line a restore writes into the app's log, so that output printed between the checkpoint and the crash is not mistaken for new output. */
export function restoreMarker(checkpoint: string, at = new Date()): string {
  return `--- tardigrade: restored ${checkpoint} at ${at.toISOString()} ---\n`;
}

/** Appends the marker on a line of its own (the app's last output may lack its newline). */
export async function writeRestoreMarker(logFile: string, checkpoint: string): Promise<void> {
  let lead = "";
  try {
    const fh = await open(logFile, "r");
    try {
      const { size } = await fh.stat();
      if (size > 0) {
        const b = Buffer.alloc(1);
        await fh.read(b, 0, 1, size - 1);
        if (b[0] !== 0x0a) lead = "\n";
      }
    } finally {
      await fh.close();
    }
  } catch {
    /* no log yet */
  }
  await appendFile(logFile, lead + restoreMarker(checkpoint), { mode: 0o600 });
}

/** After a marker, when the restore then failed: the marker's restore did not happen. */
export async function writeRestoreFailed(logFile: string, checkpoint: string): Promise<void> {
  await appendFile(logFile, `--- tardigrade: restore of ${checkpoint} failed (the lines above the marker were the last run's) ---\n`, { mode: 0o600 }).catch(() => {});
}
