// A one-line progress display on stderr (only when it is a terminal).
import type { ProgressEvent } from "../daemon/apps.js";
import { bytes, duration } from "./format.js";

const LABEL: Record<ProgressEvent["phase"], string> = {
  capture: "stopping threads and capturing",
  write: "writing the image",
  verify: "verifying the image",
  kill: "killing the running copy",
  start: "rebuilding the process",
};

export interface ProgressLine {
  update(e: ProgressEvent): void;
  clear(): void;
}

export function progressLine(enabled = process.stderr.isTTY === true): ProgressLine | undefined {
  if (!enabled) return undefined;
  let shown = false;
  return {
    update(e) {
      let text = LABEL[e.phase] ?? e.phase;
      if (e.downtimeNs !== undefined) text += ` (app resumed after ${duration(e.downtimeNs)})`;
      if (e.done !== undefined && e.total) {
        const pct = Math.min(100, Math.floor((e.done / e.total) * 100));
        const width = 24;
        const fill = Math.round((pct / 100) * width);
        text += ` [${"#".repeat(fill)}${" ".repeat(width - fill)}] ${pct}% ${bytes(e.done)} / ${bytes(e.total)}`;
      }
      process.stderr.write(`\r\x1b[2K${text}`);
      shown = true;
    },
    clear() {
      if (shown) process.stderr.write("\r\x1b[2K");
      shown = false;
    },
  };
}
