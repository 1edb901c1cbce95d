// Which kernel route and rule notifications start a pass, and with what reason. Pure, so the filter is unit-tested
// without a kernel; run.ts wires it to the netlink monitor.
import { ROUTE_TABLE, RTPROT_FABTUNNEL } from '../fabedge.js'
import { RT_TABLE_MAIN, type Route, type Rule } from '../netlink/index.js'

/**
 * - Table 220: a route of ours added or changed (our own writes echo back and cost one no-op pass), or any route
 *   deleted (ours removed by hand, or a foreign one freeing a slot we want).
 * - Main table, a default route of any protocol added or deleted (DHCP, RA, an operator): the gateway of the xfrm
 *   routes in table 220 may have changed, and the agent re-reads it at every pass.
 */
export function routeTrigger(action: 'new' | 'del', route: Route): string | undefined {
  if (route.table === ROUTE_TABLE && (route.protocol === RTPROT_FABTUNNEL || action === 'del')) return `netlink:route-${action}`
  if (route.table === RT_TABLE_MAIN && (route.dst === '0.0.0.0/0' || route.dst === '::/0')) return 'netlink:gateway'
  return undefined
}

/** Any rule change that involves table 220. */
export function ruleTrigger(action: 'new' | 'del', rule: Rule): string | undefined {
  return rule.table === ROUTE_TABLE ? `netlink:rule-${action}` : undefined
}
