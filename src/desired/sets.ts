// Desired ipset members per FabEdge set name (../shared/fabedge-compat.md §4). Pure. Every set the role uses is
// present for both families, possibly empty, because the iptables rules reference the inet and inet6 twins.
import { IPSET, ipsetName, type Family } from '../fabedge.js'
import { cidrFamily, sortCidrs } from '../config/cidr.js'
import type { TunnelConfig } from '../config/schema.js'
import type { Role } from './types.js'

export type DesiredSets = Record<string, { family: Family; members: string[] }>

function put(out: DesiredSets, base: string, cidrs: string[]): void {
  for (const family of [4, 6] as const) {
    out[ipsetName(base, family)] = { family, members: sortCidrs(cidrs.filter((c) => cidrFamily(c) === family)) }
  }
}

export function desiredSets(config: TunnelConfig, role: Role): DesiredSets {
  const out: DesiredSets = {}
  if (role === 'connector') {
    put(out, IPSET.remotePodCidr, config.peers.flatMap((p) => p.subnets))
    // Remote connectors' node IPs are another cluster's business: only this cluster's edge nodes count.
    put(out, IPSET.remoteNodeCidr, config.peers.filter((p) => p.type === 'EdgeNode').flatMap((p) => p.nodeSubnets))
    put(out, IPSET.localPodCidr, config.local.subnets)
    put(out, IPSET.localNodeCidr, config.local.nodeSubnets)
  } else if (role === 'cloud') {
    // FabEdge's cloud-agent fills this one set with every prefix it routes to the connector (ConnectorPrefixes
    // RemotePrefixes = the connector's table 220): pods, services and node IPs behind the tunnels.
    put(out, IPSET.remotePodCidr, config.peers.flatMap((p) => [...p.subnets, ...p.nodeSubnets]))
  } else {
    put(out, IPSET.remoteCidr, config.peers.flatMap((p) => [...p.subnets, ...p.nodeSubnets]))
  }
  return out
}
