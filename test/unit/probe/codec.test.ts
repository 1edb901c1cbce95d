// ICMP echo encoding and decoding with byte fixtures, the Internet checksum, address validation, and random or
// truncated input never crashing the decoder.
import t from 'tap'
import { addressBytes, addressText, decodeEchoReply, encodeEchoRequest, inetChecksum, ProbeError } from '../../../src/probe/codec.js'

const token = Buffer.from('0102030405060708', 'hex')

t.test('IPv4 echo request bytes, with a checksum that verifies', async (t) => {
  const b = encodeEchoRequest(4, { ident: 0x1234, seq: 7, token })
  // type 8, code 0, checksum, ident 0x1234, seq 7, token
  t.equal(b.toString('hex'), '0800' + b.subarray(2, 4).toString('hex') + '12340007' + '0102030405060708')
  t.equal(inetChecksum(b), 0, 'a message with its checksum sums to zero')
  t.equal(inetChecksum(Buffer.from([0x01])), 0xfeff, 'odd length pads with zero')
})

t.test('IPv6 echo request: type 128, checksum left to the kernel', async (t) => {
  const b = encodeEchoRequest(6, { ident: 1, seq: 0xffff, token })
  t.equal(b.toString('hex'), '80000000' + '0001ffff' + '0102030405060708')
})

t.test('replies decode; anything else is null', async (t) => {
  const reply4 = Buffer.from('0000abcd12340007' + '0102030405060708', 'hex')
  t.same(decodeEchoReply(4, reply4), { ident: 0x1234, seq: 7, token })
  const reply6 = Buffer.from('8100abcd00010002' + '0102030405060708', 'hex')
  t.same(decodeEchoReply(6, reply6), { ident: 1, seq: 2, token })
  t.equal(decodeEchoReply(4, reply6), null, 'a v6 reply is not a v4 one')
  t.equal(decodeEchoReply(4, Buffer.from('0800abcd12340007' + '0102030405060708', 'hex')), null, 'a request is not a reply')
  t.equal(decodeEchoReply(4, Buffer.from('0001abcd12340007' + '0102030405060708', 'hex')), null, 'code must be 0')
  t.equal(decodeEchoReply(4, reply4.subarray(0, 15)), null, 'truncated')
  for (let i = 0; i < 2000; i++) {
    const buf = Buffer.from(Array.from({ length: Math.floor(Math.random() * 40) }, () => Math.floor(Math.random() * 256)))
    decodeEchoReply(i % 2 ? 4 : 6, buf)
  }
  t.pass('random input never throws')
})

t.test('out-of-range fields are refused', async (t) => {
  t.throws(() => encodeEchoRequest(4, { ident: 70000, seq: 1, token }), ProbeError)
  t.throws(() => encodeEchoRequest(4, { ident: 1, seq: -1, token }), ProbeError)
  t.throws(() => encodeEchoRequest(4, { ident: 1, seq: 1, token: Buffer.alloc(4) }), ProbeError)
})

t.test('addresses: unicast of the right family only', async (t) => {
  t.equal(addressBytes('10.81.2.1', 4).toString('hex'), '0a510201')
  t.equal(addressBytes('fd00::1', 6).length, 16)
  t.equal(addressText(Buffer.from('0a510201', 'hex')), '10.81.2.1')
  t.equal(addressText(addressBytes('fd00:0::1', 6)), 'fd00::1')
  for (const [a, f] of [['x', 4], ['fd00::1', 4], ['10.0.0.1', 6], ['0.0.0.0', 4], ['224.0.0.1', 4], ['255.255.255.255', 4], ['ff02::1', 6], ['10.0.0.1; rm', 4]] as const) {
    t.throws(() => addressBytes(a, f), ProbeError, `${a} as IPv${f}`)
  }
})
