// Where tardigrade keeps its state: $TARDIGRADE_HOME, else /var/lib/tardigrade
// for root and ~/.local/state/tardigrade for everyone else.
import { homedir } from "node:os";
import { join, resolve } from "node:path";

export function tardigradeHome(env: NodeJS.ProcessEnv = process.env): string {
  if (env.TARDIGRADE_HOME) return resolve(env.TARDIGRADE_HOME);
  if (process.getuid?.() === 0) return "/var/lib/tardigrade";
  return join(env.XDG_STATE_HOME ?? join(homedir(), ".local", "state"), "tardigrade");
}
