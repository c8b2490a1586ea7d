// Talks to the daemon over its Unix socket, starting it on first use.
import { spawn } from "node:child_process";
import { accessSync, closeSync, constants, existsSync, openSync, readFileSync, statSync } from "node:fs";
import { request } from "node:http";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { TgError, errMessage } from "../errors.js";
import { mkdirp } from "../store/fsutil.js";
import type { ProgressEvent } from "./apps.js";
import { sleep } from "./procs.js";

export function daemonPaths(home: string): { sock: string; log: string; pidfile: string } {
  return { sock: join(home, "daemon.sock"), log: join(home, "daemon.log"), pidfile: join(home, "daemon.pid") };
}

/** Unix socket paths are limited to 107 bytes (sun_path); longer ones would be cut silently. */
export function checkSocketPath(sock: string): void {
  if (Buffer.byteLength(sock) + `.${process.pid}`.length > 107)
    throw new TgError("cannot use this tardigrade home", `the daemon socket path ${sock} is too long for a Unix socket (107 bytes at most)`, "Set TARDIGRADE_HOME to a shorter path", "bad-request");
}

interface Reply {
  status: number;
  body: unknown;
}

function call(sock: string, method: string, path: string, payload?: unknown, timeoutMs = 0, onLine?: (obj: Record<string, unknown>) => void): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const data = payload === undefined ? undefined : Buffer.from(JSON.stringify(payload));
    const headers: Record<string, string | number> = data ? { "content-type": "application/json", "content-length": data.length } : {};
    if (onLine) headers.accept = "application/x-ndjson";
    const req = request({ socketPath: sock, method, path, headers }, (res) => {
      const chunks: Buffer[] = [];
      if (onLine && res.headers["content-type"] === "application/x-ndjson") {
        // Streamed reply: progress lines, then one result or error line (returned as the body).
        let buf = "";
        let last: unknown = null;
        res.setEncoding("utf8");
        res.on("data", (d: string) => {
          buf += d;
          let nl: number;
          while ((nl = buf.indexOf("\n")) >= 0) {
            const text = buf.slice(0, nl);
            buf = buf.slice(nl + 1);
            if (!text) continue;
            let obj: Record<string, unknown>;
            try {
              obj = JSON.parse(text) as Record<string, unknown>;
            } catch {
              reject(new Error(`daemon sent a malformed line (${text.slice(0, 200)})`));
              res.destroy();
              return;
            }
            if ("progress" in obj) onLine(obj);
            else last = obj;
          }
        });
        res.on("error", reject);
        res.on("end", () => {
          if (last === null) reject(new Error("the daemon's reply ended before the result"));
          else if ((last as { error?: unknown }).error) resolve({ status: 500, body: last });
          else resolve({ status: 200, body: (last as { result: unknown }).result });
        });
        return;
      }
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("error", reject);
      res.on("end", () => {
        const text = Buffer.concat(chunks).toString("utf8");
        try {
          resolve({ status: res.statusCode ?? 0, body: text ? (JSON.parse(text) as unknown) : null });
        } catch {
          reject(new Error(`daemon sent a malformed reply (${text.slice(0, 200)})`));
        }
      });
    });
    if (timeoutMs) req.setTimeout(timeoutMs, () => req.destroy(new Error("timeout")));
    req.on("error", reject);
    req.end(data);
  });
}

export async function pingDaemon(sock: string): Promise<boolean> {
  try {
    const r = await call(sock, "GET", "/v1/ping", undefined, 2000);
    return r.status === 200;
  } catch {
    return false;
  }
}

function cliMain(): string {
  return fileURLToPath(new URL("../cli/main.js", import.meta.url));
}

function tail(file: string, n = 2000): string {
  try {
    return readFileSync(file, "utf8").slice(-n).trim();
  } catch {
    return "";
  }
}

/** A home of another user is private (0700, README "Security"): say so instead of failing later on EACCES. */
function checkHomeAccess(home: string): void {
  try {
    accessSync(home, constants.W_OK | constants.X_OK);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code !== "EACCES" && code !== "EPERM") return; // missing: created below
    let owner = "another user";
    try {
      owner = `uid ${statSync(home).uid}`;
    } catch {
      /* keep the vague word */
    }
    throw new TgError(`cannot use the tardigrade home ${home}`, `permission denied: it belongs to ${owner} and only its owner may talk to its daemon`, "Run tardigrade as that user (e.g. with sudo), or set TARDIGRADE_HOME to a directory of your own", "permission");
  }
}

export class DaemonClient {
  readonly sock: string;
  constructor(readonly home: string) {
    this.sock = daemonPaths(home).sock;
  }

  /** Starts the daemon (detached, logging to daemon.log) unless one answers already. */
  async ensure(timeoutMs = 15_000): Promise<void> {
    checkSocketPath(this.sock);
    checkHomeAccess(this.home);
    if (await pingDaemon(this.sock)) return;
    const paths = daemonPaths(this.home);
    try {
      mkdirp(this.home, 0o700);
    } catch (e) {
      throw new TgError(`cannot create ${this.home}`, errMessage(e), "Set TARDIGRADE_HOME to a writable directory");
    }
    const logStart = existsSync(paths.log) ? statSync(paths.log).size : 0;
    const fd = openSync(paths.log, "a", 0o600);
    const child = spawn(process.execPath, [cliMain(), "daemon"], { detached: true, stdio: ["ignore", fd, fd], env: { ...process.env, TARDIGRADE_HOME: this.home } });
    closeSync(fd);
    let exited: number | null | undefined;
    child.on("exit", (code) => (exited = code));
    child.unref();
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      if (await pingDaemon(this.sock)) return;
      if (exited !== undefined && exited !== 0) break;
      await sleep(25);
    }
    const log = tail(paths.log).slice(-Math.max(0, (existsSync(paths.log) ? statSync(paths.log).size : 0) - logStart));
    throw new TgError("cannot start the tardigrade daemon", exited !== undefined ? `it exited with code ${exited}${log ? `: ${log}` : ""}` : `it did not answer on ${this.sock} within ${timeoutMs} ms`, `See ${paths.log}`, "daemon");
  }

  /** One API call; with onProgress, the daemon streams progress events while it works. */
  async request<T>(method: string, path: string, payload?: unknown, onProgress?: (e: ProgressEvent) => void): Promise<T> {
    await this.ensure();
    let r: Reply;
    try {
      r = await call(this.sock, method, path, payload, 0, onProgress ? (o) => onProgress(o.progress as ProgressEvent) : undefined);
    } catch (e) {
      throw new TgError("lost contact with the tardigrade daemon", `${errMessage(e)} (it may have crashed or been killed)`, `Apps keep running; retry the command (a new daemon starts on demand). See ${daemonPaths(this.home).log}`, "daemon");
    }
    if (r.status !== 200) {
      const err = (r.body as { error?: Record<string, unknown> } | null)?.error;
      throw err ? TgError.fromJSON(err) : new TgError("daemon request failed", `HTTP ${r.status}`, "", "daemon");
    }
    return r.body as T;
  }
}
