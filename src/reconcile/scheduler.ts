// Pass scheduling: single-flight with a short coalescing window. Triggers only decide *when* a pass runs; a pass
// always recomputes everything (level-triggered). A trigger during a pass schedules exactly one follow-up pass;
// any number of triggers inside the window collapse into one pass carrying all their reasons.
//
// Timed wakes (a backoff expiring, the retry after a failed pass) are kept per reason: the reason decides how deep
// the pass looks (see PassContext), so a later deep `retry` must not be swallowed by an earlier shallow
// `backoff:<peer>` wake. One timer is armed for the earliest wake; when it fires, every wake that is due becomes a
// trigger and the timer is re-armed for the next.

export interface SchedulerOptions {
  /** Window in which triggers collapse into one pass. Milliseconds, not seconds. */
  coalesceMs?: number
  /** Called when a pass throws; the scheduler itself never stops on a failed pass. */
  onError?: (err: unknown) => void
  now?: () => number
}

/** Keys one reason may collect for a pass before it counts as concerning anything. */
const MAX_KEYS = 1000

export class PassScheduler {
  private running: Promise<void> | null = null
  private timer: NodeJS.Timeout | null = null
  private reasons = new Set<string>()
  /**
   * reason -> the keys its triggers named (connections, route destinations); a reason triggered once without keys
   * maps to null (it may concern anything). Bounded: past MAX_KEYS a reason's keys collapse to null.
   */
  private keys = new Map<string, Set<string> | null>()
  /** reason -> when (ms since epoch); the earliest request per reason wins. */
  private readonly wakes = new Map<string, number>()
  private wakeTimer: NodeJS.Timeout | null = null
  private wakeTimerAt = Number.POSITIVE_INFINITY
  private stopped = false
  private readonly coalesceMs: number
  private readonly now: () => number

  constructor(
    private readonly pass: (reasons: string[], keys: ReadonlyMap<string, ReadonlySet<string> | null>) => Promise<void>,
    private readonly opts: SchedulerOptions = {},
  ) {
    this.coalesceMs = opts.coalesceMs ?? 5
    this.now = opts.now ?? Date.now
  }

  /**
   * Requests a pass soon. Safe to call from any event handler, any number of times. `keys`: what the trigger
   * concerns (see PassScope); without them the pass may not be scoped for this reason.
   */
  trigger(reason: string, keys?: Iterable<string>): void {
    if (this.stopped) return
    this.reasons.add(reason)
    if (keys === undefined) this.keys.set(reason, null)
    else if (this.keys.get(reason) !== null) {
      let set = this.keys.get(reason)
      if (!set) this.keys.set(reason, (set = new Set()))
      for (const k of keys) set.add(k)
      if (set.size > MAX_KEYS) this.keys.set(reason, null)
    }
    if (this.running || this.timer) return
    this.timer = setTimeout(() => this.start(), this.coalesceMs)
  }

  /** Requests a pass with `reason` at `when` (ms since epoch). Wakes with different reasons are all kept. */
  triggerAt(when: number, reason: string): void {
    if (this.stopped || !Number.isFinite(when)) return
    const prev = this.wakes.get(reason)
    if (prev !== undefined && prev <= when) return
    this.wakes.set(reason, when)
    if (when < this.wakeTimerAt) this.armWake(when)
  }

  /** Pending timed wakes (reason -> when), for tests and /status. */
  pendingWakes(): ReadonlyMap<string, number> {
    return this.wakes
  }

  private armWake(at: number): void {
    if (this.wakeTimer) clearTimeout(this.wakeTimer)
    this.wakeTimerAt = at
    this.wakeTimer = setTimeout(() => this.fireWakes(), Math.max(0, at - this.now()))
    this.wakeTimer.unref?.()
  }

  private fireWakes(): void {
    this.wakeTimer = null
    this.wakeTimerAt = Number.POSITIVE_INFINITY
    const now = this.now()
    let next = Number.POSITIVE_INFINITY
    for (const [reason, at] of this.wakes) {
      if (at <= now) {
        this.wakes.delete(reason)
        this.trigger(reason)
      } else if (at < next) next = at
    }
    if (Number.isFinite(next)) this.armWake(next)
  }

  private start(): void {
    this.timer = null
    if (this.stopped) return
    const reasons = [...this.reasons]
    const keys = this.keys
    this.reasons.clear()
    this.keys = new Map()
    this.running = this.pass(reasons, keys)
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

  /**
   * Stops scheduling: nothing new starts. Resolves with the pass still in flight (already settled when none), so
   * the caller decides how long to wait for it.
   */
  stop(): Promise<void> {
    this.stopped = true
    if (this.timer) clearTimeout(this.timer)
    if (this.wakeTimer) clearTimeout(this.wakeTimer)
    this.timer = null
    this.wakeTimer = null
    this.wakes.clear()
    this.keys.clear()
    return this.running ?? Promise.resolve()
  }
}
