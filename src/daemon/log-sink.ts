// Where the daemon's log lines go (its stdout: daemon.log, opened by whoever started it).
// Logging must never take the daemon down: a full disk (ENOSPC), a removed or read-only
// log, a closed stdout — a line that cannot be written is dropped and counted, and the
// next line that gets through says how many were lost.
import { writeSync } from "node:fs";

export interface LogSink {
  write(line: string): void;
  /** Lines dropped since the last one written, and the error that dropped them. */
  readonly dropped: number;
  readonly lastError: string | null;
}

export function safeLogSink(fd = 1): LogSink {
  let dropped = 0;
  let lastError: string | null = null;
  const put = (text: string): boolean => {
    const buf = Buffer.from(text);
    let off = 0;
    try {
      while (off < buf.length) off += writeSync(fd, buf, off, buf.length - off);
      return true;
    } catch (e) {
      lastError = (e as NodeJS.ErrnoException).code ?? String(e);
      return false;
    }
  };
  return {
    write(line: string): void {
      if (dropped > 0) {
        const note = JSON.stringify({ level: 40, time: Date.now(), pid: process.pid, msg: `${dropped} log lines lost (${lastError ?? "write error"})` }) + "\n";
        if (!put(note)) {
          dropped++;
          return;
        }
        dropped = 0;
      }
      if (!put(line)) dropped++;
    },
    get dropped() {
      return dropped;
    },
    get lastError() {
      return lastError;
    },
  };
}
