// Routes and rules written through netlink, checked with iproute2 as the oracle, in throwaway namespaces.
import t, { type Test } from 'tap'
import { Netns, needsRoot } from '../../harness/netns.js'
import {
  addrList, canonicalCidr, defaultGateway, openRoute, routeApply, routeDel, routeList, routePlan, routeResolveDevs, ruleDel, ruleEnsure,
  ruleList, type NetlinkSocket, type RouteSpec,
} from '../../../src/netlink/index.js'

/** The library's verbs composed as docs/netlink.md shows: table 220 holds exactly `desired` among our routes. */
async function sync(sock: NetlinkSocket, desired: RouteSpec[]) {
  const plan = routePlan(await routeResolveDevs(sock, desired), await routeList(sock, { table: 220 }))
  return { ...plan, results: await routeApply(sock, plan.ops) }
}

interface IpRoute { dst: string; gateway?: string; dev?: string; protocol?: string | number; metric?: number }

async function ipRoutes(ns: Netns, family: 4 | 6, ...filter: string[]): Promise<IpRoute[]> {
  return JSON.parse(await ns.run(['ip', '-j', `-${family}`, 'route', 'show', ...filter])) as IpRoute[]
}

async function setup(t: Test): Promise<{ ns: Netns; sock: NetlinkSocket; dev: string }> {
  const ns = await Netns.create('nl')
  t.teardown(() => ns.destroy())
  await ns.run(['ip', 'link', 'add', 'up0', 'type', 'veth', 'peer', 'name', 'up1'])
  await ns.run(['ip', 'link', 'set', 'up0', 'up'])
  await ns.run(['ip', 'link', 'set', 'up1', 'up'])
  await ns.run(['ip', 'addr', 'add', '10.9.0.1/24', 'dev', 'up0'])
  await ns.run(['ip', '-6', 'addr', 'add', '2001:db8::1/64', 'dev', 'up0', 'nodad'])
  const sock = openRoute({ netns: ns.name, timeoutMs: 5000 })
  t.teardown(() => sock.close())
  return { ns, sock, dev: 'up0' }
}

t.test('routes we sync appear exactly in `ip route show table 220 proto 220`, v4 and v6', { skip: needsRoot }, async (t) => {
  const { ns, sock, dev } = await setup(t)
  const v4 = Array.from({ length: 50 }, (_, i) => ({ dst: `10.${100 + i}.0.0/16`, via: '10.9.0.2' }))
  const v6 = Array.from({ length: 20 }, (_, i) => ({ dst: `2001:db8:${(i + 16).toString(16)}::/48`, via: '2001:db8::2', dev }))
  const first = await sync(sock, [...v4, ...v6, { dst: '10.99.0.5', dev }])
  t.ok(first.results.every((r) => r.ok), 'all applied')
  const shown4 = await ipRoutes(ns, 4, 'table', '220', 'proto', '220')
  const shown6 = await ipRoutes(ns, 6, 'table', '220', 'proto', '220')
  t.same(shown4.map((r) => canonicalCidr(r.dst)).sort(), [...v4.map((r) => r.dst), '10.99.0.5/32'].sort())
  t.ok(shown4.filter((r) => r.dst !== '10.99.0.5').every((r) => r.gateway === '10.9.0.2' && r.dev === dev))
  t.same(shown6.map((r) => r.dst).sort(), v6.map((r) => r.dst).sort())
  t.ok(shown6.every((r) => r.gateway === '2001:db8::2'))

  const again = await sync(sock, [...v4, ...v6, { dst: '10.99.0.5', dev }])
  t.same(again.ops, [], 'converged: a second sync writes nothing')

  const fewer = await sync(sock, v4.slice(0, 10))
  t.equal(fewer.ops.filter((o) => o.op === 'del').length, 40 + 20 + 1)
  t.same((await ipRoutes(ns, 4, 'table', '220')).map((r) => r.dst).sort(), v4.slice(0, 10).map((r) => r.dst).sort())
  t.same(await ipRoutes(ns, 6, 'table', '220'), [])
})

t.test('routes of another protocol survive our sync and our deletes', { skip: needsRoot }, async (t) => {
  const { ns, sock } = await setup(t)
  await ns.run(['ip', 'route', 'add', '10.50.0.0/16', 'via', '10.9.0.3', 'table', '220', 'proto', 'static'])
  await ns.run(['ip', 'route', 'add', '10.51.0.0/16', 'via', '10.9.0.3', 'table', '220'])
  await ns.run(['ip', '-6', 'route', 'add', '2001:db8:50::/48', 'via', '2001:db8::3', 'table', '220', 'proto', 'static'])
  const plan = await sync(sock, [{ dst: '10.50.0.0/16', via: '10.9.0.2' }, { dst: '10.52.0.0/16', via: '10.9.0.2' }])
  t.same(plan.conflicts.map((c) => c.want.dst), ['10.50.0.0/16'], 'a foreign route in a wanted slot is reported, not replaced')
  await sync(sock, [])
  t.match(await routeDel(sock, { dst: '10.51.0.0/16' }), { ok: false, reason: 'missing' }, 'the kernel matches our protocol only')
  const left4 = await ipRoutes(ns, 4, 'table', '220')
  t.same(left4.map((r) => [r.dst, r.gateway, r.protocol ?? 'boot']).sort(), [['10.50.0.0/16', '10.9.0.3', 'static'], ['10.51.0.0/16', '10.9.0.3', 'boot']])
  t.same((await ipRoutes(ns, 6, 'table', '220')).map((r) => r.dst), ['2001:db8:50::/48'])
  t.same((await routeList(sock, { table: 220 })).length, 3, 'routeList without protocol sees them all')
  t.same(await routeList(sock, { table: 220, protocol: 220 }), [], 'and with ours, none')
})

t.test('routeApply reports per-op outcomes as values', { skip: needsRoot }, async (t) => {
  const { sock } = await setup(t)
  const res = await routeApply(sock, [
    { op: 'replace', route: { dst: '10.60.0.0/16', via: '10.9.0.2', metric: 10 } },
    { op: 'del', route: { dst: '10.61.0.0/16' } },
    { op: 'replace', route: { dst: '10.62.0.0/16', via: '10.200.0.1' } },
  ])
  t.same(res.map((r) => (r.ok ? 'ok' : r.reason)), ['ok', 'missing', 'refused'])
  t.match(res[2], { error: { kind: 'kernel', extAck: /gateway/i } })
  t.same((await routeList(sock, { table: 220 })).map((r) => [r.dst, r.metric]), [['10.60.0.0/16', 10]])
})

t.test('rule 220 is present exactly once after repeated ensure, both families', { skip: needsRoot }, async (t) => {
  const { ns, sock } = await setup(t)
  for (let i = 0; i < 3; i++) {
    const r4 = await ruleEnsure(sock, { family: 4 })
    const r6 = await ruleEnsure(sock, { family: 6 })
    t.same([r4.added, r6.added], [i === 0, i === 0], `pass ${i}`)
  }
  for (const fam of ['-4', '-6']) {
    const rules = JSON.parse(await ns.run(['ip', '-j', fam, 'rule', 'show'])) as Array<{ priority: number; table: string; src: string }>
    t.same(rules.filter((r) => r.table === '220').map((r) => [r.priority, r.src]), [[220, 'all']], `ip ${fam} rule`)
  }
  t.equal((await ruleList(sock, 4)).filter((r) => r.table === 220 && r.priority === 220).length, 1)
  t.same(await ruleDel(sock, { family: 6 }), { ok: true })
  t.same(await ruleDel(sock, { family: 6 }), { ok: false, reason: 'missing' })
})

t.test('default gateway discovered from the main table', { skip: needsRoot }, async (t) => {
  const { ns, sock } = await setup(t)
  t.equal(await defaultGateway(sock, 4), undefined, 'none yet')
  await ns.run(['ip', 'route', 'add', 'default', 'via', '10.9.0.254', 'metric', '200'])
  await ns.run(['ip', 'route', 'add', 'default', 'via', '10.9.0.253', 'metric', '100'])
  await ns.run(['ip', '-6', 'route', 'add', 'default', 'via', '2001:db8::fe'])
  t.match(await defaultGateway(sock, 4), { via: '10.9.0.253', metric: 100, table: 254 })
  t.match(await defaultGateway(sock, 6), { via: '2001:db8::fe' })
})

// A pass reads the default routes while the datapath probes list the node's addresses, on the same socket: the
// kernel refuses a dump while another runs on that socket (EBUSY), so the socket queues them (NetlinkSocket.dump).
t.test('concurrent dumps on one socket all succeed (the kernel would refuse them with EBUSY)', { skip: needsRoot }, async (t) => {
  const { ns, sock } = await setup(t)
  await ns.run(['ip', 'route', 'add', 'default', 'via', '10.9.0.254'])
  const outcomes = await Promise.allSettled(Array.from({ length: 50 }, () => [defaultGateway(sock, 4), addrList(sock), routeList(sock, { table: 254 })]).flat())
  const failed = outcomes.filter((o) => o.status === 'rejected').map((o) => String((o as PromiseRejectedResult).reason))
  t.same(failed.slice(0, 3), [], `all ${outcomes.length} dumps answered (${failed.length} failed)`)
  t.match(await defaultGateway(sock, 4), { via: '10.9.0.254' }, 'and the gateway is the one in the kernel')
  // The positive case: without the queue, the same dumps sent at once are refused by this kernel.
  const raw = await Promise.all([1, 2].map(() => sock.requestAll([{ type: 26, flags: 0x300, payload: Buffer.alloc(12) }], 'raw dump')))
  t.match(raw[1]![0], { ok: false, error: { code: 'EBUSY' } }, 'two dumps started at once: the second refused with EBUSY')
})
