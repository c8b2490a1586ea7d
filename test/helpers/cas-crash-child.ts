// Child process of the crash test (test/cas-crash.test.ts): runs ingest, merge and gc on
// a store in a loop, printing each completed step, until it runs out of images or is
// killed, or has ingested `perRun` images. argv: root imagesDir apps(comma) count perRun
import { join } from "node:path";
import { CasStore } from "../../src/store/cas/index.js";

const [root, imagesDir, appsArg, countArg, perRunArg] = process.argv.slice(2) as [string, string, string, string, string];
let budget = Number(perRunArg);
const apps = appsArg.split(",");
const count = Number(countArg);
const say = (s: string) => process.stdout.write(`${s}\n`);

const store = await CasStore.open(root, { packMaxBytes: 3 << 20, blockPages: 64 });
say(`opened ${JSON.stringify(store.repairs)}`);
let round = 0;
for (;;) {
  let did = false;
  for (const app of apps) {
    const seqs = store.list(app).map((c) => c.seq);
    const next = seqs.length === 0 ? 1 : Math.max(...seqs) + 1;
    if (next > count || budget <= 0) continue;
    budget--;
    say(`begin ingest ${app}@${next}`);
    const c = await store.ingest(app, next, join(imagesDir, `${app}-${next}.img`));
    say(`committed ${c.id}`);
    say(`begin merge ${c.id}`);
    if (await store.mergeIfNeeded(c.id, { maxChainLength: 3 })) say(`merged ${c.id}`);
    did = true;
  }
  if (++round % 2 === 0 || !did) {
    say("begin gc");
    const r = await store.gc({ keep: 3, minDeadFraction: 0.05 });
    say(`gc ${JSON.stringify(r.dropped)} freed ${r.bytesFreed}`);
  }
  if (!did) break;
}
await store.close();
say("done");
