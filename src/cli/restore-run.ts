// `tardigrade restore`: the request and what it prints, shared by the full program (program.ts)
// and the restore path that skips it (main.ts, restore-args.ts).
import { resolve } from "node:path";
import { describeLazy } from "../daemon/lazy-restore.js";
import { restore, type RestoreOptions } from "../restore-api.js";
import { bytes, duration, json } from "./format.js";
import { progressLine } from "./progress.js";

const out = (s: string): void => void process.stdout.write(s + "\n");

export interface RestoreCliOptions {
  checkpoint?: string;
  replace?: boolean;
  allowFileChanges?: boolean;
  allowClosedTcp?: boolean;
  /** as given: made absolute here */
  keepFileChanges?: string[];
  from?: RestoreOptions["from"];
  lazy?: boolean;
  json?: boolean;
}

export async function runRestore(name: string, o: RestoreCliOptions): Promise<void> {
  const bar = o.json ? undefined : progressLine();
  const r = await restore(name, { checkpoint: o.checkpoint, replace: o.replace, allowFileChanges: o.allowFileChanges, ...(o.allowClosedTcp ? { allowClosedTcp: true } : {}), keepFileChanges: (o.keepFileChanges ?? []).map((p) => resolve(p)), from: o.from, lazy: o.lazy === true, onProgress: bar && ((e) => bar.update(e)) }).finally(() => bar?.clear());
  if (o.json) return out(json(r));
  const how = `tardigrade-restore ${duration(r.restoreNs)}, image check ${duration(r.verifyNs)}${r.verifyOverlapped ? " alongside" : " before"}`;
  out(`restored ${r.name} from ${r.checkpoint} in ${duration(r.wallNs)} (${how}): pid ${r.pid}, host pid ${r.appHostPid}, ${r.threads} thread(s)`);
  if (r.lazy) out(`  ${describeLazy(r.lazy)} when it answered; \`tardigrade status ${r.name}\` shows the rest`);
  for (const n of r.notes ?? []) out(`  ${n}`);
  if (r.filesSkipped) out(`  files: ${r.filesSkipped}`);
  const f = r.files;
  if (f) {
    out(`  files rolled back to the checkpoint in ${duration(f.ns)}: ${f.rewritten.length + f.recreated.length} rewritten (${bytes(f.bytesWritten)} written${f.bytesCompared ? ` after comparing ${bytes(f.bytesCompared)} in place` : ""}), ${f.unchanged} unchanged, ${f.removed.length} removed`);
    const over = f.rewritten.length + f.recreated.length + f.renamedBack.length + f.removed.length + (f.dirsMade?.length ?? 0) + (f.dirsRemoved?.length ?? 0) + (f.relinked?.length ?? 0);
    if (over) out(`  the checkpoint wins: ${over} path(s) changed since the checkpoint were put back as it had them (below); \`restore --keep-file-changes PATH\` keeps a path as it is`);
    for (const p of f.kept ?? []) out(`    kept as is ${p} (--keep-file-changes; it differs from the checkpoint)`);
    for (const p of f.rewritten) out(`    rewritten  ${p}`);
    for (const p of f.recreated) out(`    recreated  ${p}`);
    for (const p of f.renamedBack) out(`    renamed back  ${p}`);
    for (const p of f.removed) out(`    removed    ${p}`);
    for (const p of f.dirsMade ?? []) out(`    made dir   ${p}`);
    for (const p of f.dirsRemoved ?? []) out(`    removed dir ${p}`);
    for (const p of f.relinked ?? []) out(`    relinked   ${p}`);
    for (const p of f.leftAsIs) out(`    left as is ${p} (first written after the checkpoint, older than it: not in its set)`);
  }
}
