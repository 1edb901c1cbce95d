// Routes over rtnetlink (RTM_NEWROUTE / RTM_DELROUTE / RTM_GETROUTE), IPv4 and IPv6, and the ownership rule that
// keeps the agent off routes it did not write: every route it writes carries its own rtm_protocol
// (RTPROT_FABTUNNEL, 220), and listing, planning and deleting filter on it. Spec: rtnetlink(7), linux/rtnetlink.h.
import { RTPROT_FABTUNNEL, ROUTE_TABLE } from '../fabedge.js'
import { attr, attrMap, attrU32, NLM_F_CREATE, NLM_F_REPLACE, readU32, type NlMsg } from './codec.js'
import { NetlinkError } from './errors.js'
import { afOf, familyOfAf, ipToString, parseCidr, parseIp, type Family } from './ip.js'
import { linkList, validateIfname } from './link.js'
import type { NetlinkSocket, Request } from './socket.js'

export const RTM_NEWROUTE = 24
export const RTM_DELROUTE = 25
export const RTM_GETROUTE = 26

export const RT_TABLE_MAIN = 254
const RT_TABLE_COMPAT = 252

const RTMSG_LEN = 12
const RTA_DST = 1
const RTA_OIF = 4
const RTA_GATEWAY = 5
const RTA_PRIORITY = 6
const RTA_PREFSRC = 7
const RTA_TABLE = 15
const RTA_VIA = 18

const RTN_UNICAST = 1
const RT_SCOPE_UNIVERSE = 0
const RT_SCOPE_LINK = 253
const RT_SCOPE_NOWHERE = 255
const RTM_F_CLONED = 0x200

/** A route as the kernel reports it. */
export interface Route {
  family: Family
  /** Canonical destination CIDR; the default route is `0.0.0.0/0` or `::/0`. */
  dst: string
  via?: string
  /** Output interface index. */
  dev?: number
  /** Preferred source address. */
  src?: string
  table: number
  protocol: number
  metric?: number
  scope: number
  type: number
}

/** A route to write or delete. */
export interface RouteSpec {
  dst: string
  via?: string
  /** Interface index, or a name resolved through `ip link` before anything is sent. */
  dev?: number | string
  src?: string
  /** Default 220 (FabEdge's table). */
  table?: number
  /** Default RTPROT_FABTUNNEL; the mark that makes a route ours. */
  protocol?: number
  metric?: number
}

export type RouteOp = { op: 'replace'; route: RouteSpec } | { op: 'del'; route: RouteSpec }

/** Per-op result: refusals are values; a delete of a route that is not there is `reason: 'missing'`. */
export type RouteResult = { ok: true } | { ok: false; reason: 'missing' | 'refused'; error: NetlinkError }

export interface RouteFilter {
  table?: number
  protocol?: number
  family?: Family
}

interface Resolved {
  family: Family
  dst: Buffer
  dstLen: number
  via?: Buffer
  dev?: number
  src?: Buffer
  table: number
  protocol: number
  metric?: number
}

function checkU32(v: number, what: string, min = 0): number {
  if (!Number.isInteger(v) || v < min || v > 0xffffffff) throw NetlinkError.input(`invalid ${what} ${v}`)
  return v
}

/** Validates a spec whose dev is already an ifindex; every address must match the destination's family. */
export function resolveRoute(spec: RouteSpec): Resolved {
  const dst = parseCidr(spec.dst)
  const r: Resolved = {
    family: dst.family,
    dst: dst.bytes,
    dstLen: dst.len,
    table: checkU32(spec.table ?? ROUTE_TABLE, 'table', 1),
    protocol: spec.protocol ?? RTPROT_FABTUNNEL,
  }
  if (!Number.isInteger(r.protocol) || r.protocol < 0 || r.protocol > 255) throw NetlinkError.input(`invalid protocol ${r.protocol}`)
  if (spec.via !== undefined) {
    const via = parseIp(spec.via)
    if (via.family !== dst.family) throw NetlinkError.input(`gateway ${spec.via} is not of the family of ${spec.dst}`)
    r.via = via.bytes
  }
  if (spec.src !== undefined) {
    const src = parseIp(spec.src)
    if (src.family !== dst.family) throw NetlinkError.input(`source ${spec.src} is not of the family of ${spec.dst}`)
    r.src = src.bytes
  }
  if (spec.dev !== undefined) {
    if (typeof spec.dev !== 'number') throw NetlinkError.input(`device ${String(spec.dev)} not resolved to an ifindex`)
    r.dev = checkU32(spec.dev, 'ifindex', 1)
  }
  if (spec.metric !== undefined) r.metric = checkU32(spec.metric, 'metric')
  return r
}

function rtmsg(family: number, dstLen: number, table: number, protocol: number, scope: number, type: number): Buffer {
  const b = Buffer.alloc(RTMSG_LEN)
  b[0] = family
  b[1] = dstLen
  b[4] = table < 256 ? table : RT_TABLE_COMPAT
  b[5] = protocol
  b[6] = scope
  b[7] = type
  return b
}

function routeAttrs(r: Resolved): Buffer[] {
  const parts = [attrU32(RTA_TABLE, r.table)]
  if (r.dstLen > 0) parts.push(attr(RTA_DST, r.dst))
  if (r.via) parts.push(attr(RTA_GATEWAY, r.via))
  if (r.dev !== undefined) parts.push(attrU32(RTA_OIF, r.dev))
  if (r.src) parts.push(attr(RTA_PREFSRC, r.src))
  if (r.metric !== undefined) parts.push(attrU32(RTA_PRIORITY, r.metric))
  return parts
}

/** RTM_NEWROUTE with CREATE|REPLACE, built like `ip route replace`. Pure. */
export function routeReplaceRequest(spec: RouteSpec): Request {
  const r = resolveRoute(spec)
  // iproute2's rule: an IPv4 route without a gateway is on-link (scope link); everything else is universe.
  const scope = r.family === 4 && !r.via ? RT_SCOPE_LINK : RT_SCOPE_UNIVERSE
  const hdr = rtmsg(afOf(r.family), r.dstLen, r.table, r.protocol, scope, RTN_UNICAST)
  return { type: RTM_NEWROUTE, flags: NLM_F_CREATE | NLM_F_REPLACE, payload: Buffer.concat([hdr, ...routeAttrs(r)]) }
}

/**
 * RTM_DELROUTE, built like `ip route del`: scope NOWHERE matches any scope, and the protocol is always sent so
 * the kernel itself refuses to delete a route of another protocol. Pure.
 */
export function routeDelRequest(spec: RouteSpec): Request {
  const r = resolveRoute(spec)
  const hdr = rtmsg(afOf(r.family), r.dstLen, r.table, r.protocol, RT_SCOPE_NOWHERE, 0)
  return { type: RTM_DELROUTE, payload: Buffer.concat([hdr, ...routeAttrs(r)]) }
}

/** RTM_GETROUTE dump; with strict checking the kernel itself filters by table and protocol. Pure. */
export function routeListRequest(filter: RouteFilter = {}): Request {
  const table = filter.table ?? 0
  const hdr = rtmsg(filter.family ? afOf(filter.family) : 0, 0, table, filter.protocol ?? 0, 0, 0)
  const parts = [hdr]
  if (table) parts.push(attrU32(RTA_TABLE, table))
  return { type: RTM_GETROUTE, payload: Buffer.concat(parts) }
}

/** Decodes RTM_NEWROUTE / RTM_DELROUTE; undefined for families other than inet and inet6 (MPLS, ...). */
export function decodeRoute(m: NlMsg): (Route & { cloned: boolean }) | undefined {
  const p = m.payload
  if (p.length < RTMSG_LEN) throw NetlinkError.decode(`rtmsg too short (${p.length} bytes)`)
  const family = familyOfAf(p[0]!)
  if (!family) return undefined
  const dstLen = p[1]!
  if (dstLen > (family === 4 ? 32 : 128)) throw NetlinkError.decode(`route prefix length ${dstLen}`)
  const a = attrMap(p.subarray(RTMSG_LEN))
  const dstRaw = a.get(RTA_DST)
  const dst = dstRaw ? ipToString(dstRaw) : family === 4 ? '0.0.0.0' : '::'
  const route: Route & { cloned: boolean } = {
    family,
    dst: `${dst}/${dstLen}`,
    table: a.has(RTA_TABLE) ? readU32(a.get(RTA_TABLE)!, 'RTA_TABLE') : p[4]!,
    protocol: p[5]!,
    scope: p[6]!,
    type: p[7]!,
    cloned: (p.readUInt32LE(8) & RTM_F_CLONED) !== 0,
  }
  const gw = a.get(RTA_GATEWAY)
  if (gw) route.via = ipToString(gw)
  const via = a.get(RTA_VIA)
  if (!gw && via && via.length >= 2) route.via = ipToString(via.subarray(2))
  if (a.has(RTA_OIF)) route.dev = readU32(a.get(RTA_OIF)!, 'RTA_OIF')
  if (a.has(RTA_PREFSRC)) route.src = ipToString(a.get(RTA_PREFSRC)!)
  if (a.has(RTA_PRIORITY)) route.metric = readU32(a.get(RTA_PRIORITY)!, 'RTA_PRIORITY')
  return route
}

/**
 * Routes matching the filter (all fields optional). CLI: `ip [-4|-6] route show table T proto P`.
 * A table that does not exist yet lists as empty.
 */
export async function routeList(sock: NetlinkSocket, filter: RouteFilter = {}): Promise<Route[]> {
  let msgs: NlMsg[]
  try {
    msgs = await sock.dump(routeListRequest(filter), 'ip route show')
  } catch (e) {
    if (e instanceof NetlinkError && e.kind === 'kernel' && e.code === 'ENOENT' && filter.table) return []
    throw e
  }
  const out: Route[] = []
  for (const m of msgs) {
    if (m.type !== RTM_NEWROUTE) continue
    const r = decodeRoute(m)
    if (!r || r.cloned) continue
    if (filter.family && r.family !== filter.family) continue
    if (filter.table && r.table !== filter.table) continue
    if (filter.protocol !== undefined && r.protocol !== filter.protocol) continue
    const { cloned: _cloned, ...route } = r
    out.push(route)
  }
  return out
}

/** Replaces dev names with ifindexes (one link dump, only when a name is present). */
export async function routeResolveDevs<T extends { dev?: number | string }>(sock: NetlinkSocket, specs: T[]): Promise<T[]> {
  if (!specs.some((s) => typeof s.dev === 'string')) return specs
  for (const s of specs) if (typeof s.dev === 'string') validateIfname(s.dev)
  const byName = new Map((await linkList(sock)).map((l) => [l.name, l.index]))
  return specs.map((s) => {
    if (typeof s.dev !== 'string') return s
    const index = byName.get(s.dev)
    if (index === undefined) throw NetlinkError.input(`no such interface ${s.dev}`)
    return { ...s, dev: index }
  })
}

function toResult(o: { ok: true } | { ok: false; error: NetlinkError }, del: boolean): RouteResult {
  if (o.ok) return { ok: true }
  if (o.error.kind !== 'kernel') throw o.error
  const missing = del && (o.error.code === 'ESRCH' || o.error.code === 'ENOENT')
  return { ok: false, reason: missing ? 'missing' : 'refused', error: o.error }
}

/** CLI: `ip route replace DST [via GW] [dev DEV] [src SRC] [metric M] table 220 proto 220`. Throws if refused. */
export async function routeReplace(sock: NetlinkSocket, spec: RouteSpec): Promise<void> {
  const [r] = await routeResolveDevs(sock, [spec])
  await sock.request(routeReplaceRequest(r!), `ip route replace ${spec.dst}`)
}

/** CLI: `ip route del DST ... table 220 proto 220`. Only a route of the given protocol is ever deleted. */
export async function routeDel(sock: NetlinkSocket, spec: RouteSpec): Promise<RouteResult> {
  const [r] = await routeResolveDevs(sock, [spec])
  const [o] = await sock.requestAll([routeDelRequest(r!)], `ip route del ${spec.dst}`)
  return toResult(o!, true)
}

/**
 * Applies many ops in as few sends as possible (like `ip -batch` with one process and one socket, but pipelined).
 * Results are in op order. Every spec is validated before anything is sent: one bad op sends nothing.
 */
export async function routeApply(sock: NetlinkSocket, ops: readonly RouteOp[]): Promise<RouteResult[]> {
  const specs = await routeResolveDevs(sock, ops.map((o) => o.route))
  const reqs = ops.map((o, i) => (o.op === 'replace' ? routeReplaceRequest(specs[i]!) : routeDelRequest(specs[i]!)))
  const outs = await sock.requestAll(reqs, 'ip -batch route')
  return outs.map((o, i) => toResult(o, ops[i]!.op === 'del'))
}

/** The kernel's identity of a route within a table: destination and metric (IPv6 defaults to 1024, like the kernel). */
function routeKey(family: Family, dst: string, metric: number | undefined): string {
  return `${family} ${dst} ${metric ?? (family === 6 ? 1024 : 0)}`
}

function sameRoute(want: Resolved, have: Route): boolean {
  return (
    (want.via ? ipToString(want.via) : undefined) === have.via &&
    (want.src ? ipToString(want.src) : undefined) === have.src &&
    (want.dev === undefined || want.dev === have.dev)
  )
}

export interface RoutePlan {
  ops: RouteOp[]
  /** Desired routes whose slot (destination and metric) holds a route of another protocol: left alone. */
  conflicts: Array<{ want: RouteSpec; foreign: Route }>
  /** Desired routes whose slot held a route of an adoptable protocol: replaced by ours (one op each, in `ops`). */
  adopted: Array<{ want: RouteSpec; previous: Route }>
}

export interface RoutePlanOptions {
  /**
   * Protocols of routes in a slot we want that are taken over (replaced by ours) instead of left alone as a
   * conflict. Routes of these protocols in slots we do not want are never touched.
   */
  adopt?: readonly number[]
}

/**
 * Pure diff of desired routes against the live routes of one table. Only routes with `protocol` are replaced or
 * deleted; a foreign route occupying a desired slot is reported as a conflict and never touched. Desired specs
 * must have dev already resolved to an ifindex.
 */
export function routePlan(desired: readonly RouteSpec[], observed: readonly Route[], protocol = RTPROT_FABTUNNEL, options: RoutePlanOptions = {}): RoutePlan {
  const adopt = new Set(options.adopt ?? [])
  const adopted: RoutePlan['adopted'] = []
  const ours = new Map<string, Route>()
  const foreign = new Map<string, Route>()
  for (const r of observed) (r.protocol === protocol ? ours : foreign).set(routeKey(r.family, r.dst, r.metric), r)
  const ops: RouteOp[] = []
  const conflicts: RoutePlan['conflicts'] = []
  const wanted = new Set<string>()
  for (const spec of desired) {
    const r = resolveRoute({ ...spec, protocol })
    const key = routeKey(r.family, `${ipToString(r.dst)}/${r.dstLen}`, r.metric)
    wanted.add(key)
    const have = ours.get(key)
    if (have && have.table === r.table && sameRoute(r, have)) continue
    const other = foreign.get(key)
    if (!have && other) {
      if (!adopt.has(other.protocol)) {
        conflicts.push({ want: spec, foreign: other })
        continue
      }
      adopted.push({ want: spec, previous: other })
    }
    ops.push({ op: 'replace', route: { ...spec, protocol } })
  }
  for (const [key, r] of ours) {
    if (wanted.has(key)) continue
    const del: RouteSpec = { dst: r.dst, table: r.table, protocol }
    if (r.metric !== undefined) del.metric = r.metric
    ops.push({ op: 'del', route: del })
  }
  return { ops, conflicts, adopted }
}

/**
 * The default route of the main table with the lowest metric, or undefined. CLI: `ip [-6] route show default`.
 * A default route without gateway (point-to-point uplink) has a dev and no via.
 */
export async function defaultGateway(sock: NetlinkSocket, family: Family): Promise<Route | undefined> {
  const routes = await routeList(sock, { table: RT_TABLE_MAIN, family })
  const defaults = routes.filter((r) => r.dst === (family === 4 ? '0.0.0.0/0' : '::/0') && r.type === RTN_UNICAST)
  defaults.sort((a, b) => (a.metric ?? 0) - (b.metric ?? 0))
  return defaults[0]
}
