// Public API of the mirror, for the daemon and the CLI.
export { MirrorClient, type MirrorClientOptions, type AckLevel, type MirrorState, type MirrorStateEvent } from "./client.js";
export { MirrorServer, type MirrorServerOptions, type MirrorMetrics, type ListedCheckpoint } from "./server.js";
export { AdminConnection, withAdmin, type AdminOptions } from "./admin.js";
export { pullCheckpoint, verifyPulled, type PullResult } from "./pull.js";
export { registerMirrorCommands, readToken } from "./cli.js";
export { SyntheticSource, type SyntheticOptions } from "./synthetic.js";
export { type MirrorCheckpoint, type CheckpointHeader, sha256hex } from "./objects.js";
export { TokenTable } from "./tokens.js";
export { parseMirrorUrl } from "./address.js";
export {
  MirrorShipper,
  pullFromMirror,
  readShipperState,
  toMirrorId,
  type MirrorShipperOptions,
  type ShipRecord,
  type ShipState,
  type ShipperStateEvent,
  type PullFromMirrorResult,
} from "./bridge.js";
export { ChunkReadError } from "./client.js";
