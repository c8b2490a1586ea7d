// One error type for everything a user can see: what failed, why, and what to do.

export class TgError extends Error {
  constructor(
    readonly what: string,
    readonly why: string,
    readonly fix: string = "",
    /** Machine-readable code (e.g. "unknown-checkpoint"), carried across the daemon's HTTP API. */
    readonly code: string = "error",
  ) {
    super(`${what}: ${why}.${fix ? ` ${fix}` : ""}`.replace(/\.\.(\s|$)/g, ".$1"));
    this.name = "TgError";
  }

  toJSON(): { what: string; why: string; fix: string; code: string } {
    return { what: this.what, why: this.why, fix: this.fix, code: this.code };
  }

  static fromJSON(j: { what?: unknown; why?: unknown; fix?: unknown; code?: unknown }): TgError {
    return new TgError(String(j.what ?? "request failed"), String(j.why ?? "unknown error"), String(j.fix ?? ""), String(j.code ?? "error"));
  }
}

/** Message of any thrown value. */
export function errMessage(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
