// Pure netlink wire codec: nlmsghdr framing, route attributes (nested, 4-byte aligned), multi-part dumps and
// NLMSG_ERROR acks with extended-ack TLVs. No I/O here. Spec: netlink(7), rtnetlink(7), linux/netlink.h.
// Everything is host byte order (little-endian on every target we run) except attributes flagged
// NLA_F_NET_BYTEORDER, which the callers encode big-endian themselves.
import { NetlinkError } from './errors.js'

export const NLMSG_HDRLEN = 16
export const NLA_HDRLEN = 4

export const NLMSG_NOOP = 1
export const NLMSG_ERROR = 2
export const NLMSG_DONE = 3
export const NLMSG_OVERRUN = 4

export const NLM_F_REQUEST = 0x01
export const NLM_F_MULTI = 0x02
export const NLM_F_ACK = 0x04
export const NLM_F_ECHO = 0x08
export const NLM_F_DUMP_INTR = 0x10
export const NLM_F_ROOT = 0x100
export const NLM_F_MATCH = 0x200
export const NLM_F_DUMP = NLM_F_ROOT | NLM_F_MATCH
export const NLM_F_REPLACE = 0x100
export const NLM_F_EXCL = 0x200
export const NLM_F_CREATE = 0x400
/** In an NLMSG_ERROR: the echoed request was cut to its header (NETLINK_CAP_ACK). */
export const NLM_F_CAPPED = 0x100
/** In an NLMSG_ERROR: extended-ack TLVs follow the echoed request. */
export const NLM_F_ACK_TLVS = 0x200

export const NLA_F_NESTED = 0x8000
export const NLA_F_NET_BYTEORDER = 0x4000
export const NLA_TYPE_MASK = ~(NLA_F_NESTED | NLA_F_NET_BYTEORDER) & 0xffff

export const NLMSGERR_ATTR_MSG = 1
export const NLMSGERR_ATTR_OFFS = 2

export const NETLINK_ROUTE = 0
export const NETLINK_NETFILTER = 12

export function align4(n: number): number {
  return (n + 3) & ~3
}

export interface NlMsg {
  type: number
  flags: number
  seq: number
  pid: number
  /** The bytes after the 16-byte header, up to nlmsg_len (a view into the received datagram). */
  payload: Buffer
}

/** One netlink message: nlmsghdr then payload, padded to 4 bytes. */
export function encodeMsg(type: number, flags: number, seq: number, payload: Buffer, pid = 0): Buffer {
  const len = NLMSG_HDRLEN + payload.length
  const buf = Buffer.alloc(align4(len))
  buf.writeUInt32LE(len, 0)
  buf.writeUInt16LE(type, 4)
  buf.writeUInt16LE(flags, 6)
  buf.writeUInt32LE(seq >>> 0, 8)
  buf.writeUInt32LE(pid >>> 0, 12)
  payload.copy(buf, NLMSG_HDRLEN)
  return buf
}

/** Splits a datagram into messages. A length that overruns the datagram or the header is a decode error. */
export function decodeMsgs(buf: Buffer): NlMsg[] {
  const out: NlMsg[] = []
  let off = 0
  while (off < buf.length) {
    if (buf.length - off < NLMSG_HDRLEN) throw NetlinkError.decode(`truncated nlmsghdr at offset ${off}`)
    const len = buf.readUInt32LE(off)
    if (len < NLMSG_HDRLEN || len > buf.length - off) {
      throw NetlinkError.decode(`bad nlmsg_len ${len} at offset ${off} (datagram ${buf.length} bytes)`)
    }
    out.push({
      type: buf.readUInt16LE(off + 4),
      flags: buf.readUInt16LE(off + 6),
      seq: buf.readUInt32LE(off + 8),
      pid: buf.readUInt32LE(off + 12),
      payload: buf.subarray(off + NLMSG_HDRLEN, off + len),
    })
    off += align4(len)
  }
  return out
}

// ---- attributes ---------------------------------------------------------------------------------------------

/** One attribute: type (flags included, as given) then data, padded to 4 bytes. */
export function attr(type: number, data: Buffer): Buffer {
  const len = NLA_HDRLEN + data.length
  const buf = Buffer.alloc(align4(len))
  buf.writeUInt16LE(len, 0)
  buf.writeUInt16LE(type, 2)
  data.copy(buf, NLA_HDRLEN)
  return buf
}

/** A nested attribute; the NLA_F_NESTED flag is set because strict parsers (ipset, newer rtnetlink) need it. */
export function attrNested(type: number, children: Buffer[], flagNested = true): Buffer {
  return attr(flagNested ? type | NLA_F_NESTED : type, Buffer.concat(children))
}

export function attrU8(type: number, v: number): Buffer {
  return attr(type, Buffer.from([v & 0xff]))
}

export function attrU16(type: number, v: number): Buffer {
  const b = Buffer.alloc(2)
  b.writeUInt16LE(v, 0)
  return attr(type, b)
}

export function attrU32(type: number, v: number): Buffer {
  const b = Buffer.alloc(4)
  b.writeUInt32LE(v >>> 0, 0)
  return attr(type, b)
}

/** A u32 in network byte order, flagged as such (ipset requires the flag). */
export function attrU32Be(type: number, v: number): Buffer {
  const b = Buffer.alloc(4)
  b.writeUInt32BE(v >>> 0, 0)
  return attr(type | NLA_F_NET_BYTEORDER, b)
}

/** A NUL-terminated string. */
export function attrStr(type: number, s: string): Buffer {
  return attr(type, Buffer.concat([Buffer.from(s, 'utf8'), Buffer.from([0])]))
}

export interface Attr {
  /** Type without the NESTED / NET_BYTEORDER flags. */
  type: number
  nested: boolean
  netOrder: boolean
  data: Buffer
}

/** Parses a run of attributes. Any length that overruns the buffer is a decode error. */
export function decodeAttrs(buf: Buffer): Attr[] {
  const out: Attr[] = []
  let off = 0
  while (off + NLA_HDRLEN <= buf.length) {
    const len = buf.readUInt16LE(off)
    const rawType = buf.readUInt16LE(off + 2)
    if (len < NLA_HDRLEN || len > buf.length - off) {
      throw NetlinkError.decode(`bad attribute length ${len} at offset ${off} (${buf.length} bytes)`)
    }
    out.push({
      type: rawType & NLA_TYPE_MASK,
      nested: (rawType & NLA_F_NESTED) !== 0,
      netOrder: (rawType & NLA_F_NET_BYTEORDER) !== 0,
      data: buf.subarray(off + NLA_HDRLEN, off + len),
    })
    off += align4(len)
  }
  // Fewer than 4 trailing bytes can only be padding; anything else means a torn attribute.
  if (off < buf.length && buf.subarray(off).some((b) => b !== 0)) {
    throw NetlinkError.decode(`${buf.length - off} stray bytes after attributes`)
  }
  return out
}

/** Attributes by type; the last one of a type wins (the kernel never repeats the ones we read this way). */
export function attrMap(buf: Buffer): Map<number, Buffer> {
  const m = new Map<number, Buffer>()
  for (const a of decodeAttrs(buf)) m.set(a.type, a.data)
  return m
}

export function readU8(b: Buffer, what: string): number {
  if (b.length < 1) throw NetlinkError.decode(`${what}: expected 1 byte, got ${b.length}`)
  return b.readUInt8(0)
}

export function readU16(b: Buffer, what: string): number {
  if (b.length < 2) throw NetlinkError.decode(`${what}: expected 2 bytes, got ${b.length}`)
  return b.readUInt16LE(0)
}

export function readU32(b: Buffer, what: string): number {
  if (b.length < 4) throw NetlinkError.decode(`${what}: expected 4 bytes, got ${b.length}`)
  return b.readUInt32LE(0)
}

export function readU32Be(b: Buffer, what: string): number {
  if (b.length < 4) throw NetlinkError.decode(`${what}: expected 4 bytes, got ${b.length}`)
  return b.readUInt32BE(0)
}

/** A NUL-terminated (or unterminated) string attribute. */
export function readStr(b: Buffer): string {
  const nul = b.indexOf(0)
  return b.toString('utf8', 0, nul < 0 ? b.length : nul)
}

// ---- acks and errors ----------------------------------------------------------------------------------------

export interface NlErr {
  /** Positive errno; 0 is a plain ACK. */
  errno: number
  /** Header of the request this answers (the kernel echoes it). */
  seq: number
  extAck?: string
}

/**
 * Payload of NLMSG_ERROR: int error, the echoed nlmsghdr (plus the request body unless CAPPED), then, when
 * NLM_F_ACK_TLVS is set, extended-ack attributes (NLMSGERR_ATTR_MSG carries the human-readable reason).
 */
export function decodeError(msg: NlMsg): NlErr {
  const p = msg.payload
  if (p.length < 4 + NLMSG_HDRLEN) throw NetlinkError.decode(`NLMSG_ERROR payload too short (${p.length} bytes)`)
  const error = p.readInt32LE(0)
  const origLen = p.readUInt32LE(4)
  const seq = p.readUInt32LE(12)
  const out: NlErr = { errno: -error, seq }
  if (msg.flags & NLM_F_ACK_TLVS) {
    // The echoed request is cut to its header for ACKs (error 0) and when capped; otherwise it is whole.
    const echoed = error === 0 || msg.flags & NLM_F_CAPPED ? NLMSG_HDRLEN : align4(origLen)
    const tlvStart = 4 + echoed
    if (tlvStart > p.length) throw NetlinkError.decode('NLMSG_ERROR: echoed request overruns the payload')
    for (const a of decodeAttrs(p.subarray(tlvStart))) {
      if (a.type === NLMSGERR_ATTR_MSG) out.extAck = readStr(a.data)
    }
  }
  return out
}

/** Builds an NLMSG_ERROR reply the way the kernel does (for tests and fakes). */
export function encodeError(errno: number, request: { type: number; flags: number; seq: number; pid: number }, extAck?: string): Buffer {
  const hdr = Buffer.alloc(4 + NLMSG_HDRLEN)
  hdr.writeInt32LE(-errno, 0)
  hdr.writeUInt32LE(NLMSG_HDRLEN, 4)
  hdr.writeUInt16LE(request.type, 8)
  hdr.writeUInt16LE(request.flags, 10)
  hdr.writeUInt32LE(request.seq >>> 0, 12)
  hdr.writeUInt32LE(request.pid >>> 0, 16)
  const tlvs = extAck ? attrStr(NLMSGERR_ATTR_MSG, extAck) : Buffer.alloc(0)
  const flags = NLM_F_CAPPED | (extAck ? NLM_F_ACK_TLVS : 0)
  return encodeMsg(NLMSG_ERROR, flags, request.seq, Buffer.concat([hdr, tlvs]), request.pid)
}
