// Structured logs (pino). The server logs JSON lines to stdout (or a given stream).
import { pino, type Logger, type DestinationStream } from "pino";

export type { Logger };

export function createLogger(opts: { level?: string; name?: string; destination?: DestinationStream } = {}): Logger {
  const options = { name: opts.name ?? "tardigrade-mirror", level: opts.level ?? process.env.TARDIGRADE_LOG_LEVEL ?? "info" };
  return opts.destination ? pino(options, opts.destination) : pino(options);
}

/** A logger that drops everything (library default). */
export function silentLogger(): Logger {
  return pino({ level: "silent" });
}
