// The FabEdge wire contract as constants: names and numbers other tools (FabEdge operator, keepalived, runbooks)
// already rely on. See ../shared/fabedge-compat.md. Changing any of these breaks drop-in compatibility.

/** Policy-routing table charon and the agent use for tunnel routes (`ip rule ... lookup 220`). */
export const ROUTE_TABLE = 220
/** Priority of the `from all lookup 220` rule charon creates. */
export const RULE_PRIORITY = 220
/**
 * rtm_protocol stamped on every route the agent writes, so it can tell its own routes from CNI routes and from
 * charon's libipsec routes (proto static). 220 is unassigned in iproute2's rt_protos; `ip route show proto 220`.
 */
export const RTPROT_FABTUNNEL = 220
/**
 * The protocol of the table-220 routes FabEdge's own Go agent and connector write (vishvananda/netlink's
 * `RouteReplace` with no protocol set: `proto unspec`; `pkg/util/route/route.go` EnsureStrongswanRoutes). On a node
 * switched from FabEdge's agent to fabtunnel, such a route in a slot fabtunnel wants is taken over (replaced by ours,
 * the same route with our protocol), so the node does not keep FabEdge's copy for ever. charon's own routes carry
 * `proto static` and are never taken.
 */
export const RTPROT_FABEDGE_GO = 0

export const CHAIN = {
  input: 'FABEDGE-INPUT',
  forward: 'FABEDGE-FORWARD',
  postrouting: 'FABEDGE-POSTROUTING',
} as const

/** ipset names (hash:net). The inet6 twin of each set carries a `6` suffix. */
export const IPSET = {
  remotePodCidr: 'FABEDGE-REMOTE-POD-CIDR',
  remoteNodeCidr: 'FABEDGE-REMOTE-NODE-CIDR',
  localPodCidr: 'FABEDGE-LOCAL-POD-CIDR',
  localNodeCidr: 'FABEDGE-LOCAL-NODE-CIDR',
  remoteCidr: 'FABEDGE-REMOTE-CIDR',
} as const

export type Family = 4 | 6

/** The set name for a family: `FABEDGE-X` for inet, `FABEDGE-X6` for inet6. */
export function ipsetName(base: string, family: Family): string {
  return family === 6 ? `${base}6` : base
}

/** Names of the three children of a peer connection. */
export function childNames(conn: string): { p2p: string; n2p: string; p2n: string } {
  return { p2p: `${conn}-p2p`, n2p: `${conn}-n2p`, p2n: `${conn}-p2n` }
}

export const MEDIATOR_CONN = 'mediator'

/** FabEdge defaults for paths and endpoints. */
export const DEFAULTS = {
  config: '/etc/fabedge/tunnels.yaml',
  vici: 'unix:///var/run/charon.vici',
  cert: '/etc/ipsec.d/certs/tls.crt',
  key: '/etc/ipsec.d/private/tls.key',
  ca: '/etc/ipsec.d/cacerts/ca.crt',
  listen: '127.0.0.1:30306',
} as const
