// Address validation and canonical forms for everything that goes into or comes out of a kernel message:
// strict dotted-quad IPv4, RFC 5952 IPv6, CIDRs masked to their network address (`10.1.2.0/24`), so diffs compare
// canonical strings only.
import ipaddr from 'ipaddr.js'
import { NetlinkError } from './errors.js'

export type Family = 4 | 6

export const AF_INET = 2
export const AF_INET6 = 10

export function afOf(family: Family): number {
  return family === 4 ? AF_INET : AF_INET6
}

export function familyOfAf(af: number): Family | undefined {
  return af === AF_INET ? 4 : af === AF_INET6 ? 6 : undefined
}

export interface Ip {
  family: Family
  bytes: Buffer
}

export interface Cidr extends Ip {
  /** Prefix length. */
  len: number
  /** Canonical text: network address / length. */
  text: string
}

/** ipaddr.js's four-part decimal form, without leading zeros; octets above 255 fall through to ipaddr.js. */
const DOTTED_QUAD = /^(0|[1-9]\d{0,2})\.(0|[1-9]\d{0,2})\.(0|[1-9]\d{0,2})\.(0|[1-9]\d{0,2})$/

/** Parses one address; rejects anything but a strict IPv4 dotted quad or an IPv6 address (no zone). */
export function parseIp(s: string): Ip {
  // Fast path for the common case (a plan parses every desired route: ~10x cheaper than ipaddr.js); it accepts a
  // subset of what the ipaddr.js check below accepts, so the result is the same.
  const quad = typeof s === 'string' ? DOTTED_QUAD.exec(s) : null
  if (quad) {
    const octets = [Number(quad[1]), Number(quad[2]), Number(quad[3]), Number(quad[4])]
    if (octets.every((o) => o <= 255)) return { family: 4, bytes: Buffer.from(octets) }
  }
  if (typeof s === 'string' && ipaddr.IPv4.isValidFourPartDecimal(s)) {
    return { family: 4, bytes: Buffer.from(ipaddr.IPv4.parse(s).octets) }
  }
  if (typeof s === 'string' && !s.includes('%') && ipaddr.IPv6.isValid(s)) {
    return { family: 6, bytes: Buffer.from(ipaddr.IPv6.parse(s).toByteArray()) }
  }
  throw NetlinkError.input(`invalid IP address ${JSON.stringify(s)}`)
}

/** Parses `addr/len` (or a bare address as a host route) and masks it to its network address. */
export function parseCidr(s: string): Cidr {
  if (typeof s !== 'string') throw NetlinkError.input(`invalid CIDR ${JSON.stringify(s)}`)
  const slash = s.indexOf('/')
  const ip = parseIp(slash < 0 ? s : s.slice(0, slash))
  const max = ip.family === 4 ? 32 : 128
  let len = max
  if (slash >= 0) {
    const l = s.slice(slash + 1)
    if (!/^\d{1,3}$/.test(l) || Number(l) > max) throw NetlinkError.input(`invalid prefix length in ${JSON.stringify(s)}`)
    len = Number(l)
  }
  const bytes = maskBytes(ip.bytes, len)
  return { family: ip.family, bytes, len, text: `${ipToString(bytes)}/${len}` }
}

export function canonicalCidr(s: string): string {
  return parseCidr(s).text
}

export function maskBytes(bytes: Buffer, len: number): Buffer {
  const out = Buffer.from(bytes)
  for (let i = 0; i < out.length; i++) {
    const bits = Math.max(0, Math.min(8, len - i * 8))
    out[i] = out[i]! & ((0xff << (8 - bits)) & 0xff)
  }
  return out
}

/** Text of a 4- or 16-byte address; other lengths are a decode error. */
export function ipToString(b: Buffer): string {
  if (b.length === 4) return `${b[0]}.${b[1]}.${b[2]}.${b[3]}`
  if (b.length === 16) return ipaddr.fromByteArray([...b]).toString()
  throw NetlinkError.decode(`address of ${b.length} bytes`)
}
