// Runs every benchmark module (bench/*.bench.ts, compiled to dist/bench/*.bench.js).
// Each module exports `main(): Promise<void>`, prints its own table and writes
// JSON under bench/results/. `npm run bench -- NAME` runs only the named ones.
import { readdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

interface BenchModule {
  main(): Promise<void>;
}

const here = dirname(fileURLToPath(import.meta.url));
const only = process.argv.slice(2);
const files = readdirSync(here)
  .filter((f) => f.endsWith(".bench.js"))
  .filter((f) => only.length === 0 || only.includes(f.replace(/\.bench\.js$/, "")))
  .sort();
if (files.length === 0) {
  console.error(`no benchmarks matched ${only.join(", ") || "(none exist)"}`);
  process.exit(1);
}
for (const f of files) {
  console.log(`\n=== ${f.replace(/\.bench\.js$/, "")} ===`);
  const mod = (await import(pathToFileURL(join(here, f)).href)) as BenchModule;
  await mod.main();
}
