// The status read model of the tunnels subsystem: per-peer tunnel state for /status and metrics, built from the
// last observation (desired connections, what charon listed, why initiates wait) and the last operation errors.
// It never feeds back into planning. Per-peer entries exist only for desired peers: every record drops the rest.
import type { Desired } from '../desired/types.js'
import type { MediatedPeerState } from '../mediation/recovery.js'
import { connUp, type ListedConn, type ObservedIkeSa } from './tunnels.js'
import { isoTime } from '../iso-time.js'

/** What charon was last seen holding: every listed connection, and the IKE_SAs of a connection by name. */
export interface ObservedView {
  conns: ReadonlyMap<string, ListedConn>
  sasOf(conn: string): readonly ObservedIkeSa[]
}

export interface PeerStatus {
  name: string
  type: string
  initiator: boolean
  loaded: boolean
  ike: Array<{ uniqueid: string; state: string }>
  children: Array<{ name: string; uniqueid: string; state: string }>
  childrenDesired: number
  childrenUp: number
  state: 'up' | 'partial' | 'connecting' | 'down' | 'waiting'
  since: string
  lastError: string | null
  waiting: string | null
  /**
   * How traffic to the peer flows now: `mediated` (a tunnel set up through the mediator, straight between the two
   * NATs), `direct` (a tunnel to its configured address), `none` (no tunnel up: FabEdge routes edge-to-edge
   * traffic through no other path, see docs/mediation.md).
   */
  path: 'mediated' | 'direct' | 'none'
  /** Mediated peers: the recovery state (src/mediation/recovery.ts). */
  mediation?: MediatedPeerState
}

const UP_STATES = new Set(['INSTALLED', 'REKEYING', 'REKEYED'])

function childUp(sas: readonly ObservedIkeSa[], child: string): boolean {
  for (const s of sas) for (const c of s.children) if (c.name === child && UP_STATES.has(c.state)) return true
  return false
}

function ikeEstablished(sas: readonly ObservedIkeSa[]): boolean {
  for (const s of sas) if (s.state === 'ESTABLISHED') return true
  return false
}

export class TunnelsStatus {
  private desired: Pick<Desired, 'conns' | 'initiate'> | null = null
  private observed: ObservedView | null = null
  private waiting = new Map<string, string>()
  private readonly since = new Map<string, { state: string; at: number }>()
  private readonly lastError = new Map<string, string>()

  constructor(private readonly now: () => number = Date.now) {}

  /** Per-peer entries held (tests assert that removed peers leave none). */
  get sizes(): { since: number; lastError: number } {
    return { since: this.since.size, lastError: this.lastError.size }
  }

  /**
   * The state a plan observed. `names`: the plan looked at these connections only (a scoped pass): only their
   * entries change; without it every entry is recomputed.
   */
  record(desired: Pick<Desired, 'conns' | 'initiate'>, observed: ObservedView, waiting: ReadonlyArray<{ conn: string; reason: string }>, names?: Iterable<string>): void {
    this.desired = desired
    this.observed = observed
    const now = this.now()
    let which: Iterable<string>
    if (names) {
      const list = [...names]
      for (const name of list) this.waiting.delete(name)
      for (const w of waiting) this.waiting.set(w.conn, w.reason)
      for (const name of list) {
        if (!(name in desired.conns)) {
          this.since.delete(name)
          this.lastError.delete(name)
        }
      }
      which = list.filter((n) => n in desired.conns)
    } else {
      this.waiting = new Map(waiting.map((w) => [w.conn, w.reason]))
      for (const name of this.since.keys()) if (!(name in desired.conns)) this.since.delete(name)
      for (const name of this.lastError.keys()) if (!(name in desired.conns)) this.lastError.delete(name)
      for (const name of this.waiting.keys()) if (!(name in desired.conns)) this.waiting.delete(name)
      which = Object.keys(desired.conns)
    }
    for (const conn of which) {
      const section = desired.conns[conn]!
      const sas = observed.sasOf(conn)
      const up = connUp(conn, Object.keys((section.children ?? {}) as object), sas)
      if (up) this.lastError.delete(conn)
      const state = up ? 'up' : sas.length > 0 ? 'connecting' : 'down'
      const prev = this.since.get(conn)
      if (!prev || prev.state !== state) this.since.set(conn, { state, at: now })
    }
  }

  /** Connections waiting for an initiate, with why (all peers, also those a scoped pass did not look at). */
  waitingReasons(): ReadonlyMap<string, string> {
    return this.waiting
  }

  /** An operation on `conn` failed (kept until the peer is up or leaves the config). */
  error(conn: string, message: string): void {
    if (this.desired && !(conn in this.desired.conns)) return
    this.lastError.set(conn, message)
  }

  /** charon restarted: what we observed of it is gone. */
  forgetObserved(): void {
    this.observed = null
  }

  /**
   * Per peer, whether this node initiates and how far IKE is (every child up: `up`; an IKE_SA ESTABLISHED:
   * `established`; else `down`): what the datapath prober reads (src/probe/daemon.ts peerTunnel), without building
   * peers()'s entries.
   */
  tunnelStates(): Map<string, { initiator: boolean; ike: 'up' | 'established' | 'down' }> {
    const out = new Map<string, { initiator: boolean; ike: 'up' | 'established' | 'down' }>()
    const d = this.desired
    const o = this.observed
    if (!d || !o) return out
    const initiators = new Set(d.initiate)
    for (const [name, section] of Object.entries(d.conns)) {
      const kids = Object.keys((section.children ?? {}) as object)
      const sas = o.sasOf(name)
      const established = sas.some((s) => s.state === 'ESTABLISHED')
      const up = kids.length === 0 ? established : kids.every((k) => sas.some((s) => s.children.some((c) => c.name === k && UP_STATES.has(c.state))))
      out.set(name, { initiator: initiators.has(name), ike: up ? 'up' : established ? 'established' : 'down' })
    }
    return out
  }

  /**
   * Counts for the peer gauges (what peers() would say, without building every peer's entry). Read on every scrape
   * (twice: two gauges), so it allocates nothing per peer.
   */
  counts(): { desired: number; loaded: number; up: number; childSasUp: number } {
    const d = this.desired
    const o = this.observed
    const out = { desired: 0, loaded: 0, up: 0, childSasUp: 0 }
    if (!d || !o) return out
    for (const name in d.conns) {
      if (name === 'mediator') continue
      out.desired++
      if (o.conns.has(name)) out.loaded++
      const sas = o.sasOf(name)
      const children = d.conns[name]!.children as Record<string, unknown> | undefined
      let kids = 0
      let up = 0
      for (const k in children) {
        kids++
        if (childUp(sas, k)) up++
      }
      out.childSasUp += up
      if (kids === 0 ? ikeEstablished(sas) : up === kids) out.up++
    }
    return out
  }

  /** Per-peer tunnel state from the last observation. */
  peers(): PeerStatus[] {
    const d = this.desired
    const o = this.observed
    if (!d || !o) return []
    const initiators = new Set(d.initiate)
    return Object.entries(d.conns).map(([name, section]) => {
      const kids = Object.keys((section.children ?? {}) as object)
      const sas = o.sasOf(name)
      const children = sas.flatMap((s) => s.children)
      const upKids = kids.filter((k) => children.some((c) => c.name === k && UP_STATES.has(c.state)))
      const established = sas.some((s) => s.state === 'ESTABLISHED')
      let state: PeerStatus['state']
      if (kids.length === 0 ? established : upKids.length === kids.length) state = 'up'
      else if (upKids.length > 0) state = 'partial'
      else if (sas.length > 0) state = 'connecting'
      else if (this.waiting.has(name)) state = 'waiting'
      else state = 'down'
      const since = this.since.get(name)
      return {
        name,
        type: name === 'mediator' ? 'Mediator' : 'Peer',
        initiator: initiators.has(name),
        loaded: o.conns.has(name),
        ike: sas.map((s) => ({ uniqueid: s.uniqueid, state: s.state })),
        children: children.map((c) => ({ name: c.name, uniqueid: c.uniqueid, state: c.state })),
        childrenDesired: kids.length,
        childrenUp: upKids.length,
        state,
        since: isoTime(since?.at ?? this.now()),
        lastError: this.lastError.get(name) ?? null,
        waiting: this.waiting.get(name) ?? null,
        path: state === 'up' || state === 'partial' ? (section.mediated_by !== undefined ? 'mediated' : 'direct') : 'none',
      }
    })
  }
}
