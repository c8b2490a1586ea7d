// The store contract. The local directory store implements it today; the next
// issue adds incremental checkpoints (kind "incremental", parent id, page chunks
// in pack files) and other backends behind the same interface.
import { TgError } from "../errors.js";

export type CheckpointKind = "full" | "incremental";

export interface ImageEntry {
  /** File name inside the checkpoint (e.g. "pid2.img"). */
  file: string;
  /** PID (in the app's namespace) of the process this image describes. */
  pid: number;
  bytes: number;
  pages: number;
}

export interface Manifest {
  format: 1;
  id: string;
  app: string;
  seq: number;
  kind: CheckpointKind;
  parent: string | null;
  createdAt: string;
  bytes: number;
  pages: number;
  threads: number;
  downtimeNs: number;
  totalNs: number;
  images: ImageEntry[];
}

/** What the caller knows about a capture when it hands the staged files over. */
export interface PutInfo {
  downtimeNs: number;
  totalNs: number;
  threads?: number;
  kind?: CheckpointKind;
  parent?: string | null;
  /** Verification progress (bytes of images checked so far, total bytes). */
  onProgress?: (done: number, total: number) => void;
}

/** A directory the agent writes a new checkpoint's images into, before commit. */
export interface Staging {
  readonly app: string;
  readonly dir: string;
  /** Absolute path for the image of process `pid`. */
  imagePath(pid: number): string;
}

/** An image made available as a plain file for the restorer; release() when done. */
export interface OpenedImage {
  path: string;
  release(): Promise<void>;
}

export interface Store {
  /** Removes half-written checkpoints left by a crash. Call once at daemon start. */
  recover(): Promise<string[]>;
  stage(app: string): Promise<Staging>;
  /** Verifies the staged images and commits them atomically as the app's next checkpoint. */
  put(staging: Staging, info: PutInfo): Promise<Manifest>;
  discard(staging: Staging): Promise<void>;
  /** Committed checkpoints, oldest first (by app, then seq). */
  list(app?: string): Promise<Manifest[]>;
  /** Throws TgError code "unknown-checkpoint" if absent. */
  get(id: string): Promise<Manifest>;
  openImage(id: string, pid?: number): Promise<OpenedImage>;
}

const APP_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

export function validAppName(name: string): boolean {
  return APP_RE.test(name);
}

/**
 * A process tree's checkpoint is one checkpoint per process at the same seq: the app's main
 * process under the app's name (its stats.extra.tree lists the tree), every other process under
 * `<app>~<pid>`, a name no app can have ('~' is not allowed in app names).
 */
const MEMBER_RE = /^([A-Za-z0-9][A-Za-z0-9._-]{0,63})~([1-9][0-9]{0,9}|files)$/;

export function memberApp(app: string, pid: number): string {
  return `${app}~${pid}`;
}

/**
 * The app and pid of a member name (`calc~7`), or null for an app's own name. The app's files
 * images (`calc~files`, src/daemon/files-flow.ts) are members too, with pid 0: kept while the
 * checkpoint of their seq is, hidden from `ls`.
 */
export function parseMemberApp(name: string): { app: string; pid: number } | null {
  const m = MEMBER_RE.exec(name);
  return m ? { app: m[1]!, pid: m[2] === "files" ? 0 : Number(m[2]) } : null;
}

/** A name the store keeps checkpoints under: an app's, or a member process's of an app's tree. */
export function validStoreAppName(name: string): boolean {
  return APP_RE.test(name) || MEMBER_RE.test(name);
}

export function checkpointId(app: string, seq: number): string {
  return `${app}@${seq}`;
}

export function parseCheckpointId(id: string): { app: string; seq: number } | null {
  const m = /^([A-Za-z0-9][A-Za-z0-9._-]{0,63}(?:~(?:[1-9][0-9]{0,9}|files))?)@([1-9][0-9]{0,15})$/.exec(id);
  return m ? { app: m[1]!, seq: Number(m[2]) } : null;
}

export function unknownCheckpoint(id: string, why = "no such checkpoint in the store"): TgError {
  return new TgError(`unknown checkpoint ${id}`, why, "List the checkpoints with `tardigrade ls`", "unknown-checkpoint");
}
