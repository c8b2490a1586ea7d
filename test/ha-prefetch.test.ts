// The standby's warm copy (issue 16; docs/ha.md): while the primary runs, the standby pulls the
// app's newest durable checkpoint from the mirror into its own store (at most once per
// --prefetch-every), so a takeover's restore fetches only what is newer. One host, loopback, two
// homes (two daemons), a mirror server process, a counter checkpointing every second. The
// takeover restores lazily (the standby's default) from the warm copy.
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { isAlive, waitFor } from "./helpers/home.js";
import { startLoopbackHa } from "./helpers/ha-loopback.js";
import { requireNative } from "./helpers/native.js";

const lastCount = (log: string): number => {
  const m = [...log.matchAll(/^count (\d+)$/gm)];
  return m.length ? Number(m[m.length - 1]![1]) : 0;
};

describe("standby: warm copy", () => {
  test("the standby's store holds the primary's checkpoints before a failure; the takeover restores from there", { timeout: 300_000 }, async () => {
    requireNative();
    const ha = await startLoopbackHa({ prefix: "tg-ha-warm", failoverAfter: "1s", standbyArgs: ["--prefetch-every", "500ms"] });
    const { P, S } = ha;
    try {
      // the standby pulls checkpoints while the primary runs: they are in its own store
      const pulls = (): number => [...ha.err().matchAll(/warm copy: calc@\d+ pulled/g)].length;
      await waitFor("two warm pulls (an incremental on the first)", () => pulls() >= 2, 120_000).catch((e: Error) => assert.fail(`${e.message}; the standby's log: ${ha.err()}`));
      const ls = await S.cli(["ls", "calc", "--json"]);
      const before = ls.code === 0 ? (JSON.parse(ls.stdout) as { id: string }[]) : [];
      assert.ok(before.length >= 2, `the standby's store holds the primary's checkpoints: ${JSON.stringify(before)}; standby log: ${ha.err()}`);
      assert.ok(isAlive(P.pids("calc")!.app), "the app still runs on the primary");
      assert.equal(S.pids("calc"), null, "nothing runs on the standby");
      // the primary fails (daemon and app killed)
      const countAtKill = lastCount(P.log("calc"));
      ha.killPrimary();
      assert.equal(await ha.exited, 0, ha.err());
      const report = JSON.parse(ha.out()) as { checkpoint: string; prefetched?: string; restoreMs: number; lazy?: boolean };
      assert.ok(report.prefetched, `the takeover report names the warm copy: ${ha.out()}`);
      assert.equal(report.lazy, true, `the standby restores lazily by default: ${ha.out()}`);
      const seq = (id: string): number => Number(id.split("@")[1]);
      assert.ok(seq(report.prefetched!) <= seq(report.checkpoint), `${report.prefetched} is not newer than the checkpoint restored, ${report.checkpoint}`);
      await waitFor("the app counting on the standby", () => lastCount(S.log("calc")) > 0, 60_000);
      const first = Number(/^count (\d+)$/m.exec(S.log("calc"))![1]);
      assert.ok(first > 1 && first <= countAtKill + 1, `the restored counter goes on from a checkpoint of the primary (first count ${first} on the standby, ${countAtKill} at the kill)`);
    } finally {
      await ha.stop();
    }
  });

  test("--keep 2: the standby keeps its warm copies bounded (merged and reclaimed as it pulls), and still takes over from them", { timeout: 300_000 }, async () => {
    requireNative();
    const ha = await startLoopbackHa({ prefix: "tg-ha-keep", failoverAfter: "1s", standbyArgs: ["--prefetch-every", "200ms", "--keep", "2"] });
    const { P, S } = ha;
    try {
      const pulled = (): number[] => [...ha.err().matchAll(/warm copy: calc@(\d+) pulled/g)].map((m) => Number(m[1]));
      const ids = async (): Promise<string[]> => {
        const r = await S.cli(["ls", "calc", "--json"]);
        return r.code === 0 ? (JSON.parse(r.stdout) as { id: string }[]).map((c) => c.id) : [];
      };
      const daemonLog = (): string => readFileSync(join(S.home, "daemon.log"), "utf8");
      // the standby merges a chain of 8 (the store's policy) and drops what no kept copy needs:
      // after 14 pulls, the first ones are gone from its store
      let most = 0;
      await waitFor("14 warm pulls and a retention pass on the standby", async () => {
        most = Math.max(most, (await ids()).length);
        return pulled().length >= 14 && /"msg":"retention"/.test(daemonLog());
      }, 200_000).catch(async (e: Error) => assert.fail(`${e.message}; pulls ${pulled().join(",")}; ids now ${(await ids()).join(" ")}; the standby daemon log: ${daemonLog().split("\n").filter((l) => !l.includes("imported from mirror") && !l.includes("pulled from the mirror")).slice(-40).join("\n")}`));
      const now = await ids();
      const first = pulled()[0]!;
      assert.ok(!now.includes(`calc@${first}`), `the first warm copy (calc@${first}) was reclaimed: ${now.join(" ")}`);
      // 2 kept, plus the chain the newest stands on (at most the 8 of a chain before its merge)
      assert.ok(most <= 2 + 8 + 1, `the standby's store never held more than 11 of the app's checkpoints (most: ${most})`);
      assert.ok(now.length <= 2 + 8, `now ${now.length}: ${now.join(" ")}`);
      // a warm copy merged on the standby is still known as the mirror's checkpoint: never set aside as another lineage
      const all = await S.cli(["ls", "--json"]);
      assert.equal(all.code, 0, all.stderr);
      const aside = (JSON.parse(all.stdout) as { id: string }[]).filter((c) => c.id.includes(".diverged-"));
      assert.deepEqual(aside.map((c) => c.id), [], "no warm copy set aside as another lineage");
      // and what is kept still restores: the takeover goes on from the primary's count
      const countAtKill = lastCount(P.log("calc"));
      ha.killPrimary();
      assert.equal(await ha.exited, 0, ha.err());
      await waitFor("the app counting on the standby", () => lastCount(S.log("calc")) > 0, 60_000);
      const c = Number(/^count (\d+)$/m.exec(S.log("calc"))![1]);
      assert.ok(c > 1 && c <= countAtKill + 1, `the restored counter goes on from a checkpoint of the primary (first count ${c}, ${countAtKill} at the kill)`);
    } finally {
      await ha.stop();
    }
  });
});
