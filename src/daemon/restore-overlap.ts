// A restore's checks and its plan at the same time (issue 15): the file check is a child process
// (`tardigrade-restore --check-files`, file-check.ts) and the plan is composed on the daemon's
// main thread (cas-flow.ts restoreInput), so the plan is made while the child runs instead of
// after it. Nothing is killed, rolled back or started before both checks passed; a failed check
// releases the plan (its packs' hold, its file). Errors come in the order the checks ran before:
// the mapped files' identity, then the file check, then the plan.
import type { RestoreInput } from "./cas-flow.js";

export async function checkWhilePlanning(c: { mappedFiles: () => Promise<void>; fileCheck: () => Promise<void>; plan: (() => Promise<RestoreInput>)[] | null }): Promise<RestoreInput[] | null> {
  const files = c.fileCheck().then(
    () => null,
    (e: unknown) => ({ e }),
  );
  let first: { e: unknown } | null = null;
  let planFailed: { e: unknown } | null = null;
  const inputs: RestoreInput[] = [];
  try {
    await c.mappedFiles();
  } catch (e) {
    first = { e };
  }
  // (a tree: every process's plan, the main process's first)
  if (!first && c.plan)
    try {
      for (const p of c.plan) inputs.push(await p());
    } catch (e) {
      planFailed = { e };
    }
  const bad = first ?? (await files) ?? planFailed;
  if (bad) {
    for (const i of inputs) await i.release();
    throw bad.e;
  }
  return c.plan ? inputs.map(releasedOnce) : null;
}

/** The same input, whose release() does its work once (the restore's error paths and its success path may both call it). */
export function releasedOnce(i: RestoreInput): RestoreInput {
  let done: Promise<void> | null = null;
  return { ...i, release: () => (done ??= i.release()) };
}
