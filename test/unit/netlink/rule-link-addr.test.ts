import t from 'tap'
import { decodeMsgs } from '../../../src/netlink/codec.js'
import { decodeRule, ruleAddRequest, ruleDelRequest, ruleListRequest, RTM_GETRULE, RTM_NEWRULE } from '../../../src/netlink/rule.js'
import { decodeEvent } from '../../../src/netlink/monitor.js'
import { decodeLink, linkListRequest, RTM_NEWLINK } from '../../../src/netlink/link.js'
import { addrListRequest, decodeAddr, RTM_NEWADDR } from '../../../src/netlink/addr.js'
import { fixture, hex } from './fixtures.js'

t.test('ruleAddRequest: from all lookup 220 priority 220, EXCL so it is never duplicated', async (t) => {
  const r = ruleAddRequest({ family: 4 })
  t.equal(r.flags, 0x600, 'CREATE|EXCL')
  t.equal(r.payload.toString('hex'), hex(
    ['02 00 00 00', 'fib_rule_hdr: AF_INET, dst_len 0, src_len 0 (from all), tos 0'],
    ['dc 00 00 01', 'table 220, res1, res2, action FR_ACT_TO_TBL'],
    ['00000000', 'flags'],
    ['0800 0600 dc000000', 'FRA_PRIORITY 220'],
    ['0800 0f00 dc000000', 'FRA_TABLE 220'],
  ))
  const d = ruleDelRequest({ family: 6, src: '2001:db8::/32', priority: 5 })
  t.equal(d.payload.toString('hex'), hex(
    ['0a 00 20 00 dc 00 00 01 00000000', 'AF_INET6, src_len 32'],
    ['0800 0600 05000000', 'FRA_PRIORITY 5'],
    ['0800 0f00 dc000000', 'FRA_TABLE 220'],
    ['1400 0200 20010db8000000000000000000000000', 'FRA_SRC'],
  ))
  t.throws(() => ruleAddRequest({ family: 4, src: '2001:db8::/32' }), { name: 'NetlinkError', kind: 'input' })
})

t.test('captured rule dump: rule 220 in both families; multicast-routing families skipped', async (t) => {
  const all = fixture('rule-dump.hex').flatMap(decodeMsgs).filter((m) => m.type === RTM_NEWRULE).map(decodeRule)
  const rules = all.filter((r) => r !== undefined)
  t.ok(all.length > rules.length, 'the dump also holds non-inet families (ipmr), decoded as undefined')
  t.same(rules.map((r) => [r!.family, r!.priority, r!.table]), [
    [4, 0, 255], [4, 220, 220], [4, 32766, 254], [4, 32767, 253], [6, 0, 255], [6, 220, 220], [6, 32766, 254],
  ])
})

t.test('link and address requests and captured dumps', async (t) => {
  t.equal(linkListRequest().payload.toString('hex'), '00'.repeat(16), 'empty ifinfomsg')
  t.equal(addrListRequest(6).payload.toString('hex'), '0a00000000000000', 'ifaddrmsg AF_INET6')
  const links = fixture('link-dump.hex').flatMap(decodeMsgs).filter((m) => m.type === RTM_NEWLINK).map(decodeLink)
  t.same(links.map((l) => [l.index, l.name, l.up, l.mtu]), [[1, 'lo', true, 65536], [2, 'fx1', false, 1500], [3, 'fx0', true, 1500]])
  const addrs = fixture('addr-dump.hex').flatMap(decodeMsgs).filter((m) => m.type === RTM_NEWADDR).map(decodeAddr)
  t.same(addrs.filter((a) => a!.scope === 0 || a!.index === 1).map((a) => [a!.index, a!.cidr]), [
    [1, '127.0.0.1/8'], [3, '10.9.0.1/24'], [1, '::1/128'], [3, '2001:db8::1/64'],
  ])
})

t.test('rule list request, and rule/address notifications decode as monitor events', async (t) => {
  const r = ruleListRequest(6)
  t.equal(r.type, RTM_GETRULE)
  t.equal(r.payload.toString('hex'), '0a0000000000000000000000', 'fib_rule_hdr AF_INET6, all else zero (strict check)')
  const ruleMsg = fixture('rule-dump.hex').flatMap(decodeMsgs).find((m) => m.type === RTM_NEWRULE && decodeRule(m)?.table === 220)!
  t.match(decodeEvent(ruleMsg), { kind: 'rule', action: 'new', rule: { family: 4, table: 220, priority: 220 } })
  const addrMsg = fixture('addr-dump.hex').flatMap(decodeMsgs).find((m) => m.type === RTM_NEWADDR && decodeAddr(m)?.address === '10.9.0.1')!
  t.match(decodeEvent(addrMsg), { kind: 'addr', action: 'new', addr: { index: 3, cidr: '10.9.0.1/24' } })
})

t.test('ruleAddRequest with an owner protocol appends FRA_PROTOCOL (type 21, u8)', async (t) => {
  const plain = ruleAddRequest({ family: 4 }).payload
  const tagged = ruleAddRequest({ family: 4, protocol: 220 }).payload
  // nla_len 5 (4 header + 1 byte), nla_type 21, value 220, 3 bytes of padding
  t.same(tagged.subarray(plain.length), Buffer.from([0x05, 0x00, 0x15, 0x00, 0xdc, 0x00, 0x00, 0x00]))
  t.same(tagged.subarray(0, plain.length), plain)
  t.throws(() => ruleAddRequest({ family: 4, protocol: 256 }), { name: 'NetlinkError' })
})
