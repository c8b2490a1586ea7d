// `tardigrade standby`: watch an app running on another host and take it over when that
// host is gone (src/ha/standby.ts; docs/ha.md).
import type { Command } from "commander";
import { Option } from "commander";
import * as api from "../index.js";
import { TgError, errMessage } from "../errors.js";
import { parseInterval } from "../cli/format.js";
import { readToken } from "../mirror/cli.js";
import { readCaFile } from "../mirror/tls-ca.js";
import { parseHostPort } from "./heartbeat.js";
import { hostId } from "./host.js";
import { runStandby } from "./standby.js";
import { DEFAULT_LEASE_MS } from "./app-lease.js";
import { parseServiceAddress, type ServiceAddress } from "./address.js";

export function registerStandbyCommand(program: Command): void {
  program
    .command("standby")
    .description("watch an app running on another host; take it over (lease, restore --from the mirror) when that host is silent")
    .requiredOption("--mirror <url>", "the mirror the primary ships to, tg://HOST:PORT")
    .requiredOption("--app <name>", "the app to protect (its mirror source)")
    .option("--token-file <file>", "the app's mirror token (default: $TARDIGRADE_MIRROR_TOKEN)")
    .option("--tls-ca <file>", "CA certificate (PEM) to trust for a tgs:// mirror")
    .option("--failover-after <duration>", "take over after this long without the primary on both paths (match the primary's run --failover-after)", "3s")
    .addOption(new Option("--rpo <level>", "restore the newest checkpoint the mirror has on disk (durable) or in memory (received)").choices(["durable", "received"]).default("durable"))
    .option("--listen <host:port>", "where the primary's heartbeats arrive (its run --standby)", "0.0.0.0:7071")
    .option("--every <duration>", "periodic checkpoints of the restored app (like run --every)")
    .option("--prefetch-every <duration>", "while the primary runs, pull its newest checkpoint into this host's store at most this often (a warm copy: the takeover fetches only what is newer)", "1s")
    .option("--no-prefetch", "no warm copy: the takeover pulls the whole checkpoint")
    .option("--keep <n>", "warm copies of the app kept in this host's store (older ones, and chains no kept one needs, are reclaimed after each pull)", "2")
    .option("--no-lazy", "restore eagerly on takeover (default: restore --lazy, the app resumes before its memory is all in; a process tree is restored eagerly)")
    .option("--address <ip/prefix>", "after the takeover, hold this service address while holding the lease (removed if fenced); needs --dev")
    .option("--dev <iface>", "the interface for --address")
    .option("--json", "print the takeover report as JSON")
    .action(async (o: { mirror: string; app: string; tokenFile?: string; tlsCa?: string; failoverAfter: string; rpo: "durable" | "received"; listen: string; every?: string; prefetchEvery: string; prefetch: boolean; keep: string; lazy: boolean; address?: string; dev?: string; json?: boolean }) => {
      let failoverAfterMs: number, everyMs: number | undefined, prefetchEveryMs: number, keep: number, token: string, listen: { host: string; port: number }, address: ServiceAddress | undefined;
      try {
        failoverAfterMs = o.failoverAfter ? parseInterval(o.failoverAfter) : DEFAULT_LEASE_MS;
        everyMs = o.every ? parseInterval(o.every) : undefined;
        prefetchEveryMs = parseInterval(o.prefetchEvery);
        keep = Number(o.keep);
        if (!/^\d+$/.test(o.keep) || !Number.isSafeInteger(keep) || keep < 1) throw new Error(`--keep must be a whole number ≥ 1 (got ${o.keep})`);
        token = readToken(o.tokenFile);
        listen = parseHostPort(o.listen, "--listen");
        address = o.address !== undefined || o.dev !== undefined ? parseServiceAddress(o.address ?? "", o.dev) : undefined;
      } catch (e) {
        throw new TgError("cannot start the standby", errMessage(e), "See `tardigrade standby --help`", "bad-request");
      }
      const ca = o.tlsCa ? readCaFile(o.tlsCa) : undefined;
      const log = (line: string): void => void process.stderr.write(`${new Date().toISOString()} ${line}\n`);
      const report = await runStandby({
        url: o.mirror,
        app: o.app,
        token,
        ...(ca !== undefined ? { dial: { ca: Buffer.from(ca) } } : {}),
        host: hostId(),
        failoverAfterMs,
        rpo: o.rpo,
        listen,
        ...(everyMs !== undefined ? { everyMs } : {}),
        log,
        ...(o.prefetch
          ? {
              prefetchEveryMs,
              prefetch: (checkpoint: string) => api.prefetch(o.app, { url: o.mirror, token, ...(ca !== undefined ? { ca } : {}) }, { checkpoint, keep }),
            }
          : {}),
        restore: async (checkpoint, takeover) => {
          const go = (lazy: boolean) => api.restore(o.app, { checkpoint, lazy, from: { url: o.mirror, token, ...(ca !== undefined ? { ca } : {}), takeover: { ...takeover, ack: "durable", ...(address ? { address } : {}) } } });
          let r;
          try {
            r = await go(o.lazy);
          } catch (e) {
            // a process tree cannot be restored lazily yet: refused before anything started, restored eagerly instead
            if (!o.lazy || !/lazily .*process tree/.test(errMessage(e))) throw e;
            log(`${errMessage(e)}: restoring it eagerly`);
            r = await go(false);
          }
          return { checkpoint: r.checkpoint, appHostPid: r.appHostPid, lazy: r.lazy !== undefined };
        },
      });
      if (!report) return;
      const st = await api.status(o.app);
      if (o.json) return void process.stdout.write(JSON.stringify({ ...report, status: st }, null, 2) + "\n");
      process.stdout.write(
        `took over ${report.app} from ${report.previousHolder || "?"}: lease epoch ${report.epoch}, primary silent ${report.silentMs.udp} ms (udp) / ${report.silentMs.mirror} ms (mirror)\n` +
          `  restored from ${report.checkpoint} (${report.checkpointState}) in ${report.restoreMs} ms${report.lazy ? " (lazily: `status` shows the loading)" : ""}${report.prefetched ? ` (warm copy: ${report.prefetched} was here already)` : ""}; ${st.name} ${st.state}, host pid ${st.appHostPid ?? "-"}\n`,
      );
    });
}
