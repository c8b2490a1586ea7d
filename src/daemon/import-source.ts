// What `import` accepts: an existing regular file. A FIFO (or a device) could block the
// store's reader for ever while it holds the store's lock (issue 11, defect 2).
import { stat } from "node:fs/promises";
import { TgError } from "../errors.js";

function kindOf(s: { isFIFO(): boolean; isDirectory(): boolean; isCharacterDevice(): boolean; isBlockDevice(): boolean; isSocket(): boolean }): string {
  if (s.isFIFO()) return "a FIFO (named pipe)";
  if (s.isDirectory()) return "a directory";
  if (s.isCharacterDevice() || s.isBlockDevice()) return "a device";
  if (s.isSocket()) return "a socket";
  return "not a regular file";
}

export async function checkImportFile(name: string, path: string): Promise<void> {
  const what = `cannot import ${path} into ${name}`;
  let s;
  try {
    s = await stat(path);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "ENOENT" || code === "ENOTDIR") throw new TgError(what, "no such file", "Check the path (it is read by the daemon, as an absolute path)", "bad-request");
    if (code === "EACCES") throw new TgError(what, "permission denied", "Make the file readable by the daemon's user", "bad-request");
    throw new TgError(what, `cannot stat it (${code ?? String(e)})`, "Check the path", "bad-request");
  }
  if (!s.isFile()) throw new TgError(what, `it is ${kindOf(s)}`, "Import a regular image file (e.g. copy the stream to a file first)", "bad-request");
}
