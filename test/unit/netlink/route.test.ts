import t from 'tap'
import { decodeMsgs, NLMSG_DONE } from '../../../src/netlink/codec.js'
import {
  decodeRoute, routeDelRequest, routeListRequest, routePlan, routeReplaceRequest, RTM_DELROUTE, RTM_GETROUTE,
  RTM_NEWROUTE, type Route,
} from '../../../src/netlink/route.js'
import { fixture, hex } from './fixtures.js'

t.test('routeReplaceRequest, IPv4 via/dev/metric in table 220 proto 220', async (t) => {
  const r = routeReplaceRequest({ dst: '10.20.0.0/16', via: '10.9.0.2', dev: 3, metric: 7 })
  t.equal(r.type, RTM_NEWROUTE)
  t.equal(r.flags, 0x500, 'CREATE|REPLACE')
  t.equal(r.payload.toString('hex'), hex(
    ['02 10 00 00', 'rtmsg: AF_INET, dst_len 16, src_len 0, tos 0'],
    ['dc dc 00 01', 'table 220, protocol 220, scope universe (has gateway), type unicast'],
    ['00000000', 'rtm_flags'],
    ['0800 0f00 dc000000', 'RTA_TABLE 220'],
    ['0800 0100 0a140000', 'RTA_DST 10.20.0.0'],
    ['0800 0500 0a090002', 'RTA_GATEWAY 10.9.0.2'],
    ['0800 0400 03000000', 'RTA_OIF 3'],
    ['0800 0600 07000000', 'RTA_PRIORITY 7'],
  ))
})

t.test('routeReplaceRequest, IPv6 and a table above 255', async (t) => {
  const r = routeReplaceRequest({ dst: '2001:db8:5::1/48', via: '2001:db8::2', table: 1000, protocol: 99 })
  t.equal(r.payload.toString('hex'), hex(
    ['0a 30 00 00', 'AF_INET6, dst_len 48'],
    ['fc 63 00 01', 'table RT_TABLE_COMPAT (real one in RTA_TABLE), protocol 99, scope universe, unicast'],
    ['00000000', 'rtm_flags'],
    ['0800 0f00 e8030000', 'RTA_TABLE 1000'],
    ['1400 0100 20010db8000500000000000000000000', 'RTA_DST 2001:db8:5:: (host bits masked)'],
    ['1400 0500 20010db8000000000000000000000002', 'RTA_GATEWAY 2001:db8::2'],
  ))
})

t.test('routeReplaceRequest without gateway is scope link (IPv4)', async (t) => {
  t.equal(routeReplaceRequest({ dst: '10.21.0.0/16', dev: 2 }).payload[6], 253)
})

t.test('routeDelRequest always names our protocol and matches any scope', async (t) => {
  const r = routeDelRequest({ dst: '10.20.0.0/16' })
  t.equal(r.type, RTM_DELROUTE)
  t.equal(r.payload.toString('hex'), hex(
    ['02 10 00 00', 'AF_INET /16'],
    ['dc dc ff 00', 'table 220, protocol 220, scope NOWHERE (any), type unspec'],
    ['00000000', 'rtm_flags'],
    ['0800 0f00 dc000000', 'RTA_TABLE 220'],
    ['0800 0100 0a140000', 'RTA_DST'],
  ))
})

t.test('routeListRequest puts the filter where strict checking reads it', async (t) => {
  const r = routeListRequest({ table: 220, protocol: 220, family: 6 })
  t.equal(r.type, RTM_GETROUTE)
  t.equal(r.payload.toString('hex'), hex(['0a 00 00 00 dc dc 00 00 00000000', 'rtmsg'], ['0800 0f00 dc000000', 'RTA_TABLE']))
})

t.test('invalid input never reaches a message', async (t) => {
  for (const spec of [
    { dst: '10.0.0.0/33' }, { dst: '10.0.0.0/8', via: '2001:db8::1' }, { dst: '300.1.1.1/32' }, { dst: '10.0.0.0/8; reboot' },
    { dst: '10.0.0.0/8', dev: 'eth0' }, { dst: '10.0.0.0/8', metric: -1 }, { dst: '10.0.0.0/8', table: 0 },
  ]) {
    t.throws(() => routeReplaceRequest(spec), { name: 'NetlinkError', kind: 'input' }, JSON.stringify(spec))
  }
})

t.test('captured dump of table 220 decodes to both families', async (t) => {
  const msgs = fixture('route-dump-table220.hex').flatMap(decodeMsgs)
  t.equal(msgs.at(-1)!.type, NLMSG_DONE)
  const routes = msgs.filter((m) => m.type === RTM_NEWROUTE).map((m) => decodeRoute(m))
  t.same(routes, [
    { family: 4, dst: '10.20.0.0/16', table: 220, protocol: 220, scope: 0, type: 1, cloned: false, via: '10.9.0.2', dev: 3 },
    { family: 4, dst: '10.21.0.0/16', table: 220, protocol: 220, scope: 253, type: 1, cloned: false, dev: 3, metric: 5 },
    { family: 6, dst: '2001:db8:5::/48', table: 220, protocol: 220, scope: 0, type: 1, cloned: false, via: '2001:db8::2', dev: 3, metric: 1024 },
  ])
})

const r = (dst: string, protocol: number, extra: Partial<Route> = {}): Route => ({
  family: dst.includes(':') ? 6 : 4, dst, table: 220, protocol, scope: 0, type: 1, ...extra,
})

t.test('routePlan: adds missing, keeps equal, replaces changed, deletes only stale own routes', async (t) => {
  const observed = [
    r('10.1.0.0/16', 220, { via: '10.9.0.2' }), // wanted, unchanged
    r('10.2.0.0/16', 220, { via: '10.9.0.2' }), // wanted with another gateway
    r('10.3.0.0/16', 220, { via: '10.9.0.2' }), // stale: ours, not wanted
    r('10.4.0.0/16', 4, { via: '10.9.0.9' }), // foreign, not wanted: untouched
    r('10.5.0.0/16', 3, { via: '10.9.0.9' }), // foreign in a slot we want: conflict
  ]
  const plan = routePlan([
    { dst: '10.1.0.0/16', via: '10.9.0.2' },
    { dst: '10.2.0.0/16', via: '10.9.0.3' },
    { dst: '10.5.0.0/16', via: '10.9.0.2' },
    { dst: '10.6.0.1/16', via: '10.9.0.2' },
  ], observed)
  t.same(plan.ops, [
    { op: 'replace', route: { dst: '10.2.0.0/16', via: '10.9.0.3', protocol: 220 } },
    { op: 'replace', route: { dst: '10.6.0.1/16', via: '10.9.0.2', protocol: 220 } },
    { op: 'del', route: { dst: '10.3.0.0/16', table: 220, protocol: 220 } },
  ])
  t.same(plan.conflicts.map((c) => [c.want.dst, c.foreign.protocol]), [['10.5.0.0/16', 3]])
  t.same(routePlan([{ dst: '10.1.0.0/16', via: '10.9.0.2' }], [observed[0]!]).ops, [], 'converged: nothing to do')
})

t.test('routePlan: adopts a route of an adoptable protocol in a wanted slot, never one in a slot it does not want', async (t) => {
  const observed = [
    r('10.5.0.0/16', 0, { via: '10.9.0.2' }), // FabEdge's (proto unspec) in a slot we want: taken over
    r('10.7.0.0/16', 0, { via: '10.9.0.2' }), // FabEdge's in a slot we do not want: untouched
    r('10.8.0.0/16', 4, { via: '10.9.0.9' }), // charon's (static) in a slot we want: still a conflict
  ]
  const want = [{ dst: '10.5.0.0/16', via: '10.9.0.2' }, { dst: '10.8.0.0/16', via: '10.9.0.2' }]
  const plan = routePlan(want, observed, 220, { adopt: [0] })
  t.same(plan.ops, [{ op: 'replace', route: { dst: '10.5.0.0/16', via: '10.9.0.2', protocol: 220 } }])
  t.same(plan.adopted.map((a) => [a.want.dst, a.previous.protocol]), [['10.5.0.0/16', 0]])
  t.same(plan.conflicts.map((c) => [c.want.dst, c.foreign.protocol]), [['10.8.0.0/16', 4]])
  const plain = routePlan(want, observed, 220)
  t.same(plain.ops, [], 'without adopt, the same route is a conflict')
  t.same(plain.conflicts.map((c) => c.want.dst), ['10.5.0.0/16', '10.8.0.0/16'])
  t.same(plain.adopted, [])
})
