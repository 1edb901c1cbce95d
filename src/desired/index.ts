// Config -> Desired: the whole desired state of a node from one config snapshot. Pure: no I/O, same input, same
// output, so a pass can be recomputed at any time and compared with what is live.
import type { TunnelConfig } from '../config/schema.js'
import { renderRuleset } from '../iptables/render.js'
import { cidrFamily } from '../config/cidr.js'
import { desiredConns, roleOf } from './conns.js'
import { desiredRoutes, desiredRules } from './routes.js'
import { desiredSets } from './sets.js'
import { cloudDesired, cloudRoutes } from './cloud.js'
import { standbyState } from './standby.js'
import { DesiredError, type Desired, type DesiredOptions, type Role } from './types.js'

export * from './types.js'
export { desiredConns, initiatesTo, roleOf, EDGE_DPD_DELAY, FABEDGE_DPD_DELAY } from './conns.js'
export { desiredRoutes, desiredRules } from './routes.js'
export { desiredSets } from './sets.js'
export { cloudDesired, cloudPrefixes, parseConnectorAddresses, type CloudOptions } from './cloud.js'
export { standbyState } from './standby.js'

export function desiredState(config: TunnelConfig, opts: DesiredOptions): Desired {
  const role = roleOf(config)
  const conns = desiredConns(config, opts)
  const podCidrs = (family: 4 | 6): string[] => config.local.subnets.filter((c) => cidrFamily(c) === family)
  const mss = opts.tcpMss ? { mss: opts.tcpMss } : {}
  const drain = (family: 4 | 6): { drainVip?: string } => (role === 'connector' && opts.drainVip && cidrFamily(opts.drainVip) === family ? { drainVip: opts.drainVip } : {})
  const desired: Desired = {
    role,
    conns: conns.conns,
    initiate: conns.initiate,
    initiateChildren: conns.initiateChildren,
    routes: desiredRoutes(config, opts),
    rules: desiredRules(config),
    ipsets: desiredSets(config, role),
    iptables: {
      ipv4: renderRuleset({ role, family: 4, localPodCidrs: podCidrs(4), ...drain(4), ...mss }),
      ipv6: renderRuleset({ role, family: 6, localPodCidrs: podCidrs(6), ...drain(6), ...mss }),
    },
  }
  return opts.standby ? standbyState(desired, opts.standbyVia ? cloudRoutes(config, opts.standbyVia) : undefined) : desired
}

export interface NodeDesiredOptions extends DesiredOptions {
  /** Cloud role: the connector's internal address per family (cloud.ts). */
  connectorAddresses?: { 4?: string; 6?: string }
}

/**
 * The desired state for the role the node runs as: `role` undefined takes it from the config's local endpoint
 * type (connector or edge); an explicit connector or edge must agree with the config; cloud is never implied
 * (a cloud node reads the connector's own tunnels.yaml, so only the flag tells them apart).
 */
export function nodeDesired(config: TunnelConfig, role: Role | undefined, opts: NodeDesiredOptions): Desired {
  if (role === 'cloud') return cloudDesired(config, { connectorAddresses: opts.connectorAddresses ?? {}, ...(opts.tcpMss ? { tcpMss: opts.tcpMss } : {}) })
  if (role !== undefined && role !== roleOf(config)) {
    throw new DesiredError('ROLE_MISMATCH', `--role ${role} but the config's local endpoint ${config.local.name} is of type ${config.local.type}`)
  }
  const { connectorAddresses, ...rest } = opts
  // A connector given --connector-address (with leader election): its standby routes like a cloud node.
  return desiredState(config, connectorAddresses && roleOf(config) === 'connector' ? { ...rest, standbyVia: connectorAddresses } : rest)
}
