// Hosts for the HA tests: network namespaces joined by veth pairs (made and removed by
// the test), a process launched "on a host" with `ip netns exec`, killed by its PID.
//
//   primary P ---- pm ---- M mirror          P 10.77.1.1 - M 10.77.1.2
//        \                  /                P 10.77.2.1 - S 10.77.2.2
//         ps ---- S ---- sm                  S 10.77.3.1 - M 10.77.3.2
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";

export type Host = "P" | "M" | "S";
export type Link = "pm" | "ps" | "sm";

const LINKS: Record<Link, { a: Host; b: Host; net: number }> = {
  pm: { a: "P", b: "M", net: 1 },
  ps: { a: "P", b: "S", net: 2 },
  sm: { a: "S", b: "M", net: 3 },
};

export interface Net {
  ns: Record<Host, string>;
  /** The address of `host` on `link`. */
  addr(link: Link, host: Host): string;
  /** The name of `host`'s end of `link`. */
  dev(link: Link, host: Host): string;
  /** The addresses (IP/PREFIX) on `host`'s end of `link`. */
  addrs(link: Link, host: Host): string[];
  /** Takes both ends of a link down (up again with up). */
  down(link: Link): void;
  up(link: Link): void;
  /** `ip netns exec NS CMD...` (ip execs: the child's PID is the command's). */
  spawn(host: Host, cmd: string[], env: NodeJS.ProcessEnv): ChildProcess;
  destroy(): void;
}

function ip(args: string[]): void {
  execFileSync("ip", args, { stdio: ["ignore", "ignore", "pipe"] });
}

/** Why namespaces cannot be used here, or null if they can. */
export function netnsUnavailable(): string | null {
  if (process.getuid?.() !== 0) return "not root: ip netns needs CAP_SYS_ADMIN and CAP_NET_ADMIN";
  const probe = `tgha-probe-${process.pid}`;
  try {
    ip(["netns", "add", probe]);
    ip(["netns", "del", probe]);
    return null;
  } catch (e) {
    return `ip netns add failed: ${(e as Error).message}`;
  }
}

export function makeNet(): Net {
  const id = randomBytes(3).toString("hex");
  const ns: Record<Host, string> = { P: `tgha-${id}-P`, M: `tgha-${id}-M`, S: `tgha-${id}-S` };
  const dev = (link: Link, h: Host): string => `th${id}${link}${h}`.slice(0, 15);
  const made: string[] = [];
  const net: Net = {
    ns,
    addr: (link, host) => `10.77.${LINKS[link].net}.${LINKS[link].a === host ? 1 : 2}`,
    dev,
    addrs(link, host) {
      const out = execFileSync("ip", ["-n", ns[host], "-o", "-4", "addr", "show", "dev", dev(link, host)], { encoding: "utf8" });
      return [...out.matchAll(/\binet (\S+)/g)].map((m) => m[1]!);
    },
    down(link) {
      const l = LINKS[link];
      ip(["-n", ns[l.a], "link", "set", dev(link, l.a), "down"]);
      ip(["-n", ns[l.b], "link", "set", dev(link, l.b), "down"]);
    },
    up(link) {
      const l = LINKS[link];
      ip(["-n", ns[l.a], "link", "set", dev(link, l.a), "up"]);
      ip(["-n", ns[l.b], "link", "set", dev(link, l.b), "up"]);
    },
    spawn(host, cmd, env) {
      return spawn("ip", ["netns", "exec", ns[host], ...cmd], { env, stdio: ["ignore", "pipe", "pipe"] });
    },
    destroy() {
      for (const n of made) {
        try {
          ip(["netns", "del", n]); // (removes the veth ends inside it, and so their peers)
        } catch {
          /* already gone */
        }
      }
    },
  };
  try {
    for (const h of ["P", "M", "S"] as Host[]) {
      ip(["netns", "add", ns[h]]);
      made.push(ns[h]);
      ip(["-n", ns[h], "link", "set", "lo", "up"]);
    }
    for (const link of Object.keys(LINKS) as Link[]) {
      const l = LINKS[link];
      ip(["link", "add", dev(link, l.a), "netns", ns[l.a], "type", "veth", "peer", "name", dev(link, l.b), "netns", ns[l.b]]);
      for (const h of [l.a, l.b]) {
        ip(["-n", ns[h], "addr", "add", `${net.addr(link, h)}/24`, "dev", dev(link, h)]);
        ip(["-n", ns[h], "link", "set", dev(link, h), "up"]);
      }
    }
  } catch (e) {
    net.destroy();
    throw e;
  }
  return net;
}
