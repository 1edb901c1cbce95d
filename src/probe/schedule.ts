// When each peer is probed: N peers spread evenly over one period, so probes leave at a steady rate instead of in
// a burst every interval. The period is the probe interval, stretched when N probes per interval would exceed the
// rate cap (10,000 peers at a cap of 500/s: each peer every 20 s). Pure: the caller passes the clock.

/** How late the ring may be served before it drops the lost time instead of catching up. */
export const MAX_LAG_MS = 100

export interface ScheduleOptions {
  intervalMs: number
  /** Most probes per second, over all peers. */
  maxRate: number
}

/** The probe period of each peer: the interval, or longer when n probes per interval would break the rate cap. */
export function probePeriodMs(n: number, o: ScheduleOptions): number {
  if (n <= 0) return o.intervalMs
  return Math.max(o.intervalMs, Math.ceil((n * 1000) / o.maxRate))
}

/**
 * A ring of peers walked at one peer per `period / n`. `due(now)` hands out the peers whose turn has come.
 */
export class ProbeSchedule {
  private peers: string[] = []
  private cursor = 0
  /** Time of the ring's slot 0 in the current round. */
  private base = 0
  private period: number

  constructor(private readonly o: ScheduleOptions, now: number) {
    if (!(o.intervalMs > 0) || !(o.maxRate > 0)) throw new RangeError('probe interval and rate must be positive')
    this.period = o.intervalMs
    this.base = now
  }

  get periodMs(): number {
    return this.period
  }

  get size(): number {
    return this.peers.length
  }

  /** The peers to probe, in order. Unchanged membership keeps the ring's timing; a change restarts it at `now`. */
  setPeers(names: readonly string[], now: number): void {
    const same = names.length === this.peers.length && names.every((n, i) => n === this.peers[i])
    if (same) return
    this.peers = [...names]
    this.period = probePeriodMs(this.peers.length, this.o)
    this.cursor = 0
    this.base = now
  }

  private slotAt(i: number): number {
    return this.base + (i * this.period) / this.peers.length
  }

  /** When the next peer is due (Infinity without peers). */
  nextAt(): number {
    return this.peers.length ? this.slotAt(this.cursor) : Number.POSITIVE_INFINITY
  }

  /**
   * The peers due at `now`. A caller more than MAX_LAG_MS late (a blocked event loop) owes nothing for the lost
   * time: the ring moves on from where it stands, so lateness never turns into a burst above the cap.
   */
  due(now: number): string[] {
    const n = this.peers.length
    if (!n) return []
    if (now - this.slotAt(this.cursor) > MAX_LAG_MS) this.base = now - (this.cursor * this.period) / n
    const out: string[] = []
    while (out.length < n && this.slotAt(this.cursor) <= now) {
      out.push(this.peers[this.cursor]!)
      this.cursor++
      if (this.cursor === n) {
        this.cursor = 0
        this.base += this.period
      }
    }
    return out
  }
}
