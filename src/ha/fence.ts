// Fencing on the daemon's side (docs/ha.md, decision 2): the host lost the app's lease
// (the mirror holds it for another host or epoch, or it ran out unrenewed), so the app is
// killed at once, before anything else, and marked fenced so that it stays stopped.
import type { Logger } from "pino";
import type { AppDir } from "../daemon/appdir.js";
import { isAlive, trySignal } from "../daemon/procs.js";
import type { FencedInfo } from "../mirror/client.js";
import { describeFenced, writeFenced } from "./app-lease.js";
import type { ServiceAddress } from "./address.js";

/** What a standby's takeover asks of the restore (src/ha/standby.ts). */
export interface Takeover {
  /** The lease epoch the standby was granted: the restored app's checkpoints are offered under it. */
  epoch: number;
  ttlMs: number;
  /** Periodic checkpoints of the restored app (run --every of the primary). */
  everyMs?: number;
  ack?: "received" | "durable";
  /** The service address to take with the lease (standby --address, --dev). */
  address?: ServiceAddress;
}

export async function fenceApp(dir: AppDir, info: FencedInfo, log: Logger): Promise<void> {
  const st = dir.state();
  const r = dir.record();
  // SIGKILL first: every moment the app runs without the lease is a moment two copies may run.
  for (const pid of [st?.initHostPid, st?.appHostPid]) if (pid) trySignal(pid, "SIGKILL");
  if (!st?.initHostPid && r?.launcherPid && isAlive(r.launcherPid, r.launcherStart)) trySignal(-r.launcherPid, "SIGKILL");
  const f = { holder: info.holder, epoch: info.epoch, reason: info.reason, at: new Date().toISOString() };
  await writeFenced(dir.dir, f);
  log.error({ app: dir.name, holder: f.holder, epoch: f.epoch, wasRunning: st?.state === "running" }, `${dir.name} ${describeFenced(f)}: app killed and kept stopped (${info.reason})`);
}
