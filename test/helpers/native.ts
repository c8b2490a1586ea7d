// The end-to-end tests need the C core (native/build) and the C fixtures
// (test/fixtures/build). Missing pieces make those tests FAIL with a clear
// message, never pass silently.
import { execFileSync } from "node:child_process";
import { accessSync, constants, existsSync } from "node:fs";
import { join } from "node:path";
import { ROOT } from "./home.js";

export const NATIVE = ["libtardigrade-agent.so", "tardigrade-init", "tardigrade-restore"];

export function missingNative(): string[] {
  return NATIVE.filter((n) => {
    try {
      accessSync(join(process.env.TARDIGRADE_NATIVE_DIR || join(ROOT, "native", "build"), n), n.endsWith(".so") ? constants.R_OK : constants.X_OK);
      return false;
    } catch {
      return true;
    }
  });
}

/** Throws (failing the test) unless the C core is built. */
export function requireNative(): void {
  const missing = missingNative();
  if (missing.length)
    throw new Error(`the C core is not built: missing ${missing.map((m) => `native/build/${m}`).join(", ")}. Run \`npm install\` (or \`make -C native\`) first; this end-to-end test cannot run without it`);
}

let fixturesBuilt: string | null = null;

/** Builds test/fixtures once (their Makefile) and returns the build dir. */
export function fixtures(): string {
  if (fixturesBuilt) return fixturesBuilt;
  const dir = join(ROOT, "test", "fixtures");
  if (!existsSync(join(dir, "Makefile"))) throw new Error(`test fixtures missing: ${dir}/Makefile does not exist`);
  execFileSync("make", ["-s", "-C", dir], { stdio: ["ignore", "inherit", "inherit"] });
  fixturesBuilt = join(dir, "build");
  return fixturesBuilt;
}

export function fixture(name: string): string {
  return join(fixtures(), name);
}

export function fixtureScript(name: string): string {
  return join(ROOT, "test", "fixtures", name);
}
