// The TIMERS record (docs/format.md, type 14): parsed by the TS reader and `inspect`, and a
// damaged one rejected with the file and offset named.
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import { FILE_HEADER_SIZE } from "../src/image/format.js";
import { ImageError, parseImage } from "../src/image/parser.js";
import { summarizeImage } from "../src/image/summary.js";
import { buildImage, cwdRecord, procRecord, recordBytes, threadRecord, timersRecord, vmaRecord } from "../src/image/writer.js";

const dir = mkdtempSync(join(tmpdir(), "tg-timers-img-"));
after(() => rmSync(dir, { recursive: true, force: true }));

function image(timers: ReturnType<typeof timersRecord>): { file: string; timersOff: number } {
  const head = [procRecord({ pid: 2 }), cwdRecord("/tmp"), vmaRecord({ start: 0x10000000n, end: 0x10001000n }), threadRecord({ tid: 2, comm: "app" })];
  const file = join(dir, `img-${Math.random().toString(36).slice(2)}`);
  writeFileSync(file, buildImage([...head, timers], { pid: 2 }));
  return { file, timersOff: FILE_HEADER_SIZE + head.reduce((n, r) => n + recordBytes(r).length, 0) };
}

describe("TIMERS record", () => {
  test("parsed and listed by inspect", async () => {
    const { file } = image(
      timersRecord({
        itimers: [[25_000_000n, 1_000_000n], [0n, 0n], [0n, 0n]],
        timers: [
          { id: 0, clock: 1, notify: 0, signo: 10, intervalNs: 20_000_000n, valueNs: 5_000_000n },
          { id: 7, clock: 0, notify: 4, signo: 12, tid: 2, intervalNs: 0n, valueNs: 0n },
          { id: 9, clock: -6, notify: 1, signo: 0, intervalNs: 0n, valueNs: 3n },
        ],
      }),
    );
    const img = await parseImage(file);
    assert.equal(img.timers?.timers.length, 3);
    assert.deepEqual(img.timers?.timers.map((t) => [t.id, t.clock, t.notify, t.tid]), [[0, 1, 0, 0], [7, 0, 4, 2], [9, -6, 1, 0]]);
    const s = await summarizeImage(file);
    assert.deepEqual(s.timers.map((t) => `${t.kind} ${t.id} ${t.clock} ${t.notify} ${t.signal} ${t.value}`), [
      "posix 0 monotonic signal SIGUSR1 5000000",
      "posix 7 realtime signal to tid 2 SIGUSR2 0",
      "posix 9 process-cputime none - 3",
      "ITIMER_REAL null realtime signal SIGALRM 1000000",
    ]);
  });

  test("more timers than the payload holds: ImageError naming the record's offset", async () => {
    const { file, timersOff } = image(timersRecord({ ntimers: 5, timers: [{ id: 0, clock: 1, notify: 0, signo: 10, intervalNs: 0n, valueNs: 0n }] }));
    await assert.rejects(parseImage(file), (e: unknown) => {
      assert.ok(e instanceof ImageError);
      assert.equal(e.offset, timersOff);
      assert.match(e.message, /TIMERS record holds 5 timers of 48 bytes but its payload is 104 bytes/);
      return true;
    });
  });
});
