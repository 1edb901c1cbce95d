// Shapes of the desired state: what a node should look like, derived purely from one config snapshot.
import type { Family } from '../fabedge.js'
import type { TcpMss } from '../iptables/mss.js'

/** A VICI message section as sent with `load-conn`: string values, string lists and nested sections. */
export interface ViciSection {
  [key: string]: string | string[] | ViciSection
}

/**
 * What the node is: a connector and an edge run tunnels; a cloud node (a plain cluster node, FabEdge's cloud-agent)
 * runs none and routes every remote prefix through the connector (src/desired/cloud.ts).
 */
export type Role = 'connector' | 'edge' | 'cloud'
export type Datapath = 'xfrm' | 'libipsec'

export interface DesiredRoute {
  /** Canonical destination CIDR. */
  dst: string
  family: Family
  table: number
  /** rtm_protocol the route is written with, so only our own routes are ever changed. */
  protocol: number
  /**
   * Next hop: the family's default gateway as the agent read it from the main table for this desired state.
   * Omitted when that family has no default gateway: the routes subsystem then cannot program the route and
   * reports it as an error naming the family.
   */
  via?: string
  /**
   * Where `via` comes from: the main table's default gateway (connector, edge; the default) or the
   * `--connector-address` of the family (cloud). Names the missing or unreachable next hop in errors.
   */
  viaFrom?: 'default-gateway' | 'connector-address'
}

export interface DesiredRule {
  family: Family
  priority: number
  table: number
}

export interface DesiredOptions {
  datapath: Datapath
  /** The local certificate PEM; sent inline in each connection's `local.certs` as FabEdge does. */
  certPem?: string
  /** Default gateways of the main table per family (xfrm); a family without one gets routes without `via`. */
  gateways?: { 4?: string; 6?: string }
  /**
   * `dpd_delay` of the connections this node initiates, as charon takes it (whole seconds, e.g. `3s`; `0s`: no DPD).
   * Default EDGE_DPD_DELAY.
   */
  dpdDelay?: string
  /**
   * Connector only: this node is a standby (another connector leads). It keeps the warm part (credentials,
   * every connection loaded, responder-only toward edges) and drops what only the leader may have: initiators,
   * table-220 routes, and the remote members of the steering ipsets. See standby.ts.
   */
  standby?: boolean
  /**
   * Connector standby only: route every remote prefix via these addresses (the connectors' internal VIP), exactly
   * as a cloud node does (cloud.ts), instead of having no tunnel route at all.
   */
  standbyVia?: { 4?: string; 6?: string }
  /** Connector only: draining while holding this VIP (canonical address); see iptables drainRules. */
  drainVip?: string
  /** TCP MSS clamping of SYNs to and from remote prefixes (iptables/mss.ts); absent: none. */
  tcpMss?: TcpMss
}

export interface Desired {
  role: Role
  /** Connection name -> the exact `load-conn` section. */
  conns: Record<string, ViciSection>
  /** Connections to initiate, in order (the mediator first). */
  initiate: string[]
  /** Children of each initiated connection to bring up. */
  initiateChildren: Record<string, string[]>
  routes: DesiredRoute[]
  rules: DesiredRule[]
  /** FabEdge set name -> sorted canonical members; every set of the role is present, possibly empty. */
  ipsets: Record<string, { family: Family; members: string[] }>
  iptables: { ipv4: string; ipv6: string }
  /**
   * Key lookups without reading the sorted lists (set by DesiredBuilder, src/desired/incremental.ts): a scoped pass
   * plans only the keys of its scope.
   */
  index?: { route(dst: string): DesiredRoute | undefined; setHas(set: string, member: string): boolean }
}

/** The desired state cannot be derived from this config for this role (e.g. `--role` contradicts the config). */
export class DesiredError extends Error {
  override readonly name = 'DesiredError'
  constructor(readonly code: 'ROLE_MISMATCH', message: string) {
    super(message)
  }
}
