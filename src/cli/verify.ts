// `tardigrade verify [NAME|ID] [--json]`: a full scrub of the store through the daemon
// (exit code 2 when damage is found), and the damage warning `ls` prints.
import type { Command } from "commander";
import * as api from "../index.js";
import { bytes, json, table } from "./format.js";

/** Exit code of `verify` when a chosen checkpoint depends on damaged data. */
export const DAMAGE_EXIT = 2;

const out = (s: string): void => void process.stdout.write(s + "\n");

export function formatVerify(r: api.VerifyReport): string {
  const lines: string[] = [];
  lines.push(`checked ${r.checkpoints.length} checkpoint(s): ${r.blocksChecked} block(s), ${r.pagesChecked} page(s), ${bytes(r.bytesRead)} read in ${(r.ms / 1000).toFixed(1)} s`);
  for (const p of r.damagedPacks) lines.push(`damaged pack: ${p.why} (found ${p.foundAt})`);
  if (r.damagedBlocks.length)
    lines.push(
      "damaged blocks:\n" +
        table(
          ["PACK", "OFFSET", "FOUND", "CHECKPOINTS", "WHY"],
          r.damagedBlocks.map((b) => [b.pack, String(b.offset), b.found === "now" ? "now" : b.foundAt, b.checkpoints.join(",") || "-", b.why]),
        ),
    );
  if (r.affected.length)
    lines.push(
      "checkpoints that cannot be restored as stored:\n" +
        table(
          ["ID", "DAMAGED PAGES", "PROBLEMS"],
          r.affected.map((a) => [a.id, String(a.badPages), a.problems.join("; ") || "-"]),
        ),
    );
  if (r.setAsideUnused) lines.push(`${r.setAsideUnused} damaged block(s) set aside earlier are no longer needed by these checkpoints`);
  lines.push(
    r.ok
      ? "ok: every checkpoint checked reads back intact"
      : "DAMAGE FOUND: the damaged blocks are set aside (the next checkpoint of an app stores their pages again, which also repairs older checkpoints with the same pages); restore another checkpoint, or from a mirror",
  );
  return lines.join("\n");
}

export function registerVerifyCommand(program: Command): void {
  program
    .command("verify")
    .description("read and check every block the checkpoints need (all, one app's, or one checkpoint); exit code 2 if any is damaged")
    .argument("[target]", "app name or checkpoint id (APP@SEQ); default: every checkpoint")
    .option("--json", "print the report as JSON")
    .action(async (target: string | undefined, o: { json?: boolean }) => {
      const r = await api.verify(target);
      out(o.json ? json(r) : formatVerify(r));
      if (!r.ok) process.exitCode = DAMAGE_EXIT;
    });
}

/** The warning `ls` prints (on stderr) while the store knows of damaged data. */
export function damageWarning(d: api.DamageSummary): string | null {
  if (d.badBlocks === 0 && d.damagedPacks.length === 0) return null;
  const what = [d.damagedPacks.length ? `damaged pack(s) ${d.damagedPacks.join(", ")}` : "", d.badBlocks ? `${d.badBlocks} damaged block(s) set aside` : ""].filter(Boolean).join(", ");
  return `tardigrade: warning: the store holds damaged data (${what}). Run \`tardigrade verify\` to list the checkpoints affected`;
}
