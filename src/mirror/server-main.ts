#!/usr/bin/env node
// Stand-alone entry for the mirror server (used by tests and the systemd unit):
//   node dist/src/mirror/server-main.js --listen HOST:PORT --store DIR [...]
// takes the same options as `tardigrade mirror serve`.
import { Command } from "commander";
import { registerMirrorCommands } from "./cli.js";

const program = new Command("tardigrade-mirror");
registerMirrorCommands(program);
await program.parseAsync(["mirror", "serve", ...process.argv.slice(2)], { from: "user" });
