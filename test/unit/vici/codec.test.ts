import t from 'tap'
import {
  FrameReader,
  ViciError,
  decodeMessage,
  decodePacket,
  encodeFrame,
  encodeMessage,
  encodePacket,
  type ViciMessage,
} from '../../../src/vici/index.js'

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
      'ünïcode-ключ': 'värde',
    },
  }
  const bytes = encodeMessage(conn)
  t.same(decodeMessage(bytes), conn)
  t.same(encodeMessage(decodeMessage(bytes)), bytes, 'decode then encode is byte-identical')
})

t.test('a key named __proto__ is data, not a prototype', async (t) => {
  const m = decodeMessage(encodeMessage(JSON.parse('{"__proto__": {"polluted": "yes"}}')))
  t.equal(Object.getPrototypeOf(m), Object.prototype)
  t.equal(({} as Record<string, unknown>).polluted, undefined)
  t.same(Object.keys(m), ['__proto__'])
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

  const big = Buffer.from([0, 0x40, 0, 1]) // 4 MiB + 1
  t.throws(() => new FrameReader().push(big), { code: 'frame-too-large' }, 'default 4 MiB limit')
  t.throws(() => new FrameReader(100).push(Buffer.from([0, 0, 0, 101])), { code: 'frame-too-large' }, 'configured limit')
  t.throws(() => new FrameReader().push(Buffer.from([0, 0, 0, 0])), { code: 'malformed' }, 'zero-length frame')
})
