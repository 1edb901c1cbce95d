// Config -> Desired: the whole desired state of a node from one config snapshot. Pure: no I/O, same input, same
// output, so a pass can be recomputed at any time and compared with what is live.
import type { TunnelConfig } from '../config/schema.js'
import { renderRuleset } from '../iptables/render.js'
import { cidrFamily } from '../config/cidr.js'
import { desiredConns, roleOf } from './conns.js'
import { desiredRoutes, desiredRules } from './routes.js'
import { desiredSets } from './sets.js'
import type { Desired, DesiredOptions } from './types.js'

export * from './types.js'
export { desiredConns, initiatesTo, roleOf, EDGE_DPD_DELAY, FABEDGE_DPD_DELAY } from './conns.js'
export { desiredRoutes, desiredRules } from './routes.js'
export { desiredSets } from './sets.js'

export function desiredState(config: TunnelConfig, opts: DesiredOptions): Desired {
  const role = roleOf(config)
  const conns = desiredConns(config, opts)
  const podCidrs = (family: 4 | 6): string[] => config.local.subnets.filter((c) => cidrFamily(c) === family)
  return {
    role,
    conns: conns.conns,
    initiate: conns.initiate,
    initiateChildren: conns.initiateChildren,
    routes: desiredRoutes(config, opts),
    rules: desiredRules(config),
    ipsets: desiredSets(config, role),
    iptables: {
      ipv4: renderRuleset({ role, family: 4, localPodCidrs: podCidrs(4) }),
      ipv6: renderRuleset({ role, family: 6, localPodCidrs: podCidrs(6) }),
    },
  }
}
