// Which address pair probes a peer through its tunnel. Pure: from the config in force and this node's addresses.
//
// The target must be an address the peer itself answers for, that only the tunnel reaches: the first host of one
// of the peer's pod subnets (FabEdge's edge CNI bridge gateway, the `.1` of the node's pod CIDR), most specific
// subnet first, else a node IP of the peer. Up to MAX_CANDIDATES pairs: the prober tries them in turn until one
// answers and then keeps it (a connector's subnets start with the service CIDR, whose first host may be silent).
// The source must be one of this node's addresses inside the local selectors, so the probe and its reply travel in
// a CHILD_SA: preferably the first host of a local pod subnet (our own CNI gateway), else any local address in a
// local pod subnet, else the node IP. The pair must be one a FabEdge child carries: pods-pods (p2p), node-pods
// (n2p) or pods-node (p2n); node-node has no child.
import ipaddr from 'ipaddr.js'
import type { TunnelConfig, Endpoint } from '../config/schema.js'
import { parseCidr, type Cidr } from '../config/cidr.js'

export interface ProbePair {
  family: 4 | 6
  src: string
  dst: string
}

export type TargetChoice = { pairs: ProbePair[]; reason?: string }

function cidrs(list: readonly string[]): Cidr[] {
  return list.flatMap((c) => {
    const r = parseCidr(c, true)
    return r.ok ? [r.cidr] : []
  })
}

/** The first host of a subnet (the address itself for /32, /128 and /31, /127). */
export function firstHost(c: Cidr): string {
  const bytes = [...c.bytes]
  const bits = c.family === 4 ? 32 : 128
  if (bits - c.prefix >= 2) {
    for (let i = bytes.length - 1; i >= 0; i--) {
      if (bytes[i]! < 255) {
        bytes[i]!++
        break
      }
      bytes[i] = 0
    }
  }
  return ipaddr.fromByteArray(bytes).toString()
}

function contains(c: Cidr, address: string): boolean {
  const a = ipaddr.parse(address)
  if ((a.kind() === 'ipv4') !== (c.family === 4)) return false
  const net = ipaddr.fromByteArray(c.bytes)
  return a.match(net, c.prefix)
}

/** Local source candidates, best first: first hosts of local pod subnets, other addresses in them, node IPs. */
function sources(local: Endpoint, addrs: readonly string[], family: 4 | 6): Array<{ address: string; kind: 'pods' | 'node' }> {
  const fam = addrs.filter((a) => ipaddr.isValid(a) && (ipaddr.parse(a).kind() === 'ipv4') === (family === 4)).map((a) => ipaddr.parse(a).toString())
  const pods = cidrs(local.subnets).filter((c) => c.family === family)
  const nodes = cidrs(local.nodeSubnets).filter((c) => c.family === family)
  const gw = new Set(pods.map(firstHost))
  const inPods = fam.filter((a) => pods.some((c) => contains(c, a)))
  const out = [
    ...inPods.filter((a) => gw.has(a)).map((address) => ({ address, kind: 'pods' as const })),
    ...inPods.filter((a) => !gw.has(a)).map((address) => ({ address, kind: 'pods' as const })),
    ...fam.filter((a) => !inPods.includes(a) && nodes.some((c) => contains(c, a))).map((address) => ({ address, kind: 'node' as const })),
  ]
  return out.filter((s, i) => out.findIndex((x) => x.address === s.address) === i)
}

/** Candidate targets per peer, tried in turn until one answers. */
export const MAX_CANDIDATES = 4

/**
 * The probe pairs of one peer, best first (the prober moves to the next while a target never answered), or why
 * there is none. `addrs`: this node's addresses (bare).
 */
export function probeTarget(local: Endpoint, peer: Endpoint, addrs: readonly string[], srcsOf: (family: 4 | 6) => ReturnType<typeof sources> = (f) => sources(local, addrs, f)): TargetChoice {
  const pairs: ProbePair[] = []
  for (const family of [4, 6] as const) {
    // Most specific pod subnet first: a per-node pod CIDR has its gateway on the peer itself, a cluster-wide or
    // service CIDR (a connector lists both) may have nothing at its first host.
    const pods = cidrs(peer.subnets).filter((c) => c.family === family).map((c, i) => ({ c, i })).sort((a, b) => b.c.prefix - a.c.prefix || a.i - b.i)
    const dsts = [
      ...pods.map(({ c }) => ({ address: firstHost(c), kind: 'pods' as const })),
      ...cidrs(peer.nodeSubnets).filter((c) => c.family === family).map((c) => ({ address: firstHost(c), kind: 'node' as const })),
    ]
    const srcs = srcsOf(family)
    for (const d of dsts) {
      const s = srcs.find((x) => x.kind === 'pods' || d.kind === 'pods')
      if (s) pairs.push({ family, src: s.address, dst: d.address })
    }
  }
  if (pairs.length) return { pairs: pairs.slice(0, MAX_CANDIDATES) }
  const hasPeer = peer.subnets.length + peer.nodeSubnets.length > 0
  return { pairs: [], reason: hasPeer ? 'no local address inside the local subnets/nodeSubnets to probe from' : 'the peer has no subnets or nodeSubnets to probe' }
}

/** Every peer's probe pair from the config in force. */
// Per peer object (the config parser returns unchanged peers as the same objects): a one-peer change computes one
// peer's pairs, not 10,000. Valid while the local endpoint and this node's addresses stay the same.
const targetMemo = new WeakMap<Endpoint, { local: Endpoint; addrs: readonly string[]; choice: TargetChoice }>()

export function probeTargets(config: TunnelConfig, addrs: readonly string[]): Map<string, TargetChoice> {
  // This node's source candidates are the same for every peer: computed once per family.
  const srcs = { 4: null as ReturnType<typeof sources> | null, 6: null as ReturnType<typeof sources> | null }
  const srcsOf = (f: 4 | 6): ReturnType<typeof sources> => (srcs[f] ??= sources(config.local, addrs, f))
  return new Map(config.peers.map((p) => {
    const memo = targetMemo.get(p)
    if (memo && memo.local === config.local && memo.addrs === addrs) return [p.name, memo.choice]
    const choice = probeTarget(config.local, p, addrs, srcsOf)
    targetMemo.set(p, { local: config.local, addrs, choice })
    return [p.name, choice]
  }))
}
