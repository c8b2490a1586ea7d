// The service address (docs/ha.md, decision 4): the host that holds an app's lease also
// holds its address (`--address IP/PREFIX --dev IFACE`), added when the lease is granted and
// removed when the host is fenced, so clients reach whichever host runs the app. Done with
// `ip addr` (iproute2) in the daemon's network namespace; after adding an IPv4 address a
// gratuitous ARP is sent with `arping -U` when arping is installed (else the neighbours
// learn the new host when their ARP entries expire: see README Limits).
import { execFile } from "node:child_process";
import { isIP } from "node:net";

export interface ServiceAddress {
  /** IP/PREFIX, e.g. 10.0.0.100/24. */
  cidr: string;
  dev: string;
}

/** Checks `--address` and `--dev`; the message says which is wrong. */
export function parseServiceAddress(cidr: string, dev: string | undefined): ServiceAddress {
  const m = /^([^/]+)\/(\d{1,3})$/.exec(cidr.trim());
  const ip = m?.[1] ?? "";
  const v = isIP(ip);
  const prefix = Number(m?.[2]);
  if (!m || v === 0 || !(prefix >= 0 && prefix <= (v === 4 ? 32 : 128))) throw new Error(`--address ${JSON.stringify(cidr)} is not IP/PREFIX (e.g. 10.0.0.100/24)`);
  if (!dev || !/^[A-Za-z0-9_.:@-]{1,15}$/.test(dev)) throw new Error(`--address needs --dev IFACE (an interface name, 1 to 15 characters; got ${JSON.stringify(dev ?? "")})`);
  return { cidr: `${ip}/${prefix}`, dev };
}

function run(cmd: string, args: string[]): Promise<{ ok: boolean; err: string }> {
  return new Promise((resolve) => {
    execFile(cmd, args, { timeout: 10_000 }, (e, _out, stderr) => resolve({ ok: !e, err: e ? (String(stderr).trim() || e.message) : "" }));
  });
}

/** Adds the address (`ip addr replace`: already there is fine), then a gratuitous ARP (IPv4). */
export async function addServiceAddress(a: ServiceAddress): Promise<{ arp: "sent" | "no arping" | "failed" | "ipv6" }> {
  const r = await run("ip", ["addr", "replace", a.cidr, "dev", a.dev]);
  if (!r.ok) throw new Error(`cannot add the service address ${a.cidr} to ${a.dev}: ip addr replace failed: ${r.err}`);
  const ip = a.cidr.split("/")[0]!;
  if (isIP(ip) !== 4) return { arp: "ipv6" };
  const arp = await run("arping", ["-U", "-c", "1", "-I", a.dev, ip]);
  if (arp.ok) return { arp: "sent" };
  return { arp: /ENOENT/.test(arp.err) ? "no arping" : "failed" };
}

/** Removes the address; absent already is fine. */
export async function removeServiceAddress(a: ServiceAddress): Promise<void> {
  const r = await run("ip", ["addr", "del", a.cidr, "dev", a.dev]);
  if (!r.ok && !/Cannot assign requested address|does not exist|not found/i.test(r.err)) throw new Error(`cannot remove the service address ${a.cidr} from ${a.dev}: ip addr del failed: ${r.err}`);
}
