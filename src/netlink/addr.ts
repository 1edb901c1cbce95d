// Interface addresses over rtnetlink (RTM_GETADDR): read-only listing, used for source-address and gateway
// discovery and decoded in monitor events. Spec: rtnetlink(7), linux/if_addr.h.
import { attrMap, readStr, type NlMsg } from './codec.js'
import { NetlinkError } from './errors.js'
import { afOf, familyOfAf, ipToString, type Family } from './ip.js'
import type { NetlinkSocket, Request } from './socket.js'

export const RTM_NEWADDR = 20
export const RTM_DELADDR = 21
export const RTM_GETADDR = 22

const IFADDRMSG_LEN = 8
const IFA_ADDRESS = 1
const IFA_LOCAL = 2
const IFA_LABEL = 3

export interface Addr {
  family: Family
  /** Interface index. */
  index: number
  /** Address with prefix length, e.g. `10.0.0.1/24` (host bits kept: this is an address, not a network). */
  cidr: string
  /** The bare address. */
  address: string
  prefixLen: number
  scope: number
  label?: string
}

export function addrListRequest(family?: Family): Request {
  const p = Buffer.alloc(IFADDRMSG_LEN)
  if (family) p.writeUInt8(afOf(family), 0)
  return { type: RTM_GETADDR, payload: p }
}

/** Decodes RTM_NEWADDR / RTM_DELADDR; undefined for families other than inet and inet6. */
export function decodeAddr(m: NlMsg): Addr | undefined {
  const p = m.payload
  if (p.length < IFADDRMSG_LEN) throw NetlinkError.decode(`ifaddrmsg too short (${p.length} bytes)`)
  const family = familyOfAf(p.readUInt8(0))
  if (!family) return undefined
  const prefixLen = p.readUInt8(1)
  const scope = p.readUInt8(3)
  const index = p.readUInt32LE(4)
  const a = attrMap(p.subarray(IFADDRMSG_LEN))
  // On point-to-point links IFA_ADDRESS is the peer; IFA_LOCAL is always our own address when present.
  const raw = a.get(IFA_LOCAL) ?? a.get(IFA_ADDRESS)
  if (!raw) throw NetlinkError.decode('address message without IFA_LOCAL/IFA_ADDRESS')
  const address = ipToString(raw)
  const out: Addr = { family, index, cidr: `${address}/${prefixLen}`, address, prefixLen, scope }
  if (a.has(IFA_LABEL)) out.label = readStr(a.get(IFA_LABEL)!)
  return out
}

/** Addresses of all interfaces, optionally of one family. CLI: `ip -4 addr show` / `ip -6 addr show`. */
export async function addrList(sock: NetlinkSocket, filter: { family?: Family; index?: number } = {}): Promise<Addr[]> {
  const msgs = await sock.dump(addrListRequest(filter.family), 'ip addr show')
  const out: Addr[] = []
  for (const m of msgs) {
    if (m.type !== RTM_NEWADDR) continue
    const a = decodeAddr(m)
    if (!a) continue
    if (filter.family && a.family !== filter.family) continue
    if (filter.index !== undefined && a.index !== filter.index) continue
    out.push(a)
  }
  return out
}
