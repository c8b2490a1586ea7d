// Locates the C core's build outputs (native/build/<name>) from the package root.
import { accessSync, constants } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { existsSync } from "node:fs";
import { TgError } from "../errors.js";

export type NativeName = "libtardigrade-agent.so" | "tardigrade-init" | "tardigrade-restore" | "libtardigrade-hash.so";

/** The package root: the nearest ancestor of this module holding package.json. */
export function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(join(dir, "package.json")) && existsSync(join(dir, "native"))) return dir;
    const up = dirname(dir);
    if (up === dir) throw new Error(`cannot find the tardigrade package root above ${fileURLToPath(import.meta.url)}`);
    dir = up;
  }
}

/** Where the C core lives: $TARDIGRADE_NATIVE_DIR (for developers testing another build), else native/build. */
export function nativeDir(): string {
  return process.env.TARDIGRADE_NATIVE_DIR || join(packageRoot(), "native", "build");
}

/** Absolute path of a native artifact; throws a TgError telling how to build it if missing. */
export function nativeBinary(name: NativeName): string {
  const path = join(nativeDir(), name);
  try {
    accessSync(path, name.endsWith(".so") ? constants.R_OK : constants.X_OK);
  } catch {
    throw new TgError(
      `native component ${name} not found`,
      `${path} does not exist or is not ${name.endsWith(".so") ? "readable" : "executable"}`,
      "Run `npm install` (or `make -C native`) in the tardigrade package to build the C core",
    );
  }
  return path;
}
