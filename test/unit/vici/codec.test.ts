import t from 'tap'
import {
  DEFAULT_MAX_FRAME_BYTES,
  FrameReader,
  ViciError,
  decodeMessage,
  decodePacket,
  encodeFrame,
  encodeMessage,
  encodePacket,
  type ViciMessage,
} from '../../../src/vici/index.js'
import { requestOfSize } from '../../harness/vici-frames.js'

const s = (str: string): number[] => [...Buffer.from(str, 'latin1')]

// The encoding example of the vici README ("Encoding example"), byte for byte.
const README_EXAMPLE = Buffer.from([
  3, 4, ...s('key1'), 0, 6, ...s('value1'), // KEY_VALUE key1 = value1
  1, 8, ...s('section1'), //                   SECTION_START section1
  1, 11, ...s('sub-section'), //               SECTION_START sub-section
  3, 4, ...s('key2'), 0, 6, ...s('value2'), // KEY_VALUE key2 = value2
  2, //                                        SECTION_END sub-section
  4, 5, ...s('list1'), //                      LIST_START list1
  5, 0, 5, ...s('item1'), //                   LIST_ITEM item1
  5, 0, 5, ...s('item2'), //                   LIST_ITEM item2
  6, //                                        LIST_END list1
  2, //                                        SECTION_END section1
])
const README_MESSAGE = {
  key1: 'value1',
  section1: { 'sub-section': { key2: 'value2' }, list1: ['item1', 'item2'] },
}

t.test('README example encodes to the README bytes and decodes back', async (t) => {
  t.same(encodeMessage(README_MESSAGE), README_EXAMPLE)
  t.same(decodeMessage(README_EXAMPLE), README_MESSAGE)
  t.same(Object.keys(decodeMessage(README_EXAMPLE)), ['key1', 'section1'], 'wire order kept')
})

t.test('packets: named and unnamed types, with frame length', async (t) => {
  // CMD_REQUEST "version" with an empty message
  const req = Buffer.from([0, 0, 0, 9, /* length 9 */ 0, /* CMD_REQUEST */ 7, ...s('version')])
  t.same(encodeFrame({ type: 'CMD_REQUEST', name: 'version' }), req)
  t.same(decodePacket(req.subarray(4)), { type: 'CMD_REQUEST', name: 'version', message: {} })

  // EVENT_REGISTER "list-sa"
  const reg = Buffer.from([3 /* EVENT_REGISTER */, 7, ...s('list-sa')])
  t.same(encodePacket({ type: 'EVENT_REGISTER', name: 'list-sa' }), reg)
  t.same(decodePacket(reg), { type: 'EVENT_REGISTER', name: 'list-sa' })

  // CMD_RESPONSE { success = no, errmsg = x }
  const resp = Buffer.from([
    1, //                                       CMD_RESPONSE (unnamed)
    3, 7, ...s('success'), 0, 2, ...s('no'), // KEY_VALUE success = no
    3, 6, ...s('errmsg'), 0, 1, ...s('x'), //   KEY_VALUE errmsg = x
  ])
  t.same(decodePacket(resp), { type: 'CMD_RESPONSE', message: { success: 'no', errmsg: 'x' } })
  t.same(encodePacket({ type: 'CMD_RESPONSE', message: { success: 'no', errmsg: 'x' } }), resp)

  // EVENT "ike-updown" { up = yes }
  const ev = Buffer.from([7 /* EVENT */, 10, ...s('ike-updown'), 3, 2, ...s('up'), 0, 3, ...s('yes')])
  t.same(decodePacket(ev), { type: 'EVENT', name: 'ike-updown', message: { up: 'yes' } })

  for (const [byte, type] of [[2, 'CMD_UNKNOWN'], [5, 'EVENT_CONFIRM'], [6, 'EVENT_UNKNOWN']] as const) {
    t.same(decodePacket(Buffer.from([byte])), { type }, type)
    t.same(encodePacket({ type }), Buffer.from([byte]))
  }
})

t.test('binary values, empty lists and sections, undefined skipped', async (t) => {
  const bin = Buffer.from([0, 255, 10, 0x80])
  const enc = encodeMessage({ data: bin, empty: [], sec: {}, skip: undefined })
  t.same(
    enc,
    Buffer.from([
      3, 4, ...s('data'), 0, 4, 0, 255, 10, 0x80, // KEY_VALUE data = 00 ff 0a 80
      4, 5, ...s('empty'), 6, //                    LIST_START empty, LIST_END
      1, 3, ...s('sec'), 2, //                      SECTION_START sec, SECTION_END
    ]),
  )
  const dec = decodeMessage(enc, { buffers: true })
  t.ok(Buffer.isBuffer(dec.data) && (dec.data as Buffer).equals(bin), 'binary-safe with buffers: true')
  t.same(dec.empty, [])
  t.same(dec.sec, {})
  t.equal(typeof decodeMessage(enc).data, 'string', 'strings by default')
})

t.test('round trip of a swanctl-shaped connection', async (t) => {
  const conn: ViciMessage = {
    'edge1-edge2': {
      version: '2',
      local_addrs: ['192.168.1.1'],
      remote_addrs: ['192.168.1.2'],
      proposals: ['aes256gcm16-prfsha256-ecp256', 'default'],
      local: { auth: 'pubkey', id: 'C=CN, O=fabedge.io, CN=beijing.edge1' },
      remote: { auth: 'pubkey', id: 'C=CN, O=fabedge.io, CN=beijing.edge2' },
      children: {
        'edge1-edge2-p2p': { local_ts: ['10.10.0.0/24'], remote_ts: ['10.20.0.0/24'], start_action: 'none' },
      },
      description: 'ünïcode värde ключ', // values are bytes: UTF-8 is fine there, never in keys
    },
  }
  const bytes = encodeMessage(conn)
  t.same(decodeMessage(bytes), conn)
  t.same(encodeMessage(decodeMessage(bytes)), bytes, 'decode then encode is byte-identical')
})

t.test('a key named __proto__ is data, not a prototype', async (t) => {
  const m = decodeMessage(encodeMessage(JSON.parse('{"__proto__": {"polluted": "yes"}}')))
  // The message is a record keyed by names (src/dict.ts): no prototype at all, so none to replace.
  t.equal(Object.getPrototypeOf(m), null)
  t.equal(({} as Record<string, unknown>).polluted, undefined)
  t.same(Object.keys(m), ['__proto__'])
  t.same(m.__proto__, { polluted: 'yes' }, 'the key holds the data')
  const s = decodeMessage(encodeMessage({ conn: { 'children': JSON.parse('{"__proto__": {"x": "1"}}'), 'local-1': JSON.parse('{"__proto__": {"y": "2"}}') } })).conn as Record<string, Record<string, unknown>>
  t.same(Object.keys(s.children!), ['__proto__'], 'a children section (a record)')
  t.equal(Object.getPrototypeOf(s['local-1']), Object.prototype, 'a plain section keeps its prototype')
  t.same(Object.keys(s['local-1']!), ['__proto__'], 'and the key as data')
})

t.test('encoder refuses what the wire cannot carry', async (t) => {
  const code = (fn: () => unknown): string | undefined => {
    try {
      fn()
    } catch (e) {
      return e instanceof ViciError ? e.code : 'not-a-ViciError'
    }
    return undefined
  }
  t.equal(code(() => encodeMessage({ ['k'.repeat(256)]: 'v' })), 'invalid', 'name > 255 bytes')
  t.equal(code(() => encodeMessage({ k: 'v'.repeat(65536) })), 'invalid', 'value > 65535 bytes')
  t.equal(code(() => encodeMessage({ k: [['nested']] as never })), 'invalid', 'nested list')
  t.equal(code(() => encodeMessage({ k: 5 as never })), 'invalid', 'number')
  let deep: Record<string, unknown> = {}
  for (let i = 0; i < 40; i++) deep = { d: deep }
  t.equal(code(() => encodeMessage(deep as never)), 'invalid', 'too deep')
  t.equal(code(() => encodeFrame({ type: 'CMD_REQUEST', name: 'x', message: { k: 'v'.repeat(100) } }, 50)), 'frame-too-large')
})

t.test('decoder: each malformed shape is a typed error', async (t) => {
  const bad: Array<[string, number[]]> = [
    ['unknown element type', [9]],
    ['truncated name', [3, 4, ...s('ke')]],
    ['truncated value length', [3, 1, ...s('k'), 0]],
    ['truncated value', [3, 1, ...s('k'), 0, 5, ...s('ab')]],
    ['unbalanced SECTION_END', [2]],
    ['unterminated section', [1, 1, ...s('s')]],
    ['LIST_ITEM outside list', [5, 0, 0]],
    ['LIST_END outside list', [6]],
    ['unterminated list', [4, 1, ...s('l')]],
    ['key/value inside a list', [4, 1, ...s('l'), 3, 1, ...s('k'), 0, 0, 6]],
    ['section inside a list', [4, 1, ...s('l'), 1, 1, ...s('s'), 2, 6]],
  ]
  for (const [what, bytes] of bad) {
    t.throws(() => decodeMessage(Buffer.from(bytes)), { name: 'ViciError', code: 'malformed' }, what)
  }
  const deep = Buffer.from([...Array(33).fill([1, 1, 0x61]).flat(), ...Array(33).fill(2)])
  t.throws(() => decodeMessage(deep), { code: 'malformed' }, 'deeper than 32 sections')
  t.doesNotThrow(() => decodeMessage(deep, { maxDepth: 40 }), 'depth limit is configurable')

  t.throws(() => decodePacket(Buffer.alloc(0)), { code: 'malformed' }, 'empty packet')
  t.throws(() => decodePacket(Buffer.from([8])), { code: 'malformed' }, 'unknown packet type')
  t.throws(() => decodePacket(Buffer.from([0])), { code: 'malformed' }, 'named packet without name')
  t.throws(() => decodePacket(Buffer.from([7, 5, 0x61])), { code: 'malformed' }, 'name truncated')
  t.throws(() => decodePacket(Buffer.from([5, 0])), { code: 'malformed' }, 'EVENT_CONFIRM with trailing bytes')
})

t.test('FrameReader: any chunking yields the same frames; limits enforced', async (t) => {
  const frames = [
    encodeFrame({ type: 'CMD_RESPONSE', message: README_MESSAGE }),
    encodeFrame({ type: 'EVENT_CONFIRM' }),
    encodeFrame({ type: 'EVENT', name: 'list-sa', message: { a: 'b'.repeat(3000) } }),
  ]
  const stream = Buffer.concat(frames)
  for (const size of [1, 2, 3, 5, 7, 64, 4096, stream.length]) {
    const r = new FrameReader()
    const got: Buffer[] = []
    for (let i = 0; i < stream.length; i += size) got.push(...r.push(stream.subarray(i, i + size)))
    t.same(got.map((b) => Buffer.from(b)), frames.map((f) => f.subarray(4)), `chunks of ${size}`)
    t.equal(r.pending, 0)
  }
  const r = new FrameReader()
  r.push(stream.subarray(0, 10))
  t.equal(r.pending, 6, 'partial frame stays buffered')

  t.throws(() => new FrameReader().push(Buffer.from([0, 8, 0, 1])), { code: 'frame-too-large' }, 'default: charon\'s 512 KiB + 1 refused')
  const atLimit = new FrameReader()
  t.same(atLimit.push(Buffer.from([0, 8, 0, 0, 1])), [], 'a header of exactly 512 KiB is accepted...')
  t.equal(atLimit.pending, 1, '...and its body buffered as it arrives')
  t.throws(() => new FrameReader(100).push(Buffer.from([0, 0, 0, 101])), { code: 'frame-too-large' }, 'configured limit')
  t.throws(() => new FrameReader().push(Buffer.from([0, 0, 0, 0])), { code: 'malformed' }, 'zero-length frame')
})

t.test("frames: charon's 512 KiB limit (VICI_MESSAGE_SIZE_MAX) is the default, in both directions", async (t) => {
  t.equal(DEFAULT_MAX_FRAME_BYTES, 512 * 1024)
  const at = encodeFrame(requestOfSize('x', 512 * 1024))
  t.same([...at.subarray(0, 8)], [0, 8, 0, 0, /* length 524288 */ 0, /* CMD_REQUEST */ 1, 0x78 /* name x */, 3 /* KEY_VALUE */])
  t.equal(at.length, 4 + 512 * 1024, 'exactly 512 KiB is sent')
  const e = (() => {
    try {
      encodeFrame(requestOfSize('x', 512 * 1024 + 1))
    } catch (err) {
      return err
    }
    return undefined
  })()
  t.ok(e instanceof ViciError, 'one byte more: a ViciError')
  t.equal((e as ViciError).code, 'frame-too-large')
  t.equal((e as ViciError).command, 'x', 'naming the command')
  t.match((e as ViciError).message, /CMD_REQUEST x: a frame of 524289 bytes exceeds the 524288-byte VICI limit/)
  t.equal((e as ViciError).isTransport, true)
  t.doesNotThrow(() => encodeFrame(requestOfSize('x', 512 * 1024 + 1), 1024 * 1024), 'the limit is configurable')
  t.throws(() => encodeFrame({ type: 'EVENT', name: 'e', message: requestOfSize('x', 600_000).message }), { code: 'frame-too-large' }, 'any packet type')

  // what we accept mirrors what charon sends: its own outgoing limit is the same constant
  const frames = new FrameReader().push(at)
  t.equal(frames.length, 1, 'a 512 KiB frame is read')
  t.same(decodePacket(frames[0]!).type, 'CMD_REQUEST')
})

t.test('encoder: keys charon refuses are invalid, naming the key path', async (t) => {
  const refused: Array<[string, Record<string, unknown>, RegExp]> = [
    ['control byte', { conn: { 'bad\x01key': 'v' } }, /^key conn\."bad\\u0001key": name has a byte charon refuses \(printable ASCII only\)$/],
    ['newline', { 'a\nb': 'v' }, /^key "a\\nb": name has a byte/],
    ['DEL 0x7f', { 'a\x7f': 'v' }, /^key "a\x7f": name has a byte/],
    ['non-ASCII (UTF-8 bytes fail isprint in charon)', { conn: { children: { 'pöd': {} } } }, /^key conn\.children\."pöd": name has a byte/],
    ['empty', { conn: { '': 'v' } }, /^key conn\."": empty name$/],
    ['256 bytes', { ['k'.repeat(256)]: 'v' }, /^key k{256}: name longer than 255 bytes/],
    ['in a list key', { 'l\t': ['x'] }, /^key "l\\t": name has a byte/],
  ]
  for (const [what, msg, message] of refused) {
    t.throws(() => encodeMessage(msg as never), { name: 'ViciError', code: 'invalid', message }, what)
  }
  // the whole printable range and the longest name are fine, byte for byte
  const printable = Array.from({ length: 0x7f - 0x20 }, (_, i) => String.fromCharCode(0x20 + i)).join('')
  t.same(encodeMessage({ [printable]: '' }), Buffer.from([3, 95, ...s(printable), 0, 0]), 'printable ASCII 0x20-0x7e')
  const longest = 'k'.repeat(255)
  t.same(encodeMessage({ [longest]: {} }), Buffer.from([1, 255, ...s(longest), 2]), '255-byte name')

  for (const p of [
    { type: 'CMD_REQUEST', name: 'list\x00sas' },
    { type: 'CMD_REQUEST', name: '' },
    { type: 'EVENT_REGISTER', name: 'ike-üpdown' },
    { type: 'EVENT_UNREGISTER', name: 'x'.repeat(256) },
  ] as const) {
    t.throws(() => encodePacket(p), { code: 'invalid', message: new RegExp(`${p.type} packet`) }, `${p.type} ${JSON.stringify(p.name.slice(0, 12))}`)
  }
})

t.test('encoder: only strings, Buffers, lists of those and plain objects are values', async (t) => {
  class Conn {
    version = '2'
  }
  const refused: Array<[string, unknown, string]> = [
    ['number (write the text: String(port))', 500, 'got number'],
    ['boolean (charon reads yes/no)', true, 'got boolean'],
    ['null', null, 'got null'],
    ['bigint', 1n, 'got bigint'],
    ['symbol', Symbol('s'), 'got symbol'],
    ['function', () => 'x', 'got function'],
    ['Date (no own keys: would become an empty section)', new Date(0), 'got Date'],
    ['Uint8Array that is not a Buffer', new Uint8Array([1, 2]), 'got Uint8Array'],
    ['Map', new Map([['a', 'b']]), 'got Map'],
    ['class instance', new Conn(), 'got Conn'],
  ]
  for (const [what, v, got] of refused) {
    const message = new RegExp(`^conn\\.local\\.id: expected a string, Buffer, list of strings/Buffers or plain-object section, ${got}$`)
    t.throws(() => encodeMessage({ conn: { local: { id: v } } } as never), { name: 'ViciError', code: 'invalid', message }, what)
  }
  const items: Array<[string, unknown[], RegExp]> = [
    ['number item', ['10.0.0.0/24', 24], /^conn\.children\.p2p\.local_ts\[1\]: list items must be strings or Buffers \(lists cannot nest\), got number$/],
    ['nested list', [['x']], /local_ts\[0\]: .* got Array$/],
    ['undefined item', [undefined], /local_ts\[0\]: .* got undefined$/],
    ['section item', [{}], /local_ts\[0\]: .* got Object$/],
  ]
  for (const [what, list, message] of items) {
    t.throws(() => encodeMessage({ conn: { children: { p2p: { local_ts: list } } } } as never), { code: 'invalid', message }, what)
  }
  t.throws(() => encodeMessage(new Date() as never), { code: 'invalid', message: /^message: expected a plain object, got Date$/ }, 'top level')
  t.throws(() => encodeMessage({ k: 'v'.repeat(65536) }), { code: 'invalid', message: /^k: value longer than 65535 bytes$/ })
  t.throws(() => encodeMessage({ l: ['v'.repeat(65536)] }), { code: 'invalid', message: /^l\[0\]: value longer than 65535 bytes$/ })

  const bare = Object.create(null) as Record<string, string>
  bare.k = 'v'
  t.same(encodeMessage({ sec: bare }), Buffer.from([1, 3, ...s('sec'), 3, 1, ...s('k'), 0, 1, ...s('v'), 2]), 'a null-prototype object is a section')
  t.same(encodeMessage({ k: undefined, l: [] }), Buffer.from([4, 1, ...s('l'), 6]), 'undefined keys are still skipped')
})
