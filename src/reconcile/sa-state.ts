// SA-state tracking for the tunnels subsystem: the memory of our own initiates (in flight, failures for the
// backoff), per child. Changed only by explicit steps: an initiate sent or refused (apply), SA events from charon
// (child-updown / ike-updown), children seen up in a listing, peers leaving the config, and a charon reconnect.
// The planner (tunnels.ts) only reads it. Entries exist only while an initiate is unsettled or backing off, and
// never for a peer that is not desired.
import { attemptKey, type InitiateAttempt, type ObservedIkeSa } from './tunnels.js'
import type { SaEvent } from './tunnels-port.js'

const UP_CHILD = new Set(['INSTALLED', 'REKEYING', 'REKEYED'])

export class SaStateTracker {
  private readonly attempts = new Map<string, InitiateAttempt>()

  /** The memory as the planner reads it. */
  view(): ReadonlyMap<string, InitiateAttempt> {
    return this.attempts
  }

  /** Entries held (tests assert that removed peers leave none). */
  get size(): number {
    return this.attempts.size
  }

  /** An initiate was sent: in flight from now on. An earlier attempt that expired unanswered counts as failed. */
  initiated(conn: string, child: string, now: number): void {
    const key = attemptKey(conn, child)
    const prev = this.attempts.get(key)
    const failures = prev ? prev.failures + (prev.inflight ? 1 : 0) : 0
    this.attempts.set(key, { lastAttempt: now, failures, inflight: true })
  }

  /** charon refused the initiate itself (or the call failed): a failed attempt, retried after the backoff. */
  refused(conn: string, child: string, now: number): void {
    const key = attemptKey(conn, child)
    const prev = this.attempts.get(key)
    this.attempts.set(key, { lastAttempt: now, failures: (prev?.failures ?? 0) + 1, inflight: false })
  }

  /**
   * An SA event. Up: the negotiation it reports is settled. Down: an initiate of ours still in flight for that
   * child (for ike-updown: for any child of the connection) has failed.
   */
  onEvent(event: SaEvent, up: boolean, sas: readonly ObservedIkeSa[]): void {
    for (const sa of sas) {
      if (event === 'ike-updown') {
        if (up) this.attempts.delete(attemptKey(sa.name, ''))
        else for (const [key, a] of this.attempts) if (key.startsWith(`${sa.name}/`) && a.inflight) this.fail(key, a)
        continue
      }
      for (const c of sa.children) {
        const key = attemptKey(sa.name, c.name)
        const a = this.attempts.get(key)
        if (!a) continue
        if (up) this.attempts.delete(key)
        else if (a.inflight) this.fail(key, a)
      }
    }
  }

  private fail(key: string, a: InitiateAttempt): void {
    this.attempts.set(key, { lastAttempt: a.lastAttempt, failures: a.failures + 1, inflight: false })
  }

  /** Children (and IKE-only connections) that a listing shows up are settled, whatever events were missed. */
  settle(sas: readonly ObservedIkeSa[]): void {
    if (this.attempts.size === 0) return
    for (const sa of sas) {
      if (sa.state === 'ESTABLISHED') this.attempts.delete(attemptKey(sa.name, ''))
      for (const c of sa.children) if (UP_CHILD.has(c.state)) this.attempts.delete(attemptKey(sa.name, c.name))
    }
  }

  /** Forgets connections that are no longer desired. */
  prune(desired: ReadonlySet<string>): void {
    for (const key of this.attempts.keys()) if (!desired.has(key.slice(0, key.lastIndexOf('/')))) this.attempts.delete(key)
  }

  /** charon restarted: nothing we sent is in flight any more. */
  clear(): void {
    this.attempts.clear()
  }
}
