// A planned restore (`restore --replace`) that keeps the app's TCP connections to peers outside it
// (issue 13). Before the running app is killed:
//   1. its connections' traffic is dropped with nftables (Debian's `nftables` package: one table
//      per restore, rules for each connection's 4-tuple in both directions, at the raw priority);
//   2. each connection is put in TCP_REPAIR in the running process and its sequence numbers are
//      compared with the checkpoint's (`tardigrade-restore --freeze-connections`, native/restore/
//      connfreeze.c): a connection in repair closes without a packet when the app is killed, and
//      one that carried no byte since the checkpoint agrees with the checkpoint's memory;
//   3. the restorer rebuilds those with TCP_REPAIR (`--keep-connections`), the others closed;
//   4. the table is deleted: the peers' retransmissions get through, they saw a pause.
import { spawn, spawnSync } from "node:child_process";
import type { SocketStat } from "../image/inet.js";
import { nativeBinary } from "../native/paths.js";

export interface HeldConnections {
  /** Socket inode -> "kept", or why the connection is restored closed. */
  fate: Map<string, string>;
  /** Extra arguments for tardigrade-restore. */
  args: string[];
  /** Lets the traffic through again (idempotent). */
  release(): Promise<void>;
}

function run(cmd: string, args: string[], input?: string): Promise<{ code: number | null; out: string; err: string }> {
  return new Promise((resolve, reject) => {
    const c = spawn(cmd, args, { stdio: [input === undefined ? "ignore" : "pipe", "pipe", "pipe"] });
    let out = "";
    let err = "";
    c.stdout!.setEncoding("utf8").on("data", (d: string) => (out += d));
    c.stderr!.setEncoding("utf8").on("data", (d: string) => (err += d));
    c.on("error", reject);
    c.on("close", (code) => resolve({ code, out, err }));
    if (c.stdin) {
      c.stdin.on("error", () => undefined); // a child that exits early: its status says why
      c.stdin.end(input);
    }
  });
}

/** "127.0.0.1:80" / "[::1]:80" -> nft match words for the address family of the packets. */
function endpoint(a: string): { fam: "ip" | "ip6"; addr: string; port: number } | null {
  const m = /^\[(.*)\]:(\d+)$/.exec(a) ?? /^(\d+\.\d+\.\d+\.\d+):(\d+)$/.exec(a);
  if (!m) return null;
  const host = m[1]!;
  const port = Number(m[2]);
  if (!host.includes(":")) return { fam: "ip", addr: host, port };
  // an IPv4-mapped address on an IPv6 socket: the packets are IPv4
  const v4 = /^::ffff:([0-9a-f]{1,4}):([0-9a-f]{1,4})$/i.exec(host);
  if (v4) {
    const hi = parseInt(v4[1]!, 16);
    const lo = parseInt(v4[2]!, 16);
    return { fam: "ip", addr: `${hi >> 8}.${hi & 255}.${lo >> 8}.${lo & 255}`, port };
  }
  return { fam: "ip6", addr: host, port };
}

export function nftAvailable(): boolean {
  return spawnSync("nft", ["--version"], { stdio: "ignore" }).status === 0;
}

/** Holds the connections of the checkpoint that can be kept, in the running app (host pid). */
export async function holdConnections(app: string, hostPid: number, socks: SocketStat[] | undefined): Promise<HeldConnections | null> {
  const conns = (socks ?? []).filter((s) => s.hold);
  if (conns.length === 0) return null;
  const fate = new Map<string, string>();
  const none = async (): Promise<void> => undefined;
  if (!nftAvailable()) {
    for (const c of conns) fate.set(c.hold!.ino, "nft, from Debian's nftables package, is not installed: its traffic could not be held");
    return { fate, args: [], release: none };
  }
  const table = `tardigrade_${app.replace(/[^A-Za-z0-9_]/g, "_")}_${process.pid}_${Date.now()}`;
  const rules: string[] = [];
  const held: SocketStat[] = [];
  for (const c of conns) {
    const l = endpoint(c.hold!.local);
    const r = endpoint(c.hold!.remote);
    if (!l || !r || l.fam !== r.fam) {
      fate.set(c.hold!.ino, `its addresses ${c.hold!.local} and ${c.hold!.remote} cannot be matched by a rule`);
      continue;
    }
    rules.push(`add rule inet ${table} in ${r.fam} saddr ${r.addr} tcp sport ${r.port} ${l.fam} daddr ${l.addr} tcp dport ${l.port} drop`);
    rules.push(`add rule inet ${table} out ${l.fam} saddr ${l.addr} tcp sport ${l.port} ${r.fam} daddr ${r.addr} tcp dport ${r.port} drop`);
    held.push(c);
  }
  if (held.length === 0) return { fate, args: [], release: none };
  const script = [
    `add table inet ${table}`,
    `add chain inet ${table} in { type filter hook input priority -300; policy accept; }`,
    `add chain inet ${table} out { type filter hook output priority -300; policy accept; }`,
    ...rules,
  ].join("\n");
  const added = await run("nft", ["-f", "-"], script + "\n");
  if (added.code !== 0) {
    for (const c of held) fate.set(c.hold!.ino, `nft could not hold its traffic: ${added.err.trim().split("\n")[0]}`);
    return { fate, args: [], release: none };
  }
  let released = false;
  const release = async (): Promise<void> => {
    if (released) return;
    released = true;
    await run("nft", ["delete", "table", "inet", table]);
  };
  try {
    const frozen = await run(nativeBinary("tardigrade-restore"), ["--freeze-connections", String(hostPid), ...held.map((c) => `${c.hold!.ino}:${c.hold!.sndSeq}:${c.hold!.rcvSeq}`)]);
    for (const line of frozen.out.split("\n")) {
      const m = /^(same|moved) (\d+)(?: (.*))?$/.exec(line);
      if (m) fate.set(m[2]!, m[1] === "same" ? "kept" : m[3] ?? "it moved since the checkpoint");
    }
    for (const c of held) if (!fate.has(c.hold!.ino)) fate.set(c.hold!.ino, `it could not be frozen: ${frozen.err.trim() || `exit status ${frozen.code}`}`);
  } catch (e) {
    await release();
    throw e;
  }
  const kept = held.filter((c) => fate.get(c.hold!.ino) === "kept");
  if (kept.length < held.length) {
    // the others go through again before the kill (one transaction): their peers see them end
    const keepRules = held.flatMap((c, i) => (fate.get(c.hold!.ino) === "kept" ? [rules[2 * i]!, rules[2 * i + 1]!] : []));
    const redo = await run("nft", ["-f", "-"], [`flush chain inet ${table} in`, `flush chain inet ${table} out`, ...keepRules].join("\n") + "\n");
    if (redo.code !== 0) {
      await release();
      throw new Error(`nft could not update the held connections: ${redo.err.trim()}`);
    }
  }
  const keep = kept.map((c) => c.hold!.ino);
  return { fate, args: keep.length ? ["--keep-connections", keep.join(",")] : [], release };
}

/** Tables left by a daemon that died while it held connections (its pid is in the name): deleted at
 * daemon start, so no connection stays blocked. Returns the tables deleted. */
export async function releaseStaleHolds(): Promise<string[]> {
  if (!nftAvailable()) return [];
  const listed = await run("nft", ["list", "tables"]).catch(() => null);
  const gone: string[] = [];
  for (const line of listed?.out.split("\n") ?? []) {
    const m = /^table inet (tardigrade_\w*_(\d+)_\d+)$/.exec(line.trim());
    if (!m) continue;
    const pid = Number(m[2]);
    let alive = pid === process.pid;
    try {
      if (!alive) process.kill(pid, 0);
      alive = true;
    } catch {
      alive = false;
    }
    if (alive) continue;
    if ((await run("nft", ["delete", "table", "inet", m[1]!])).code === 0) gone.push(m[1]!);
  }
  return gone;
}
