// ICMP echo messages (RFC 792 for IPv4, RFC 4443 §4.1 for IPv6), built and parsed here so the native socket layer
// (native/src/icmp.c) only moves bytes. An echo request carries our identifier, a sequence number and an 8-byte
// payload: a per-socket random token, so a reply meant for another process that happens to reuse the identifier
// (e.g. `ping`, which a raw socket also sees) is never taken for ours.
import ipaddr from 'ipaddr.js'

export const ECHO_REQUEST = { 4: 8, 6: 128 } as const
export const ECHO_REPLY = { 4: 0, 6: 129 } as const

export class ProbeError extends Error {
  override readonly name = 'ProbeError'
  constructor(readonly code: string, message: string, options?: { cause?: unknown }) {
    super(message, options)
  }
}

/** The Internet checksum (RFC 1071) of `buf`. */
export function inetChecksum(buf: Buffer): number {
  let sum = 0
  for (let i = 0; i + 1 < buf.length; i += 2) sum += buf.readUInt16BE(i)
  if (buf.length % 2) sum += buf[buf.length - 1]! << 8
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16)
  return ~sum & 0xffff
}

export interface Echo {
  ident: number
  seq: number
  /** 8 bytes. */
  token: Buffer
}

/**
 * An echo request. IPv4: with its checksum. IPv6: checksum left 0, the kernel fills it for raw ICMPv6 sockets (it
 * covers a pseudo-header with the source address the kernel picks).
 */
export function encodeEchoRequest(family: 4 | 6, e: Echo): Buffer {
  if (!Number.isInteger(e.ident) || e.ident < 0 || e.ident > 0xffff) throw new ProbeError('EINVAL', `ICMP identifier out of range: ${e.ident}`)
  if (!Number.isInteger(e.seq) || e.seq < 0 || e.seq > 0xffff) throw new ProbeError('EINVAL', `ICMP sequence out of range: ${e.seq}`)
  if (e.token.length !== 8) throw new ProbeError('EINVAL', 'ICMP token must be 8 bytes')
  const b = Buffer.alloc(16)
  b[0] = ECHO_REQUEST[family]
  b[1] = 0
  b.writeUInt16BE(e.ident, 4)
  b.writeUInt16BE(e.seq, 6)
  e.token.copy(b, 8)
  if (family === 4) b.writeUInt16BE(inetChecksum(b), 2)
  return b
}

/** The echo reply in `data` (an ICMP message, no IP header), or null when it is anything else or too short. */
export function decodeEchoReply(family: 4 | 6, data: Buffer): Echo | null {
  if (data.length < 16 || data[0] !== ECHO_REPLY[family] || data[1] !== 0) return null
  return { ident: data.readUInt16BE(4), seq: data.readUInt16BE(6), token: Buffer.from(data.subarray(8, 16)) }
}

/** The address as the 4 or 16 bytes the socket takes; throws ProbeError unless it is a plain unicast of `family`. */
export function addressBytes(address: string, family: 4 | 6): Buffer {
  if (!ipaddr.isValid(address)) throw new ProbeError('EINVAL', `not an IP address: ${JSON.stringify(address)}`)
  const a = ipaddr.parse(address)
  if ((family === 4) !== (a.kind() === 'ipv4')) throw new ProbeError('EINVAL', `${address} is not an IPv${family} address`)
  const range = a.range()
  if (['unspecified', 'multicast', 'broadcast'].includes(range)) throw new ProbeError('EINVAL', `${address} is not a unicast address (${range})`)
  return Buffer.from(a.toByteArray())
}

/** The canonical text of 4 or 16 address bytes. */
export function addressText(bytes: Buffer): string {
  return ipaddr.fromByteArray([...bytes]).toString()
}
