// The tokens file: one "SOURCE:TOKEN" per line; blank lines and #-comments ignored.
import { readFileSync } from "node:fs";
import { timingSafeEqual, createHash } from "node:crypto";
import { isValidName } from "./objects.js";

export class TokenTable {
  private readonly byDigest = new Map<string, string>();

  constructor(entries: Iterable<[source: string, token: string]>) {
    for (const [source, token] of entries) this.byDigest.set(digest(token), source);
  }

  get size(): number {
    return this.byDigest.size;
  }

  /** The source a token names, or undefined. Compares digests so timing says nothing about the token. */
  sourceFor(token: string): string | undefined {
    const d = digest(token);
    for (const [k, source] of this.byDigest) {
      if (timingSafeEqual(Buffer.from(k, "hex"), Buffer.from(d, "hex"))) return source;
    }
    return undefined;
  }

  static parse(text: string, file = "tokens file"): TokenTable {
    const entries: [string, string][] = [];
    const sources = new Set<string>();
    text.split("\n").forEach((raw, i) => {
      const line = raw.trim();
      if (line === "" || line.startsWith("#")) return;
      const colon = line.indexOf(":");
      const source = line.slice(0, colon);
      const token = line.slice(colon + 1);
      if (colon < 1 || !isValidName(source) || token.length < 8) {
        throw new Error(
          `${file}:${i + 1}: expected SOURCE:TOKEN with a source name of letters, digits, ".", "_" or "-" ` +
            `and a token of at least 8 characters`,
        );
      }
      if (sources.has(source)) throw new Error(`${file}:${i + 1}: source ${source} appears twice`);
      sources.add(source);
      entries.push([source, token]);
    });
    return new TokenTable(entries);
  }

  static load(file: string): TokenTable {
    let text: string;
    try {
      text = readFileSync(file, "utf8");
    } catch (err) {
      throw new Error(`cannot read tokens file ${file}: ${(err as Error).message}`);
    }
    return TokenTable.parse(text, file);
  }
}

function digest(token: string): string {
  return createHash("sha256").update(token, "utf8").digest("hex");
}
