// Address canonicalization shared by rendering and by the semantic comparison: one spelling per prefix, the one
// iptables-save prints (network address, explicit prefix length, RFC 5952 IPv6), so text from either side compares.
import ipaddr from 'ipaddr.js'
import type { Family } from '../fabedge.js'

const V4_CIDR = /^\d{1,3}(\.\d{1,3}){3}(\/\d{1,2})?$/
const V6_CIDR = /^[0-9a-fA-F:.]+(\/\d{1,3})?$/

export interface Cidr {
  family: Family
  /** Canonical text, always with a prefix length: `10.0.0.0/24`, `10.0.0.1/32`, `fd00::/64`. */
  text: string
}

/** Canonical form of an address or CIDR (a bare address is a host prefix), or null when it is not one. */
export function cidrCanonical(input: string): Cidr | null {
  const slash = input.indexOf('/')
  const addrText = slash < 0 ? input : input.slice(0, slash)
  if (V4_CIDR.test(input)) {
    if (!ipaddr.IPv4.isValidFourPartDecimal(addrText)) return null
    const prefix = slash < 0 ? 32 : Number(input.slice(slash + 1))
    if (prefix > 32) return null
    const net = ipaddr.IPv4.networkAddressFromCIDR(`${addrText}/${prefix}`)
    return { family: 4, text: `${net.toString()}/${prefix}` }
  }
  if (input.includes(':') && V6_CIDR.test(input) && ipaddr.IPv6.isValid(addrText)) {
    const prefix = slash < 0 ? 128 : Number(input.slice(slash + 1))
    if (prefix > 128) return null
    const net = ipaddr.IPv6.networkAddressFromCIDR(`${addrText}/${prefix}`)
    return { family: 6, text: `${net.toString()}/${prefix}` }
  }
  return null
}
