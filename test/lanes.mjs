#!/usr/bin/env node
// npm test's runner: the compiled test files in two lanes that run side by side, each lane one
// `node --test --test-concurrency=1` process running its files one after another.
//
// Lane 1 holds every file that uses something of the host that two tests could want at once:
// nftables tables (restore --replace holds connections), network namespaces and veth pairs,
// TCP/UDP ports, mirror and standby servers, the daemon's socket races, ptys. Lane 2 holds the
// rest: programs checkpointed and restored in their own temp homes, stores, images. Nothing in
// lane 2 may use a host-wide name; a new test file goes to lane 2 unless it matches LANE1 below.
//
// TEST_LANES=1 runs every file in one lane (as before the split). Arguments: test files to run
// (default: dist/test/*.test.js). Exit status: 1 if any lane failed. On SIGINT/SIGTERM both lanes
// (each in its own process group, with the test processes they started) are killed.
/* global process, console */
import { spawn } from "node:child_process";
import { readdirSync } from "node:fs";
import { basename, join } from "node:path";
import { createInterface } from "node:readline";

const LANE1 = /^(e2e|sockets-|sockpair|unix-|tree-sockets|ha-|mirror-|daemon|cas-e2e|files\.|files-ranges|clock|pty-|sparse)/;

const args = process.argv.slice(2);
const files = (args.length > 0 ? args : readdirSync("dist/test").filter((f) => f.endsWith(".test.js")).map((f) => join("dist/test", f))).sort();
const oneLane = process.env.TEST_LANES === "1";
const lanes = oneLane ? [files] : [files.filter((f) => LANE1.test(basename(f))), files.filter((f) => !LANE1.test(basename(f)))];

const started = Date.now();
/** @type {import("node:child_process").ChildProcess[]} */
const children = [];

function runLane(n, laneFiles) {
  if (laneFiles.length === 0) return Promise.resolve({ n, code: 0, summary: "no files" });
  const argv = ["--test", "--test-concurrency=1", "--test-timeout=600000", "--test-reporter=spec", ...laneFiles];
  const child = spawn(process.execPath, argv, { stdio: ["ignore", "pipe", "pipe"], detached: true });
  children.push(child);
  const tag = oneLane ? "" : `[${n}] `;
  const summary = [];
  for (const stream of [child.stdout, child.stderr]) {
    createInterface({ input: stream }).on("line", (line) => {
      process.stdout.write(`${tag}${line}\n`);
      const m = /^ℹ (tests|pass|fail|cancelled|skipped|todo|duration_ms) (\S+)/.exec(line);
      if (m) summary.push(`${m[1]} ${m[2]}`);
    });
  }
  return new Promise((resolve) => {
    child.on("error", (e) => resolve({ n, code: 1, summary: `could not start: ${e.message}` }));
    child.on("exit", (code, signal) => resolve({ n, code: code ?? 1, summary: `${summary.join(", ")}${signal ? ` (ended by ${signal})` : ""}` }));
  });
}

function killLanes(signal) {
  for (const c of children) {
    if (c.pid === undefined || c.exitCode !== null || c.signalCode !== null) continue;
    try {
      process.kill(-c.pid, signal);
    } catch {
      /* already gone */
    }
  }
}
for (const sig of ["SIGINT", "SIGTERM"]) {
  process.on(sig, () => {
    killLanes("SIGKILL");
    process.exit(1);
  });
}

if (!oneLane) console.log(`test lanes: [1] ${lanes[0].length} files (nftables, namespaces, ports, mirror, daemon), [2] ${lanes[1].length} files, side by side`);
const results = await Promise.all(lanes.map((l, i) => runLane(i + 1, l)));
const secs = ((Date.now() - started) / 1000).toFixed(0);
for (const r of results) console.log(`lane ${r.n}: ${r.code === 0 ? "passed" : `FAILED (exit ${r.code})`}: ${r.summary}`);
console.log(`all lanes done in ${secs} s`);
process.exit(results.every((r) => r.code === 0) ? 0 : 1);
