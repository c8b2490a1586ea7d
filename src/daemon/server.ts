// The daemon's HTTP API (JSON over the Unix socket $TARDIGRADE_HOME/daemon.sock).
//   GET  /v1/ping                      GET  /v1/apps           GET /v1/apps/:name
//   POST /v1/apps {name,argv,cwd,env,everyMs}                  (run)
//   POST /v1/apps/:name/checkpoint {full}   POST /v1/apps/:name/restore {checkpoint,replace,allowFileChanges,allowClosedTcp,keepFileChanges,lazy}
//   POST /v1/gc {keep}                 POST /v1/apps/:name/import {path}
//   POST /v1/apps/:name/stop {timeoutMs}
//   GET  /v1/checkpoints[?app=NAME]    GET  /v1/checkpoints/:id[?image=1]
//   POST /v1/verify {target}           GET  /v1/store/damage   (GET /v1/checkpoints?damage=1: both in one)
// Errors: {"error":{"what","why","fix","code"}} with a 4xx/5xx status.
// With "accept: application/x-ndjson", checkpoint and restore stream progress instead:
// status 200, lines {"progress":{...}}, then one {"result":...} or {"error":{...}} line.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { Logger } from "pino";
import { TgError, errMessage } from "../errors.js";
import type { Takeover } from "../ha/fence.js";
import { summarizeImage } from "../image/summary.js";
import type { AppManager, Progress, RunRequest } from "./apps.js";
import { damageSummary, verifyStore } from "./integrity.js";

const STATUS: Record<string, number> = {
  "bad-request": 400,
  "unknown-app": 404,
  "unknown-checkpoint": 404,
  conflict: 409,
  "not-running": 409,
  "bad-image": 422,
};

async function body(req: IncomingMessage): Promise<Record<string, unknown>> {
  const chunks: Buffer[] = [];
  let n = 0;
  for await (const c of req as AsyncIterable<Buffer>) {
    n += c.length;
    if (n > 4 * 1024 * 1024) throw new TgError("request rejected", "body larger than 4 MiB", "", "bad-request");
    chunks.push(c);
  }
  if (n === 0) return {};
  try {
    return JSON.parse(Buffer.concat(chunks).toString("utf8")) as Record<string, unknown>;
  } catch {
    throw new TgError("request rejected", "body is not JSON", "", "bad-request");
  }
}

function send(res: ServerResponse, status: number, obj: unknown): void {
  const text = JSON.stringify(obj, (_k, v: unknown) => (typeof v === "bigint" ? v.toString() : v));
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(text) });
  res.end(text);
}

export function createApiServer(
  apps: AppManager,
  log: Logger,
  info: { pid: number; startedAt: string },
  /** Who may talk to the daemon: null lets the request in, an error refuses it (403). */
  admit: (req: IncomingMessage) => TgError | null = () => null,
): Server {
  const route = async (req: IncomingMessage, progress: Progress, signal: AbortSignal): Promise<unknown> => {
    const url = new URL(req.url ?? "/", "http://tardigrade");
    const parts = url.pathname.split("/").filter(Boolean).map(decodeURIComponent);
    const m = req.method ?? "GET";
    if (parts[0] !== "v1") throw new TgError("unknown endpoint", url.pathname, "", "bad-request");
    const [, res, id, action] = parts;
    if (m === "GET" && res === "ping") return { ok: true, ...info, home: apps.home };
    if (res === "apps") {
      if (m === "GET" && !id) return apps.list();
      if (m === "POST" && !id) return apps.run((await body(req)) as unknown as RunRequest);
      if (m === "GET" && id && !action) return apps.status(id);
      if (m === "POST" && id && action === "checkpoint") {
        const b = await body(req);
        return apps.checkpoint(id, progress, { full: b.full === true, signal });
      }
      if (m === "POST" && id && action === "restore") {
        const b = await body(req);
        const from = b.from as { url?: unknown; token?: unknown; ca?: unknown; takeover?: unknown } | undefined;
        return apps.restore(
          id,
          {
            checkpoint: typeof b.checkpoint === "string" ? b.checkpoint : undefined,
            replace: b.replace === true,
            allowFileChanges: b.allowFileChanges === true,
            ...(b.allowClosedTcp === true ? { allowClosedTcp: true } : {}),
            ...(Array.isArray(b.keepFileChanges) ? { keepFileChanges: b.keepFileChanges.filter((x): x is string => typeof x === "string") } : {}),
            lazy: b.lazy === true,
            ...(from && typeof from.url === "string" ? { from: { url: from.url, token: typeof from.token === "string" ? from.token : "", ...(typeof from.ca === "string" ? { ca: from.ca } : {}), ...takeoverOf(from.takeover) } } : {}),
          },
          progress,
        );
      }
      if (m === "POST" && id && action === "prefetch") {
        const b = await body(req);
        const from = b.from as { url?: unknown; token?: unknown; ca?: unknown } | undefined;
        if (!from || typeof from.url !== "string") throw new TgError(`cannot prefetch ${id}`, "from.url (the mirror) is missing", "Use `tardigrade standby`", "bad-request");
        return apps.prefetch(id, { url: from.url, token: typeof from.token === "string" ? from.token : "", ...(typeof from.ca === "string" ? { ca: from.ca } : {}) }, typeof b.checkpoint === "string" ? b.checkpoint : undefined, b.keep === undefined ? undefined : (b.keep as number));
      }
      if (m === "POST" && id && action === "import") {
        const b = await body(req);
        return apps.importImage(id, typeof b.path === "string" ? b.path : "");
      }
      if (m === "POST" && id && action === "stop") {
        const b = await body(req);
        if (b.timeoutMs !== undefined && !(typeof b.timeoutMs === "number" && Number.isFinite(b.timeoutMs) && b.timeoutMs >= 0 && b.timeoutMs <= 86_400_000))
          throw new TgError(`cannot stop ${id}`, `timeoutMs must be a number of milliseconds from 0 to 86400000 (got ${JSON.stringify(b.timeoutMs)})`, "Pass e.g. --timeout 10", "bad-request");
        return apps.stop(id, b.timeoutMs);
      }
    }
    if (res === "gc" && m === "POST") {
      const b = await body(req);
      return apps.gc(typeof b.keep === "number" ? b.keep : undefined);
    }
    if (res === "verify" && m === "POST") {
      const b = await body(req);
      return verifyStore(apps.store, typeof b.target === "string" ? b.target : undefined);
    }
    if (res === "store" && id === "damage" && m === "GET") return damageSummary(apps.store);
    if (res === "checkpoints" && m === "GET") {
      if (!id && url.searchParams.get("damage") === "1") return { checkpoints: await apps.listCheckpoints(url.searchParams.get("app") ?? undefined), damage: damageSummary(apps.store) };
      if (!id) return apps.listCheckpoints(url.searchParams.get("app") ?? undefined);
      const manifest = await apps.store.get(id);
      if (url.searchParams.get("image") !== "1") return { manifest };
      const opened = await apps.store.openImage(id);
      try {
        return { manifest, image: await summarizeImage(opened.path) };
      } finally {
        await opened.release();
      }
    }
    throw new TgError("unknown endpoint", `${m} ${url.pathname}`, "", "bad-request");
  };

  const toError = (e: unknown, url: string | undefined): TgError => {
    const err = e instanceof TgError ? e : new TgError("internal daemon error", errMessage(e), "See daemon.log in TARDIGRADE_HOME", "internal");
    if (!(e instanceof TgError)) log.error({ err: e, url }, "request failed");
    else log.info({ url, err: err.message }, "request refused");
    return err;
  };

  return createServer((req, res) => {
    const denied = admit(req);
    if (denied) {
      res.setHeader("connection", "close");
      send(res, 403, { error: denied.toJSON() });
      return;
    }
    const t0 = Date.now();
    const streaming = req.headers.accept === "application/x-ndjson";
    const line = (obj: unknown): void => {
      if (!res.headersSent) res.writeHead(200, { "content-type": "application/x-ndjson" });
      res.write(JSON.stringify(obj, (_k, v: unknown) => (typeof v === "bigint" ? v.toString() : v)) + "\n");
    };
    let lastProgress = 0;
    let lastPhase = "";
    const progress: Progress = streaming
      ? (ev) => {
          const now = Date.now();
          // The first event of each phase always; then at most 10 a second.
          if (ev.phase === lastPhase && now - lastProgress < 100) return;
          lastProgress = now;
          lastPhase = ev.phase;
          line({ progress: ev });
        }
      : () => {};
    // A client that goes away (CLI interrupted) cancels its request if it is still queued.
    const gone = new AbortController();
    res.on("close", () => {
      if (!res.writableFinished) gone.abort();
    });
    route(req, progress, gone.signal).then(
      (out) => {
        if (streaming) {
          line({ result: out });
          res.end();
        } else send(res, 200, out);
        log.debug({ method: req.method, url: req.url, ms: Date.now() - t0 }, "request");
      },
      (e: unknown) => {
        const err = toError(e, req.url);
        if (streaming) {
          line({ error: err.toJSON() });
          res.end();
        } else send(res, STATUS[err.code] ?? 500, { error: err.toJSON() });
      },
    );
  });
}

/** A service address ({cidr, dev}), checked again by the app manager (src/ha/address.ts). */
function addressOf(v: unknown): { address?: { cidr: string; dev: string } } {
  if (typeof v !== "object" || v === null) return {};
  const a = v as Record<string, unknown>;
  return { address: { cidr: typeof a.cidr === "string" ? a.cidr : "", dev: typeof a.dev === "string" ? a.dev : "" } };
}

/** A standby's takeover request (src/ha/standby.ts), checked field by field. */
function takeoverOf(v: unknown): { takeover?: Takeover } {
  if (typeof v !== "object" || v === null) return {};
  const t = v as Record<string, unknown>;
  const n = (x: unknown): x is number => typeof x === "number" && Number.isSafeInteger(x) && x > 0;
  if (!n(t.epoch) || !n(t.ttlMs)) throw new TgError("cannot take over", "the takeover's lease epoch and ttlMs must be positive integers", "Use `tardigrade standby`", "bad-request");
  return { takeover: { epoch: t.epoch, ttlMs: t.ttlMs, ...(n(t.everyMs) ? { everyMs: t.everyMs } : {}), ...(t.ack === "received" || t.ack === "durable" ? { ack: t.ack } : {}), ...addressOf(t.address) } };
}
