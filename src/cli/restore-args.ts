// The common forms of `tardigrade restore NAME [options]`, recognised without commander (no
// imports: main.ts reads this before it loads anything else). Anything else — --help, --from
// (a mirror token to read), an option it does not know, a missing or second name, `--` — returns
// null and goes through the full program (program.ts), which parses, explains and refuses as for
// every command. Why: the full program loads the store's, the image parser's and the agent's
// modules (native addons among them), ~1 s of a restore's time to running on a busy 2-vCPU host
// (docs/store.md, "Data path (issue 15), fifth step").
import type { RestoreCliOptions } from "./restore-run.js";

export function fastRestoreArgs(argv: string[]): { name: string; opts: RestoreCliOptions } | null {
  if (argv[2] !== "restore") return null;
  const opts: RestoreCliOptions = {};
  let name: string | undefined;
  const rest = argv.slice(3);
  for (let i = 0; i < rest.length; i++) {
    const a = rest[i]!;
    if (a === "--replace") opts.replace = true;
    else if (a === "--allow-file-changes") opts.allowFileChanges = true;
    else if (a === "--allow-closed-tcp") opts.allowClosedTcp = true;
    else if (a === "--lazy") opts.lazy = true;
    else if (a === "--json") opts.json = true;
    else if (a === "--checkpoint" || a === "--keep-file-changes" || a.startsWith("--checkpoint=") || a.startsWith("--keep-file-changes=")) {
      const eq = a.indexOf("=");
      const value = eq >= 0 ? a.slice(eq + 1) : rest[++i];
      if (value === undefined || (eq < 0 && value.startsWith("-"))) return null;
      if (a.startsWith("--checkpoint")) {
        if (opts.checkpoint !== undefined) return null;
        opts.checkpoint = value;
      } else opts.keepFileChanges = [...(opts.keepFileChanges ?? []), value];
    } else if (a.startsWith("-") || name !== undefined) return null;
    else name = a;
  }
  return name === undefined ? null : { name, opts };
}
