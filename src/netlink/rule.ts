// Policy-routing rules over rtnetlink (RTM_NEWRULE / RTM_DELRULE / RTM_GETRULE), IPv4 and IPv6, shaped for the
// one rule FabEdge needs: `from all lookup 220 priority 220`. Spec: rtnetlink(7), linux/fib_rules.h.
import { ROUTE_TABLE, RULE_PRIORITY } from '../fabedge.js'
import { attr, attrMap, attrU32, attrU8, NLM_F_CREATE, NLM_F_EXCL, readStr, readU32, readU8, type NlMsg } from './codec.js'
import { NetlinkError } from './errors.js'
import { afOf, familyOfAf, ipToString, parseCidr, type Family } from './ip.js'
import type { NetlinkSocket, Request } from './socket.js'

export const RTM_NEWRULE = 32
export const RTM_DELRULE = 33
export const RTM_GETRULE = 34

const FIB_RULE_HDR_LEN = 12
const FRA_DST = 1
const FRA_SRC = 2
const FRA_IIFNAME = 3
const FRA_PRIORITY = 6
const FRA_FWMARK = 10
const FRA_TABLE = 15
const FRA_OIFNAME = 17
const FRA_PROTOCOL = 21
const FR_ACT_TO_TBL = 1

export interface Rule {
  family: Family
  /** 0 when the kernel omits FRA_PRIORITY (it does for priority 0). */
  priority: number
  table: number
  action: number
  /** Canonical CIDR, absent for `from all`. */
  src?: string
  dst?: string
  iif?: string
  oif?: string
  fwmark?: number
  protocol?: number
}

export interface RuleSpec {
  family: Family
  /** Default 220. */
  table?: number
  /** Default 220. */
  priority?: number
  /** Default all. */
  src?: string
  /**
   * rtm_protocol-style owner tag (FRA_PROTOCOL, kernel >= 4.17). Unset by default, like the rule charon creates; a
   * tagged rule can be told apart later, and a delete that carries it only matches the tagged rule.
   */
  protocol?: number
}

/** Result of add/del: an existing or missing rule is a value. */
export type RuleResult = { ok: true } | { ok: false; reason: 'exists' | 'missing' }

function ruleRequest(type: number, flags: number, spec: RuleSpec): Request {
  if (spec.family !== 4 && spec.family !== 6) throw NetlinkError.input(`invalid family ${String(spec.family)}`)
  const table = spec.table ?? ROUTE_TABLE
  const priority = spec.priority ?? RULE_PRIORITY
  for (const [v, what] of [[table, 'table'], [priority, 'priority']] as const) {
    if (!Number.isInteger(v) || v < 0 || v > 0xffffffff) throw NetlinkError.input(`invalid rule ${what} ${v}`)
  }
  const hdr = Buffer.alloc(FIB_RULE_HDR_LEN)
  hdr[0] = afOf(spec.family)
  hdr[4] = table < 256 ? table : 0
  hdr[7] = FR_ACT_TO_TBL
  const parts = [hdr, attrU32(FRA_PRIORITY, priority), attrU32(FRA_TABLE, table)]
  if (spec.src !== undefined) {
    const src = parseCidr(spec.src)
    if (src.family !== spec.family) throw NetlinkError.input(`rule source ${spec.src} is not IPv${spec.family}`)
    hdr[2] = src.len
    parts.push(attr(FRA_SRC, src.bytes))
  }
  if (spec.protocol !== undefined) {
    if (!Number.isInteger(spec.protocol) || spec.protocol < 0 || spec.protocol > 255) throw NetlinkError.input(`invalid rule protocol ${spec.protocol}`)
    parts.push(attrU8(FRA_PROTOCOL, spec.protocol))
  }
  return { type, flags, payload: Buffer.concat(parts) }
}

/** `ip rule add`: EXCL so a second add of the same rule is refused (EEXIST) instead of duplicating it. Pure. */
export function ruleAddRequest(spec: RuleSpec): Request {
  return ruleRequest(RTM_NEWRULE, NLM_F_CREATE | NLM_F_EXCL, spec)
}

export function ruleDelRequest(spec: RuleSpec): Request {
  return ruleRequest(RTM_DELRULE, 0, spec)
}

export function ruleListRequest(family?: Family): Request {
  const hdr = Buffer.alloc(FIB_RULE_HDR_LEN)
  if (family) hdr[0] = afOf(family)
  return { type: RTM_GETRULE, payload: hdr }
}

/** Decodes RTM_NEWRULE / RTM_DELRULE; undefined for families other than inet and inet6. */
export function decodeRule(m: NlMsg): Rule | undefined {
  const p = m.payload
  if (p.length < FIB_RULE_HDR_LEN) throw NetlinkError.decode(`fib_rule_hdr too short (${p.length} bytes)`)
  const family = familyOfAf(p[0]!)
  if (!family) return undefined
  const a = attrMap(p.subarray(FIB_RULE_HDR_LEN))
  const rule: Rule = {
    family,
    table: a.has(FRA_TABLE) ? readU32(a.get(FRA_TABLE)!, 'FRA_TABLE') : p[4]!,
    action: p[7]!,
    priority: a.has(FRA_PRIORITY) ? readU32(a.get(FRA_PRIORITY)!, 'FRA_PRIORITY') : 0,
  }
  if (a.has(FRA_SRC)) rule.src = `${ipToString(a.get(FRA_SRC)!)}/${p[2]}`
  if (a.has(FRA_DST)) rule.dst = `${ipToString(a.get(FRA_DST)!)}/${p[1]}`
  if (a.has(FRA_IIFNAME)) rule.iif = readStr(a.get(FRA_IIFNAME)!)
  if (a.has(FRA_OIFNAME)) rule.oif = readStr(a.get(FRA_OIFNAME)!)
  if (a.has(FRA_FWMARK)) rule.fwmark = readU32(a.get(FRA_FWMARK)!, 'FRA_FWMARK')
  if (a.has(FRA_PROTOCOL)) rule.protocol = readU8(a.get(FRA_PROTOCOL)!, 'FRA_PROTOCOL')
  return rule
}

/** CLI: `ip [-4|-6] rule show`. */
export async function ruleList(sock: NetlinkSocket, family?: Family): Promise<Rule[]> {
  const msgs = await sock.dump(ruleListRequest(family), 'ip rule show')
  const out: Rule[] = []
  for (const m of msgs) {
    if (m.type !== RTM_NEWRULE) continue
    const r = decodeRule(m)
    if (r && (!family || r.family === family)) out.push(r)
  }
  return out
}

/** CLI: `ip [-6] rule add from all lookup 220 priority 220`. An identical existing rule is `reason: 'exists'`. */
export async function ruleAdd(sock: NetlinkSocket, spec: RuleSpec): Promise<RuleResult> {
  const [o] = await sock.requestAll([ruleAddRequest(spec)], 'ip rule add')
  if (o!.ok) return { ok: true }
  if (o!.error.kind === 'kernel' && o!.error.code === 'EEXIST') return { ok: false, reason: 'exists' }
  throw o!.error
}

/** CLI: `ip [-6] rule del from all lookup 220 priority 220`. A missing rule is `reason: 'missing'`. */
export async function ruleDel(sock: NetlinkSocket, spec: RuleSpec): Promise<RuleResult> {
  const [o] = await sock.requestAll([ruleDelRequest(spec)], 'ip rule del')
  if (o!.ok) return { ok: true }
  if (o!.error.kind === 'kernel' && (o!.error.code === 'ENOENT' || o!.error.code === 'ESRCH')) {
    return { ok: false, reason: 'missing' }
  }
  throw o!.error
}

/** The rule present exactly once afterwards, whatever was there: adds when missing, no-op when present. */
export async function ruleEnsure(sock: NetlinkSocket, spec: RuleSpec): Promise<{ added: boolean }> {
  const r = await ruleAdd(sock, spec)
  return { added: r.ok }
}
