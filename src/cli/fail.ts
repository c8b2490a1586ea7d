// How the CLI ends on an error, for the full program (program.ts) and the restore path (main.ts, restore-args.ts, restore-run.ts) alike.
import { TgError } from "../errors.js";

export function fail(e: unknown): never {
  if (e instanceof TgError) process.stderr.write(`tardigrade: ${e.message}\n`);
  // Never a raw stack trace: the message in the usual form (the stack with TARDIGRADE_DEBUG=1).
  else {
    const detail = e instanceof Error ? (process.env.TARDIGRADE_DEBUG ? (e.stack ?? e.message) : e.message) : String(e);
    process.stderr.write(`tardigrade: unexpected error: ${detail.replace(/\.?\s*$/, "")}. Run again with TARDIGRADE_DEBUG=1 for details and report it\n`);
  }
  process.exit(1);
}

/** `tardigrade logs calc | head`: a closed pipe is not an error. */
export function quietEpipe(): void {
  process.stdout.on("error", (e: NodeJS.ErrnoException) => {
    if (e.code === "EPIPE") process.exit(0);
    throw e;
  });
}
