// SA-state tracking for the tunnels subsystem: the memory of our own initiates (in flight, failures for the
// backoff), per child. Changed only by explicit steps: an initiate sent or refused (apply), SA events from charon
// (child-updown / ike-updown), children seen up in a listing, peers leaving the config, and a charon reconnect.
// The planner (tunnels.ts) only reads it. Entries exist only while an initiate is unsettled or backing off, and
// never for a peer that is not desired.
//
// It also knows the SAs we terminated ourselves: their down events arrive late (after the initiate of the
// replacing child was sent) and say nothing about that initiate, so they are recognised by uniqueid and ignored.
// Such an entry lives until its down event, its peer leaving the config, a reconnect, or the in-flight window.
import { attemptKey, type InitiateAttempt, type ObservedIkeSa } from './tunnels.js'
import type { SaEvent } from './tunnels-port.js'

const UP_CHILD = new Set(['INSTALLED', 'REKEYING', 'REKEYED'])

export class SaStateTracker {
  private readonly attempts = new Map<string, InitiateAttempt>()
  /** `ike#<uniqueid>` / `child#<uniqueid>` of SAs we terminated -> their connection and when. */
  private readonly terminated = new Map<string, { conn: string; at: number }>()

  /** The memory as the planner reads it. */
  view(): ReadonlyMap<string, InitiateAttempt> {
    return this.attempts
  }

  /** Entries held (tests assert that removed peers leave none). */
  get size(): number {
    return this.attempts.size
  }

  /** Terminated SAs whose down event is still expected. */
  get terminatedSize(): number {
    return this.terminated.size
  }

  /** An initiate was sent: in flight from now on. An earlier attempt that expired unanswered counts as failed. */
  initiated(conn: string, child: string, now: number): void {
    const key = attemptKey(conn, child)
    const prev = this.attempts.get(key)
    // An unconfirmed attempt reached here only because charon no longer knew it (restarted): not a failure.
    const failures = prev ? prev.failures + (prev.inflight && !prev.unconfirmed ? 1 : 0) : 0
    this.attempts.set(key, { lastAttempt: now, failures, inflight: true })
  }

  /** charon refused the initiate itself (or the call failed): a failed attempt, retried after the backoff. */
  refused(conn: string, child: string, now: number): void {
    const key = attemptKey(conn, child)
    const prev = this.attempts.get(key)
    this.attempts.set(key, { lastAttempt: now, failures: (prev?.failures ?? 0) + 1, inflight: false })
  }

  /** We are terminating this IKE_SA (`ike`) or CHILD_SA (`child`) by uniqueid: its down event is ours, not news. */
  terminating(kind: 'ike' | 'child', conn: string, uniqueid: string, now: number): void {
    this.terminated.set(`${kind}#${uniqueid}`, { conn, at: now })
  }

  /** The terminate call failed: no down event will come for it. */
  terminateFailed(kind: 'ike' | 'child', uniqueid: string): void {
    this.terminated.delete(`${kind}#${uniqueid}`)
  }

  /** Uniqueids of CHILD_SAs whose terminate we sent and whose down event has not come yet. */
  terminatingChildren(): Set<string> {
    const out = new Set<string>()
    for (const key of this.terminated.keys()) if (key.startsWith('child#')) out.add(key.slice('child#'.length))
    return out
  }

  /** Forgets terminated SAs whose down event never came within `windowMs`. */
  expire(now: number, windowMs: number): void {
    for (const [key, t] of this.terminated) if (now - t.at >= windowMs) this.terminated.delete(key)
  }

  /**
   * An SA event. Up: the negotiation it reports is settled. Down: an initiate of ours still in flight for that
   * child (for ike-updown: for any child of the connection) has failed, unless the SA that went down is one we
   * terminated ourselves.
   */
  onEvent(event: SaEvent, up: boolean, sas: readonly ObservedIkeSa[]): void {
    for (const sa of sas) {
      if (event === 'ike-updown') {
        if (up) this.attempts.delete(attemptKey(sa.name, ''))
        else if (this.terminated.delete(`ike#${sa.uniqueid}`)) continue
        else for (const [key, a] of this.attempts) if (key.startsWith(`${sa.name}/`) && a.inflight) this.fail(key, a)
        continue
      }
      for (const c of sa.children) {
        if (!up && this.terminated.delete(`child#${c.uniqueid}`)) continue
        const key = attemptKey(sa.name, c.name)
        const a = this.attempts.get(key)
        if (!a) continue
        if (up) this.attempts.delete(key)
        else if (a.inflight) this.fail(key, a)
      }
    }
  }

  /**
   * Drops the initiate memory of `conn` (probe repair, src/probe): we ended its IKE_SA ourselves, so initiates still
   * "in flight" on it will never complete, and the next pass must initiate at once instead of waiting them out.
   */
  forgetConn(conn: string): void {
    for (const key of [...this.attempts.keys()]) if (key.startsWith(`${conn}/`)) this.attempts.delete(key)
  }

  private fail(key: string, a: InitiateAttempt): void {
    this.attempts.set(key, { lastAttempt: a.lastAttempt, failures: a.failures + 1, inflight: false })
  }

  /**
   * Children (and IKE-only connections) that a listing shows up are settled, whatever events were missed. An
   * attempt left unconfirmed by a reconnect is confirmed in flight by a listed IKE_SA of its connection, and gone
   * without one (the plan made from that listing initiates it again).
   */
  settle(sas: readonly ObservedIkeSa[]): void {
    if (this.attempts.size === 0) return
    for (const sa of sas) {
      if (sa.state === 'ESTABLISHED') this.attempts.delete(attemptKey(sa.name, ''))
      // A child we are terminating is listed until charon's terminate job ran: it settles nothing.
      for (const c of sa.children) if (UP_CHILD.has(c.state) && !this.terminated.has(`child#${c.uniqueid}`)) this.attempts.delete(attemptKey(sa.name, c.name))
    }
    for (const [key, a] of this.attempts) {
      if (!a.unconfirmed) continue
      const conn = key.slice(0, key.lastIndexOf('/'))
      if (sas.some((s) => s.name === conn)) this.attempts.set(key, { lastAttempt: a.lastAttempt, failures: a.failures, inflight: a.inflight })
      else this.attempts.delete(key)
    }
  }

  /** Forgets connections that are no longer desired. */
  prune(desired: Pick<ReadonlySet<string>, 'has'>): void {
    for (const key of this.attempts.keys()) if (!desired.has(key.slice(0, key.lastIndexOf('/')))) this.attempts.delete(key)
    for (const [key, t] of this.terminated) if (!desired.has(t.conn)) this.terminated.delete(key)
  }

  /**
   * The session to charon was re-established: charon restarted (everything forgotten) or the client reconnected
   * on its own after a late answer while charon kept negotiating. Initiates in flight become unconfirmed (the next
   * listing decides, see InitiateAttempt.unconfirmed) instead of forgotten, so a busy charon gets no duplicate and
   * a restarted one is initiated at once. Backoffs and terminated uniqueids (which a new charon reuses) go.
   */
  reconnected(): void {
    for (const [key, a] of this.attempts) {
      if (a.inflight) this.attempts.set(key, { ...a, unconfirmed: true })
      else this.attempts.delete(key)
    }
    this.terminated.clear()
  }
}
