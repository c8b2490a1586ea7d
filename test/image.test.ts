// Parser tests on images crafted by src/image/writer.ts (no C core needed).
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import { crc32c } from "@node-rs/crc32";
import { FILE_HEADER_SIZE, PAGE_SIZE, RecordType } from "../src/image/format.js";
import { ImageError, parseImage } from "../src/image/parser.js";
import { summarizeImage } from "../src/image/summary.js";
import { buildImage, cwdRecord, pagesRecord, procRecord, recordBytes, sampleImage, threadRecord, vmaRecord, fileHeader } from "../src/image/writer.js";

const dir = mkdtempSync(join(tmpdir(), "tg-img-"));
after(() => rmSync(dir, { recursive: true, force: true }));
let n = 0;
function put(buf: Buffer): string {
  const f = join(dir, `img${n++}.img`);
  writeFileSync(f, buf);
  return f;
}

/** Offsets of every record header in an image (walks the valid structure). */
function recordOffsets(buf: Buffer): { type: number; off: number }[] {
  const out = [];
  let off = FILE_HEADER_SIZE;
  while (off < buf.length) {
    const type = buf.readUInt32LE(off);
    const len = Number(buf.readBigUInt64LE(off + 8));
    out.push({ type, off });
    off += 32 + ((len + 7) & ~7);
  }
  return out;
}

async function rejects(file: string, offset: number, reason: RegExp): Promise<ImageError> {
  try {
    await parseImage(file);
  } catch (e) {
    assert.ok(e instanceof ImageError, `expected ImageError, got ${String(e)}`);
    assert.equal(e.file, file);
    assert.equal(e.offset, offset, `offset: ${e.message}`);
    assert.match(e.reason, reason);
    assert.ok(e.message.includes(file), "message names the file");
    assert.ok(e.message.includes(`offset ${offset}`), "message names the offset");
    return e;
  }
  assert.fail(`${file} parsed without error`);
}

describe("image parser", () => {
  test("crc32c is Castagnoli with the check value of docs/format.md", () => {
    assert.equal(crc32c(Buffer.from("123456789")), 0xe3069283);
  });

  test("parses a valid image", async () => {
    const f = put(sampleImage({ npages: 600 }));
    const img = await parseImage(f);
    assert.equal(img.header.version, 1);
    assert.equal(img.proc.pid, 2);
    assert.equal(img.cwd, "/tmp");
    assert.equal(img.vmas.length, 2);
    assert.equal(img.threads.length, 1);
    assert.equal(img.threads[0]!.comm, "app");
    assert.equal(img.fds.length, 2);
    assert.equal(img.fds[1]!.path, "/tmp/log");
    assert.equal(img.fds[1]!.pos, 42n);
    assert.equal(img.pagesTotal, 600);
    assert.deepEqual(img.extents.map((e) => e.npages), [256, 256, 88]);
    const s = await summarizeImage(f);
    assert.equal(s.threads[0]!.rip, "0x401000");
    assert.equal(s.vmas[1]!.pagesStored, 600);
  });

  test("page data offsets point at the pages", async () => {
    const buf = sampleImage({ npages: 3, fill: (i) => 0x10 + i });
    const img = await parseImage(put(buf));
    img.extents.forEach((e) => assert.equal(buf[e.dataOffset + PAGE_SIZE * 2], 0x12));
  });

  test("streams with a chunk smaller than a record", async () => {
    const img = await parseImage(put(sampleImage({ npages: 300 })), { chunkSize: 5000 });
    assert.equal(img.pagesTotal, 300);
  });

  test("truncated file: every cut is rejected with the failing record's offset", async () => {
    const buf = sampleImage({ npages: 4 });
    const recs = recordOffsets(buf);
    for (const cut of [10, 64, 70, 200, buf.length - 30, buf.length - 1]) {
      const f = put(buf.subarray(0, cut));
      if (cut < 64) {
        await rejects(f, 0, /truncated file header/);
        continue;
      }
      const rec = [...recs].reverse().find((r) => r.off <= cut)!;
      const expected = rec.off === cut ? cut : rec.off;
      await rejects(f, expected, rec.off === cut ? /missing END|truncated record header/ : /truncated record/);
    }
  });

  test("truncated in the middle of a PAGES record names that record", async () => {
    const buf = sampleImage({ npages: 512 });
    const pages = recordOffsets(buf).filter((r) => r.type === RecordType.PAGES);
    const second = pages[1]!.off;
    const e = await rejects(put(buf.subarray(0, second + 32 + 1000)), second, /truncated record PAGES/);
    assert.match(e.message, /truncated record PAGES/);
  });

  test("bit flip in page data: payload CRC mismatch in record PAGES at its offset", async () => {
    const buf = sampleImage({ npages: 300 });
    const second = recordOffsets(buf).filter((r) => r.type === RecordType.PAGES)[1]!.off;
    buf[second + 32 + 16 + 5000]! ^= 0x04;
    const e = await rejects(put(buf), second, /payload CRC mismatch in record PAGES/);
    assert.match(e.message, /payload CRC mismatch in record PAGES .* at offset \d+ \(0x[0-9a-f]+\)/);
  });

  test("bit flip in a metadata payload, a record header and the file header", async () => {
    const base = sampleImage();
    const recs = recordOffsets(base);
    const thread = recs.find((r) => r.type === RecordType.THREAD)!.off;
    let buf = Buffer.from(base);
    buf[thread + 32 + 80]! ^= 1;
    await rejects(put(buf), thread, /payload CRC mismatch in record THREAD/);
    buf = Buffer.from(base);
    buf[thread + 8]! ^= 0x80;
    await rejects(put(buf), thread, /record header CRC mismatch/);
    buf = Buffer.from(base);
    buf[24]! ^= 1;
    await rejects(put(buf), 0, /file header CRC mismatch/);
  });

  test("bad magic, version, unknown record type, data after END, missing END", async () => {
    let buf = sampleImage();
    buf.write("NOTANIMG", 0, "latin1");
    await rejects(put(buf), 0, /bad magic/);

    buf = sampleImage();
    buf.writeUInt32LE(2, 8);
    await rejects(put(buf), 8, /unsupported image version 2/);

    const weird = buildImage([procRecord(), { type: 99, payload: Buffer.alloc(8) }]);
    await rejects(put(weird), FILE_HEADER_SIZE + 32 + 680, /unknown record type 99/);

    const good = sampleImage();
    await rejects(put(Buffer.concat([good, Buffer.alloc(64)])), good.length, /data after END/);

    const noEnd = Buffer.concat([fileHeader(), recordBytes(procRecord()), recordBytes(cwdRecord("/"))]);
    await rejects(put(noEnd), noEnd.length, /missing END/);

    const padded = sampleImage();
    const cwd = recordOffsets(padded).find((r) => r.type === RecordType.CWD)!.off;
    padded[cwd + 32 + 5]! = 0x55; // CWD "/tmp" is 4 bytes, then 4 bytes of padding
    await rejects(put(padded), cwd, /non-zero padding after record CWD/);
  });

  test("structural rules: PROC first, payload minimum, pages inside one VMA", async () => {
    await rejects(put(buildImage([cwdRecord("/"), procRecord()])), FILE_HEADER_SIZE, /first record is CWD, expected PROC/);
    const shortThread = { type: RecordType.THREAD, payload: Buffer.alloc(50) };
    const off = FILE_HEADER_SIZE + 32 + 680;
    await rejects(put(buildImage([procRecord(), shortThread])), off, /payload too short for record THREAD/);
    const stray = buildImage([procRecord(), vmaRecord({ start: 0x10000n, end: 0x11000n }), threadRecord({ tid: 2 }), pagesRecord(0x20000n, Buffer.alloc(PAGE_SIZE, 1))]);
    const pagesOff = recordOffsets(stray).find((r) => r.type === RecordType.PAGES)!.off;
    await rejects(put(stray), pagesOff, /not inside one VMA/);
  });

  test("TRACKING and PAGES_CLEAR records (written by the agent for dirty tracking / incremental images)", async () => {
    const tracking = Buffer.alloc(32);
    tracking.writeUInt32LE(1, 0);
    tracking.writeBigUInt64LE(100n, 8);
    tracking.writeBigUInt64LE(7n, 16);
    const clear = Buffer.alloc(16);
    clear.writeBigUInt64LE(0x10000n, 0);
    clear.writeBigUInt64LE(2n, 8);
    const img = await parseImage(
      put(
        buildImage([
          procRecord(),
          vmaRecord({ start: 0x10000n, end: 0x14000n }),
          threadRecord({ tid: 2 }),
          { type: RecordType.TRACKING, payload: tracking },
          { type: RecordType.PAGES_CLEAR, payload: clear },
          pagesRecord(0x10000n, Buffer.alloc(PAGE_SIZE, 1)),
          { type: RecordType.PAGES_CLEAR, payload: clear },
        ]),
      ),
    );
    assert.equal(img.tracking?.pagesWritten, 7n);
    assert.deepEqual(img.clears, [{ addr: 0x10000n, npages: 2 }, { addr: 0x10000n, npages: 2 }]);
    assert.equal(img.pagesTotal, 1);
  });

  test("Unix socket pairs: FD kind 9 with its UnixSock, SOCKET_DATA with datagram framing checked", async () => {
    const unixFd = (fd: number, ino: bigint, peer: bigint, extraLen = 40): { type: number; payload: Buffer } => {
      const b = Buffer.alloc(80 + extraLen);
      b.writeUInt32LE(fd, 0);
      b.writeUInt32LE(9, 4);
      b.writeBigUInt64LE(peer, 64);
      b.writeUInt32LE(extraLen, 72);
      if (extraLen >= 40) {
        b.writeBigUInt64LE(ino, 80);
        b.writeBigUInt64LE(peer, 88);
        b.writeUInt32LE(2, 96); // SOCK_DGRAM
        b.writeUInt32LE(1, 100); // receiving side shut down
        b.writeInt32LE(-1, 112);
      }
      return { type: RecordType.FD, payload: b };
    };
    // two datagrams: "abc" and an empty one
    const data = (nmsg: number, body: Buffer): { type: number; payload: Buffer } => {
      const h = Buffer.alloc(16);
      h.writeBigUInt64LE(11n, 0);
      h.writeUInt32LE(2, 8);
      h.writeUInt32LE(nmsg, 12);
      return { type: RecordType.SOCKET_DATA, payload: Buffer.concat([h, body]) };
    };
    const body = Buffer.from([3, 0, 0, 0, 0x61, 0x62, 0x63, 0, 0, 0, 0]);
    const recs = (sd: { type: number; payload: Buffer }, a = unixFd(3, 11n, 12n)) => [procRecord(), vmaRecord({ start: 0x10000n, end: 0x11000n }), threadRecord({ tid: 2 }), a, unixFd(4, 12n, 11n), sd];
    const file = put(buildImage(recs(data(2, body))));
    const img = await parseImage(file);
    assert.deepEqual(img.fds.map((f) => [f.fd, f.kind, f.unix?.ino, f.unix?.peerIno, f.unix?.shutdown]), [[3, 9, 11n, 12n, 1], [4, 9, 12n, 11n, 1]]);
    assert.deepEqual(img.sockets, [{ ino: 11n, type: 2, messages: 2, bytes: 3 }]);
    const sum = await summarizeImage(file);
    assert.equal(sum.fds[0]!.path, "socket:[11] datagram, peer fd 4, shut down for reading");
    assert.deepEqual(sum.sockets, [{ inode: "11", type: "datagram", bytes: 3, messages: 2 }]);
    // framing that does not add up, a datagram running past the payload, a short UnixSock
    const bad1 = buildImage(recs(data(3, body)));
    await rejects(put(bad1), recordOffsets(bad1)[5]!.off, /SOCKET_DATA header says 3 datagrams, the payload holds 2/);
    const bad2 = buildImage(recs(data(1, Buffer.from([9, 0, 0, 0, 1]))));
    await rejects(put(bad2), recordOffsets(bad2)[5]!.off, /datagram 0 \(9 bytes\) runs past the payload/);
    const bad3 = buildImage(recs(data(2, body), unixFd(3, 11n, 12n, 8)));
    await rejects(put(bad3), recordOffsets(bad3)[3]!.off, /Unix socket FD extra is 8 bytes, need 40/);
  });

  test("fuzz: random bit flips, byte stores and cuts give a clean ImageError (never a crash)", async () => {
    const base = sampleImage({ npages: 40 });
    let seed = 12345;
    const rnd = (n: number): number => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return seed % n;
    };
    let rejected = 0;
    for (let i = 0; i < 600; i++) {
      const buf = Buffer.from(base);
      const kind = rnd(3);
      let img = buf;
      if (kind === 0) buf[rnd(buf.length)]! ^= 1 << rnd(8);
      else if (kind === 1) buf[rnd(buf.length)] = rnd(256);
      else img = buf.subarray(0, rnd(buf.length));
      const f = join(dir, "fuzz.img");
      writeFileSync(f, img);
      try {
        await parseImage(f);
        assert.ok(img.equals(base) || kind === 1, "only an unchanged image (or a same-value store) parses");
      } catch (e) {
        assert.ok(e instanceof ImageError, `mutation ${i} (kind ${kind}) threw ${String(e)}`);
        rejected++;
      }
    }
    assert.ok(rejected > 500);
  });

  test("a file that does not exist is a clear error", async () => {
    await assert.rejects(parseImage(join(dir, "nope.img")), /cannot open checkpoint image .*nope\.img: the file does not exist/);
  });
});
