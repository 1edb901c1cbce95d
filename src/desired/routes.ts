// Desired policy routing (../shared/fabedge-compat.md §3). Pure.
// - xfrm (kernel ESP, production): the agent owns `<peer subnet> via <default gateway> table 220` for every peer
//   subnet; packets then hit the IPsec policies. Only subnets (pod and service CIDRs) get routes, as in FabEdge.
// - libipsec (userspace ESP): charon installs `<remote_ts> dev ipsec0` itself; the agent adds no tunnel routes
//   and must not fight charon's.
// Both: the `from all lookup 220` rule at priority 220, for each family that carries tunnel traffic.
import { ROUTE_TABLE, RTPROT_FABTUNNEL, RULE_PRIORITY, type Family } from '../fabedge.js'
import { cidrFamily, sortCidrs } from '../config/cidr.js'
import type { TunnelConfig } from '../config/schema.js'
import type { DesiredOptions, DesiredRoute, DesiredRule } from './types.js'

export function desiredRoutes(config: TunnelConfig, opts: DesiredOptions): DesiredRoute[] {
  if (opts.datapath !== 'xfrm') return []
  const dsts = sortCidrs(config.peers.flatMap((p) => p.subnets))
  return dsts.map((dst) => {
    const family = cidrFamily(dst)
    const route: DesiredRoute = { dst, family, table: ROUTE_TABLE, protocol: RTPROT_FABTUNNEL }
    const via = opts.gateways?.[family]
    if (via) route.via = via
    return route
  })
}

export function desiredRules(config: TunnelConfig): DesiredRule[] {
  const all = [config.local, ...config.peers].flatMap((e) => [...e.subnets, ...e.nodeSubnets])
  const families = new Set<Family>(all.map(cidrFamily))
  return ([4, 6] as const)
    .filter((f) => families.has(f))
    .map((family) => ({ family, priority: RULE_PRIORITY, table: ROUTE_TABLE }))
}
