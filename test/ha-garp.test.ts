// The service address's gratuitous ARP (issue 16 item 3; docs/ha.md decision 4): when the host
// taking an app over adds the address, its neighbours' ARP entries for it must point at the new
// host at once, not when they expire. Two network namespaces joined by a veth pair: P holds a
// stale entry for the address with another host's MAC (the old primary's, as a client would);
// S adds the address the way the standby does on takeover (addServiceAddress: `ip addr replace`,
// then `arping -U`); P's entry must name S's MAC. Then the address is removed again.
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { join } from "node:path";
import { describe, test } from "node:test";
import { ROOT, waitFor } from "./helpers/home.js";
import { makeNet, netnsUnavailable } from "./helpers/ha-net.js";

const OLD_MAC = "02:00:00:00:00:01";

describe("service address: gratuitous ARP", () => {
  test("a neighbour's stale entry for the address names the new holder once it adds the address", { timeout: 120_000, skip: netnsUnavailable() ?? false }, async () => {
    assert.equal(spawnSync("arping", ["-V"]).error, undefined, "arping (Debian iputils-arping) is installed (.ci/run installs it)");
    const net = makeNet();
    try {
      const addr = `${net.addr("ps", "P").replace(/\.\d+$/, "")}.100`;
      const neigh = (): string => execFileSync("ip", ["-n", net.ns.P, "neigh", "show", addr, "dev", net.dev("ps", "P")], { encoding: "utf8" });
      const macOf = /link\/ether (\S+)/.exec(execFileSync("ip", ["-n", net.ns.S, "link", "show", net.dev("ps", "S")], { encoding: "utf8" }))?.[1];
      assert.ok(macOf, "S's MAC");
      execFileSync("ip", ["-n", net.ns.P, "neigh", "replace", addr, "lladdr", OLD_MAC, "dev", net.dev("ps", "P"), "nud", "stale"]);
      assert.match(neigh(), new RegExp(`lladdr ${OLD_MAC}`));
      const mod = join(ROOT, "dist", "src", "ha", "address.js");
      const script = `const m = await import(${JSON.stringify(mod)}); const a = { cidr: ${JSON.stringify(`${addr}/24`)}, dev: ${JSON.stringify(net.dev("ps", "S"))} }; console.log(JSON.stringify(await m.addServiceAddress(a)));`;
      const r = spawnSync("ip", ["netns", "exec", net.ns.S, process.execPath, "--input-type=module", "-e", script], { encoding: "utf8", timeout: 60_000 });
      assert.equal(r.status, 0, r.stderr);
      assert.deepEqual(JSON.parse(r.stdout.trim()), { arp: "sent" });
      assert.ok(net.addrs("ps", "S").includes(`${addr}/24`), "the address is on S");
      await waitFor("P's entry for the address to name S's MAC", () => neigh().includes(`lladdr ${macOf}`), 30_000);
      const rm = `const m = await import(${JSON.stringify(mod)}); await m.removeServiceAddress({ cidr: ${JSON.stringify(`${addr}/24`)}, dev: ${JSON.stringify(net.dev("ps", "S"))} });`;
      const r2 = spawnSync("ip", ["netns", "exec", net.ns.S, process.execPath, "--input-type=module", "-e", rm], { encoding: "utf8", timeout: 60_000 });
      assert.equal(r2.status, 0, r2.stderr);
      assert.ok(!net.addrs("ps", "S").includes(`${addr}/24`), "the address left S");
    } finally {
      net.destroy();
    }
  });
});
