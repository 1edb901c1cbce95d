import t from 'tap'
import { decodeError, decodeMsgs } from '../../../src/netlink/codec.js'
import { errnoName } from '../../../src/netlink/errors.js'
import {
  decodeIpsetList, IPSET_CMD, ipsetAdtBatchRequests, ipsetAdtRequest, ipsetCreateRequest, ipsetDestroyRequest,
  ipsetFlushRequest, ipsetHeaderRequest, ipsetListRequest, ipsetPlan, ipsetSwapRequest, ipsetTypeRequest,
} from '../../../src/netlink/ipset.js'
import { fixture, hex } from './fixtures.js'

const HEAD = ['02 00 0000', 'nfgenmsg: NFPROTO_IPV4, version 0, res_id 0'] as [string, string]
const PROTO = ['0500 0100 06 000000', 'IPSET_ATTR_PROTOCOL 6'] as [string, string]

t.test('ipsetCreateRequest: hash:net inet rev 7, -exist (no EXCL)', async (t) => {
  const r = ipsetCreateRequest('S', 4, 7, { exist: true })
  t.equal(r.type, (6 << 8) | IPSET_CMD.CREATE, 'NFNL_SUBSYS_IPSET << 8 | CREATE')
  t.equal(r.flags, 0, 'no NLM_F_EXCL: the kernel reads that as -exist')
  t.equal(r.payload.toString('hex'), hex(
    HEAD, PROTO,
    ['0600 0200 5300 0000', 'SETNAME "S"'],
    ['0d00 0300 686173683a6e657400 000000', 'TYPENAME "hash:net"'],
    ['0500 0400 07 000000', 'REVISION 7'],
    ['0500 0500 02 000000', 'FAMILY NFPROTO_IPV4'],
    ['0400 0780', 'DATA (nested, empty)'],
  ))
  t.equal(ipsetCreateRequest('S', 6, 7, { exist: false, maxelem: 1000 }).flags, 0x200, 'EXCL without -exist')
})

t.test('ipsetAdtRequest: one member in DATA with net-order address', async (t) => {
  const r = ipsetAdtRequest(IPSET_CMD.ADD, 'S', '10.1.2.3/24')
  t.equal(r.flags, 0x200, 'EXCL: an existing member is reported')
  t.equal(r.payload.toString('hex'), hex(
    HEAD, PROTO,
    ['0600 0200 5300 0000', 'SETNAME "S"'],
    ['1800 0780', 'DATA (nested), 24 bytes'],
    ['0c00 0180', '  IP (nested)'],
    ['0800 0140 0a010200', '    IPADDR_IPV4 | NET_BYTEORDER 10.1.2.0 (masked)'],
    ['0500 0300 18 000000', '  CIDR 24'],
  ))
  const v6 = ipsetAdtRequest(IPSET_CMD.TEST, 'S6', '2001:db8::/64', true)
  t.equal(v6.payload.subarray(20).toString('hex'), hex(
    ['2400 0780', 'DATA, 36 bytes'],
    ['1800 0180', '  IP'],
    ['1400 0240 20010db8000000000000000000000000', '    IPADDR_IPV6 | NET_BYTEORDER'],
    ['0500 0300 40 000000', '  CIDR 64'],
  ))
})

t.test('batched members: ADT nest with LINENO, -exist, split every 1000 members', async (t) => {
  const [r] = ipsetAdtBatchRequests(IPSET_CMD.ADD, 'S', ['10.0.0.0/8', '192.168.1.1'])
  t.equal(r!.flags, 0)
  t.equal(r!.payload.toString('hex'), hex(
    HEAD, PROTO,
    ['0600 0200 5300 0000', 'SETNAME'],
    ['0800 0900 00000000', 'LINENO 0 (the kernel requires it beside ADT)'],
    ['3400 0880', 'ADT (nested), 4 + 2 * 24'],
    ['1800 0780 0c00 0180 0800 0140 0a000000 0500 0300 08 000000', 'DATA 10.0.0.0/8'],
    ['1800 0780 0c00 0180 0800 0140 c0a80101 0500 0300 20 000000', 'DATA 192.168.1.1/32'],
  ))
  const many = Array.from({ length: 2500 }, (_, i) => `10.${i >> 8}.${i & 255}.0/24`)
  t.equal(ipsetAdtBatchRequests(IPSET_CMD.DEL, 'S', many).length, 3)
})

t.test('name-only commands: flush, list, header; type query', async (t) => {
  const name = ['0600 0200 4100 0000', 'SETNAME A'] as [string, string]
  for (const [req, cmd] of [[ipsetFlushRequest('A'), IPSET_CMD.FLUSH], [ipsetListRequest('A'), IPSET_CMD.LIST], [ipsetHeaderRequest('A'), IPSET_CMD.HEADER]] as const) {
    t.equal(req.type, (6 << 8) | cmd)
    t.equal(req.payload.toString('hex'), hex(HEAD, PROTO, name))
  }
  t.equal(ipsetTypeRequest('hash:net', 6).payload.toString('hex'), hex(
    HEAD, PROTO,
    ['0d00 0300 686173683a6e657400 000000', 'TYPENAME "hash:net"'],
    ['0500 0500 0a 000000', 'FAMILY NFPROTO_IPV6'],
  ))
})

t.test('swap and destroy requests', async (t) => {
  t.equal(ipsetSwapRequest('A', 'B').payload.toString('hex'), hex(HEAD, PROTO, ['0600 0200 4100 0000', 'SETNAME A'], ['0600 0300 4200 0000', 'SETNAME2 B']))
  t.equal(ipsetDestroyRequest('A').flags, 0x200, 'EXCL so a missing set is reported')
})

t.test('names and members are validated before anything is built', async (t) => {
  for (const name of ['', 'x'.repeat(32), 'has space', 'tab\t']) t.throws(() => ipsetDestroyRequest(name), { name: 'NetlinkError', kind: 'input' })
  for (const cidr of ['0.0.0.0/0', '10.0.0.0/40', 'example.com', '10.0.0.0/8 -exist']) {
    t.throws(() => ipsetAdtRequest(IPSET_CMD.ADD, 'S', cidr), { name: 'NetlinkError', kind: 'input' }, cidr)
  }
})

t.test('captured list dumps decode to canonical members', async (t) => {
  const [v4] = decodeIpsetList(fixture('ipset-list-v4.hex').flatMap(decodeMsgs))
  t.match(v4, { name: 'FX', type: 'hash:net', family: 4, revision: 7, references: 0 })
  t.same(v4!.members, ['10.0.0.0/8', '10.1.2.3/32', '192.168.1.0/24'])
  const [v6] = decodeIpsetList(fixture('ipset-list-v6.hex').flatMap(decodeMsgs))
  t.match(v6, { name: 'FX6', family: 6 })
  t.same(v6!.members, ['2001:db8::/64'])
})

t.test('captured IPSET_ERR_EXIST maps to its name', async (t) => {
  const e = decodeError(decodeMsgs(fixture('ipset-error-exist.hex')[0]!)[0]!)
  t.equal(e.errno, 4103)
  t.equal(errnoName(e.errno), 'IPSET_ERR_EXIST')
})

t.test('ipsetPlan diffs canonical CIDRs', async (t) => {
  t.same(ipsetPlan(['10.1.2.3/24', '10.0.0.1', '172.16.0.0/12'], ['10.1.2.0/24', '192.168.0.0/16']), {
    add: ['10.0.0.1/32', '172.16.0.0/12'],
    del: ['192.168.0.0/16'],
  })
})
