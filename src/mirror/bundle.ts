// One cut, one mirror checkpoint. A checkpoint of a process tree is a checkpoint per process at
// the same seq (the main process's under the app's name, every other one under `APP~PID`), and
// an app's data files are one more (`APP~files`, src/daemon/files-flow.ts). The mirror keeps one
// strictly increasing seq per source, so these travel together as ONE mirror checkpoint: the
// object's id and seq are the main checkpoint's (`app.seq`), its chunks are the union of every
// part's table parts and blocks, and its manifest is a bundle listing every part's own manifest
// (members first, the main process's last). A checkpoint with no members travels with its own
// manifest exactly as before, so mirrors holding older checkpoints stay readable.
//
// On the way back (pullFromMirror) every part is imported on its own chain, members first and
// the main last: a main checkpoint in the store means its members are there too.
import { parseMirrorManifest, type MirrorManifest } from "../store/cas/mirror.js";
import { TgError } from "../errors.js";
import { parseCheckpointId, parseMemberApp } from "../store/types.js";

export const BUNDLE_FORMAT = "tardigrade-mirror-bundle";
export const BUNDLE_VERSION = 1;

interface BundleFile {
  format: typeof BUNDLE_FORMAT;
  version: number;
  /** The main checkpoint's store id (APP@SEQ). */
  id: string;
  /** Every part's manifest, members first, the main checkpoint's last. */
  parts: MirrorManifest[];
}

/** What one mirror checkpoint holds: the main checkpoint and the members committed with it. */
export interface MirrorObject {
  main: MirrorManifest;
  /** Other processes of the tree and the files image, same seq (empty for a lone process). */
  members: MirrorManifest[];
}

function badBundle(id: string, why: string): TgError {
  return new TgError(`cannot import mirrored checkpoint ${id}`, why, "The mirror sent inconsistent data; pull again or check the mirror's store", "bad-mirror-data");
}

/** The manifest bytes of a mirror checkpoint made of `main` and `members`. */
export function encodeMirrorObject(main: MirrorManifest, members: readonly MirrorManifest[]): Buffer {
  if (members.length === 0) throw new Error("internal error: a bundle without members (send the main manifest as it is)");
  const f: BundleFile = { format: BUNDLE_FORMAT, version: BUNDLE_VERSION, id: main.id, parts: [...members, main] };
  return Buffer.from(JSON.stringify(f));
}

/**
 * Parses a mirror checkpoint's manifest: a lone checkpoint's manifest, or a bundle. Every part
 * is checked like a lone manifest; members must be of the main checkpoint's app, at its seq.
 */
export function parseMirrorObject(bytes: Buffer): MirrorObject {
  let f: Partial<BundleFile> & { format?: unknown };
  try {
    f = JSON.parse(bytes.toString("utf8")) as Partial<BundleFile>;
  } catch (e) {
    throw badBundle("?", `manifest is not JSON: ${(e as Error).message}`);
  }
  if (f?.format !== BUNDLE_FORMAT) return { main: parseMirrorManifest(bytes), members: [] };
  const id = typeof f.id === "string" ? f.id : "?";
  if (f.version !== BUNDLE_VERSION) throw badBundle(id, `bundle version ${String(f.version)}, this tardigrade knows ${BUNDLE_VERSION}`);
  if (!Array.isArray(f.parts) || f.parts.length < 2) throw badBundle(id, "a bundle needs a main checkpoint and at least one member");
  const parts = f.parts.map((p, i) => parseMirrorManifest(Buffer.from(JSON.stringify(p)), i < f.parts!.length - 1));
  const main = parts[parts.length - 1] as MirrorManifest;
  if (main.id !== id) throw badBundle(id, `the bundle's last part is ${main.id}, not its main checkpoint`);
  const members = parts.slice(0, -1);
  const seen = new Set<string>();
  for (const m of members) {
    const owner = parseMemberApp(m.app);
    if (!owner || owner.app !== main.app) throw badBundle(id, `part ${m.id} is not a member of app ${main.app}`);
    if (m.seq !== main.seq) throw badBundle(id, `part ${m.id} is not at the main checkpoint's seq ${main.seq}`);
    if (seen.has(m.id)) throw badBundle(id, `part ${m.id} appears twice`);
    seen.add(m.id);
  }
  return { main, members };
}

/** The mirror id of the object holding store checkpoint `storeId` (a member's is its main's: `app.seq`). */
export function objectIdOf(storeId: string): string {
  const p = parseCheckpointId(storeId);
  if (!p) throw new Error(`${JSON.stringify(storeId)} is not a checkpoint id (APP@SEQ)`);
  return `${parseMemberApp(p.app)?.app ?? p.app}.${p.seq}`;
}
