// The tardigrade CLI program (commander), loaded by main.ts for every command but the common
// forms of `restore` (main.ts, restore-args.ts, restore-run.ts). Every command but `daemon` and `logs` talks to the per-host daemon.
import { readFileSync } from "node:fs";
import { treeOf } from "../daemon/tree-info.js";
import { resolve } from "node:path";
import { Command, CommanderError, Option } from "commander";
import * as api from "../index.js";
import { TRACKING_MODES, type TrackingMode } from "../daemon/agent.js";
import { describeExit, type AppState } from "../daemon/appdir.js";
import { readCaFile } from "../mirror/tls-ca.js";
import { describeFenced } from "../ha/app-lease.js";
import { TgError, errMessage } from "../errors.js";
import { tardigradeHome } from "../store/home.js";
import { bytes, duration, json, parseInterval, table } from "./format.js";
import { showLogs } from "./logs.js";
import { parseSeconds } from "./validate.js";
import { progressLine } from "./progress.js";
import { damageWarning, registerVerifyCommand } from "./verify.js";
import { describeLazy } from "../daemon/lazy-restore.js";
import { fail, quietEpipe } from "./fail.js";
import { runRestore } from "./restore-run.js";

const out = (s: string): void => void process.stdout.write(s + "\n");

/** "0-3,6" for [0,1,2,3,6]. */
function cpuRanges(cpus: number[]): string {
  const parts: string[] = [];
  for (let i = 0; i < cpus.length; ) {
    let j = i;
    while (j + 1 < cpus.length && cpus[j + 1] === cpus[j]! + 1) j++;
    parts.push(j === i ? String(cpus[i]) : `${cpus[i]}-${cpus[j]}`);
    i = j + 1;
  }
  return parts.join(",") || "-";
}

function version(): string {
  try {
    return (JSON.parse(readFileSync(new URL("../../../package.json", import.meta.url), "utf8")) as { version: string }).version;
  } catch {
    return "0.0.0";
  }
}

function appLine(s: AppState): string[] {
  const pids = s.state === "running" ? `${s.initHostPid ?? "-"}/${s.appHostPid ?? "-"}` : "-";
  const how = s.fenced ? describeFenced(s.fenced) : s.state === "exited" ? describeExit(s.exit) : s.mode === "restore" ? `restored from ${s.checkpoint}` : "";
  return [s.name, s.state, pids, s.startedAt, s.lazy ? `${how}; ${describeLazy(s.lazy)}` : how];
}

function mirrorCa(file: string | undefined, what: string): { ca?: string } {
  if (file === undefined) return {};
  try {
    return { ca: readCaFile(file) };
  } catch (e) {
    throw new TgError(`cannot ${what} with a mirror`, errMessage(e), "Pass the PEM file of the CA that signed the mirror's certificate", "bad-request");
  }
}

// The daemon's and the mirror's modules load the store (SQLite, zstd): imported only by the commands
// that need them, so that every other command starts in a fraction of the time (issue 15: a restore
// is timed from the CLI request).
async function mirrorToken(file: string | undefined, what: string): Promise<string> {
  const { readToken } = await import("../mirror/cli.js");
  try {
    return readToken(file);
  } catch (e) {
    throw new TgError(`cannot ${what} with a mirror`, errMessage(e), "Pass --token-file FILE (one line: the token) or set TARDIGRADE_MIRROR_TOKEN", "bad-request");
  }
}

export function buildProgram(): Command {
  const program = new Command("tardigrade");
  program
    .description("Transparent checkpoint/restore for Linux applications")
    .version(version())
    .enablePositionalOptions()
    .showHelpAfterError()
    .configureOutput({ outputError: (str, write) => write(`tardigrade: ${str.replace(/^error: /, "")}`) });

  program
    .command("run")
    .description("start CMD under tardigrade (agent preloaded, own PID namespace); its output goes to `tardigrade logs NAME`")
    .option("--name <name>", "app name (default: the command's base name)")
    .option("--every <interval>", "also checkpoint periodically, e.g. 10s, 5m")
    .addOption(new Option("--tracking <mode>", "dirty-page tracking for incremental checkpoints (none: every checkpoint full)").choices(TRACKING_MODES))
    .option("--keep <n>", "keep only the N newest checkpoints (older ones are reclaimed after each checkpoint)")
    .option("--mirror <url>", "stream every checkpoint to a mirror destination, tg://HOST:PORT")
    .option("--token-file <file>", "mirror token (default: $TARDIGRADE_MIRROR_TOKEN)")
    .option("--tls-ca <file>", "CA certificate (PEM) to trust for a tgs:// mirror (default: the system's CAs)")
    .option("--standby <host:port>", "with --mirror: also send heartbeats straight to this standby (`tardigrade standby --listen`; repeatable: every standby gets them)", (v: string, prev: string[] = []) => [...prev, v])
    .option("--failover-after <duration>", "with --mirror: the app's lease on the mirror lasts this long (default 3s); unrenewed, the app is stopped and a standby may take over")
    .option("--address <ip/prefix>", "with --mirror: a service address this host holds while it holds the app's lease (removed when fenced); needs --dev")
    .option("--dev <iface>", "the interface for --address")
    .addOption(new Option("--mirror-ack <level>", "a checkpoint returns once the mirror has it cached (received) or on disk (durable)").choices(["received", "durable"]).default("durable"))
    .option("--files <dir>", "data files: also snapshot this whole tree (repeatable), or `none` to keep files out of checkpoints (default: the files the app writes)", (v: string, prev: string[] = []) => [...prev, v])
    .option("--files-exclude <glob>", "leave matching files out of checkpoints (repeatable; `*.tmp` matches names, `/srv/x/**` paths)", (v: string, prev: string[] = []) => [...prev, v])
    .addOption(new Option("--external-unix <policy>", "a Unix stream socket connected to a process outside the app: refuse the checkpoint, naming it, or record it to be restored closed (ECONNRESET/EPIPE on next use)").choices(["refuse", "closed"]).default("refuse"))
    .option("--json", "print the result as JSON")
    .argument("<cmd...>", "command and arguments (put them after --)")
    .passThroughOptions()
    .action(async (cmd: string[], o: { name?: string; every?: string; tracking?: TrackingMode; keep?: string; mirror?: string; tokenFile?: string; tlsCa?: string; failoverAfter?: string; standby?: string[]; address?: string; dev?: string; mirrorAck: "received" | "durable"; files?: string[]; filesExclude?: string[]; externalUnix: "refuse" | "closed"; json?: boolean }) => {
      let everyMs: number | undefined;
      if (o.every) {
        try {
          everyMs = parseInterval(o.every);
        } catch (e) {
          throw new TgError("cannot run the app", errMessage(e), "", "bad-request");
        }
      }
      const keep = o.keep === undefined ? undefined : Number(o.keep);
      if (keep !== undefined && (!Number.isSafeInteger(keep) || keep < 1)) throw new TgError("cannot run the app", `--keep must be a whole number ≥ 1 (got ${o.keep})`, "Pass e.g. --keep 3", "bad-request");
      let leaseMs: number | undefined;
      try {
        if (o.failoverAfter !== undefined) leaseMs = parseInterval(o.failoverAfter);
      } catch (e) {
        throw new TgError("cannot run the app", `--failover-after: ${errMessage(e)}`, "", "bad-request");
      }
      const mirror = o.mirror ? { url: o.mirror, token: await mirrorToken(o.tokenFile, "run"), ack: o.mirrorAck, ...mirrorCa(o.tlsCa, "run"), ...(leaseMs !== undefined ? { leaseMs } : {}), ...(o.standby?.length ? { standby: o.standby } : {}), ...(o.address !== undefined || o.dev !== undefined ? { address: { cidr: o.address ?? "", dev: o.dev ?? "" } } : {}) } : undefined;
      const none = o.files?.includes("none") === true;
      const files = o.files || o.filesExclude ? { ...(none ? { enabled: false } : {}), dirs: (o.files ?? []).filter((d) => d !== "none"), exclude: o.filesExclude ?? [] } : undefined;
      const r = await api.run(cmd, { name: o.name, everyMs, tracking: o.tracking, keep, mirror, files, ...(o.externalUnix === "closed" ? { externalUnix: "closed" as const } : {}) });
      if (o.json) return out(json(r));
      out(`started ${r.name}: pid ${r.pid} in its namespace, host pid ${r.appHostPid} (init ${r.initHostPid}), ${r.threads} thread(s)`);
      out(`  output: tardigrade logs ${r.name}    checkpoint: tardigrade checkpoint ${r.name}${everyMs ? `    (also every ${o.every})` : ""}`);
    });

  program
    .command("checkpoint")
    .description("capture the running app and commit a checkpoint")
    .argument("<name>", "app name")
    .option("--full", "a full checkpoint, even when an incremental one is possible")
    .option("--json", "print the manifest as JSON")
    .action(async (name: string, o: { full?: boolean; json?: boolean }) => {
      const bar = o.json ? undefined : progressLine();
      const m = await api.checkpoint(name, { full: o.full, onProgress: bar && ((e) => bar.update(e)) }).finally(() => bar?.clear());
      if (o.json) return out(json(m));
      const st = (m as { stats?: { storedBytes?: number } }).stats;
      const kind = m.kind === "incremental" ? `incremental on ${m.parent}` : "full";
      out(`${m.id} (${kind}): ${m.pages} pages, ${bytes(m.bytes)}${st?.storedBytes !== undefined ? ` (${bytes(st.storedBytes)} new in the store)` : ""}, ${m.threads} thread(s); app downtime ${duration(m.downtimeNs)}, capture ${duration(m.totalNs)}, committed in ${duration(m.commitNs)}`);
      if (m.fullReason && !o.full) out(`  full because: ${m.fullReason}`);
      for (const n of m.notes ?? []) out(`  ${n}`);
      if (m.files) out(`  files: ${m.files.files} in the set, ${m.files.changed} new or changed (${bytes(m.files.bytesRead)} read while the app was held, ${duration(m.files.cutNs)})`);
      if (m.mirror) out(`  mirror ${m.mirror.url}: ${m.mirror.state}${m.mirror.error ? ` (${m.mirror.error})` : ""}`);
    });

  program
    .command("restore")
    .description("rebuild the app from a checkpoint (default: its latest)")
    .argument("<name>", "app name")
    .option("--checkpoint <id>", "checkpoint id (APP@SEQ, see `tardigrade ls`)")
    .option("--replace", "kill the app first if it is running")
    .option("--allow-file-changes", "restore even if files the app writes changed since the checkpoint and the checkpoint has no files (run --files none): they are not rolled back")
    .option("--allow-closed-tcp", "a TCP connection with both ends in the app that cannot be restored whole (no TCP_REPAIR state: a process without CAP_NET_ADMIN) comes back as closed by its peer (end of file) instead of refusing the restore")
    .option("--keep-file-changes <path>", "leave this file of the app's set (or everything under this directory) as it is now instead of rolling it back to the checkpoint (repeatable)", (v: string, prev: string[] = []) => [...prev, v])
    .option("--from <url>", "fetch the checkpoint from a mirror destination first (tg://HOST:PORT)")
    .option("--token-file <file>", "mirror token for --from (default: $TARDIGRADE_MIRROR_TOKEN)")
    .option("--tls-ca <file>", "CA certificate (PEM) to trust for a tgs:// --from (default: the system's CAs)")
    .option("--lazy", "resume the app before its memory is all in: the rest is loaded on first touch and in the background (`tardigrade status` shows the progress)")
    .option("--json", "print the result as JSON")
    .action(async (name: string, o: { checkpoint?: string; replace?: boolean; allowFileChanges?: boolean; allowClosedTcp?: boolean; keepFileChanges?: string[]; from?: string; tokenFile?: string; tlsCa?: string; lazy?: boolean; json?: boolean }) => {
      const from = o.from ? { url: o.from, token: await mirrorToken(o.tokenFile, "restore"), ...mirrorCa(o.tlsCa, "restore") } : undefined;
      await runRestore(name, { ...o, from });
    });

  program
    .command("ls")
    .description("list checkpoints")
    .argument("[name]", "only this app's")
    .option("--json", "print as JSON")
    .action(async (name: string | undefined, o: { json?: boolean }) => {
      const { checkpoints: list, damage } = await api.lsWithDamage(name);
      const warning = damageWarning(damage);
      if (warning) process.stderr.write(warning + "\n");
      if (o.json) return out(json(list));
      for (const a of (await api.apps()).filter((x) => x.fenced && (!name || x.name === name))) process.stderr.write(`${a.name}: ${describeFenced(a.fenced!)}: ${a.fenced!.reason}\n`);
      if (list.length === 0) return out(name ? `no checkpoints of ${name}` : "no checkpoints");
      const extra = (m: api.Manifest): { stats?: { storedBytes?: number }; synthetic?: boolean; mirror?: { state: string; error?: string } } => m as never;
      const mirrored = list.some((m) => extra(m).mirror);
      out(
        table(
          ["ID", "TIME", "KIND", "PAGES", "BYTES", "STORED", "THREADS", "DOWNTIME", ...(mirrored ? ["MIRROR"] : [])],
          list.map((m) => [
            m.id,
            m.createdAt,
            m.kind + (extra(m).synthetic ? " (merged)" : ""),
            String(m.pages),
            bytes(m.bytes),
            extra(m).stats?.storedBytes !== undefined ? bytes(extra(m).stats!.storedBytes!) : "-",
            String(m.threads),
            duration(m.downtimeNs),
            ...(mirrored ? [extra(m).mirror?.state ?? "-"] : []),
          ]),
        ),
      );
      // Why the mirror does not have a checkpoint.
      for (const m of list) if (extra(m).mirror?.state === "failed") out(`${m.id}: mirror failed: ${extra(m).mirror?.error ?? "no reason recorded"}`);
    });

  program
    .command("inspect")
    .description("show a checkpoint: manifest, memory map, threads, fds")
    .argument("<id>", "checkpoint id (APP@SEQ)")
    .option("--json", "print as JSON")
    .action(async (id: string, o: { json?: boolean }) => {
      const { manifest: m, image: img } = await api.inspect(id);
      // the app's data files at this checkpoint: the manifest of its files image (docs/files.md)
      const filesId = ((m as { stats?: { extra?: { files?: { id?: unknown } } } }).stats?.extra?.files?.id);
      type FileRow = { path: string; present: boolean; size: number; mode: number; mtimeNs: string };
      const files = typeof filesId === "string" ? await api.inspect(filesId).then((f) => ({ id: filesId, list: ((f.manifest as { stats?: { extra?: { files?: FileRow[] } } }).stats?.extra?.files ?? []) }), (e: unknown) => ({ id: filesId, list: [] as FileRow[], error: errMessage(e) })) : null;
      if (o.json) return out(json({ manifest: m, image: img, ...(files ? { files } : {}) }));
      out(`${m.id}  ${m.kind}${m.parent ? ` on ${m.parent}` : ""}  created ${m.createdAt}`);
      out(`  ${m.pages} pages, ${bytes(m.bytes)}, ${m.threads} thread(s), downtime ${duration(m.downtimeNs)}, capture ${duration(m.totalNs)}`);
      const st = (m as { stats?: { tracking?: string | null; pagesScanned?: number | null; pagesWritten?: number | null; storedBytes?: number; newPages?: number } }).stats;
      if (st) out(`  tracking ${st.tracking ?? "-"}: ${st.pagesScanned ?? "-"} pages scanned, ${st.pagesWritten ?? "-"} written since the parent; ${st.newPages ?? "-"} new pages, ${st.storedBytes !== undefined ? bytes(st.storedBytes) : "-"} stored`);
      const tree = treeOf((m as { stats?: { extra?: unknown } }).stats?.extra);
      if (tree) {
        out(`  process tree of ${tree.tree.length} processes, tree downtime ${duration(tree.treeDowntimeNs)} (first park to last resume)${tree.cut ? `: every process parked ${duration(tree.cut.parkNs)}, checks ${duration(tree.cut.verifyNs)}, capture ${duration(tree.cut.captureNs)}, resume ${duration(tree.cut.resumeNs)}` : ""}; each live process's image is a checkpoint of its own (\`tardigrade inspect ID\`):`);
        out(table(["PID", "PPID", "PGID", "SID", "COMM", "THREADS", "CHECKPOINT", "DOWNTIME"], tree.tree.map((p) => [String(p.pid), String(p.ppid), String(p.pgid), String(p.sid), p.comm, String(p.threads), p.zombie ? `zombie, wait status ${p.waitStatus ?? 0}` : (p.id ?? "-"), p.downtimeNs !== undefined ? duration(p.downtimeNs) : "-"])));
      }
      if (files) {
        out(`  data files (${files.id}${"error" in files ? `: ${files.error}` : ""}): ${files.list.filter((f) => f.present).length} in the set, ${files.list.filter((f) => !f.present).length} absent at the checkpoint`);
        if (files.list.length) out(table(["SIZE", "MODE", "MTIME", "PATH"], files.list.map((f) => (f.present ? [bytes(f.size), (f.mode & 0o7777).toString(8), new Date(Number(BigInt(f.mtimeNs) / 1_000_000n)).toISOString(), f.path] : ["absent", "-", "-", f.path]))));
      }
      out(`  image ${img.file} (format v${img.version}, pid ${img.pid}, agent seq ${img.seq})`);
      out(`  exe ${img.exe ?? "?"}   cwd ${img.cwd}`);
      out(`\nthreads:\n${table(["TID", "COMM", "RIP", "RSP", "NICE", "POLICY", "CPUS", ""], img.threads.map((t) => [String(t.tid), t.comm, t.rip, t.rsp, t.attrs ? String(t.attrs.nice) : "-", t.attrs ? `${t.attrs.schedPolicy}/${t.attrs.schedPriority}` : "-", t.attrs ? cpuRanges(t.attrs.cpus) : "-", t.manager ? "(agent)" : ""]))}`);
      out(`\nfds:\n${table(["FD", "KIND", "FLAGS", "POS", "PATH"], img.fds.map((f) => [String(f.fd), f.kind, f.flags, f.pos, f.path]))}`);
      if (img.signals.length) out(`\nsignal handlers:\n${table(["SIGNAL", "HANDLER", "FLAGS", "MASK"], img.signals.map((x) => [`${x.signo} ${x.name}`, x.handler, x.flags, x.mask]))}`);
      if (img.timers.length) out(`\ntimers:\n${table(["TIMER", "CLOCK", "NOTIFY", "SIGNAL", "INTERVAL", "LEFT", "OVERRUN"], img.timers.map((x) => [x.id === null ? x.kind : `${x.kind} ${x.id}`, x.clock, x.notify, x.signal, x.interval === "0" ? "-" : duration(Number(x.interval)), x.value === "0" ? "disarmed" : duration(Number(x.value)), String(x.overrun)]))}`);
      if (img.attrs) {
        const a = img.attrs;
        const flags = [a.subreaper ? "child subreaper" : "", a.dumpable !== 1 ? `dumpable ${a.dumpable}` : "", a.noNewPrivs ? "no_new_privs" : "", a.pdeathsig ? `parent-death signal ${a.pdeathsig}` : "", a.personality ? `personality 0x${a.personality.toString(16)}` : ""].filter((x) => x);
        out(`\nattributes: ${[...flags, `timer slack ${a.timerslackNs} ns`, a.nice ? `nice ${a.nice}` : "", a.schedPolicy ? `scheduling policy ${a.schedPolicy} priority ${a.schedPriority}` : "", a.cpus.length ? `CPUs ${a.cpus.join(",")}` : ""].filter((x) => x).join(", ")}`);
      }
      if (img.tty) out(`\ncontrolling terminal: /dev/pts/${img.tty.index} (session ${img.tty.sid}${img.tty.fgPgrp > 0 ? `, foreground group ${img.tty.fgPgrp}` : ""})`);
      if (img.creds) {
        const c = img.creds;
        out(`\ncredentials: uid ${c.uid.join("/")} gid ${c.gid.join("/")} (real/effective/saved/fs), groups ${c.groups.join(",") || "-"}, capabilities inheritable ${c.capInh} permitted ${c.capPrm} effective ${c.capEff} bounding ${c.capBnd} ambient ${c.capAmb}, securebits 0x${c.securebits.toString(16)}`);
      }
      if (img.pipes.length) out(`\npipe data: ${img.pipes.map((p) => `inode ${p.inode}: ${bytes(p.bytes)}`).join(", ")}`);
      if (img.sockets.length) out(`\nsocket data: ${img.sockets.map((s) => `socket:[${s.inode}] ${s.type}: ${bytes(s.bytes)}${s.messages ? ` in ${s.messages} datagrams` : ""}${s.senders ? ` (from ${s.senders.map((x) => x || "unnamed").join(", ")})` : ""}`).join(", ")}`);
      if (img.locks.length) out(`\nfile locks: ${img.locks.map((k) => `fd ${k.fd} ${k.kind} ${k.type} ${k.range}`).join(", ")}`);
      if (img.inet.length)
        out(`\nTCP/UDP sockets:\n${table(["FD", "PROTO", "STATE", "LOCAL", "REMOTE", "TO READ", "TO SEND", "BACKLOG", "RESTORE"], img.inet.map((s) => [String(s.fd), `${s.proto}/${s.family}`, s.state, s.local, s.remote || "-", String(s.toRead), String(s.toSend), s.backlog ? String(s.backlog) : "-", s.restore ?? (s.state === "listening" ? "listen again" : "bind again")]))}`);
      if (img.files.length) out(`\nfiles checked at restore:\n${table(["HELD", "SIZE", "INODE", "GEN", "CONTENTS", "PATH"], img.files.map((f) => [f.held, f.size, f.inode, f.generation === null ? "-" : String(f.generation), f.contentsStored ? "stored" : "-", f.path]))}`);
      if (img.rlimits.length) out(`\nlimits: ${img.rlimits.map((r) => `${r.resource} ${r.cur}/${r.max}`).join(", ")}`);
      out(`\nmemory (${img.vmas.length} mappings):\n${table(["START", "END", "PROT", "KIND", "STORED", "PATH"], img.vmas.map((v) => [v.start, v.end, v.prot, v.kind, String(v.pagesStored), v.path]))}`);
    });

  program
    .command("import")
    .description("add a raw image file (docs/format.md) to the store as the app's next checkpoint")
    .argument("<name>", "app name")
    .argument("<file>", "raw image")
    .option("--json", "print the manifest as JSON")
    .action(async (name: string, file: string, o: { json?: boolean }) => {
      const m = await api.importImage(name, resolve(file));
      if (o.json) return out(json(m));
      out(`${m.id}: ${m.kind}, ${m.pages} pages, ${bytes(m.bytes)}`);
    });

  program
    .command("gc")
    .description("reclaim store space: keep the newest N checkpoints per app (and the chains they need)")
    .option("--keep <n>", "checkpoints to keep per app (default: each app's --keep, else all)")
    .option("--json", "print the report as JSON")
    .action(async (o: { keep?: string; json?: boolean }) => {
      const keep = o.keep === undefined ? undefined : Number(o.keep);
      if (keep !== undefined && (!Number.isSafeInteger(keep) || keep < 1)) throw new TgError("cannot run gc", `--keep must be a whole number ≥ 1 (got ${o.keep})`, "Pass e.g. --keep 3", "bad-request");
      const r = await api.gc({ keep });
      if (o.json) return out(json(r));
      out(`removed ${r.dropped.length} checkpoint(s)${r.dropped.length ? ` (${r.dropped.join(", ")})` : ""}; freed ${bytes(r.bytesFreed)}; ${r.packsRewritten} pack(s) rewritten`);
    });

  registerVerifyCommand(program);

  program
    .command("logs")
    .description("print the app's stdout/stderr")
    .argument("<name>", "app name")
    .option("-f, --follow", "keep printing new output")
    .action(async (name: string, o: { follow?: boolean }) => {
      await showLogs(tardigradeHome(), name, o.follow === true);
    });

  program
    .command("status")
    .description("state of one app (or all): running/exited, host pids, exit status")
    .argument("[name]", "app name")
    .option("--json", "print as JSON")
    .option("--pid", "print only the app's host PID (for scripts: kill -9 $(tardigrade status NAME --pid))")
    .action(async (name: string | undefined, o: { json?: boolean; pid?: boolean }) => {
      if (o.pid) {
        if (!name) throw new TgError("cannot print a pid", "--pid needs an app name", "Use `tardigrade status NAME --pid`", "bad-request");
        const s = await api.status(name);
        if (s.state !== "running" || !s.appHostPid) throw new TgError(`${name} has no running process`, `the app is ${s.state}${s.state === "exited" ? ` (${describeExit(s.exit)})` : ""}`, `Restore it with \`tardigrade restore ${name}\``, "not-running");
        return out(String(s.appHostPid));
      }
      const list = name ? [await api.status(name)] : await api.apps();
      if (o.json) return out(json(name ? list[0] : list));
      if (list.length === 0) return out("no apps");
      out(table(["NAME", "STATE", "HOST PIDS (init/app)", "STARTED", ""], list.map(appLine)));
    });

  program
    .command("stop")
    .description("stop the app (SIGTERM, then SIGKILL after --timeout)")
    .argument("<name>", "app name")
    .addOption(new Option("--timeout <seconds>", "grace period before SIGKILL").default("10"))
    .option("--json", "print the final state as JSON")
    .action(async (name: string, o: { timeout: string; json?: boolean }) => {
      const s = await api.stop(name, { timeoutMs: Math.round(parseSeconds("--timeout", o.timeout) * 1000) });
      if (o.json) return out(json(s));
      out(`${name}: ${s.state}${s.state === "exited" ? ` (${describeExit(s.exit)})` : ""}`);
    });

  program
    .command("daemon")
    .description("run the per-host daemon in the foreground (normally started on first use)")
    .action(async () => {
      const { runDaemon } = await import("../daemon/main.js");
      await runDaemon(tardigradeHome());
    });

  return program;
}

export async function main(argv: string[]): Promise<void> {
  quietEpipe();
  const program = buildProgram();
  const word = argv[2];
  if (word === undefined || word === "mirror" || word === "help" || word.startsWith("-")) (await import("../mirror/cli.js")).registerMirrorCommands(program);
  if (word === undefined || word === "standby" || word === "help" || word.startsWith("-")) (await import("../ha/standby-cli.js")).registerStandbyCommand(program);
  program.exitOverride();
  try {
    await program.parseAsync(argv);
  } catch (e) {
    if (e instanceof CommanderError) process.exit(e.exitCode === 0 ? 0 : 1);
    fail(e);
  }
}

