// Small shared helpers of the content-addressed store: a mutex, page-number math, errors.
import { TgError } from "../../errors.js";
import { PAGE_SIZE } from "../../image/format.js";

export const HASH_LEN = 32;
/** A page location hint in a page table: u32 block id (0 = no hint), u32 index in the block. */
export const LOC_LEN = 8;

export function putLoc(locs: Buffer, i: number, block: number, idx: number): void {
  locs.writeUInt32LE(block <= 0xffffffff ? block : 0, i * LOC_LEN);
  locs.writeUInt32LE(idx, i * LOC_LEN + 4);
}
/** Marks a zero page in a page table (SHA-256 never yields 32 zero bytes in practice). */
export const ZERO_HASH = Buffer.alloc(HASH_LEN);
export const ZERO_PAGE = Buffer.alloc(PAGE_SIZE);
export const PAGE = PAGE_SIZE;

/** Address → page number (addresses are page aligned; page numbers stay below 2^52, safe as JS numbers). */
export function pageOf(addr: bigint): number {
  return Number(addr / BigInt(PAGE_SIZE));
}

export function addrOf(page: number): bigint {
  return BigInt(page) * BigInt(PAGE_SIZE);
}

export function hex(addr: bigint | number): string {
  return `0x${addr.toString(16)}`;
}

/** Serialises async sections (one writer at a time: ingest commit, merge, gc). */
export { Mutex } from "../mutex.js";

/** The store's data is inconsistent (a pack shorter than the index says, a block CRC mismatch...). */
export function storeCorrupt(what: string, why: string): TgError {
  return new TgError(
    what,
    why,
    "The store's data is damaged (disk error or files changed by hand); the damaged block is now set aside (the next checkpoint stores its pages again). Run `tardigrade verify` to list the checkpoints it affects; restore another checkpoint or from a mirror",
    "store-corrupt",
  );
}

/**
 * Test hook for the crash tests: when TG_CAS_CRASH_AT names this point, the process kills
 * itself with SIGKILL right here (as a power cut or kill -9 would). No effect otherwise.
 */
export function crashPoint(name: string): void {
  if (process.env.TG_CAS_CRASH_AT === name) process.kill(process.pid, "SIGKILL");
}
