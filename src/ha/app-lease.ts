// An app's lease, as its daemon keeps it (docs/ha.md): `lease.json` in the app's directory
// ({epoch, ttlMs}: the epoch it holds, renewed with after a daemon restart; written when the
// mirror grants one) and `fenced.json` (why the app was stopped for losing the lease: it
// stays stopped, and `status` says so, until a takeover restores it here under a new epoch).
// Separate files, not fields of app.json: the fencing is written from an event, while a
// checkpoint may be rewriting the app record.
import { readFileSync } from "node:fs";
import { rm } from "node:fs/promises";
import { join } from "node:path";
import { writeFileAtomic } from "../store/fsutil.js";
import type { ServiceAddress } from "./address.js";

/** Lease length (and standby failover timeout) when none is given. */
export const DEFAULT_LEASE_MS = 3_000;

export interface AppLease {
  /** The epoch this host holds (absent before the first grant). */
  epoch?: number;
  ttlMs: number;
  /** `HOST:PORT` of each standby to send heartbeats to directly (run --standby, repeatable; one string in files of an older daemon). */
  standby?: string | string[];
  /** The service address this host holds while it holds the lease (--address, --dev). */
  address?: ServiceAddress;
}

export interface FencedRecord {
  holder: string;
  epoch: number;
  reason: string;
  at: string;
}

function readJson<T>(path: string): T | null {
  try {
    return JSON.parse(readFileSync(path, "utf8")) as T;
  } catch {
    return null;
  }
}

/** The standbys a lease beats to (none, one or more). */
export function standbysOf(l: Pick<AppLease, "standby">): string[] {
  return l.standby === undefined ? [] : Array.isArray(l.standby) ? l.standby : [l.standby];
}

export function readAppLease(appDir: string): AppLease | null {
  return readJson<AppLease>(join(appDir, "lease.json"));
}

export async function writeAppLease(appDir: string, l: AppLease): Promise<void> {
  await writeFileAtomic(join(appDir, "lease.json"), JSON.stringify(l) + "\n");
}

export function readFenced(appDir: string): FencedRecord | null {
  return readJson<FencedRecord>(join(appDir, "fenced.json"));
}

export async function writeFenced(appDir: string, f: FencedRecord): Promise<void> {
  await writeFileAtomic(join(appDir, "fenced.json"), JSON.stringify(f) + "\n");
}

export async function clearFenced(appDir: string): Promise<void> {
  await rm(join(appDir, "fenced.json"), { force: true });
}

/** `fenced (epoch N held by H)`, what status and ls print. */
export function describeFenced(f: Pick<FencedRecord, "epoch" | "holder">): string {
  return f.holder === "?" ? `fenced (lease epoch ${f.epoch} expired unrenewed)` : `fenced (epoch ${f.epoch} held by ${f.holder})`;
}
