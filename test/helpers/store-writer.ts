// Child process for the store crash test: commits checkpoints of app "crash" into
// the store at argv[2] in a loop, writing each image in small pieces (as the agent
// does), until it is killed.
import { open } from "node:fs/promises";
import { sampleImage } from "../../src/image/writer.js";
import { LocalStore } from "../../src/store/local.js";

// `node --test dist/test/` also loads this file, without arguments: do nothing then.
const root = process.argv[2];
const store = root ? new LocalStore(root) : null;
if (store) await store.recover();
const image = sampleImage({ npages: 512 });
for (let i = 0; store; i++) {
  const s = await store.stage("crash");
  const fh = await open(s.imagePath(2), "wx", 0o600);
  for (let off = 0; off < image.length; off += 64 * 1024) await fh.write(image, off, Math.min(64 * 1024, image.length - off), off);
  await fh.close();
  const m = await store.put(s, { downtimeNs: i, totalNs: i });
  process.stdout.write(`${m.id}\n`);
}
