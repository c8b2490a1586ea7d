// Store integrity for the daemon: `verify` (a full scrub on demand, POST /v1/verify), the
// damage summary behind `ls`'s warning (GET /v1/store/damage), and the daemon log lines
// for damage the store finds (at open, or when a read fails).
import type { Logger } from "pino";
import { TgError } from "../errors.js";
import { CasStoreAdapter } from "../store/cas/adapter.js";
import type { DamageEvent, VerifyReport } from "../store/cas/index.js";
import type { Store } from "../store/types.js";
import { parseCheckpointId, validAppName } from "../store/types.js";

/** What `verify TARGET` checks: one checkpoint (APP@SEQ), one app's, or all. */
export function verifyTarget(target: string | undefined): { app?: string; id?: string } {
  if (target === undefined || target === "") return {};
  if (parseCheckpointId(target)) return { id: target };
  if (validAppName(target)) return { app: target };
  throw new TgError(`cannot verify ${JSON.stringify(target)}`, "not an app name or a checkpoint id (APP@SEQ)", "See `tardigrade ls`", "bad-request");
}

export async function verifyStore(store: Store, target: string | undefined): Promise<VerifyReport> {
  if (!(store instanceof CasStoreAdapter)) throw new TgError("cannot verify the store", "this store keeps no shared data to check", "", "bad-request");
  const t = verifyTarget(target);
  if (t.app !== undefined && store.cas.list(t.app).length === 0)
    throw new TgError(`cannot verify ${t.app}`, "the store has no checkpoint of this app", "See `tardigrade ls`", "unknown-checkpoint");
  return store.cas.verify(t);
}

export interface DamageSummary {
  /** Blocks set aside after failing their checks. */
  badBlocks: number;
  /** Packs found short or missing at open. */
  damagedPacks: string[];
}

export function damageSummary(store: Store): DamageSummary {
  if (!(store instanceof CasStoreAdapter)) return { badBlocks: 0, damagedPacks: [] };
  return store.cas.damageSummary();
}

function logDamage(log: Logger, e: DamageEvent): void {
  log.error({ damage: e }, e.kind === "pack" ? `STORE DAMAGED: ${e.why}; ${e.blocks ?? 0} block(s) set aside; run \`tardigrade verify\` to list the checkpoints affected` : `STORE DAMAGED: block ${e.block} at ${e.pack} offset ${e.offset}: ${e.why}; set aside (${e.pages} page(s)); run \`tardigrade verify\``);
}

/** Logs the damage open() found, and any found later. */
export function watchDamage(store: Store, log: Logger): void {
  if (!(store instanceof CasStoreAdapter)) return;
  for (const e of store.cas.damage) logDamage(log, e);
  store.cas.onDamage = (e) => logDamage(log, e);
}
