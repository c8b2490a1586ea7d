// The per-host daemon process: owns $TARDIGRADE_HOME/daemon.sock, serves the API,
// and keeps nothing important in memory (safe to kill -9 at any time).
import { releaseStaleHolds } from "./hold-connections.js";
import { chmodSync, existsSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import { link, unlink } from "node:fs/promises";
import type { IncomingMessage } from "node:http";
import { join } from "node:path";
import { pino } from "pino";
import { TgError, errMessage } from "../errors.js";
import { mkdirp } from "../store/fsutil.js";
import { CasStoreAdapter } from "../store/cas/adapter.js";
import { AppManager } from "./apps.js";
import { checkSocketPath, daemonPaths, pingDaemon } from "./client.js";
import { safeLogSink } from "./log-sink.js";
import { goPrivate, lockDown } from "./private-fs.js";
import { ensureWatchdog, stopWatchdog } from "./watchdog.js";
import { createApiServer } from "./server.js";
import { peerAllowed, peerCredentials, peerCredUnavailable, refusal } from "./peer-cred.js";
import { watchDamage } from "./integrity.js";

export async function runDaemon(home: string): Promise<void> {
  // Everything the daemon (and the launchers it starts) creates is private to its owner
  // (src/daemon/private-fs.ts); logging never throws (src/daemon/log-sink.ts).
  goPrivate();
  for (const s of [process.stdout, process.stderr]) s.on("error", () => {});
  const log = pino({ base: { pid: process.pid }, level: process.env.TARDIGRADE_LOG_LEVEL ?? "info" }, safeLogSink());
  try {
    mkdirp(home, 0o700);
    chmodSync(home, 0o700);
  } catch (e) {
    throw new TgError(`cannot use ${home} as the tardigrade home`, errMessage(e), "Set TARDIGRADE_HOME to a writable directory");
  }
  const fixed = lockDown(home, (p, e) => log.warn({ path: p, err: errMessage(e) }, "cannot make private"));
  if (fixed) log.warn({ home, entries: fixed }, "took group/other permissions off files of this home (state is private to its owner)");
  const paths = daemonPaths(home);
  checkSocketPath(paths.sock);
  // The content-addressed store (docs/store.md); it takes a lock: one daemon per home.
  let store: CasStoreAdapter;
  try {
    store = await CasStoreAdapter.open(join(home, "store"));
  } catch (e) {
    if (e instanceof TgError && e.code === "store-busy") {
      // Another live daemon of this home holds the store: it serves (or is about to serve) the
      // socket the CLI waits for. (A store held by some other tool shows in this log.)
      log.info({ why: e.message }, "another daemon holds this home's store; exiting");
      return;
    }
    if (e instanceof TgError) throw e;
    throw new TgError(`cannot open the store ${join(home, "store")}`, errMessage(e), `Check ${join(home, "store", "index.sqlite")} and the pack files (disk, permissions); restore the index from a backup if it is damaged, but do not delete pack files`, "store-open");
  }
  watchDamage(store, log); // damage found at open (short or missing packs) and later (bad blocks)
  const apps = new AppManager(home, store, log);
  // Second check after the socket's modes: the peer's uid (SO_PEERCRED) on every request.
  const self = process.getuid?.() ?? 0;
  const noCred = peerCredUnavailable();
  if (noCred) log.warn({ why: noCred }, "cannot read peer credentials (SO_PEERCRED): only the socket's modes keep other users out");
  const admit = (req: IncomingMessage): TgError | null => {
    const cred = peerCredentials(req.socket);
    if (cred === null || peerAllowed(cred, self)) return null;
    log.warn({ uid: cred.uid, pid: cred.pid, url: req.url }, "refused a request from another user");
    return refusal(cred, self);
  };
  const server = createApiServer(apps, log, { pid: process.pid, startedAt: new Date().toISOString() }, admit);

  // Bind a private socket, then hard-link it to daemon.sock: link() fails if
  // another daemon got there first, so at most one daemon serves a home.
  const tmpSock = `${paths.sock}.${process.pid}`;
  rmSync(tmpSock, { force: true });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(tmpSock, () => resolve());
  });
  // Only the owner may talk to the daemon: socket 0600 in the home, itself 0700 (see README, Security).
  chmodSync(tmpSock, 0o600);
  for (let attempt = 0; ; attempt++) {
    try {
      await link(tmpSock, paths.sock);
      break;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "EEXIST" || attempt > 3) throw e;
      if (await pingDaemon(paths.sock)) {
        log.info("another daemon already serves this home; exiting");
        server.close();
        await unlink(tmpSock).catch(() => {});
        return;
      }
      await unlink(paths.sock).catch(() => {}); // stale socket of a dead daemon
    }
  }
  // The socket is live from the link on: write the pid file before the first await, so a
  // client served by this daemon never sees the previous daemon's pid there.
  const tmpPid = `${paths.pidfile}.${process.pid}`;
  writeFileSync(tmpPid, `${process.pid}\n`);
  renameSync(tmpPid, paths.pidfile);
  const sockIno = statSync(paths.sock).ino;
  await unlink(tmpSock).catch(() => {});

  const removed = await store.recover();
  if (removed.length) log.info({ removed }, "removed unfinished checkpoints left in staging");
  apps.resumeSchedules();
  log.info({ home, sock: paths.sock }, "daemon ready");
  // connections a dead daemon left held by nftables go through again (src/daemon/hold-connections.ts)
  releaseStaleHolds().then((t) => t.length && log.warn({ tables: t }, "released connections a dead daemon had held"), (e: unknown) => log.warn({ err: String(e) }, "cannot look for held connections"));
  // Apps with --every outlive a crash of this daemon: a watchdog restarts it (watchdog.ts).
  const watch = (): void => {
    try {
      ensureWatchdog(home, paths.log);
    } catch (e) {
      log.warn({ err: errMessage(e) }, "cannot start the watchdog");
    }
  };
  watch();
  const watchTimer = setInterval(watch, Number(process.env.TARDIGRADE_WATCHDOG_MS ?? 2000));
  watchTimer.unref();
  // what the agents of ended processes leave beside the app's socket (leftovers-sweep.ts)
  const sweepTimer = setInterval(() => apps.sweepEnded(), 3000);
  sweepTimer.unref();

  const shutdown = (sig: string): void => {
    log.info({ sig }, "daemon stopping (apps keep running)");
    apps.stopTimers();
    clearInterval(watchTimer);
    clearInterval(sweepTimer);
    stopWatchdog(home); // stopped on purpose: not to be restarted
    void apps.closeMirrors();
    try {
      if (existsSync(paths.sock) && statSync(paths.sock).ino === sockIno) rmSync(paths.sock);
      if (readFileSync(paths.pidfile, "utf8").trim() === String(process.pid)) rmSync(paths.pidfile);
    } catch (e) {
      log.warn({ err: errMessage(e) }, "cannot remove the socket");
    }
    server.close();
    setTimeout(() => process.exit(0), 200).unref();
  };
  process.on("SIGTERM", () => shutdown("SIGTERM"));
  process.on("SIGINT", () => shutdown("SIGINT"));
  await new Promise<void>((resolve) => server.on("close", () => resolve()));
}
