// Checks of command-line values that the CLI does before it talks to the daemon.
import { TgError } from "../errors.js";
import { validAppName } from "../store/types.js";

/** A number of seconds (e.g. "10", "2.5"), ≥ 0 and at most a day; anything else is refused. */
export function parseSeconds(option: string, text: string): number {
  const t = text.trim();
  const n = /^\d+(\.\d+)?$/.test(t) ? Number(t) : NaN;
  if (!Number.isFinite(n) || n > 86_400)
    throw new TgError(`invalid ${option} ${JSON.stringify(text)}`, "it must be a number of seconds between 0 and 86400", `Pass e.g. ${option} 10`, "bad-request");
  return n;
}

/** An app name as the daemon accepts it (no path separators, no "..": it names a directory). */
export function checkAppName(name: string): string {
  if (!validAppName(name))
    throw new TgError(`invalid app name ${JSON.stringify(name)}`, "names are 1-64 characters of letters, digits, '.', '_' and '-', starting with a letter or digit", "See the apps with `tardigrade status`", "bad-request");
  return name;
}
