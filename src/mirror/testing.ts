// Helpers for the mirror's tests and benchmark: temp dirs, a real server process
// whose JSON log lines are collected, and polling. Not used by the product.
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

export const here = dirname(fileURLToPath(import.meta.url));

export function tempDir(prefix = "tg-mirror-"): { dir: string; cleanup(): void } {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

export function writeTokens(dir: string, entries: Record<string, string>): string {
  const file = join(dir, "tokens");
  writeFileSync(file, Object.entries(entries).map(([s, t]) => `${s}:${t}`).join("\n") + "\n");
  return file;
}

export type LogLine = Record<string, unknown> & { msg?: string; level?: number };

export interface ServerProcess {
  child: ChildProcess;
  pid: number;
  port: number;
  url: string;
  logs: LogLine[];
  stderr: string[];
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  waitForLog(pred: (l: LogLine) => boolean, timeoutMs?: number): Promise<LogLine>;
  kill(signal?: NodeJS.Signals): void;
}

/** Spawns `node dist/src/mirror/server-main.js ARGS` and waits until it listens. */
export async function startServerProcess(args: string[], env: Record<string, string> = {}): Promise<ServerProcess> {
  const child = spawn(process.execPath, [join(here, "server-main.js"), ...args], {
    env: { ...process.env, ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const logs: LogLine[] = [];
  const stderr: string[] = [];
  const listeners = new Set<() => void>();
  let buf = "";
  child.stdout?.setEncoding("utf8").on("data", (d: string) => {
    buf += d;
    let nl;
    while ((nl = buf.indexOf("\n")) >= 0) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      try {
        logs.push(JSON.parse(line) as LogLine);
      } catch {
        logs.push({ msg: line });
      }
      for (const l of listeners) l();
    }
  });
  child.stderr?.setEncoding("utf8").on("data", (d: string) => stderr.push(d));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.on("exit", (code, signal) => {
      for (const l of listeners) l();
      resolve({ code, signal });
    }),
  );
  let dead = false;
  void exited.then(() => (dead = true));
  const waitForLog = (pred: (l: LogLine) => boolean, timeoutMs = 15_000): Promise<LogLine> =>
    new Promise((resolve, reject) => {
      const check = (): boolean => {
        const hit = logs.find(pred);
        if (hit) {
          cleanup();
          resolve(hit);
          return true;
        }
        if (dead) {
          cleanup();
          reject(new Error(`server exited before the expected log line; stderr: ${stderr.join("")}`));
          return true;
        }
        return false;
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(new Error(`timed out after ${timeoutMs} ms waiting for a log line; last: ${JSON.stringify(logs.slice(-3))} stderr: ${stderr.join("")}`));
      }, timeoutMs);
      const cleanup = (): void => {
        clearTimeout(timer);
        listeners.delete(onLine);
      };
      const onLine = (): void => void check();
      if (!check()) listeners.add(onLine);
    });
  const listening = await waitForLog((l) => l.msg === "mirror server listening");
  const port = Number(listening.port);
  return {
    child,
    pid: child.pid as number,
    port,
    url: `tg://127.0.0.1:${port}`,
    logs,
    stderr,
    exited,
    waitForLog,
    kill: (signal: NodeJS.Signals = "SIGKILL") => {
      if (!dead) child.kill(signal);
    },
  };
}

export async function waitFor(pred: () => boolean, timeoutMs = 10_000, what = "condition"): Promise<void> {
  const t0 = Date.now();
  while (!pred()) {
    if (Date.now() - t0 > timeoutMs) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

/** Resident set size of a process, in bytes (Linux /proc). */
export async function rssOf(pid: number): Promise<number> {
  const { readFile } = await import("node:fs/promises");
  const s = await readFile(`/proc/${pid}/status`, "utf8");
  const m = /VmRSS:\s+(\d+) kB/.exec(s);
  return m ? Number(m[1]) * 1024 : 0;
}

/** A pino logger whose JSON lines are kept in `lines` (for in-process servers in tests). */
export async function captureLogger(): Promise<{ logger: import("pino").Logger; lines: LogLine[] }> {
  const { pino } = await import("pino");
  const lines: LogLine[] = [];
  const logger = pino({ level: "debug" }, { write: (s: string) => void lines.push(JSON.parse(s) as LogLine) });
  return { logger, lines };
}
