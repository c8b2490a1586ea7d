// A private CA for tgs:// mirrors (issue 11, defect 13): `run --tls-ca FILE` and
// `restore --from tgs://... --tls-ca FILE`. The CLI reads the PEM file and sends its text
// with the request (the daemon may not see the caller's files); the daemon keeps a run's
// CA in the app's directory (mirror-ca.pem, 0600, next to mirror-token) so that the
// shipper uses it again after a daemon restart.
import { existsSync, readFileSync } from "node:fs";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";

const PEM_CERT = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/;

/** Reads a PEM CA bundle; throws with the reason if it is unreadable or holds no certificate. */
export function readCaFile(path: string): string {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (e) {
    throw new Error(`cannot read --tls-ca ${path}: ${(e as Error).message}`);
  }
  checkCaPem(text, `--tls-ca ${path}`);
  return text;
}

/** Throws unless `pem` holds at least one PEM certificate. */
export function checkCaPem(pem: string, what = "the mirror CA"): void {
  if (!PEM_CERT.test(pem)) throw new Error(`${what} holds no PEM certificate (-----BEGIN CERTIFICATE-----)`);
}

export const APP_CA_FILE = "mirror-ca.pem";

export async function saveAppCa(appDir: string, pem: string): Promise<void> {
  await writeFile(join(appDir, APP_CA_FILE), pem, { mode: 0o600 });
}

/** The CA saved for an app's mirror, as dial options (none saved: the system's CAs). */
export function appDialOptions(appDir: string): { ca: Buffer } | undefined {
  const p = join(appDir, APP_CA_FILE);
  return existsSync(p) ? { ca: readFileSync(p) } : undefined;
}
