// Test-only pauses at named points of the daemon, to make races reproducible:
// TG_TEST_DELAY_AT=<point>:<ms> sleeps there (at most 60 s). No effect otherwise.
import { sleep } from "./procs.js";

export async function testDelay(point: string): Promise<void> {
  const spec = process.env.TG_TEST_DELAY_AT;
  if (!spec) return;
  const [name, ms] = spec.split(":");
  if (name === point) await sleep(Math.min(60_000, Number(ms) || 0));
}
