// Scrub: checks, while the destination is idle, the chunks no one has checked yet.
//
// The destination does not hash a source's own chunks when they arrive (see
// docs/mirror.md, "Verification"): a source that sends bytes not matching their name
// damages only its own checkpoints, and a fetch finds it. The scrub finds it earlier,
// without slowing ingest: once nothing has been cached, queued or reserved for
// `idleMs`, it reads back each unchecked chunk from its pack and hashes it, one at a
// time, and stops as soon as a source sends anything. A chunk that matches becomes
// usable by every source; one that does not is marked bad (fetches of the
// checkpoints that use it are refused as damaged; the next copy any source sends
// replaces it), and its source's damaged checkpoints are logged. What a pass found is
// committed by a flush of its own (reason "scrub"), so a restart does not redo it.
import type { Logger } from "pino";
import type { DiskStore } from "./disk-store.js";

export interface ScrubHost {
  /** Anything cached, reserved, queued or being flushed. */
  busy(): boolean;
  /** Commits what verify() found (a flush with reason "scrub"). */
  commitNotes(): Promise<unknown>;
}

export interface ScrubStats {
  passes: number;
  checked: number;
  bad: number;
}

export class Scrubber {
  private lastBusy = Date.now();
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private stopped = false;
  readonly stats: ScrubStats = { passes: 0, checked: 0, bad: 0 };

  constructor(
    private readonly store: DiskStore,
    private readonly host: ScrubHost,
    private readonly log: Logger,
    /** How long the destination must have been idle before a pass starts. */
    readonly idleMs: number,
  ) {}

  start(): void {
    if (this.idleMs <= 0) return;
    this.timer = setInterval(() => this.tick(), Math.max(20, Math.min(1000, Math.floor(this.idleMs / 4))));
    this.timer.unref();
  }

  /** Stops (waiting for the chunk being checked, if any). */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    await this.running;
  }

  /** Resolves when no pass is running (tests). */
  idle(): Promise<void> {
    return this.running ?? Promise.resolve();
  }

  private tick(): void {
    if (this.host.busy()) {
      this.lastBusy = Date.now();
      return;
    }
    if (this.running || this.stopped || Date.now() - this.lastBusy < this.idleMs) return;
    if (this.store.uncheckedCount === 0 && !this.store.hasNotes) return;
    this.running = this.pass().finally(() => (this.running = undefined));
  }

  private async pass(): Promise<void> {
    const t0 = Date.now();
    let checked = 0;
    let bad = 0;
    let interrupted = false;
    try {
      for (const hash of this.store.unchecked()) {
        if (this.stopped || this.host.busy()) {
          interrupted = true;
          break;
        }
        const owner = this.store.ownerOf(hash);
        const actual = await this.store.verify(hash);
        checked++;
        if (actual !== hash) {
          bad++;
          await this.reportBad(hash, owner, actual);
        }
        // (One chunk at a time, and the event loop turns in between.)
        await new Promise((r) => setImmediate(r));
      }
      this.stats.passes++;
      this.stats.checked += checked;
      this.stats.bad += bad;
      if (this.store.hasNotes && !this.stopped) await this.host.commitNotes();
      this.log.info({ checked, bad, interrupted, ms: Date.now() - t0 }, interrupted ? "scrub paused: sources are sending" : "scrub pass done");
    } catch (err) {
      this.log.error({ err: (err as Error).message }, "scrub pass failed; it runs again at the next idle time");
    }
    this.lastBusy = Date.now();
  }

  private async reportBad(hash: string, owner: string | undefined, actual: string): Promise<void> {
    const damaged = owner === undefined ? [] : await this.store.checkpointsUsing(owner, new Set([hash]));
    this.log.error(
      { chunk: hash, actual, source: owner, damaged },
      `scrub: chunk ${hash} of source ${owner ?? "?"} does not match its name (hashes to ${actual}); ` +
        `checkpoint(s) ${damaged.join(", ") || "(none)"} of ${owner ?? "?"} are damaged until a source sends the chunk again`,
    );
  }
}
