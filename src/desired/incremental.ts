// Incremental Config -> Desired for a config that changes a few peers at a time (the operator rewrites the whole
// tunnels.yaml for every edge added or removed). Pure in its result: build() returns exactly what nodeDesired()
// returns for the same input (test/unit/desired/incremental.test.ts checks it over random edits), plus a delta that
// names what may differ from the previous result, so a pass plans only that (src/reconcile/subsystem.ts PassScope).
//
// Per peer it keeps the parts derived from that peer (its connection section, whether and what this node
// initiates, its table-220 routes, its set members), keyed by the peer object: the incremental parser
// (ConfigParser) returns unchanged peers as the same objects. Routes and set members are kept with reference
// counts, so a peer's removal removes a member only when no other peer still has it; the sorted lists of the
// desired state are materialized lazily, on first read (a deep pass reads them; a scoped pass only looks up keys).
//
// Anything beyond peers changing (the local endpoint, the mediator, the certificate, gateways, the role, leader
// state, a connector peer) rebuilds through nodeDesired, with a null delta (everything may have changed).
import { cidrFamily, sortCidrs } from '../config/cidr.js'
import type { PeerEndpoint, TunnelConfig } from '../config/schema.js'
import { IPSET, ipsetName, ROUTE_TABLE, RTPROT_FABTUNNEL, type Family } from '../fabedge.js'
import { dict } from '../dict.js'
import { initiatesTo, peerConn, roleOf } from './conns.js'
import { nodeDesired, type NodeDesiredOptions } from './index.js'
import type { Desired, DesiredRoute, Role, ViciSection } from './types.js'

/** What may differ between two successive desired states: connection names, route destinations, set members. */
export interface DesiredDelta {
  conns: Set<string>
  dsts: Set<string>
  /** Set name -> members. */
  members: Map<string, Set<string>>
}

/** Key lookups into a desired state without materializing its sorted lists. */
export interface DesiredIndex {
  route(dst: string): DesiredRoute | undefined
  setHas(set: string, member: string): boolean
}

/** Peers added and removed between two configs (ConfigParser.change). */
export interface PeerChange {
  /** The config the change starts from. */
  from: TunnelConfig | null
  added: readonly PeerEndpoint[]
  removed: readonly PeerEndpoint[]
}

interface PeerPart {
  peer: PeerEndpoint
  name: string
  type: PeerEndpoint['type']
  /** Address families of the peer's subnets and node subnets (bit 1: IPv4, bit 2: IPv6): they decide the rules. */
  families: number
  section: ViciSection
  /** Children this node initiates, or null when it only responds. */
  initiate: string[] | null
  routes: DesiredRoute[]
  /** Set name and member, alternating (flat: one array per peer). */
  members: string[]
}

interface Built {
  key: string
  config: TunnelConfig
  parts: Map<PeerEndpoint, PeerPart>
  routes: Map<string, { route: DesiredRoute; refs: number }>
  sets: Map<string, Map<string, number>>
  /** The connections record, updated in place. */
  conns: Record<string, ViciSection>
  /** Peers with IPv4, IPv6 addresses, and whether the local endpoint or mediator has each: the rules per family. */
  families: { 4: number; 6: number; fixed: number }
  desired: Desired
}

function familiesOf(cidrs: readonly string[]): number {
  let f = 0
  for (const c of cidrs) f |= cidrFamily(c) === 4 ? 1 : 2
  return f
}

function present(f: Built['families']): number {
  return f.fixed | (f[4] > 0 ? 1 : 0) | (f[6] > 0 ? 2 : 0)
}

/**
 * Why a desired state was derived in full: the first build; a cloud node, a standby or a role override (`role`);
 * another certificate, default gateway or option (`context`); another local endpoint or mediator; peers reordered;
 * a connector peer added or removed (it changes the order of connections and what initiates); an address family
 * appearing or disappearing (it changes the rules).
 */
export type FullBuildReason = 'first' | 'role' | 'context' | 'local' | 'mediator' | 'order' | 'connector-peer' | 'family'

export class DesiredBuilder {
  private last: Built | null = null
  /** Where the builder does not apply (cloud, standby): the last full result, reused while its inputs stay. */
  private whole: { key: string; config: TunnelConfig; desired: Desired } | null = null
  /** What the last build did (benchmarks, tests): peers derived anew, and whether it rebuilt everything. */
  /** The last build: peers, peers derived, whether in full and why (what made an incremental build impossible). */
  readonly stats: { peers: number; derived: number; full: boolean; why: FullBuildReason | null } = { peers: 0, derived: 0, full: false, why: null }

  /**
   * The desired state for the config, and what may differ from the previous build (null: anything). `change`, when
   * the caller knows it (ConfigParser.change), names the peers added and removed since the config `from`: then the
   * cost is that of the change alone; without it the peer lists are compared (identity checks, O(peers)).
   *
   * The previous desired state is updated in place (its connections record, route and member counts): a desired
   * state is only valid until the next build, which is how the agent uses it (one pass at a time).
   */
  build(config: TunnelConfig, role: Role | undefined, opts: NodeDesiredOptions, change?: PeerChange | null): { desired: Desired; delta: DesiredDelta | null } {
    const key = this.contextKey(config, role, opts)
    const prev = this.last
    if (key === null) {
      const wholeKey = JSON.stringify([role ?? '', opts])
      if (this.whole?.config === config && this.whole.key === wholeKey) return { desired: this.whole.desired, delta: { conns: new Set(), dsts: new Set(), members: new Map() } }
      const desired = nodeDesired(config, role, opts)
      this.whole = { key: wholeKey, config, desired }
      this.last = null
      Object.assign(this.stats, { peers: config.peers.length, derived: config.peers.length, full: true, why: 'role' })
      return { desired, delta: null }
    }
    this.whole = null
    if (prev === null || prev.key !== key || prev.config.local !== config.local || prev.config.mediator !== config.mediator) {
      const why: FullBuildReason = prev === null ? 'first' : prev.key !== key ? 'context' : prev.config.local !== config.local ? 'local' : 'mediator'
      const desired = nodeDesired(config, role, opts)
      this.last = this.index(key, config, opts, desired)
      Object.assign(this.stats, { peers: config.peers.length, derived: config.peers.length, full: true, why })
      return { desired: this.last.desired, delta: null }
    }
    const delta: DesiredDelta = { conns: new Set(), dsts: new Set(), members: new Map() }
    if (config === prev.config) return { desired: prev.desired, delta }
    let removed: PeerPart[]
    let added: readonly PeerEndpoint[]
    if (change && change.from === prev.config && change.removed.every((p) => prev.parts.has(p)) && change.added.every((p) => !prev.parts.has(p))) {
      removed = change.removed.map((p) => prev.parts.get(p)!)
      added = change.added
    } else {
      const live = new Set(config.peers)
      removed = []
      for (const [peer, part] of prev.parts) if (!live.has(peer)) removed.push(part)
      added = config.peers.filter((p) => !prev.parts.has(p))
      // Same peers in another order: the same state, assembled in the new order.
      if (removed.length === 0 && added.length === 0) {
        if (!config.peers.every((p, i) => p === prev.config.peers[i])) return this.rebuild(config, role, opts, key, 'order')
        prev.config = config
        return { desired: prev.desired, delta }
      }
    }
    // A connector peer changes the order of connections and initiates: rebuild all.
    if (removed.some((p) => p.type === 'Connector') || added.some((p) => p.type === 'Connector')) return this.rebuild(config, role, opts, key, 'connector-peer')
    const addedParts = added.map((peer) => [peer, this.part(config, peer, opts)] as const)
    const families = { ...prev.families }
    for (const p of removed) for (const f of [4, 6] as const) if (p.families & (f === 4 ? 1 : 2)) families[f]--
    for (const [, p] of addedParts) for (const f of [4, 6] as const) if (p.families & (f === 4 ? 1 : 2)) families[f]++
    // A family appearing or disappearing changes the rules: rebuild all.
    if (present(families) !== present(prev.families)) return this.rebuild(config, role, opts, key, 'family')
    const { parts, routes, sets, conns } = prev
    const initiating = new Set<string>()
    for (const part of removed) {
      delta.conns.add(part.name)
      parts.delete(part.peer)
      delete conns[part.name]
      if (part.initiate) initiating.add(part.name)
      for (const r of part.routes) {
        delta.dsts.add(r.dst)
        const e = routes.get(r.dst)!
        if (--e.refs === 0) routes.delete(r.dst)
      }
      forMembers(part, (set, member) => {
        addTo(delta.members, set, member)
        const m = sets.get(set)!
        const n = m.get(member)! - 1
        if (n === 0) m.delete(member)
        else m.set(member, n)
      })
    }
    let initiate = prev.desired.initiate
    let initiateChildren = prev.desired.initiateChildren
    if (initiating.size || addedParts.some(([, p]) => p.initiate)) {
      initiate = initiate.filter((n) => !initiating.has(n))
      initiateChildren = Object.assign(dict<string[]>(), initiateChildren)
      for (const n of initiating) delete initiateChildren[n]
    }
    for (const [peer, part] of addedParts) {
      delta.conns.add(part.name)
      parts.set(peer, part)
      conns[part.name] = part.section
      if (part.initiate) {
        initiate.push(part.name)
        initiateChildren[part.name] = part.initiate
      }
      for (const r of part.routes) {
        delta.dsts.add(r.dst)
        const e = routes.get(r.dst)
        if (e) e.refs++
        else routes.set(r.dst, { route: r, refs: 1 })
      }
      forMembers(part, (set, member) => {
        addTo(delta.members, set, member)
        const m = sets.get(set)!
        m.set(member, (m.get(member) ?? 0) + 1)
      })
    }
    prev.families = families
    prev.config = config
    prev.desired = this.view(prev.desired, conns, initiate, initiateChildren, routes, sets)
    Object.assign(this.stats, { peers: config.peers.length, derived: added.length, full: false, why: null })
    return { desired: prev.desired, delta }
  }

  private rebuild(config: TunnelConfig, role: Role | undefined, opts: NodeDesiredOptions, key: string, why: FullBuildReason): { desired: Desired; delta: null } {
    this.last = this.index(key, config, opts, nodeDesired(config, role, opts))
    Object.assign(this.stats, { peers: config.peers.length, derived: config.peers.length, full: true, why })
    return { desired: this.last.desired, delta: null }
  }

  /** Everything but the peers that decides the derivation; null where the builder does not apply (full every time). */
  private contextKey(config: TunnelConfig, role: Role | undefined, opts: NodeDesiredOptions): string | null {
    const r = role ?? roleOf(config)
    if (r === 'cloud' || (role !== undefined && role !== roleOf(config)) || opts.standby || opts.standbyVia) return null
    return JSON.stringify([r, opts.datapath, opts.certPem ?? '', opts.gateways ?? {}, opts.dpdDelay ?? '', opts.drainVip ?? '', opts.connectorAddresses ?? {}, opts.tcpMss ?? null])
  }

  /** The per-peer parts and counts of a desired state computed in full. */
  private index(key: string, config: TunnelConfig, opts: NodeDesiredOptions, desired: Desired): Built {
    const parts = new Map<PeerEndpoint, PeerPart>()
    const routes = new Map<string, { route: DesiredRoute; refs: number }>()
    const sets = new Map<string, Map<string, number>>()
    for (const [name, s] of Object.entries(desired.ipsets)) sets.set(name, new Map(s.members.map((m) => [m, 0])))
    for (const r of desired.routes) routes.set(r.dst, { route: r, refs: 0 })
    for (const peer of config.peers) {
      const part = this.part(config, peer, opts, desired.conns[peer.name])
      // The same route objects as the desired state's list (memory: one object per route).
      part.routes = part.routes.map((r) => routes.get(r.dst)?.route ?? r)
      parts.set(peer, part)
      for (const r of part.routes) routes.get(r.dst)!.refs++
      forMembers(part, (set, member) => sets.get(set)!.set(member, sets.get(set)!.get(member)! + 1))
    }
    // Members no peer contributes (the local sets): held by the context, never removed by a peer.
    for (const m of sets.values()) for (const [member, n] of m) if (n === 0) m.set(member, Number.POSITIVE_INFINITY)
    const families = { 4: 0, 6: 0, fixed: familiesOf([...config.local.subnets, ...config.local.nodeSubnets]) }
    for (const p of parts.values()) {
      if (p.families & 1) families[4]++
      if (p.families & 2) families[6]++
    }
    // The full build's own records become the ones updated in place (nothing else holds that desired state).
    const conns = desired.conns
    const view = this.view(desired, conns, desired.initiate, desired.initiateChildren, routes, sets, desired.routes, desired.ipsets)
    return { key, config, parts, routes, sets, conns, families, desired: view }
  }

  private part(config: TunnelConfig, peer: PeerEndpoint, opts: NodeDesiredOptions, section?: ViciSection): PeerPart {
    const s = section ?? peerConn(config, peer, opts)
    const kids = Object.keys(s.children as ViciSection)
    const role = roleOf(config)
    const routes: DesiredRoute[] = opts.datapath !== 'xfrm' ? [] : peer.subnets.map((dst) => {
      const family: Family = cidrFamily(dst)
      const route: DesiredRoute = { dst, family, table: ROUTE_TABLE, protocol: RTPROT_FABTUNNEL }
      const via = opts.gateways?.[family]
      if (via) route.via = via
      return route
    })
    // Kept per peer: copied at exactly its length below (pushed, it carries spare capacity: 152 B for 4 entries).
    const members: string[] = []
    const put = (base: string, cidrs: readonly string[]): void => {
      for (const c of cidrs) members.push(ipsetName(base, cidrFamily(c)), c)
    }
    if (role === 'connector') {
      put(IPSET.remotePodCidr, peer.subnets)
      if (peer.type === 'EdgeNode') put(IPSET.remoteNodeCidr, peer.nodeSubnets)
    } else {
      put(IPSET.remoteCidr, [...peer.subnets, ...peer.nodeSubnets])
    }
    return { peer, name: peer.name, type: peer.type, families: familiesOf([...peer.subnets, ...peer.nodeSubnets]), section: s, initiate: initiatesTo(config, peer) && kids.length ? kids : null, routes, members: members.slice() }
  }

  /**
   * A desired state over the counts: routes and set members sorted on first read (or the lists given, when they
   * were computed in full), with an index for key lookups.
   */
  private view(base: Desired, conns: Record<string, ViciSection>, initiate: string[], initiateChildren: Record<string, string[]>, routes: Built['routes'], sets: Built['sets'], routeList?: DesiredRoute[], ipsetLists?: Desired['ipsets']): Desired {
    const ipsets: Desired['ipsets'] = {}
    for (const [name, s] of Object.entries(base.ipsets)) {
      const counts = sets.get(name)!
      if (ipsetLists) {
        ipsets[name] = ipsetLists[name]!
        continue
      }
      let members: string[] | null = null
      ipsets[name] = {
        family: s.family,
        get members(): string[] {
          return (members ??= sortCidrs(counts.keys()))
        },
      }
    }
    let list: DesiredRoute[] | null = routeList ?? null
    return {
      role: base.role,
      rules: base.rules,
      iptables: base.iptables,
      conns,
      initiate,
      initiateChildren,
      get routes(): DesiredRoute[] {
        if (list === null) {
          const byDst = new Map([...routes.values()].map((e) => [e.route.dst, e.route]))
          list = sortCidrs(byDst.keys()).map((d) => byDst.get(d)!)
        }
        return list
      },
      ipsets,
      index: {
        route: (dst) => routes.get(dst)?.route,
        setHas: (set, member) => sets.get(set)?.has(member) ?? false,
      },
    }
  }
}

function forMembers(part: PeerPart, fn: (set: string, member: string) => void): void {
  for (let i = 0; i < part.members.length; i += 2) fn(part.members[i]!, part.members[i + 1]!)
}

function addTo(m: Map<string, Set<string>>, key: string, value: string): void {
  let s = m.get(key)
  if (!s) m.set(key, (s = new Set()))
  s.add(value)
}
