// `tardigrade mirror ...` commands. src/cli/main.ts calls registerMirrorCommands().
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { Command, Option } from "commander";
import { parseBytes, parseDuration, parseHostPort } from "./address.js";
import { withAdmin, type AdminOptions } from "./admin.js";
import { createLogger } from "./log.js";
import { pullCheckpoint } from "./pull.js";
import { pullFromMirror } from "./bridge.js";
import { CasStore } from "../store/cas/store.js";
import { MirrorServer, DEFAULTS, type MirrorServerOptions } from "./server.js";
import { TokenTable } from "./tokens.js";
import type { DiskStoreHooks } from "./disk-store.js";

interface ClientFlags {
  server: string;
  tokenFile?: string;
  source?: string;
  tlsCa?: string;
  json?: boolean;
}

export function readToken(tokenFile: string | undefined): string {
  if (tokenFile !== undefined) {
    try {
      return readFileSync(tokenFile, "utf8").trim();
    } catch (err) {
      throw new Error(`cannot read --token-file ${tokenFile}: ${(err as Error).message}`);
    }
  }
  const env = process.env.TARDIGRADE_MIRROR_TOKEN;
  if (env) return env.trim();
  throw new Error("no mirror token: pass --token-file FILE or set TARDIGRADE_MIRROR_TOKEN");
}

function adminOptions(f: ClientFlags, needToken = true): AdminOptions {
  let token = "";
  try {
    token = readToken(f.tokenFile);
  } catch (err) {
    // A server without a tokens file accepts any token if --source names the source.
    if (needToken && f.source === undefined) throw err;
  }
  return {
    url: f.server,
    token,
    ...(f.source !== undefined ? { source: f.source } : {}),
    ...(f.tlsCa ? { dial: { ca: readFileSync(f.tlsCa) } } : {}),
  };
}

function clientCommand(parent: Command, name: string, description: string): Command {
  return parent
    .command(name)
    .description(description)
    .requiredOption("--server <url>", "mirror server, tg://HOST:PORT (tgs:// for TLS)")
    .option("--token-file <file>", "file holding this source's token (default: $TARDIGRADE_MIRROR_TOKEN)")
    .option("--source <name>", "source name (only needed when the server has no tokens file)")
    .option("--tls-ca <file>", "CA certificate (PEM) to trust for tgs://");
}

/** Environment-variable test hooks for the crash and slow-disk tests (not for production). */
function testHooks(log: ReturnType<typeof createLogger>): DiskStoreHooks {
  const hooks: DiskStoreHooks = {};
  const delay = Number(process.env.TARDIGRADE_MIRROR_TEST_COMMIT_DELAY_MS ?? 0);
  const pause = Number(process.env.TARDIGRADE_MIRROR_TEST_PAUSE_BEFORE_COMMIT_MS ?? 0);
  if (delay > 0) hooks.commitDelayMs = delay;
  if (pause > 0) {
    hooks.pauseBeforeCommitMs = pause;
    hooks.beforeCommit = (generation) => log.warn({ generation, pauseMs: pause }, "test hook: data written, pausing before commit");
  }
  return hooks;
}

export async function serve(flags: {
  listen: string;
  store: string;
  tokens?: string;
  tlsCert?: string;
  tlsKey?: string;
  cacheMax: string;
  maxDelay: string;
  maxQueued: string;
  scrubIdle: string;
}): Promise<MirrorServer> {
  const log = createLogger();
  const { host, port } = parseHostPort(flags.listen);
  if ((flags.tlsCert === undefined) !== (flags.tlsKey === undefined)) {
    throw new Error("--tls-cert and --tls-key go together: give both or neither");
  }
  const maxQueued = Number(flags.maxQueued);
  if (!Number.isSafeInteger(maxQueued) || maxQueued < 1) throw new Error(`--max-queued must be a positive integer, got ${flags.maxQueued}`);
  const opts: MirrorServerOptions = {
    host,
    port,
    storeDir: flags.store,
    cacheMaxBytes: parseBytes(flags.cacheMax),
    maxDelayMs: parseDuration(flags.maxDelay),
    maxQueued,
    scrubIdleMs: flags.scrubIdle === "off" ? 0 : parseDuration(flags.scrubIdle),
    logger: log,
    hooks: testHooks(log),
    ...(flags.tokens ? { tokens: TokenTable.load(flags.tokens) } : {}),
    ...(flags.tlsCert && flags.tlsKey ? { tls: { cert: readFileSync(flags.tlsCert), key: readFileSync(flags.tlsKey) } } : {}),
  };
  const server = await MirrorServer.start(opts);
  let stopping = false;
  const stop = (signal: string): void => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, "signal received: flushing and exiting");
    server.close().then(
      () => process.exit(0),
      (err: unknown) => {
        log.error({ err: (err as Error).message }, "shutdown failed");
        process.exit(1);
      },
    );
  };
  process.on("SIGTERM", () => stop("SIGTERM"));
  process.on("SIGINT", () => stop("SIGINT"));
  return server;
}

function fail(err: unknown): never {
  console.error(`tardigrade mirror: ${(err as Error).message}`);
  process.exit(1);
}

export function registerMirrorCommands(program: Command): Command {
  const mirror = program.command("mirror").description("mirror destination server and client commands");

  mirror
    .command("serve")
    .description("run a mirror destination in the foreground (JSON logs on stdout; SIGTERM flushes and exits)")
    .requiredOption("--listen <host:port>", "address to listen on, e.g. 0.0.0.0:7070")
    .requiredOption("--store <dir>", "directory of the durable mirror store")
    .option("--tokens <file>", "SOURCE:TOKEN per line; without it any client may act as any source")
    .option("--tls-cert <file>", "TLS certificate (PEM)")
    .option("--tls-key <file>", "TLS private key (PEM)")
    .addOption(new Option("--cache-max <bytes>", "memory cache bound (flush at half of it, slow sources at all of it)").default(String(DEFAULTS.cacheMaxBytes)))
    .addOption(new Option("--max-delay <duration>", "flush when the oldest queued checkpoint is this old").default("5s"))
    .addOption(new Option("--max-queued <n>", "flush when this many checkpoints are queued").default(String(DEFAULTS.maxQueued)))
    .addOption(
      new Option("--scrub-idle <duration>", "check stored chunks no one has checked yet after this long without incoming data (off: never)").default(
        "60s",
      ),
    )
    .action(async (flags: Parameters<typeof serve>[0]) => {
      await serve(flags).catch(fail);
    });

  clientCommand(mirror, "flush", "make every queued checkpoint on the server durable now")
    .option("--json", "print JSON")
    .action(async (f: ClientFlags) => {
      try {
        const r = await withAdmin(adminOptions(f), (a) => a.flush());
        console.log(f.json ? JSON.stringify(r) : `flushed ${r.checkpoints} checkpoint(s) from ${r.sources} source(s); generation ${r.generation}`);
      } catch (err) {
        fail(err);
      }
    });

  clientCommand(mirror, "ls", "list this source's checkpoints on the server")
    .option("--json", "print JSON")
    .action(async (f: ClientFlags) => {
      try {
        const rows = await withAdmin(adminOptions(f), (a) => a.list());
        if (f.json) {
          console.log(JSON.stringify(rows));
          return;
        }
        console.log(["ID".padEnd(24), "SEQ".padStart(6), "STATE".padEnd(16), "CHUNKS".padStart(8), "BYTES".padStart(12), "RECEIVED"].join(" "));
        for (const r of rows) {
          console.log(
            [r.id.padEnd(24), String(r.seq).padStart(6), (r.damaged ? `${r.state},damaged` : r.state).padEnd(16), String(r.chunks).padStart(8), String(r.bytes).padStart(12), r.receivedAt].join(" "),
          );
        }
      } catch (err) {
        fail(err);
      }
    });

  clientCommand(mirror, "pull", "fetch a checkpoint into a local directory and verify it")
    .requiredOption("--checkpoint <id>", 'checkpoint id (APP@SEQ or its mirror form APP.SEQ), or "latest"')
    .requiredOption("--store <dir>", "local directory to fetch into (a checkpoint store: imported into it)")
    .option("--cas", "create a checkpoint store in --store if there is none (the default when --store already is one)")
    .option("--json", "print JSON")
    .action(async (f: ClientFlags & { checkpoint: string; store: string; cas?: boolean }) => {
      try {
        if (!f.source) throw new Error("--source NAME is required for pull");
        const admin = adminOptions(f);
        // With a token the server knows our source; the Fetch names the one wanted and
        // the server refuses it if it is not ours.
        if (admin.token !== "") delete admin.source;
        if (f.cas === true || existsSync(join(f.store, "index.sqlite"))) {
          const store = await CasStore.open(f.store);
          try {
            const r = await pullFromMirror(admin.url, admin.token, f.source, f.checkpoint, store, {
              ...(admin.source !== undefined ? { helloSource: admin.source } : {}),
              ...(admin.dial ? { dial: admin.dial } : {}),
            });
            console.log(
              f.json
                ? JSON.stringify(r)
                : r.alreadyPresent
                  ? `${r.id} is already in ${f.store}`
                  : `pulled ${r.id} into ${f.store}: ${r.imported.map((i) => i.id).join(", ")} imported; ${r.blocksFetched} blocks, ${r.bytesFetched} bytes fetched; every block and page verified` +
                    (r.setAside ? `\nlocal checkpoints of another lineage with the same ids kept as app ${r.setAside.app}: ${Object.values(r.setAside.renamed).join(", ")}` : ""),
            );
          } finally {
            await store.close();
          }
          return;
        }
        const r = await pullCheckpoint(admin, { source: f.source, id: f.checkpoint, dir: f.store });
        console.log(
          f.json
            ? JSON.stringify(r)
            : `pulled ${r.source}/${r.id} (seq ${r.seq}): ${r.chunks} chunks, ${r.bytes} bytes, ${r.fetchedChunks} fetched; verified; in ${r.dir}`,
        );
      } catch (err) {
        fail(err);
      }
    });

  return mirror;
}
