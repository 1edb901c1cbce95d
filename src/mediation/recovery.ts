// Recovery of mediated edge-to-edge connections (strongSwan IKEv2 mediation, FabEdge's `mediated_by = mediator`):
// a pure state machine over what the tunnels subsystem observes of charon. No I/O; the subsystem asks it which
// mediated connections may be initiated now, and when charon must be restarted. docs/mediation.md has the why.
//
// strongSwan's mediation client keeps one "waiting mediated connection" per (own id, peer id) in its
// connect_manager; only finished connectivity checks or charon's exit remove it. A request that found the peer
// offline is completed only by the server's callback when the peer registers, and that callback is lost when the
// server forgets the request: our own mediation IKE_SA was re-established (the server drops a requester's state
// with its SA), or the server restarted or failed over, which re-establishes that SA too. From then on every
// initiate of that connection logs "mediation with the same peer is already in progress, queued" and sends
// nothing, until charon exits (src/libcharon/sa/ikev2/connect_manager.c check_and_register, finish_checks).
//
// The rules, per mediated peer, while its tunnel is down:
// 1. Nothing is initiated before our own mediation IKE_SA is up (FabEdge's rule, PR #378; the planner holds too).
// 2. One side initiates: the edge whose name sorts first (`designated`). FabEdge lets both sides initiate, which
//    makes duplicate IKE_SAs whenever both find each other registered.
// 3. Takeover: the other side initiates too once the tunnel has stayed down `takeoverMs` with its own mediation
//    SA up. It has asked nothing before, so it has no stale entry; this covers the designated side's stale entry
//    and a designated side that is gone for good.
// 4. Stale: an initiate allowed under one mediation IKE_SA (by uniqueid) while the tunnel is still down under
//    another means the request may have been forgotten by the server. After `restartAfterMs` more (time for the
//    other side's takeover to work) charon is restarted, at most once per `restartIntervalMs` per node. A
//    restart is the only way to clear connect_manager; the agent's no-flap start makes it cost one reconnect.
//    While the mediation SA stays the same a pending request is still good (the callback will come) and nothing
//    is restarted, however long the peer is away.
// 5. Orphaned: the server forwards a request for a peer it has registered to that peer's mediation SA. If the peer
//    vanished without a DELETE (power or network loss) and the server has not yet noticed (its DPD), the request
//    goes to a dead SA and is never answered; our connect_manager keeps it, and charon queues every later request
//    for that peer behind it. It shows as our IKE_SA of the connection that stays CREATED (waiting for the
//    mediator) while the tunnel comes up through another one (the peer's takeover). Such a request is known to be
//    orphaned; in the next down episode it is stale from the start (rule 4's restart, after the same delay, so
//    the peer's takeover still comes first). Nothing is restarted while the tunnel is up: the orphan only costs
//    something when the tunnel is down again.

import { isoTime } from '../iso-time.js'

export interface MediationPolicy {
  /** Down this long with our mediation SA up, the non-designated side initiates too; 0: never. */
  takeoverMs: number
  /** Stale this long (see rule 4), charon is restarted; 0: never. */
  restartAfterMs: number
  /** At most one restart per this interval. */
  restartIntervalMs: number
}

export const DEFAULT_MEDIATION_POLICY: MediationPolicy = { takeoverMs: 8_000, restartAfterMs: 20_000, restartIntervalMs: 300_000 }

export interface MediatedPeer {
  /** The connection name (the peer's endpoint name). */
  conn: string
  /** Whether this side is the one that initiates first (rule 2). */
  designated: boolean
  /** Every desired child of the connection is up. */
  up: boolean
  /** uniqueid of our IKE_SA of the connection still waiting for the mediator (state CREATED), null when none. */
  waiting?: string | null
}

export interface MediationObservation {
  now: number
  /** uniqueid of our ESTABLISHED mediation IKE_SA, or null when none. */
  mediatorId: string | null
  peers: readonly MediatedPeer[]
}

export type MediationPhase = 'up' | 'waiting-mediator' | 'initiating' | 'waiting-takeover' | 'stale'

export interface MediatedPeerState {
  conn: string
  phase: MediationPhase
  /** Which side initiates now: `self` (designated or took over), `peer` (we wait for it). */
  initiator: 'self' | 'peer'
  /** Down since (ms since epoch), null when up. */
  downSince: number | null
  /** Why it is held or what happens next, for status; null when up. */
  detail: string | null
}

export interface MediationDecision {
  /** Mediated connections that must not be initiated now, with why. */
  hold: Map<string, string>
  /** When a pass must run again for a wait above to end. */
  wakes: Array<{ at: number; reason: string }>
  /** Restart charon now (rule 4), with why; null: no. */
  restart: string | null
  peers: MediatedPeerState[]
}

interface Episode {
  downSince: number
  /** Our mediation SA's uniqueid when an initiate was first allowed in this episode. */
  requestedUnder: string | null
  staleSince: number | null
}

export class MediationRecovery {
  private readonly episodes = new Map<string, Episode>()
  /** Per peer: our waiting IKE_SA that was still waiting while the tunnel was up (rule 5). */
  private readonly orphans = new Map<string, string>()
  private mediatorId: string | null = null
  private mediatorSince = 0
  private lastRestart = Number.NEGATIVE_INFINITY

  constructor(readonly policy: MediationPolicy = DEFAULT_MEDIATION_POLICY) {
    for (const [k, v] of Object.entries(policy)) if (!Number.isFinite(v) || v < 0) throw new RangeError(`mediation policy ${k}: ${v}`)
  }

  /** Peers with an open episode (tests assert that peers leaving the config leave nothing). */
  get size(): number {
    return this.episodes.size
  }

  /**
   * charon restarted or the session to it was re-established: its connect_manager may be new, and requests made
   * under the old instance mean nothing. The restart time stays (the rate limit outlives charon).
   */
  reset(): void {
    this.episodes.clear()
    this.orphans.clear()
    this.mediatorId = null
  }

  /** A restart was requested at `now` (counts for the rate limit whether or not it worked). */
  restarted(now: number): void {
    this.lastRestart = now
    this.reset()
  }

  decide(obs: MediationObservation): MediationDecision {
    const { now } = obs
    if (obs.mediatorId !== this.mediatorId) {
      this.mediatorId = obs.mediatorId
      this.mediatorSince = now
    }
    const names = new Set(obs.peers.map((p) => p.conn))
    for (const conn of this.episodes.keys()) if (!names.has(conn)) this.episodes.delete(conn)
    for (const conn of this.orphans.keys()) if (!names.has(conn)) this.orphans.delete(conn)
    const out: MediationDecision = { hold: new Map(), wakes: [], restart: null, peers: [] }
    const p = this.policy
    for (const peer of obs.peers) {
      const waiting = peer.waiting ?? null
      // An orphan stays one while that same SA keeps waiting; another SA (or none) ends it.
      if (this.orphans.get(peer.conn) !== waiting) this.orphans.delete(peer.conn)
      if (peer.up) {
        if (waiting !== null) this.orphans.set(peer.conn, waiting)
        this.episodes.delete(peer.conn)
        out.peers.push({ conn: peer.conn, phase: 'up', initiator: peer.designated ? 'self' : 'peer', downSince: null, detail: null })
        continue
      }
      let ep = this.episodes.get(peer.conn)
      if (!ep) this.episodes.set(peer.conn, (ep = { downSince: now, requestedUnder: null, staleSince: null }))
      const state = (phase: MediationPhase, initiator: 'self' | 'peer', detail: string): void => {
        out.peers.push({ conn: peer.conn, phase, initiator, downSince: ep!.downSince, detail })
      }
      if (obs.mediatorId === null) {
        out.hold.set(peer.conn, 'waiting for the mediator')
        state('waiting-mediator', peer.designated ? 'self' : 'peer', 'waiting for our mediation IKE_SA')
        continue
      }
      const readySince = Math.max(ep.downSince, this.mediatorSince)
      const takeoverAt = readySince + p.takeoverMs
      if (!peer.designated && (p.takeoverMs === 0 || now < takeoverAt)) {
        const reason = p.takeoverMs === 0 ? 'the peer initiates (takeover off)' : `the peer initiates; taking over in ${Math.ceil((takeoverAt - now) / 1000)}s`
        out.hold.set(peer.conn, reason)
        if (p.takeoverMs > 0) out.wakes.push({ at: takeoverAt, reason: `mediation-takeover:${peer.conn}` })
        state('waiting-takeover', 'peer', reason)
        continue
      }
      ep.requestedUnder ??= obs.mediatorId
      const orphan = waiting !== null && this.orphans.get(peer.conn) === waiting ? waiting : null
      if (ep.requestedUnder === obs.mediatorId && orphan === null) {
        state('initiating', 'self', peer.designated ? 'initiating through the mediator' : 'took over: initiating through the mediator')
        continue
      }
      ep.staleSince ??= now
      const what = orphan !== null ? 'mediation request orphaned (never answered)' : 'mediation request forgotten by the server'
      if (p.restartAfterMs === 0) {
        state('stale', 'self', `${what}; charon restart off`)
        continue
      }
      const at = Math.max(ep.staleSince + p.restartAfterMs, this.lastRestart + p.restartIntervalMs)
      if (now >= at && out.restart === null) {
        const why = orphan !== null
          ? `our IKE_SA #${orphan} still waits for a mediation request that was never answered (it outlived the tunnel's last up period) and charon queues every later request behind it`
          : `its mediation request was made under an earlier mediation IKE_SA (#${ep.requestedUnder}, now #${obs.mediatorId}) and charon keeps it queued`
        out.restart = `mediated ${peer.conn}: down since ${isoTime(ep.downSince)}, ${why}`
        state('stale', 'self', 'restarting charon to clear the queued mediation request')
        continue
      }
      out.wakes.push({ at, reason: `mediation-restart:${peer.conn}` })
      state('stale', 'self', `${what}; charon restart in ${Math.ceil((at - now) / 1000)}s`)
    }
    if (out.restart !== null) this.restarted(now)
    return out
  }
}

/** Which side initiates a mediated connection first: the edge whose name sorts first (code-unit order). */
export function designatedInitiator(local: string, peer: string): boolean {
  return local < peer
}
