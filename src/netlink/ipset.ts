// ipset over nfnetlink (NETLINK_NETFILTER, subsystem NFNL_SUBSYS_IPSET): create/destroy/flush/swap/list sets and
// add/del/test members of hash:net sets, single or batched many members per message (as `ipset restore` does).
// Expected refusals (already there, not there) are values. Spec: linux/netfilter/ipset/ip_set.h, the ipset(8)
// protocol as implemented by libipset (every message carries IPSET_ATTR_PROTOCOL; nested attributes are flagged
// NLA_F_NESTED and addresses NLA_F_NET_BYTEORDER; the kernel reads a request *without* NLM_F_EXCL as "-exist").
import { attrNested, attrStr, attrU32, attrU32Be, attrU8, decodeAttrs, NLA_F_NESTED, NLA_F_NET_BYTEORDER, NLM_F_EXCL, readStr, readU8, type NlMsg } from './codec.js'
import { NetlinkError } from './errors.js'
import { ipToString, parseCidr, type Family } from './ip.js'
import type { NetlinkSocket, Outcome, Request } from './socket.js'

const NFNL_SUBSYS_IPSET = 6
const NFGENMSG_LEN = 4
const NFPROTO_IPV4 = 2
const NFPROTO_IPV6 = 10

/** Oldest protocol version every kernel with ipset 6+ accepts; newer kernels accept 6 and 7. */
const IPSET_PROTOCOL = 6
const IPSET_MAXNAMELEN = 32

export const IPSET_CMD = {
  CREATE: 2, DESTROY: 3, FLUSH: 4, RENAME: 5, SWAP: 6, LIST: 7, SAVE: 8, ADD: 9, DEL: 10, TEST: 11, HEADER: 12, TYPE: 13,
} as const

const ATTR = {
  PROTOCOL: 1, SETNAME: 2, TYPENAME: 3, SETNAME2: 3, REVISION: 4, FAMILY: 5, FLAGS: 6, DATA: 7, ADT: 8, LINENO: 9,
  REVISION_MIN: 10,
} as const
const CADT = { IP: 1, CIDR: 3, HASHSIZE: 18, MAXELEM: 19, ELEMENTS: 24, REFERENCES: 25 } as const
const IPADDR_IPV4 = 1
const IPADDR_IPV6 = 2

const ERR = { EXIST_SETNAME2: 'IPSET_ERR_EXIST_SETNAME2', EXIST: 'IPSET_ERR_EXIST', REFERENCED: 'IPSET_ERR_REFERENCED' }

/** Members per ADT message: keeps each message well inside one send (the kernel handles it in one call). */
const MEMBERS_PER_MSG = 1000

export type IpsetResult = { ok: true } | { ok: false; reason: 'exists' | 'missing' }

export interface IpsetInfo {
  name: string
  type: string
  family: Family
  revision: number
  references?: number
  /** Canonical CIDRs (`10.0.0.0/8`, host entries as `/32` or `/128`), sorted. */
  members: string[]
}

export function validateSetName(name: string): string {
  if (typeof name !== 'string' || !/^[\x21-\x7e]+$/.test(name) || Buffer.byteLength(name) >= IPSET_MAXNAMELEN) {
    throw NetlinkError.input(`invalid ipset name ${JSON.stringify(name)} (1-31 printable characters)`)
  }
  return name
}

function checkFamily(family: Family): Family {
  if (family !== 4 && family !== 6) throw NetlinkError.input(`invalid family ${String(family)}`)
  return family
}

function msg(cmd: number, attrs: Buffer[], flags = 0): Request {
  const nfgen = Buffer.alloc(NFGENMSG_LEN)
  nfgen[0] = NFPROTO_IPV4
  return {
    type: (NFNL_SUBSYS_IPSET << 8) | cmd,
    flags,
    payload: Buffer.concat([nfgen, attrU8(ATTR.PROTOCOL, IPSET_PROTOCOL), ...attrs]),
  }
}

/** IPSET_CMD_TYPE: asks which revisions of `type` the kernel supports for `family`. Pure. */
export function ipsetTypeRequest(type: string, family: Family): Request {
  return msg(IPSET_CMD.TYPE, [attrStr(ATTR.TYPENAME, type), attrU8(ATTR.FAMILY, family === 4 ? NFPROTO_IPV4 : NFPROTO_IPV6)])
}

/** `ipset create NAME hash:net family inet|inet6 [hashsize N] [maxelem N]` (with `-exist` when exist). Pure. */
export function ipsetCreateRequest(
  name: string,
  family: Family,
  revision: number,
  opts: { exist?: boolean; hashsize?: number; maxelem?: number } = {},
): Request {
  const data: Buffer[] = []
  if (opts.hashsize !== undefined) data.push(attrU32Be(CADT.HASHSIZE, opts.hashsize))
  if (opts.maxelem !== undefined) data.push(attrU32Be(CADT.MAXELEM, opts.maxelem))
  return msg(
    IPSET_CMD.CREATE,
    [
      attrStr(ATTR.SETNAME, validateSetName(name)),
      attrStr(ATTR.TYPENAME, 'hash:net'),
      attrU8(ATTR.REVISION, revision),
      attrU8(ATTR.FAMILY, checkFamily(family) === 4 ? NFPROTO_IPV4 : NFPROTO_IPV6),
      attrNested(ATTR.DATA, data),
    ],
    opts.exist ? 0 : NLM_F_EXCL,
  )
}

function nameCmd(cmd: number, name: string, flags = 0): Request {
  return msg(cmd, [attrStr(ATTR.SETNAME, validateSetName(name))], flags)
}

/** EXCL (not -exist) so that destroying a missing set is reported rather than silently accepted. */
export const ipsetDestroyRequest = (name: string): Request => nameCmd(IPSET_CMD.DESTROY, name, NLM_F_EXCL)
export const ipsetFlushRequest = (name: string): Request => nameCmd(IPSET_CMD.FLUSH, name)
export const ipsetListRequest = (name: string): Request => nameCmd(IPSET_CMD.LIST, name)
export const ipsetHeaderRequest = (name: string): Request => nameCmd(IPSET_CMD.HEADER, name)

export function ipsetSwapRequest(a: string, b: string): Request {
  return msg(IPSET_CMD.SWAP, [attrStr(ATTR.SETNAME, validateSetName(a)), attrStr(ATTR.SETNAME2, validateSetName(b))])
}

/**
 * One member as an IPSET_ATTR_DATA nest: {IP {IPADDR_IPV4|IPV6 (net order)}, CIDR}. Written straight into a
 * buffer because batches run to thousands of members.
 */
function writeMember(buf: Buffer, off: number, bytes: Buffer, len: number): number {
  const v6 = bytes.length === 16
  const ipAttrLen = 4 + bytes.length
  const ipNestLen = 4 + ipAttrLen
  const dataLen = 4 + ipNestLen + 8
  buf.writeUInt16LE(dataLen, off)
  buf.writeUInt16LE(ATTR.DATA | NLA_F_NESTED, off + 2)
  buf.writeUInt16LE(ipNestLen, off + 4)
  buf.writeUInt16LE(CADT.IP | NLA_F_NESTED, off + 6)
  buf.writeUInt16LE(ipAttrLen, off + 8)
  buf.writeUInt16LE((v6 ? IPADDR_IPV6 : IPADDR_IPV4) | NLA_F_NET_BYTEORDER, off + 10)
  bytes.copy(buf, off + 12)
  const c = off + 12 + bytes.length
  buf.writeUInt16LE(5, c)
  buf.writeUInt16LE(CADT.CIDR, c + 2)
  buf.writeUInt32LE(len, c + 4)
  return off + dataLen
}

function memberSize(family: Family): number {
  return family === 4 ? 24 : 36
}

interface Member {
  family: Family
  bytes: Buffer
  len: number
}

function parseMember(cidr: string): Member {
  const c = parseCidr(cidr)
  // hash:net has no /0: the kernel refuses it (IPSET_ERR_INVALID_CIDR); say so before sending.
  if (c.len === 0) throw NetlinkError.input(`ipset hash:net cannot hold ${cidr} (prefix length 0)`)
  return c
}

/** `ipset add|del|test NAME CIDR`: one member in IPSET_ATTR_DATA. Pure. */
export function ipsetAdtRequest(cmd: number, name: string, cidr: string, exist = false): Request {
  const m = parseMember(cidr)
  const data = Buffer.alloc(memberSize(m.family))
  writeMember(data, 0, m.bytes, m.len)
  return msg(cmd, [attrStr(ATTR.SETNAME, validateSetName(name)), data], exist ? 0 : NLM_F_EXCL)
}

/**
 * Many members of one command, `MEMBERS_PER_MSG` per message in IPSET_ATTR_ADT (the kernel stops a message at
 * its first failing member, so batches always run with -exist). Pure.
 */
export function ipsetAdtBatchRequests(cmd: number, name: string, cidrs: readonly string[]): Request[] {
  validateSetName(name)
  const members = cidrs.map(parseMember)
  const out: Request[] = []
  for (let i = 0; i < members.length; i += MEMBERS_PER_MSG) {
    const chunk = members.slice(i, i + MEMBERS_PER_MSG)
    let size = 4
    for (const m of chunk) size += memberSize(m.family)
    const adt = Buffer.alloc(size)
    adt.writeUInt16LE(size, 0)
    adt.writeUInt16LE(ATTR.ADT | NLA_F_NESTED, 2)
    let off = 4
    for (const m of chunk) off = writeMember(adt, off, m.bytes, m.len)
    // The kernel insists on IPSET_ATTR_LINENO beside IPSET_ATTR_ADT. Members carry no line numbers, so a
    // failure comes back as a plain NLMSG_ERROR for the whole message rather than ipset's restore-mode report.
    out.push(msg(cmd, [attrStr(ATTR.SETNAME, name), attrU32(ATTR.LINENO, 0), adt]))
  }
  return out
}

// ---- decoding -----------------------------------------------------------------------------------------------

function decodeMemberData(data: Buffer): string {
  let ip: Buffer | undefined
  let cidr: number | undefined
  for (const a of decodeAttrs(data)) {
    if (a.type === CADT.IP) {
      for (const b of decodeAttrs(a.data)) if (b.type === IPADDR_IPV4 || b.type === IPADDR_IPV6) ip = b.data
    } else if (a.type === CADT.CIDR) {
      cidr = readU8(a.data, 'IPSET_ATTR_CIDR')
    }
  }
  if (!ip) throw NetlinkError.decode('ipset member without IPSET_ATTR_IP')
  const max = ip.length === 4 ? 32 : 128
  if (cidr !== undefined && cidr > max) throw NetlinkError.decode(`ipset member prefix length ${cidr}`)
  return `${ipToString(ip)}/${cidr ?? max}`
}

/** Folds the messages of one IPSET_CMD_LIST dump into a set description. Pure. */
export function decodeIpsetList(msgs: readonly NlMsg[]): IpsetInfo[] {
  const sets = new Map<string, IpsetInfo>()
  for (const m of msgs) {
    if ((m.type & 0xff) !== IPSET_CMD.LIST || m.type >> 8 !== NFNL_SUBSYS_IPSET) continue
    if (m.payload.length < NFGENMSG_LEN) throw NetlinkError.decode('ipset message without nfgenmsg')
    let name: string | undefined
    let type = ''
    let family: Family | undefined
    let revision = 0
    let references: number | undefined
    const members: string[] = []
    for (const a of decodeAttrs(m.payload.subarray(NFGENMSG_LEN))) {
      if (a.type === ATTR.SETNAME) name = readStr(a.data)
      else if (a.type === ATTR.TYPENAME) type = readStr(a.data)
      else if (a.type === ATTR.REVISION) revision = readU8(a.data, 'IPSET_ATTR_REVISION')
      else if (a.type === ATTR.FAMILY) {
        const f = readU8(a.data, 'IPSET_ATTR_FAMILY')
        family = f === NFPROTO_IPV4 ? 4 : f === NFPROTO_IPV6 ? 6 : undefined
      } else if (a.type === ATTR.DATA) {
        for (const h of decodeAttrs(a.data)) {
          if (h.type === CADT.REFERENCES && h.data.length >= 4) references = h.data.readUInt32BE(0)
        }
      } else if (a.type === ATTR.ADT) {
        for (const d of decodeAttrs(a.data)) if (d.type === ATTR.DATA) members.push(decodeMemberData(d.data))
      }
    }
    if (name === undefined) throw NetlinkError.decode('ipset list message without IPSET_ATTR_SETNAME')
    let info = sets.get(name)
    if (!info) {
      info = { name, type, family: family ?? 4, revision, members: [] }
      sets.set(name, info)
    }
    if (type) info.type = type
    if (family) info.family = family
    if (revision) info.revision = revision
    if (references !== undefined) info.references = references
    for (const x of members) info.members.push(x)
  }
  for (const s of sets.values()) s.members.sort()
  return [...sets.values()]
}

// ---- operations ---------------------------------------------------------------------------------------------

const revisions = new WeakMap<NetlinkSocket, Map<Family, number>>()

/** Highest hash:net revision the kernel supports (asked once per socket), as `ipset create` picks it. */
async function hashNetRevision(sock: NetlinkSocket, family: Family): Promise<number> {
  let cache = revisions.get(sock)
  if (!cache) revisions.set(sock, (cache = new Map()))
  const known = cache.get(family)
  if (known !== undefined) return known
  const msgs = await sock.request(ipsetTypeRequest('hash:net', family), 'ipset type hash:net')
  let rev = 0
  for (const m of msgs) {
    for (const a of decodeAttrs(m.payload.subarray(NFGENMSG_LEN))) if (a.type === ATTR.REVISION) rev = readU8(a.data, 'IPSET_ATTR_REVISION')
  }
  cache.set(family, rev)
  return rev
}

function expect(o: Outcome, map: Record<string, 'exists' | 'missing'>): IpsetResult {
  if (o.ok) return { ok: true }
  const reason = o.error.kind === 'kernel' ? map[o.error.code] : undefined
  if (reason) return { ok: false, reason }
  throw o.error
}

async function one(sock: NetlinkSocket, req: Request, what: string, map: Record<string, 'exists' | 'missing'>): Promise<IpsetResult> {
  const [o] = await sock.requestAll([req], what)
  return expect(o!, map)
}

/**
 * CLI: `ipset create NAME hash:net family inet|inet6 [-exist]`. Default exist=true: an identical existing set is
 * fine; a set of that name with another type or family is refused (thrown). Without exist, an existing set is
 * `reason: 'exists'`.
 */
export async function ipsetCreate(
  sock: NetlinkSocket,
  name: string,
  family: Family,
  opts: { exist?: boolean; hashsize?: number; maxelem?: number } = {},
): Promise<IpsetResult> {
  const exist = opts.exist ?? true
  const rev = await hashNetRevision(sock, checkFamily(family))
  const req = ipsetCreateRequest(name, family, rev, { ...opts, exist })
  const r = await one(sock, req, `ipset create ${name}`, exist ? {} : { EEXIST: 'exists', [ERR.EXIST]: 'exists' })
  // The kernel's -exist check compares type and sizes but not the family, so an inet set satisfies an inet6
  // create. Ask for the header to make "exists" mean "exists as asked".
  if (exist) {
    const msgs = await sock.request(ipsetHeaderRequest(name), `ipset header ${name}`)
    const h = decodeHeader(msgs)
    if (h.family !== family || h.type !== 'hash:net') {
      throw new NetlinkError('kernel', 'IPSET_ERR_EXIST', `ipset create ${name}: exists as ${h.type} IPv${h.family}, not hash:net IPv${family}`)
    }
  }
  return r
}

function decodeHeader(msgs: readonly NlMsg[]): { type: string; family: number } {
  let type = ''
  let family = 0
  for (const m of msgs) {
    if (m.payload.length < NFGENMSG_LEN) throw NetlinkError.decode('ipset message without nfgenmsg')
    for (const a of decodeAttrs(m.payload.subarray(NFGENMSG_LEN))) {
      if (a.type === ATTR.TYPENAME) type = readStr(a.data)
      else if (a.type === ATTR.FAMILY) {
        const f = readU8(a.data, 'IPSET_ATTR_FAMILY')
        family = f === NFPROTO_IPV4 ? 4 : f === NFPROTO_IPV6 ? 6 : 0
      }
    }
  }
  return { type, family }
}

/** CLI: `ipset destroy NAME`. A missing set is `reason: 'missing'`; a set still referenced by iptables throws. */
export function ipsetDestroy(sock: NetlinkSocket, name: string): Promise<IpsetResult> {
  return one(sock, ipsetDestroyRequest(name), `ipset destroy ${name}`, { ENOENT: 'missing' })
}

/** CLI: `ipset flush NAME`. */
export function ipsetFlush(sock: NetlinkSocket, name: string): Promise<IpsetResult> {
  return one(sock, ipsetFlushRequest(name), `ipset flush ${name}`, { ENOENT: 'missing' })
}

/** CLI: `ipset swap A B`: atomically exchanges the contents (and names) of two sets of the same type. */
export function ipsetSwap(sock: NetlinkSocket, a: string, b: string): Promise<IpsetResult> {
  return one(sock, ipsetSwapRequest(a, b), `ipset swap ${a} ${b}`, { ENOENT: 'missing', [ERR.EXIST_SETNAME2]: 'missing' })
}

/** CLI: `ipset add NAME CIDR`. Already a member is `reason: 'exists'` (or ok with exist, like `-exist`). */
export function ipsetAdd(sock: NetlinkSocket, name: string, cidr: string, opts: { exist?: boolean } = {}): Promise<IpsetResult> {
  return one(sock, ipsetAdtRequest(IPSET_CMD.ADD, name, cidr, opts.exist), `ipset add ${name} ${cidr}`, { [ERR.EXIST]: 'exists', ENOENT: 'missing' })
}

/** CLI: `ipset del NAME CIDR`. Not a member (or no such set) is `reason: 'missing'`. */
export function ipsetDel(sock: NetlinkSocket, name: string, cidr: string, opts: { exist?: boolean } = {}): Promise<IpsetResult> {
  return one(sock, ipsetAdtRequest(IPSET_CMD.DEL, name, cidr, opts.exist), `ipset del ${name} ${cidr}`, { [ERR.EXIST]: 'missing', ENOENT: 'missing' })
}

/** CLI: `ipset test NAME CIDR`. True when the CIDR is a member; a missing set throws. */
export async function ipsetTest(sock: NetlinkSocket, name: string, cidr: string): Promise<boolean> {
  const [o] = await sock.requestAll([ipsetAdtRequest(IPSET_CMD.TEST, name, cidr)], `ipset test ${name} ${cidr}`)
  if (o!.ok) return true
  if (o!.error.kind === 'kernel' && o!.error.code === ERR.EXIST) return false
  throw o!.error
}

async function adtMany(sock: NetlinkSocket, cmd: number, name: string, cidrs: readonly string[], what: string): Promise<void> {
  if (cidrs.length === 0) return
  const outs = await sock.requestAll(ipsetAdtBatchRequests(cmd, name, cidrs), what)
  for (const o of outs) if (!o.ok) throw o.error
}

/** CLI: `ipset restore -exist` with `add NAME CIDR` lines: many members, few messages. Existing ones are fine. */
export function ipsetAddMany(sock: NetlinkSocket, name: string, cidrs: readonly string[]): Promise<void> {
  return adtMany(sock, IPSET_CMD.ADD, name, cidrs, `ipset restore add ${name}`)
}

/** CLI: `ipset restore -exist` with `del NAME CIDR` lines. Members already gone are fine. */
export function ipsetDelMany(sock: NetlinkSocket, name: string, cidrs: readonly string[]): Promise<void> {
  return adtMany(sock, IPSET_CMD.DEL, name, cidrs, `ipset restore del ${name}`)
}

/** CLI: `ipset list NAME`. Undefined when there is no such set. */
export async function ipsetList(sock: NetlinkSocket, name: string): Promise<IpsetInfo | undefined> {
  let msgs: NlMsg[]
  try {
    msgs = await sock.dump(ipsetListRequest(name), `ipset list ${name}`)
  } catch (e) {
    if (e instanceof NetlinkError && e.kind === 'kernel' && e.code === 'ENOENT') return undefined
    throw e
  }
  return decodeIpsetList(msgs).find((s) => s.name === name)
}

/** Pure diff on canonical CIDRs: what to add and what to delete so `live` becomes `want`. */
export function ipsetPlan(want: readonly string[], live: readonly string[]): { add: string[]; del: string[] } {
  const w = new Set(want.map((c) => parseCidr(c).text))
  const l = new Set(live)
  return { add: [...w].filter((c) => !l.has(c)).sort(), del: [...l].filter((c) => !w.has(c)).sort() }
}
