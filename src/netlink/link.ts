// Network interfaces over rtnetlink (RTM_GETLINK): list them and resolve names to ifindex. Read-only; the agent
// never creates or changes links. Spec: rtnetlink(7), linux/if_link.h.
import { attrMap, readStr, readU32, type NlMsg } from './codec.js'
import { NetlinkError } from './errors.js'
import type { NetlinkSocket, Request } from './socket.js'

export const RTM_NEWLINK = 16
export const RTM_DELLINK = 17
export const RTM_GETLINK = 18

const IFINFOMSG_LEN = 16
const IFLA_ADDRESS = 1
const IFLA_IFNAME = 3
const IFLA_MTU = 4
const IFF_UP = 0x1

export interface Link {
  index: number
  name: string
  mtu?: number
  up: boolean
  /** Link-layer address, colon-separated hex (absent for links without one). */
  address?: string
}

export function linkListRequest(): Request {
  return { type: RTM_GETLINK, payload: Buffer.alloc(IFINFOMSG_LEN) }
}

/** Decodes an RTM_NEWLINK (ifinfomsg + IFLA_* attributes). */
export function decodeLink(m: NlMsg): Link {
  const p = m.payload
  if (p.length < IFINFOMSG_LEN) throw NetlinkError.decode(`ifinfomsg too short (${p.length} bytes)`)
  const index = p.readInt32LE(4)
  const flags = p.readUInt32LE(8)
  const a = attrMap(p.subarray(IFINFOMSG_LEN))
  const link: Link = { index, name: a.has(IFLA_IFNAME) ? readStr(a.get(IFLA_IFNAME)!) : '', up: (flags & IFF_UP) !== 0 }
  if (a.has(IFLA_MTU)) link.mtu = readU32(a.get(IFLA_MTU)!, 'IFLA_MTU')
  const hw = a.get(IFLA_ADDRESS)
  if (hw && hw.length > 0) link.address = [...hw].map((b) => b.toString(16).padStart(2, '0')).join(':')
  return link
}

/** All interfaces. CLI: `ip link show`. */
export async function linkList(sock: NetlinkSocket): Promise<Link[]> {
  const msgs = await sock.dump(linkListRequest(), 'ip link show')
  return msgs.filter((m) => m.type === RTM_NEWLINK).map(decodeLink)
}

/** One interface by name, or undefined. CLI: `ip link show dev NAME`. */
export async function linkByName(sock: NetlinkSocket, name: string): Promise<Link | undefined> {
  return (await linkList(sock)).find((l) => l.name === name)
}

/** Interface names must be valid before they reach the kernel (IFNAMSIZ 16 with the NUL). */
export function validateIfname(name: string): string {
  if (typeof name !== 'string' || !/^[^\s/:]{1,15}$/.test(name) || name === '.' || name === '..') {
    throw NetlinkError.input(`invalid interface name ${JSON.stringify(name)}`)
  }
  return name
}
