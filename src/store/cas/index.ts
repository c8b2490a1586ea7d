// Content-addressed checkpoint store: public API.
export { CasStore } from "./store.js";
export { shouldMerge, DEFAULT_MERGE_POLICY } from "./merge.js";
export { retention } from "./gc.js";
export type { RepairReport } from "./pack.js";
export type { DamageEvent } from "./damage.js";
export type { VerifyReport, VerifyAffected, VerifyDamagedBlock } from "./verify.js";
export type * from "./types.js";
export { CasStoreAdapter, toManifest } from "./adapter.js";
export { parseMirrorManifest, decodeTable, encodeTable, MIRROR_MANIFEST_FORMAT } from "./mirror.js";
export type { MirrorManifest, MirrorTable, MirrorBlock, MirrorExport, ImportReport } from "./mirror.js";
