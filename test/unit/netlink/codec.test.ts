import t from 'tap'
import {
  attr, attrMap, attrNested, attrStr, attrU32, decodeAttrs, decodeError, decodeMsgs, encodeError, encodeMsg,
  NLA_F_NESTED, NLM_F_ACK, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR,
} from '../../../src/netlink/codec.js'
import { NetlinkError } from '../../../src/netlink/errors.js'
import { fixture, hex } from './fixtures.js'

t.test('encodeMsg lays out nlmsghdr and pads to 4 bytes', async (t) => {
  const m = encodeMsg(24, NLM_F_REQUEST | NLM_F_ACK, 7, Buffer.from([1, 2, 3]))
  t.equal(m.toString('hex'), hex(
    ['13000000', 'nlmsg_len 19 (16 + 3, unpadded)'],
    ['1800', 'type RTM_NEWROUTE'],
    ['0500', 'flags REQUEST|ACK'],
    ['07000000', 'seq 7'],
    ['00000000', 'pid 0 (kernel assigns)'],
    ['010203 00', 'payload + 1 byte padding'],
  ))
  const [d] = decodeMsgs(m)
  t.same({ type: d!.type, flags: d!.flags, seq: d!.seq, payload: [...d!.payload] }, { type: 24, flags: 5, seq: 7, payload: [1, 2, 3] })
})

t.test('several messages in one datagram split at aligned offsets', async (t) => {
  const dg = Buffer.concat([encodeMsg(1, 0, 1, Buffer.from('abcde')), encodeMsg(NLMSG_DONE, 2, 2, Buffer.alloc(4))])
  t.same(decodeMsgs(dg).map((m) => [m.type, m.seq, m.payload.length]), [[1, 1, 5], [NLMSG_DONE, 2, 4]])
})

t.test('bad lengths are decode errors, not crashes', async (t) => {
  const good = encodeMsg(1, 0, 1, Buffer.alloc(8))
  t.throws(() => decodeMsgs(good.subarray(0, 10)), { name: 'NetlinkError', code: 'EMALFORMED', kind: 'decode' })
  const bad = Buffer.from(good)
  bad.writeUInt32LE(200, 0)
  t.throws(() => decodeMsgs(bad), { code: 'EMALFORMED' })
  bad.writeUInt32LE(3, 0)
  t.throws(() => decodeMsgs(bad), { code: 'EMALFORMED' })
})

t.test('attributes: header, padding, nesting flag, round trip', async (t) => {
  t.equal(attrStr(3, 'eth0').toString('hex'), hex(['0900', 'len 9'], ['0300', 'type 3'], ['6574683000', '"eth0\\0"'], ['000000', 'pad']))
  const n = attrNested(7, [attrU32(1, 5), attr(2, Buffer.from([9]))])
  t.equal(n.readUInt16LE(2), 7 | NLA_F_NESTED)
  const [outer] = decodeAttrs(n)
  t.equal(outer!.type, 7)
  t.ok(outer!.nested)
  const inner = attrMap(outer!.data)
  t.equal(inner.get(1)!.readUInt32LE(0), 5)
  t.same([...inner.get(2)!], [9])
  t.throws(() => decodeAttrs(Buffer.from('0800010001', 'hex')), { code: 'EMALFORMED' })
  t.throws(() => decodeAttrs(Buffer.from('0200010000000000', 'hex')), { code: 'EMALFORMED' })
})

t.test('captured ACK: error 0 for the request seq', async (t) => {
  const [m] = decodeMsgs(fixture('ack.hex')[0]!)
  t.equal(m!.type, NLMSG_ERROR)
  const e = decodeError(m!)
  t.equal(e.errno, 0)
  t.equal(e.seq, 1001)
  t.equal(e.extAck, undefined)
})

t.test('captured refusal carries the extended-ack message', async (t) => {
  const [m] = decodeMsgs(fixture('error-extack.hex')[0]!)
  const e = decodeError(m!)
  t.equal(e.errno, 101, 'ENETUNREACH')
  t.equal(e.extAck, 'Nexthop has invalid gateway')
  const err = NetlinkError.kernel(e.errno, 'ip route replace', e.extAck)
  t.match(err, { kind: 'kernel', code: 'ENETUNREACH', errno: 101, extAck: 'Nexthop has invalid gateway' })
  t.match(err.message, /ENETUNREACH: Nexthop has invalid gateway/)
})

t.test('encodeError builds what decodeError reads (for fakes)', async (t) => {
  const [m] = decodeMsgs(encodeError(17, { type: 24, flags: 5, seq: 9, pid: 0 }, 'File exists'))
  t.same(decodeError(m!), { errno: 17, seq: 9, extAck: 'File exists' })
})
