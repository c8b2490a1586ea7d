#!/usr/bin/env node
// npm run test:stress: the whole suite (the same command as `npm test`, or the command given
// after `--`) with a CPU hog on every core running beside it, as on a busy CI machine.
// The hog is `stress-ng --cpu N` when installed, else one node busy loop per core; it is killed
// by its PID when the suite ends, whatever the outcome (also on SIGINT/SIGTERM).
// Exit status: the suite's.
/* global process, console, setTimeout */
import { spawn, spawnSync } from "node:child_process";
import { availableParallelism } from "node:os";

const cores = availableParallelism();
const dashdash = process.argv.indexOf("--");
const suite = dashdash >= 0 ? process.argv.slice(dashdash + 1) : ["npm", "test"];

/** @type {import("node:child_process").ChildProcess[]} */
const hogs = [];
const haveStressNg = spawnSync("stress-ng", ["--version"], { stdio: "ignore" }).status === 0;
if (haveStressNg) {
  hogs.push(spawn("stress-ng", ["--cpu", String(cores), "--quiet"], { stdio: "ignore" }));
} else {
  for (let i = 0; i < cores; i++) hogs.push(spawn(process.execPath, ["-e", "for (;;) {}"], { stdio: "ignore" }));
}
for (const h of hogs) h.on("error", (e) => console.error(`test:stress: the CPU hog failed: ${e.message}`));
console.error(`test:stress: ${haveStressNg ? `stress-ng --cpu ${cores}` : `${cores} node busy loops`} (pid ${hogs.map((h) => h.pid).join(", ")}) beside: ${suite.join(" ")}`);

function killHogs() {
  for (const h of hogs) {
    if (h.pid === undefined || h.exitCode !== null || h.signalCode !== null) continue;
    try {
      // stress-ng's workers are its children: SIGTERM lets it stop them; SIGKILL follows if it lingers
      process.kill(h.pid, h === hogs[0] && haveStressNg ? "SIGTERM" : "SIGKILL");
    } catch {
      /* already gone */
    }
  }
}

async function waitHogsGone() {
  const deadline = Date.now() + 30_000;
  while (hogs.some((h) => h.exitCode === null && h.signalCode === null)) {
    if (Date.now() > deadline) {
      for (const h of hogs) if (h.pid !== undefined && h.exitCode === null && h.signalCode === null) process.kill(h.pid, "SIGKILL");
      break;
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}

const child = spawn(suite[0], suite.slice(1), { stdio: "inherit" });
for (const sig of ["SIGINT", "SIGTERM"]) {
  process.on(sig, () => {
    if (child.pid !== undefined && child.exitCode === null) child.kill(sig);
  });
}
const code = await new Promise((resolve) => {
  child.on("error", (e) => {
    console.error(`test:stress: cannot start ${suite[0]}: ${e.message}`);
    resolve(1);
  });
  child.on("exit", (c, s) => resolve(c ?? (s ? 1 : 0)));
});
killHogs();
await waitHogsGone();
process.exit(code);
