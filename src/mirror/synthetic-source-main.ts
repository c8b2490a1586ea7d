#!/usr/bin/env node
// Streams synthetic checkpoints to a mirror, as a separate process (the tests kill it
// with SIGKILL mid-stream). Prints one JSON line per state change on stdout.
//   node synthetic-source-main.js URL SOURCE TOKEN COUNT PAGES [ACK]
import { MirrorClient } from "./client.js";
import { SyntheticSource } from "./synthetic.js";
import type { AckLevel } from "./client.js";

const [url, source, token, count, pages, ack] = process.argv.slice(2);
if (!url || !source || !token || !count || !pages) {
  console.error("usage: synthetic-source-main URL SOURCE TOKEN COUNT PAGES [received|durable]");
  process.exit(2);
}
const client = new MirrorClient({ url, source, token, ack: (ack ?? "received") as AckLevel });
client.on("state", (e) => console.log(JSON.stringify({ event: "state", ...e })));
const gen = new SyntheticSource(source, { pages: Number(pages), dirtyFraction: 1, sharedFraction: 0 });
for (let i = 0; i < Number(count); i++) {
  const c = gen.next();
  console.log(JSON.stringify({ event: "sending", id: c.id, seq: c.seq }));
  await client.send(c);
}
await client.close();
