// Pass scheduling: single-flight with a short coalescing window. Triggers only decide *when* a pass runs; a pass
// always recomputes everything (level-triggered). A trigger during a pass schedules exactly one follow-up pass;
// any number of triggers inside the window collapse into one pass carrying all their reasons.

export interface SchedulerOptions {
  /** Window in which triggers collapse into one pass. Milliseconds, not seconds. */
  coalesceMs?: number
  /** Called when a pass throws; the scheduler itself never stops on a failed pass. */
  onError?: (err: unknown) => void
}

export class PassScheduler {
  private running: Promise<void> | null = null
  private timer: NodeJS.Timeout | null = null
  private reasons = new Set<string>()
  private wakeTimer: NodeJS.Timeout | null = null
  private wakeAt = Number.POSITIVE_INFINITY
  private stopped = false
  private readonly coalesceMs: number
  passes = 0

  constructor(
    private readonly pass: (reasons: string[]) => Promise<void>,
    private readonly opts: SchedulerOptions = {},
  ) {
    this.coalesceMs = opts.coalesceMs ?? 5
  }

  /** Requests a pass soon. Safe to call from any event handler, any number of times. */
  trigger(reason: string): void {
    if (this.stopped) return
    this.reasons.add(reason)
    if (this.running || this.timer) return
    this.timer = setTimeout(() => this.start(), this.coalesceMs)
  }

  /** Requests a pass at `when` (ms since epoch), e.g. when a backoff expires; the earliest request wins. */
  triggerAt(when: number, reason: string): void {
    if (this.stopped || !Number.isFinite(when)) return
    if (when >= this.wakeAt) return
    if (this.wakeTimer) clearTimeout(this.wakeTimer)
    this.wakeAt = when
    this.wakeTimer = setTimeout(() => {
      this.wakeTimer = null
      this.wakeAt = Number.POSITIVE_INFINITY
      this.trigger(reason)
    }, Math.max(0, when - Date.now()))
    this.wakeTimer.unref?.()
  }

  get busy(): boolean {
    return this.running !== null
  }

  private start(): void {
    this.timer = null
    if (this.stopped) return
    const reasons = [...this.reasons]
    this.reasons.clear()
    this.passes++
    this.running = this.pass(reasons)
      .catch((err: unknown) => this.opts.onError?.(err))
      .finally(() => {
        this.running = null
        if (this.reasons.size && !this.stopped) this.timer = setTimeout(() => this.start(), this.coalesceMs)
      })
  }

  /** Resolves when no pass is running or pending. */
  async idle(): Promise<void> {
    while (this.running || this.timer) {
      if (this.running) await this.running
      else await new Promise((r) => setTimeout(r, this.coalesceMs + 1))
    }
  }

  /** Stops scheduling; waits for a pass in flight to finish. */
  async stop(): Promise<void> {
    this.stopped = true
    if (this.timer) clearTimeout(this.timer)
    if (this.wakeTimer) clearTimeout(this.wakeTimer)
    this.timer = null
    this.wakeTimer = null
    if (this.running) await this.running
  }
}
