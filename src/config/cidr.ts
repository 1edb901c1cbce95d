// Address parsing and canonical forms. Every CIDR the agent compares, stores or sends is canonical (network
// address, shortest IPv6 text), so `10.234.1.0/24` written as `10.234.1.7/24` or IPv6 in any spelling never
// flaps an ipset or a route. Built on ipaddr.js.
import ipaddr from 'ipaddr.js'
import type { Family } from '../fabedge.js'

export interface Cidr {
  /** Canonical text: `10.233.0.0/18`, `fd00:234:2::/64`. */
  text: string
  family: Family
  /** Network address bytes (4 or 16). */
  bytes: number[]
  prefix: number
  /** True when the input had host bits set and was masked to its network address. */
  hadHostBits: boolean
}

export type ParseResult = { ok: true; cidr: Cidr } | { ok: false; message: string }

function maskBytes(bytes: number[], prefix: number): number[] {
  return bytes.map((b, i) => {
    const bits = Math.max(0, Math.min(8, prefix - i * 8))
    return bits === 8 ? b : b & (0xff << (8 - bits)) & 0xff
  })
}

function fromParts(addr: ipaddr.IPv4 | ipaddr.IPv6, prefix: number): Cidr {
  // An IPv4-mapped IPv6 address stays IPv6: the config said so, and the kernel treats it as inet6.
  const family: Family = addr.kind() === 'ipv4' ? 4 : 6
  const bytes = addr.toByteArray()
  const net = maskBytes(bytes, prefix)
  const hadHostBits = net.some((b, i) => b !== bytes[i])
  const netAddr = family === 4 ? new ipaddr.IPv4(net) : new ipaddr.IPv6(net)
  // join builds one flat string; a template of 13 characters or more is a rope of two (kept for every peer's subnet).
  return { text: [netAddr.toString(), prefix].join('/'), family, bytes: net, prefix, hadHostBits }
}

const IPV4_STRICT = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/

/** Parses one address strictly: dotted-quad IPv4 only (no `010.1`, no `1.2.3`), or any valid IPv6 text. */
export function parseIp(text: string): ipaddr.IPv4 | ipaddr.IPv6 | null {
  if (text.includes(':')) {
    if (!ipaddr.IPv6.isValid(text) || text.includes('%')) return null
    return ipaddr.IPv6.parse(text)
  }
  if (!IPV4_STRICT.test(text)) return null
  return ipaddr.IPv4.parse(text)
}

/**
 * Parses `addr/prefix`. With `allowBareIp`, a plain address becomes a host prefix (/32 or /128), as FabEdge writes
 * node IPs in `nodeSubnets`.
 */
export function parseCidr(input: string, allowBareIp = false): ParseResult {
  const text = input.trim()
  const slash = text.indexOf('/')
  if (slash < 0) {
    const addr = parseIp(text)
    if (!addr) return { ok: false, message: `"${input}" is not an IP address or CIDR` }
    if (!allowBareIp) return { ok: false, message: `"${input}" is an address without a prefix length; write a CIDR such as ${text}/${addr.kind() === 'ipv4' ? 32 : 128}` }
    return { ok: true, cidr: fromParts(addr, addr.kind() === 'ipv4' ? 32 : 128) }
  }
  const addrText = text.slice(0, slash)
  const prefixText = text.slice(slash + 1)
  const addr = parseIp(addrText)
  if (!addr) return { ok: false, message: `"${input}" has an invalid address part "${addrText}"` }
  const max = addr.kind() === 'ipv4' ? 32 : 128
  if (!/^\d{1,3}$/.test(prefixText) || Number(prefixText) > max) {
    return { ok: false, message: `"${input}" has an invalid prefix length "/${prefixText}" (0-${max} for IPv${max === 32 ? 4 : 6})` }
  }
  return { ok: true, cidr: fromParts(addr, Number(prefixText)) }
}

/** Whether two CIDRs share any address (one contains the other, since prefixes nest). */
export function cidrOverlaps(a: Cidr, b: Cidr): boolean {
  if (a.family !== b.family) return false
  const p = Math.min(a.prefix, b.prefix)
  const ma = maskBytes(a.bytes, p)
  const mb = maskBytes(b.bytes, p)
  return ma.every((x, i) => x === mb[i])
}

/** Canonical text of a CIDR string, or throws: for callers holding already-validated input. */
export function canonicalCidr(text: string, allowBareIp = false): string {
  const r = parseCidr(text, allowBareIp)
  if (!r.ok) throw new TypeError(r.message)
  return r.cidr.text
}

export function cidrFamily(text: string): Family {
  return text.includes(':') ? 6 : 4
}

/** Sorts canonical CIDR strings: IPv4 before IPv6, then by address bytes, then by prefix length. */
export function compareCidr(a: string, b: string): number {
  const ca = parseCidr(a, true)
  const cb = parseCidr(b, true)
  if (!ca.ok || !cb.ok) return a < b ? -1 : a > b ? 1 : 0
  if (ca.cidr.family !== cb.cidr.family) return ca.cidr.family - cb.cidr.family
  for (let i = 0; i < ca.cidr.bytes.length; i++) {
    const d = ca.cidr.bytes[i]! - cb.cidr.bytes[i]!
    if (d !== 0) return d
  }
  return ca.cidr.prefix - cb.cidr.prefix
}

/** A string that sorts like compareCidr (family, address bytes, prefix), or null for text that is not a CIDR. */
function sortKey(text: string): string | null {
  const r = parseCidr(text, true)
  if (!r.ok) return null
  let key = String(r.cidr.family)
  for (const b of r.cidr.bytes) key += b < 16 ? `0${b.toString(16)}` : b.toString(16)
  return key + (r.cidr.prefix < 16 ? `0${r.cidr.prefix.toString(16)}` : r.cidr.prefix.toString(16))
}

/** Sorted, de-duplicated canonical list (each entry parsed once, not once per comparison). */
export function sortCidrs(list: Iterable<string>): string[] {
  const keyed = [...new Set(list)].map((text) => ({ text, key: sortKey(text) }))
  if (keyed.some((k) => k.key === null)) return keyed.map((k) => k.text).sort(compareCidr)
  keyed.sort((a, b) => (a.key! < b.key! ? -1 : a.key! > b.key! ? 1 : 0))
  return keyed.map((k) => k.text)
}

/** RFC 1123 host name (DNS name) as FabEdge allows in publicAddresses. */
export function isHostname(text: string): boolean {
  if (text.length === 0 || text.length > 253) return false
  // A numeric last label means the text was meant as an IPv4 address (e.g. 10.0.0.256), not a name.
  if (/^\d+$/.test(text.split('.').pop()!)) return false
  return text.split('.').every((label) => /^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$/.test(label))
}

/**
 * Address range of a CIDR as [first, last], comparable with < and >: numbers for IPv4, fixed-width hex strings for
 * IPv6. Memoized per Cidr: the incremental parser keeps unchanged peers' CIDR objects, so only new ones are computed.
 */
const rangeMemo = new WeakMap<Cidr, [number, number] | [string, string]>()
export function cidrRange(c: Cidr): [number, number] | [string, string] {
  let r = rangeMemo.get(c)
  if (r) return r
  if (c.bytes.length === 4) {
    const start = ((c.bytes[0]! << 24) >>> 0) + (c.bytes[1]! << 16) + (c.bytes[2]! << 8) + c.bytes[3]!
    r = [start, start + 2 ** (32 - c.prefix) - 1]
  } else {
    const bits = Array.from(c.bytes, (b) => b.toString(2).padStart(8, '0')).join('')
    const net = bits.slice(0, c.prefix)
    const hex = (b: string): string => Array.from({ length: 32 }, (_, i) => parseInt(b.slice(i * 4, i * 4 + 4), 2).toString(16)).join('')
    r = [hex(net.padEnd(128, '0')), hex(net.padEnd(128, '1'))]
  }
  rangeMemo.set(c, r)
  return r
}
