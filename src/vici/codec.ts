// Pure VICI codec: transport framing, packets and message elements, both directions, no I/O.
// Spec: strongSwan's vici plugin README (src/libcharon/plugins/vici/README.md), "Transport protocol",
// "Packet layer" and "Message format"; the limits charon enforces beyond the README are cited where checked.
// Every malformed, truncated or oversized input becomes a ViciError ('malformed' or 'frame-too-large'); nothing
// here allocates more than the frame it was given. The encoder refuses ('invalid') what charon would not parse.
import { dict } from '../dict.js'
import { ViciError } from './errors.js'

/** A decoded message value: a string (or Buffer in binary mode), a list, or a nested section. */
export type ViciValue = string | Buffer | Array<string | Buffer> | ViciMessage
/** A decoded message (or section): keys in wire order (JS enumerates integer-like keys first, see docs). */
export interface ViciMessage {
  [key: string]: ViciValue
}

/** What `encodeMessage` accepts: like ViciMessage, but keys whose value is undefined are left out. */
export type ViciInputValue = string | Buffer | ReadonlyArray<string | Buffer> | ViciInput
export interface ViciInput {
  readonly [key: string]: ViciInputValue | undefined
}

/** Packet type byte values (README "Packet layer"). */
export const PACKET_TYPES = {
  CMD_REQUEST: 0,
  CMD_RESPONSE: 1,
  CMD_UNKNOWN: 2,
  EVENT_REGISTER: 3,
  EVENT_UNREGISTER: 4,
  EVENT_CONFIRM: 5,
  EVENT_UNKNOWN: 6,
  EVENT: 7,
} as const

/** Message element type byte values (README "Message format"). */
export const ELEMENT_TYPES = {
  SECTION_START: 1,
  SECTION_END: 2,
  KEY_VALUE: 3,
  LIST_START: 4,
  LIST_ITEM: 5,
  LIST_END: 6,
} as const

export type ViciPacket =
  | { type: 'CMD_REQUEST'; name: string; message: ViciMessage }
  | { type: 'CMD_RESPONSE'; message: ViciMessage }
  | { type: 'CMD_UNKNOWN' }
  | { type: 'EVENT_REGISTER'; name: string }
  | { type: 'EVENT_UNREGISTER'; name: string }
  | { type: 'EVENT_CONFIRM' }
  | { type: 'EVENT_UNKNOWN' }
  | { type: 'EVENT'; name: string; message: ViciMessage }

/** Packets as the encoder accepts them (messages may contain undefined values, which are skipped). */
export type ViciPacketInput =
  | { type: 'CMD_REQUEST'; name: string; message?: ViciInput }
  | { type: 'CMD_RESPONSE'; message?: ViciInput }
  | { type: 'CMD_UNKNOWN' }
  | { type: 'EVENT_REGISTER'; name: string }
  | { type: 'EVENT_UNREGISTER'; name: string }
  | { type: 'EVENT_CONFIRM' }
  | { type: 'EVENT_UNKNOWN' }
  | { type: 'EVENT'; name: string; message?: ViciInput }

export type ViciPacketType = ViciPacket['type']

const TYPE_NAMES: readonly ViciPacketType[] = [
  'CMD_REQUEST',
  'CMD_RESPONSE',
  'CMD_UNKNOWN',
  'EVENT_REGISTER',
  'EVENT_UNREGISTER',
  'EVENT_CONFIRM',
  'EVENT_UNKNOWN',
  'EVENT',
]

/**
 * charon's own frame limit: strongSwan src/libcharon/plugins/vici/vici_socket.h defines
 * `VICI_MESSAGE_SIZE_MAX (512 * 1024)`, counted like ours (the packet after the 4-byte length). In
 * vici_socket.c (5.9.8, and unchanged since), `do_read` checks the length header before reading the body: over
 * the limit it logs "vici message length N exceeds 524288 bytes limit, ignored" and disconnects the client, so
 * every request queued on that connection is lost. In the other direction `send` discards an outgoing message
 * over the limit ("vici message size N exceeds maximum size of 524288, discarded"): charon never sends a bigger
 * frame, so one announced by the peer is a corrupt stream, not a message to wait for. The macro is `#ifndef`
 * guarded (a build may raise it): `maxFrameBytes` (client option) follows such a build.
 */
export const DEFAULT_MAX_FRAME_BYTES = 512 * 1024
/** Deep enough for any swanctl.conf shape (conn > children > child > ...), shallow enough to stop abuse. */
export const DEFAULT_MAX_DEPTH = 32

export interface DecodeOptions {
  /** Return values as Buffers (binary-safe, e.g. DER blobs) instead of UTF-8 strings. */
  buffers?: boolean
  /** Maximum section nesting depth; deeper input is 'malformed'. */
  maxDepth?: number
}

// ---- encoding ----

/**
 * Names charon parses: 1 to 255 bytes of printable ASCII (0x20-0x7e). vici_message.c and vici_dispatcher.c
 * (`vici_stringify`) refuse a name with any byte failing `isprint()`, in charon's C locale; a refused element name
 * fails the whole request, and a refused command or event name is dropped without any answer (vici_dispatcher.c
 * "invalid vici request message"), which would leave the call waiting for its timeout. charon's parser lets an
 * empty name through, but no command or swanctl setting has one: it is always a caller bug (a name that came
 * out empty), refused here too.
 */
const PRINTABLE = /^[\x20-\x7e]*$/

/** A key as shown in error paths: quoted and escaped when it holds what a log line should not carry raw. */
function shown(name: string): string {
  return name !== '' && PRINTABLE.test(name) ? name : JSON.stringify(name)
}

function nameBytes(name: string, what: string): Buffer {
  if (name.length === 0) throw new ViciError('invalid', `${what}: empty name`)
  if (!PRINTABLE.test(name)) throw new ViciError('invalid', `${what}: name has a byte charon refuses (printable ASCII only)`)
  if (name.length > 255) throw new ViciError('invalid', `${what}: name longer than 255 bytes: ${name.slice(0, 40)}...`)
  return Buffer.from(name, 'latin1')
}

function valueBytes(v: string | Buffer, path: string): Buffer {
  const b = typeof v === 'string' ? Buffer.from(v, 'utf8') : v
  if (b.length > 0xffff) throw new ViciError('invalid', `${path}: value longer than 65535 bytes`)
  return b
}

function isValue(v: unknown): v is string | Buffer {
  return typeof v === 'string' || Buffer.isBuffer(v)
}

/** Plain objects only: a Date, Map, Uint8Array or class instance has no own keys to encode and would vanish. */
function isSection(v: unknown): v is ViciInput {
  if (typeof v !== 'object' || v === null) return false
  const proto: unknown = Object.getPrototypeOf(v)
  return proto === Object.prototype || proto === null
}

/**
 * What a wrong value is, for the error. VICI values are byte strings and charon reads e.g. `yes`/`no`, not
 * `true`, so numbers and booleans are refused rather than stringified: callers write the exact text (as
 * src/desired does with `String(port)` and `'yes'`).
 */
function describe(v: unknown): string {
  if (v === null) return 'null'
  if (typeof v !== 'object') return typeof v
  return (v as object).constructor?.name ?? 'object'
}

const WANTED = 'a string, Buffer, list of strings/Buffers or plain-object section'

function encodeInto(out: Buffer[], msg: ViciInput, prefix: string, depth: number, maxDepth: number): void {
  if (depth > maxDepth) throw new ViciError('invalid', `${prefix || 'message'}: nested deeper than ${maxDepth} sections`)
  for (const key of Object.keys(msg)) {
    const v: unknown = msg[key]
    if (v === undefined) continue
    const path = prefix === '' ? shown(key) : `${prefix}.${shown(key)}`
    const name = nameBytes(key, `key ${path}`)
    if (isValue(v)) {
      const val = valueBytes(v, path)
      const head = Buffer.allocUnsafe(2 + name.length + 2)
      head[0] = ELEMENT_TYPES.KEY_VALUE
      head[1] = name.length
      name.copy(head, 2)
      head.writeUInt16BE(val.length, 2 + name.length)
      out.push(head, val)
    } else if (Array.isArray(v)) {
      out.push(Buffer.from([ELEMENT_TYPES.LIST_START, name.length]), name)
      for (const [i, item] of (v as readonly unknown[]).entries()) {
        if (!isValue(item)) {
          throw new ViciError('invalid', `${path}[${i}]: list items must be strings or Buffers (lists cannot nest), got ${describe(item)}`)
        }
        const val = valueBytes(item, `${path}[${i}]`)
        const head = Buffer.allocUnsafe(3)
        head[0] = ELEMENT_TYPES.LIST_ITEM
        head.writeUInt16BE(val.length, 1)
        out.push(head, val)
      }
      out.push(Buffer.from([ELEMENT_TYPES.LIST_END]))
    } else if (isSection(v)) {
      out.push(Buffer.from([ELEMENT_TYPES.SECTION_START, name.length]), name)
      encodeInto(out, v, path, depth + 1, maxDepth)
      out.push(Buffer.from([ELEMENT_TYPES.SECTION_END]))
    } else {
      throw new ViciError('invalid', `${path}: expected ${WANTED}, got ${describe(v)}`)
    }
  }
}

/**
 * Encodes a message (the element sequence, without packet or frame header). Insertion order is wire order.
 * Throws ViciError('invalid'), naming the key path, for anything charon would not parse (see nameBytes, isSection).
 */
export function encodeMessage(msg: ViciInput, maxDepth = DEFAULT_MAX_DEPTH): Buffer {
  if (!isSection(msg)) throw new ViciError('invalid', `message: expected a plain object, got ${describe(msg)}`)
  const out: Buffer[] = []
  encodeInto(out, msg, '', 0, maxDepth)
  return Buffer.concat(out)
}

/** Encodes a packet (type byte, optional name, optional message), without the 4-byte frame length. */
export function encodePacket(p: ViciPacketInput): Buffer {
  const type = Buffer.from([PACKET_TYPES[p.type]])
  switch (p.type) {
    case 'CMD_REQUEST':
    case 'EVENT': {
      const name = nameBytes(p.name, `${p.type} packet ${shown(p.name)}`)
      return Buffer.concat([type, Buffer.from([name.length]), name, encodeMessage(p.message ?? {})])
    }
    case 'EVENT_REGISTER':
    case 'EVENT_UNREGISTER': {
      const name = nameBytes(p.name, `${p.type} packet ${shown(p.name)}`)
      return Buffer.concat([type, Buffer.from([name.length]), name])
    }
    case 'CMD_RESPONSE':
      return Buffer.concat([type, encodeMessage(p.message ?? {})])
    default:
      return type
  }
}

/**
 * Encodes a packet with its 4-byte big-endian length prefix, ready for the socket. A packet over maxFrameBytes
 * is refused with 'frame-too-large' before anything is sent (charon would drop the connection, see
 * DEFAULT_MAX_FRAME_BYTES).
 */
export function encodeFrame(p: ViciPacketInput, maxFrameBytes = DEFAULT_MAX_FRAME_BYTES): Buffer {
  const body = encodePacket(p)
  if (body.length > maxFrameBytes) {
    const what = 'name' in p ? `${p.type} ${p.name}` : p.type
    throw new ViciError(
      'frame-too-large',
      `${what}: a frame of ${body.length} bytes exceeds the ${maxFrameBytes}-byte VICI limit (charon drops the connection on larger ones); not sent`,
      { command: 'name' in p ? p.name : undefined },
    )
  }
  const head = Buffer.allocUnsafe(4)
  head.writeUInt32BE(body.length, 0)
  return Buffer.concat([head, body])
}

// ---- decoding ----

function malformed(msg: string, offset: number): ViciError {
  return new ViciError('malformed', `${msg} at byte ${offset}`)
}

// Assigning `__proto__` through `obj[key] = v` would replace the prototype; defineProperty stores it as data.
function setKey(obj: ViciMessage, key: string, v: ViciValue): void {
  if (key === '__proto__') Object.defineProperty(obj, key, { value: v, enumerable: true, writable: true, configurable: true })
  else obj[key] = v
}

/** Decodes a message element sequence. Throws ViciError('malformed') on anything the README does not allow. */
export function decodeMessage(buf: Buffer, opts: DecodeOptions = {}): ViciMessage {
  const maxDepth = opts.maxDepth ?? DEFAULT_MAX_DEPTH
  const asBuffer = opts.buffers === true
  // The message's own keys are names in events and listings (a connection, an IKE_SA), as are those of the
  // `children` and `child-sas` sections: those are records in dictionary mode (src/dict.ts), the rest plain objects.
  const root: ViciMessage = dict()
  const stack: ViciMessage[] = [root]
  let list: Array<string | Buffer> | null = null
  let pos = 0

  const readName = (): string => {
    if (pos >= buf.length) throw malformed('truncated name length', pos)
    const len = buf[pos]!
    if (pos + 1 + len > buf.length) throw malformed('truncated name', pos)
    const s = buf.toString('utf8', pos + 1, pos + 1 + len)
    pos += 1 + len
    return s
  }
  const readValue = (): string | Buffer => {
    if (pos + 2 > buf.length) throw malformed('truncated value length', pos)
    const len = buf.readUInt16BE(pos)
    if (pos + 2 + len > buf.length) throw malformed('truncated value', pos)
    const v = asBuffer ? Buffer.from(buf.subarray(pos + 2, pos + 2 + len)) : buf.toString('utf8', pos + 2, pos + 2 + len)
    pos += 2 + len
    return v
  }

  while (pos < buf.length) {
    const at = pos
    const type = buf[pos++]
    const current = stack[stack.length - 1]!
    if (list !== null && type !== ELEMENT_TYPES.LIST_ITEM && type !== ELEMENT_TYPES.LIST_END) {
      throw malformed(`element type ${type} inside a list`, at)
    }
    switch (type) {
      case ELEMENT_TYPES.SECTION_START: {
        const name = readName()
        if (stack.length > maxDepth) throw malformed(`sections nested deeper than ${maxDepth}`, at)
        const sec: ViciMessage = name === 'children' || name === 'child-sas' ? dict() : {}
        setKey(current, name, sec)
        stack.push(sec)
        break
      }
      case ELEMENT_TYPES.SECTION_END:
        if (stack.length === 1) throw malformed('SECTION_END without an open section', at)
        stack.pop()
        break
      case ELEMENT_TYPES.KEY_VALUE: {
        const name = readName()
        setKey(current, name, readValue())
        break
      }
      case ELEMENT_TYPES.LIST_START: {
        const name = readName()
        list = []
        setKey(current, name, list)
        break
      }
      case ELEMENT_TYPES.LIST_ITEM:
        if (list === null) throw malformed('LIST_ITEM outside a list', at)
        list.push(readValue())
        break
      case ELEMENT_TYPES.LIST_END:
        if (list === null) throw malformed('LIST_END without an open list', at)
        list = null
        break
      default:
        throw malformed(`unknown element type ${type}`, at)
    }
  }
  if (list !== null) throw malformed('unterminated list', pos)
  if (stack.length !== 1) throw malformed(`${stack.length - 1} unterminated section(s)`, pos)
  return root
}

/** Decodes one packet (a frame's body, without the length prefix). */
export function decodePacket(buf: Buffer, opts: DecodeOptions = {}): ViciPacket {
  if (buf.length === 0) throw malformed('empty packet', 0)
  const type = TYPE_NAMES[buf[0]!]
  if (type === undefined) throw malformed(`unknown packet type ${buf[0]}`, 0)
  const named = type === 'CMD_REQUEST' || type === 'EVENT' || type === 'EVENT_REGISTER' || type === 'EVENT_UNREGISTER'
  let pos = 1
  let name = ''
  if (named) {
    if (buf.length < 2) throw malformed(`${type} without a name`, 1)
    const len = buf[1]!
    if (2 + len > buf.length) throw malformed(`${type} name truncated`, 1)
    name = buf.toString('utf8', 2, 2 + len)
    pos = 2 + len
  }
  switch (type) {
    case 'CMD_REQUEST':
    case 'EVENT':
      return { type, name, message: decodeMessage(buf.subarray(pos), opts) }
    case 'CMD_RESPONSE':
      return { type, message: decodeMessage(buf.subarray(pos), opts) }
    case 'EVENT_REGISTER':
    case 'EVENT_UNREGISTER':
      if (pos !== buf.length) throw malformed(`${type} with trailing bytes`, pos)
      return { type, name }
    default:
      if (pos !== buf.length) throw malformed(`${type} with trailing bytes`, pos)
      return { type }
  }
}

/**
 * Splits a byte stream into frame bodies, however the stream was chunked. Holds at most one partial frame plus
 * the chunk that completed it. After it throws, the stream is out of sync: drop the connection.
 */
export class FrameReader {
  private chunks: Buffer[] = []
  private size = 0
  private need = -1

  constructor(private readonly maxFrameBytes = DEFAULT_MAX_FRAME_BYTES) {}

  /** Feeds bytes; returns every frame body completed by them, in order. */
  push(chunk: Buffer): Buffer[] {
    this.chunks.push(chunk)
    this.size += chunk.length
    const frames: Buffer[] = []
    for (;;) {
      if (this.need < 0) {
        if (this.size < 4) break
        const len = this.take(4).readUInt32BE(0)
        // Checked on the header, before any of the body is buffered: charon never sends a frame over its limit,
        // so this is a corrupt or foreign stream; the caller drops the connection.
        if (len > this.maxFrameBytes) {
          throw new ViciError('frame-too-large', `incoming frame header announces ${len} bytes, over the ${this.maxFrameBytes}-byte limit`)
        }
        if (len === 0) throw new ViciError('malformed', 'zero-length frame (a packet needs a type byte)')
        this.need = len
      }
      if (this.size < this.need) break
      frames.push(this.take(this.need))
      this.need = -1
    }
    return frames
  }

  /** Bytes of an incomplete frame still buffered (non-zero when a peer closes mid-frame). */
  get pending(): number {
    return this.size
  }

  private take(n: number): Buffer {
    const first = this.chunks[0]!
    let out: Buffer
    if (first.length >= n) {
      out = first.subarray(0, n)
      if (first.length === n) this.chunks.shift()
      else this.chunks[0] = first.subarray(n)
    } else {
      const parts: Buffer[] = []
      let got = 0
      while (got < n) {
        const c = this.chunks[0]!
        const want = n - got
        if (c.length <= want) {
          parts.push(c)
          got += c.length
          this.chunks.shift()
        } else {
          parts.push(c.subarray(0, want))
          this.chunks[0] = c.subarray(want)
          got = n
        }
      }
      out = Buffer.concat(parts, n)
    }
    this.size -= n
    return out
  }
}
