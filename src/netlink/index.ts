// fabtunnel/netlink: routes, rules, links, addresses and ipsets over netlink, plus a change monitor. Pure codecs
// (codec.ts and the Request builders / decoders of each object file) are exported for tests and tools.
export { NetlinkError, errnoName, type NetlinkErrorKind } from './errors.js'
export { NetlinkSocket, nativeTransport, type Outcome, type Request, type SocketOptions, type Transport } from './socket.js'
export { NETLINK_NETFILTER, NETLINK_ROUTE, type NlMsg } from './codec.js'
export { canonicalCidr, parseCidr, parseIp, type Family } from './ip.js'
export {
  RT_TABLE_MAIN, defaultGateway, routeApply, routeDel, routeList, routePlan, routeReplace, routeResolveDevs, type Route, type RouteFilter, type RouteOp, type RoutePlan, type RouteResult, type RouteSpec,
} from './route.js'
export { ruleAdd, ruleDel, ruleEnsure, ruleList, type Rule, type RuleResult, type RuleSpec } from './rule.js'
export { linkByName, linkList, type Link } from './link.js'
export { addrList, type Addr } from './addr.js'
export {
  ipsetAdd, ipsetAddMany, ipsetCreate, ipsetDel, ipsetDelMany, ipsetDestroy, ipsetFlush, ipsetList, ipsetPlan,
  ipsetSwap, ipsetTest, type IpsetInfo, type IpsetResult,
} from './ipset.js'
export { Monitor, RTNLGRP, decodeEvent, type MonitorEvent, type MonitorEvents, type MonitorOptions } from './monitor.js'

import { NETLINK_NETFILTER, NETLINK_ROUTE } from './codec.js'
import { NetlinkSocket, type SocketOptions } from './socket.js'

/** A NETLINK_ROUTE socket for routes, rules, links and addresses. */
export function openRoute(opts: SocketOptions = {}): NetlinkSocket {
  return NetlinkSocket.open(NETLINK_ROUTE, opts)
}

/** A NETLINK_NETFILTER socket for ipsets. */
export function openNetfilter(opts: SocketOptions = {}): NetlinkSocket {
  return NetlinkSocket.open(NETLINK_NETFILTER, opts)
}
