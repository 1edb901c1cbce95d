// The mediation hook of the tunnels subsystem: feeds the pure recovery state machine (recovery.ts) from a pass's
// desired state and SA listing, and carries out its one side effect, a charon restart, through a CharonRestarter.
// Without a restarter the restart rule is off (the state is still reported).
import { MEDIATOR_CONN } from '../fabedge.js'
import type { Desired, ViciSection } from '../desired/types.js'
import type { Logger } from '../log.js'
import { connUp, type ObservedIkeSa } from '../reconcile/tunnels.js'
import type { CharonRestarter } from './charon-restart.js'
import { DEFAULT_MEDIATION_POLICY, designatedInitiator, MediationRecovery, type MediatedPeerState, type MediationPolicy } from './recovery.js'

export interface MediationGate {
  /** Mediated connections not to initiate in this pass, with why. */
  hold: ReadonlyMap<string, string>
  wakes: Array<{ at: number; reason: string }>
  /** Restart charon in this pass's apply, with why; null: no. */
  restart: string | null
}

/** What the tunnels subsystem asks of mediation (see tunnels-subsystem.ts `mediation`). */
export interface MediationHook {
  gate(desired: Pick<Desired, 'conns'>, sas: readonly ObservedIkeSa[], now: number): MediationGate
  restart(reason: string): Promise<void>
  /** charon restarted or the VICI session came back. */
  reset(): void
  /** The last decision about a mediated peer, or null (not mediated). */
  peerState(conn: string): MediatedPeerState | null
}

const NO_GATE: MediationGate = { hold: new Map(), wakes: [], restart: null }

export class MediationController implements MediationHook {
  readonly counters = { restarts: 0, restartFailures: 0 }
  private readonly recovery: MediationRecovery
  private states = new Map<string, MediatedPeerState>()

  constructor(private readonly opts: { policy?: MediationPolicy; restarter: CharonRestarter | null; log: Logger }) {
    const policy = opts.policy ?? DEFAULT_MEDIATION_POLICY
    this.recovery = new MediationRecovery(opts.restarter ? policy : { ...policy, restartAfterMs: 0 })
  }

  get policy(): MediationPolicy {
    return this.recovery.policy
  }

  gate(desired: Pick<Desired, 'conns'>, sas: readonly ObservedIkeSa[], now: number): MediationGate {
    // The name we registered under at the mediator (the mediator conn's local id): the peers' mediation_peer.
    const self = idOf(desired.conns[MEDIATOR_CONN]?.local)
    const peers = Object.entries(desired.conns)
      .filter(([, s]) => s.mediated_by === MEDIATOR_CONN && typeof s.mediation_peer === 'string')
      .map(([conn, s]) => ({
        conn,
        designated: self !== null && designatedInitiator(self, s.mediation_peer as string),
        up: connUp(conn, Object.keys((s.children ?? {}) as object), sas),
        waiting: oldestWaiting(conn, sas),
      }))
    if (peers.length === 0 && this.recovery.size === 0) {
      this.states.clear()
      return NO_GATE
    }
    const mediatorId = sas.find((s) => s.name === MEDIATOR_CONN && s.state === 'ESTABLISHED')?.uniqueid ?? null
    const d = this.recovery.decide({ now, mediatorId, peers })
    this.states = new Map(d.peers.map((p) => [p.conn, p]))
    return { hold: d.hold, wakes: d.wakes, restart: d.restart }
  }

  async restart(reason: string): Promise<void> {
    const r = this.opts.restarter
    if (!r) return
    this.counters.restarts++
    this.opts.log.warn({ op: 'mediation-restart', reason, how: r.describe }, 'restarting charon to clear a stale mediation request')
    try {
      const pid = await r.restart()
      this.opts.log.warn({ op: 'mediation-restart', pid }, 'charon asked to exit; its supervisor starts it again')
    } catch (err) {
      this.counters.restartFailures++
      throw err
    }
  }

  reset(): void {
    this.recovery.reset()
  }

  peerState(conn: string): MediatedPeerState | null {
    return this.states.get(conn) ?? null
  }
}

/** Our oldest IKE_SA of `conn` still waiting for the mediator (CREATED): an orphan is older than any new request. */
function oldestWaiting(conn: string, sas: readonly ObservedIkeSa[]): string | null {
  let out: string | null = null
  for (const sa of sas) if (sa.name === conn && sa.state === 'CREATED' && (out === null || Number(sa.uniqueid) < Number(out))) out = sa.uniqueid
  return out
}

function idOf(local: unknown): string | null {
  const id = (local as ViciSection | undefined)?.id
  return typeof id === 'string' ? id : null
}
