// Desired state of a cloud node: a plain cluster node that is neither the connector nor an edge, reading the
// connector's tunnels.yaml. It replaces FabEdge's memberlist-fed cloud-agent (pkg/cloud-agent/cloud_agent.go and
// iptables.go, v1.0.0), and a standby connector can use it too (FabEdge's non-leader connector acts as a
// cloud-agent: pkg/connector/manager.go `handleMessage`). Pure.
//
// - Routes: every remote prefix behind the connector's tunnels (each peer's `subnets`, i.e. edge pod CIDRs and
//   remote clusters' pod and service CIDRs, and each peer's `nodeSubnets`) as `<prefix> via <connector address>
//   table 220 proto 220`. FabEdge's cloud-agent routes the connector's table-220 destinations (routing.go
//   `getRemotePrefixes`) in table 220 via the connector (`syncRoutes`); here they come from the same config the
//   connector derives them from, so no memberlist is needed. The connector's own `subnets`/`nodeSubnets` (this
//   cluster) are never routed: they are local to the cluster network.
// - Rule `from all lookup 220` priority 220 per family in use (cloud_agent.go `ensureStrongswanRouteRule`).
// - ipset FABEDGE-REMOTE-POD-CIDR (inet) / FABEDGE-REMOTE-POD-CIDR6 (inet6) holding those prefixes
//   (iptables.go `ensureIPSet(cp.RemotePrefixes)`), and the chains of iptables.go `tmpl` (iptables/render.ts).
// - No connections: a cloud node runs no charon.
import { cidrFamily, parseIp, sortCidrs } from '../config/cidr.js'
import type { TunnelConfig } from '../config/schema.js'
import { ROUTE_TABLE, RTPROT_FABTUNNEL, type Family } from '../fabedge.js'
import { renderRuleset } from '../iptables/render.js'
import type { TcpMss } from '../iptables/mss.js'
import { desiredRules } from './routes.js'
import { desiredSets } from './sets.js'
import { DesiredError, type Desired, type DesiredRoute } from './types.js'

export interface CloudOptions {
  /**
   * The next hop per family: the connectors' internal VIP in HA, or the single connector node's internal IP.
   * A family with remote prefixes but no address gets routes without `via`, which the routes subsystem reports.
   */
  connectorAddresses: { 4?: string; 6?: string }
  /** TCP MSS clamping (iptables/mss.ts: a cloud node clamps only to a fixed value); absent: none. */
  tcpMss?: TcpMss
}

/** Every remote prefix behind the connector, canonical and sorted (pods, services, node IPs). */
export function cloudPrefixes(config: TunnelConfig): string[] {
  return sortCidrs(new Set(config.peers.flatMap((p) => [...p.subnets, ...p.nodeSubnets])))
}

/** Every remote prefix via the connector address of its family (a cloud node; a standby connector, standby.ts). */
export function cloudRoutes(config: TunnelConfig, connectorAddresses: { 4?: string; 6?: string }): DesiredRoute[] {
  return cloudPrefixes(config).map((dst): DesiredRoute => {
    const family: Family = cidrFamily(dst)
    const route: DesiredRoute = { dst, family, table: ROUTE_TABLE, protocol: RTPROT_FABTUNNEL, viaFrom: 'connector-address' }
    const via = connectorAddresses[family]
    if (via) route.via = via
    return route
  })
}

/** Config (the connector's tunnels.yaml) + connector address(es) -> the desired state of a cloud node. */
export function cloudDesired(config: TunnelConfig, opts: CloudOptions): Desired {
  if (config.local.type !== 'Connector') {
    throw new DesiredError('ROLE_MISMATCH', `--role cloud needs the connector's tunnels.yaml (local type Connector), got local type ${config.local.type} (${config.local.name})`)
  }
  const routes = cloudRoutes(config, opts.connectorAddresses)
  const mss = opts.tcpMss ? { mss: opts.tcpMss } : {}
  return {
    role: 'cloud',
    conns: {},
    initiate: [],
    initiateChildren: {},
    routes,
    rules: desiredRules(config),
    ipsets: desiredSets(config, 'cloud'),
    iptables: {
      ipv4: renderRuleset({ role: 'cloud', family: 4, localPodCidrs: [], ...mss }),
      ipv6: renderRuleset({ role: 'cloud', family: 6, localPodCidrs: [], ...mss }),
    },
  }
}

export type ConnectorAddressesResult = { ok: true; addresses: { 4?: string; 6?: string } } | { ok: false; message: string }

/**
 * Parses `--connector-address`: one address, or two separated by a comma for a dual-stack cluster (one per family:
 * each family's prefixes go via that family's address). Returns canonical text. Refuses what cannot be a next hop
 * in table 220: not an address, a prefix, loopback, unspecified, multicast, broadcast, IPv6 link-local (which
 * would need a device), or two addresses of one family.
 */
export function parseConnectorAddresses(text: string): ConnectorAddressesResult {
  const out: { 4?: string; 6?: string } = {}
  const items = text.split(',').map((s) => s.trim())
  if (items.length === 0 || items.some((s) => s === '')) return { ok: false, message: `--connector-address needs one address, or an IPv4 and an IPv6 address separated by a comma, got "${text}"` }
  for (const item of items) {
    const addr = parseIp(item)
    if (!addr) return { ok: false, message: `--connector-address: "${item}" is not an IP address${item.includes('/') ? ' (give the address, not a prefix)' : ''}` }
    const range = addr.range()
    if (['unspecified', 'loopback', 'multicast', 'broadcast', ...(addr.kind() === 'ipv6' ? ['linkLocal'] : [])].includes(range)) {
      return { ok: false, message: `--connector-address: ${item} is a ${range} address, not the connector's internal address` }
    }
    const family: Family = addr.kind() === 'ipv4' ? 4 : 6
    if (out[family]) return { ok: false, message: `--connector-address: two IPv${family} addresses (${out[family]}, ${item}); give at most one per family` }
    out[family] = addr.toString()
  }
  return { ok: true, addresses: out }
}
