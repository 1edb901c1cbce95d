// The datapath state of one peer from its probe results: up, down (N consecutive probes lost, default 5, after
// the target has answered at least once) or unknown (nothing probed yet, no usable address pair, or a target that
// never answered: it may simply not exist, and a never-seen target must not drive repairs). RTT statistics and the
// loss ratio are over the last WINDOW probes. A probe counts as lost when the next one to that peer is sent with
// no reply (Submariner's rule), so the loss needs no timer of its own. Pure: times are passed in.

export type DatapathState = 'up' | 'down' | 'unknown'

/** Results kept for the RTT statistics and the loss ratio (at most 60: PeerProbe keeps them as bits of two SMIs). */
export const WINDOW = 60

export interface RttStats {
  /** Seconds. */
  last: number
  min: number
  avg: number
  max: number
  stddev: number
  samples: number
}

export interface ProbeOutcome {
  /** The previous probe was lost (counted now). */
  lost: boolean
  /** The state changed with this event. */
  changed: boolean
}

export class PeerProbe {
  private outstanding: { seq: number; sentAt: number } | null = null
  private consecutive = 0
  private everAnswered = false
  /**
   * The last WINDOW results as bits (1: lost) of a ring, `lostLo` slots 0-29 and `lostHi` slots 30-59, the oldest
   * at `resultPos` once full: an array of booleans pushed and shifted held ~700 B per peer, 7 MB at 10,000 peers.
   */
  private lostLo = 0
  private lostHi = 0
  private resultCount = 0
  private resultPos = 0
  /** Milliseconds, oldest first, at most WINDOW. */
  private readonly rtts: number[] = []
  private st: DatapathState = 'unknown'
  sent = 0
  received = 0
  /** Losses inside the window (kept as a count: the loss ratio is read on every scrape). */
  private lossesInWindow = 0
  lastReplyAt: number | null = null
  /** When the state last changed (the caller's clock). */
  since: number

  constructor(private readonly downAfter: number, now: number) {
    this.since = now
  }

  get state(): DatapathState {
    return this.st
  }

  get consecutiveLosses(): number {
    return this.consecutive
  }

  get answered(): boolean {
    return this.everAnswered
  }

  /** A probe with `seq` left at `at` (the port's clock), at `now` (the caller's); a previous one unanswered is lost. */
  onSent(seq: number, at: number, now = at): ProbeOutcome {
    const lost = this.outstanding !== null
    if (lost) this.record(false)
    this.outstanding = { seq, sentAt: at }
    this.sent++
    return { lost, changed: lost ? this.evaluate(now) : false }
  }

  /** A probe could not even be sent (no route, socket error): the datapath did not carry it, a loss. */
  onSendFailed(at: number): ProbeOutcome {
    if (this.outstanding) this.record(false)
    this.outstanding = null
    this.record(false)
    this.sent++
    return { lost: true, changed: this.evaluate(at) }
  }

  /**
   * A reply that arrived at `at` (the clock of onSent's `at`), seen at `now` (the caller's clock); null when it does not
   * answer the outstanding probe (late, duplicate). Else the RTT in ms.
   */
  onReply(seq: number, at: number, now = at): { rttMs: number; changed: boolean } | null {
    const o = this.outstanding
    if (!o || o.seq !== seq) return null
    this.outstanding = null
    const rttMs = Math.max(0, at - o.sentAt)
    this.received++
    this.everAnswered = true
    this.lastReplyAt = now
    push(this.rtts, rttMs)
    this.record(true)
    return { rttMs, changed: this.evaluate(now) }
  }

  private record(ok: boolean): void {
    const i = this.resultPos
    // Full: the oldest result, in this slot, leaves the window.
    if (this.resultCount === WINDOW) {
      if (this.lostAt(i)) this.lossesInWindow--
    } else this.resultCount++
    const bit = 1 << (i < 30 ? i : i - 30)
    if (i < 30) this.lostLo = ok ? this.lostLo & ~bit : this.lostLo | bit
    else this.lostHi = ok ? this.lostHi & ~bit : this.lostHi | bit
    if (!ok) this.lossesInWindow++
    this.resultPos = i + 1 === WINDOW ? 0 : i + 1
    this.consecutive = ok ? 0 : this.consecutive + 1
  }

  private lostAt(i: number): boolean {
    return ((i < 30 ? this.lostLo >>> i : this.lostHi >>> (i - 30)) & 1) === 1
  }

  private evaluate(now: number): boolean {
    let next: DatapathState
    if (this.consecutive === 0 && this.everAnswered) next = 'up'
    else if (this.consecutive >= this.downAfter) next = this.everAnswered ? 'down' : 'unknown'
    else next = this.st
    if (next === this.st) return false
    this.st = next
    this.since = now
    return true
  }

  /** Loss ratio over the window (null before any result). */
  lossRatio(): number | null {
    if (!this.resultCount) return null
    return this.lossesInWindow / this.resultCount
  }

  /** The last RTT in ms (null before any reply). */
  get lastRttMs(): number | null {
    return this.rtts.length ? this.rtts[this.rtts.length - 1]! : null
  }

  rtt(): RttStats | null {
    return rttStats(this.rtts)
  }
}

/** last/min/avg/max/population stddev of RTTs given in ms, reported in seconds. */
export function rttStats(ms: readonly number[]): RttStats | null {
  if (!ms.length) return null
  const avg = ms.reduce((a, b) => a + b, 0) / ms.length
  const variance = ms.reduce((a, b) => a + (b - avg) ** 2, 0) / ms.length
  return {
    last: ms[ms.length - 1]! / 1000,
    min: Math.min(...ms) / 1000,
    avg: avg / 1000,
    max: Math.max(...ms) / 1000,
    stddev: Math.sqrt(variance) / 1000,
    samples: ms.length,
  }
}

function push<T>(a: T[], v: T): void {
  a.push(v)
  if (a.length > WINDOW) a.shift()
}
