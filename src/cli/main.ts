#!/usr/bin/env node
// tardigrade CLI entry. The common forms of `restore` load only the daemon client and print the
// result (restore-args.ts, restore-run.ts); every other command goes through the full program
// (program.ts, commander).
import { fastRestoreArgs } from "./restore-args.js";

const fast = fastRestoreArgs(process.argv);
if (fast) {
  const [{ runRestore }, { fail, quietEpipe }] = await Promise.all([import("./restore-run.js"), import("./fail.js")]);
  quietEpipe();
  await runRestore(fast.name, fast.opts).catch(fail);
} else await (await import("./program.js")).main(process.argv);
