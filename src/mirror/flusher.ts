// Flush scheduling: flushes run one at a time, each commits everything queued when it
// starts. Triggers (cache high-water, max delay, queue length, explicit, restore,
// shutdown) only *request* a flush; they never run it on the caller's stack, so no
// packet handler ever waits for the disk.

export type FlushReason = "cache" | "delay" | "queue" | "explicit" | "restore" | "shutdown" | "retry" | "scrub" | "spill";

export interface FlushOutcome {
  generation: number;
  checkpoints: number;
  sources: number;
  reasons: FlushReason[];
}

export class Flusher {
  private scheduled: Promise<FlushOutcome> | undefined;
  private chain: Promise<unknown> = Promise.resolve();
  private readonly reasons = new Set<FlushReason>();
  private delayTimer: NodeJS.Timeout | undefined;
  private stopped = false;

  constructor(
    private readonly run: (reasons: FlushReason[]) => Promise<FlushOutcome>,
    private readonly maxDelayMs: number,
    private readonly oldestQueuedAt: () => number | undefined,
  ) {}

  /** Asks for a flush; resolves when a flush that started after this call has committed. */
  request(reason: FlushReason): Promise<FlushOutcome> {
    this.reasons.add(reason);
    if (!this.scheduled) {
      const p = this.chain.then(() => {
        this.scheduled = undefined;
        const reasons = [...this.reasons];
        this.reasons.clear();
        return this.run(reasons);
      });
      this.scheduled = p;
      this.chain = p.catch(() => undefined);
    }
    return this.scheduled;
  }

  /** Fire-and-forget request: failures are reported by run() itself. */
  trigger(reason: FlushReason): void {
    this.request(reason).catch(() => undefined);
  }

  /** Re-arms the max-delay timer for the oldest queued checkpoint. */
  armDelay(): void {
    if (this.stopped || this.delayTimer !== undefined) return;
    const oldest = this.oldestQueuedAt();
    if (oldest === undefined) return;
    const due = Math.max(0, oldest + this.maxDelayMs - Date.now());
    this.delayTimer = setTimeout(() => {
      this.delayTimer = undefined;
      const o = this.oldestQueuedAt();
      if (o === undefined) return;
      if (Date.now() - o >= this.maxDelayMs) {
        this.request("delay")
          .catch(() => undefined)
          .finally(() => this.armDelay());
      } else {
        this.armDelay();
      }
    }, due);
    this.delayTimer.unref();
  }

  /** Waits for the flushes already requested. */
  async idle(): Promise<void> {
    await this.chain;
  }

  stop(): void {
    this.stopped = true;
    if (this.delayTimer) clearTimeout(this.delayTimer);
    this.delayTimer = undefined;
  }
}
