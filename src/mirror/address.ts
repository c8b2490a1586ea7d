// Parsing of the user-facing values: tg:// URLs, HOST:PORT, durations, byte sizes.
export interface MirrorAddress {
  host: string;
  port: number;
  tls: boolean;
}

/** "tg://host:port" (plain TCP) or "tgs://host:port" (TLS); IPv6 as [::1]. */
export function parseMirrorUrl(url: string): MirrorAddress {
  const m = /^(tgs?):\/\/(.+)$/.exec(url);
  if (!m) throw new Error(`invalid mirror URL ${JSON.stringify(url)}: expected tg://HOST:PORT or tgs://HOST:PORT (TLS)`);
  return { ...parseHostPort(m[2] as string, url), tls: m[1] === "tgs" };
}

export function parseHostPort(s: string, context = s): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:/]+)):(\d{1,5})$/.exec(s);
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) {
    throw new Error(`invalid address ${JSON.stringify(context)}: expected HOST:PORT, e.g. 0.0.0.0:7070 or [::1]:7070`);
  }
  return { host: (m[1] ?? m[2]) as string, port };
}

const DURATION_UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/** "500ms", "10s", "2m", "1h", or a bare number of milliseconds. */
export function parseDuration(s: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(s.trim());
  if (!m) throw new Error(`invalid duration ${JSON.stringify(s)}: use e.g. 500ms, 10s, 2m, 1h`);
  return Math.round(Number(m[1]) * (DURATION_UNITS[m[2] ?? "ms"] as number));
}

const SIZE_UNITS: Record<string, number> = { "": 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4 };

/** "1048576", "512K", "64M", "2G" (binary units; a trailing "iB"/"B" is allowed). */
export function parseBytes(s: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?$/i.exec(s.trim());
  if (!m) throw new Error(`invalid size ${JSON.stringify(s)}: use e.g. 268435456, 512M, 2G`);
  return Math.floor(Number(m[1]) * (SIZE_UNITS[(m[2] as string).toLowerCase()] as number));
}
