// RoutesSubsystem against a fake port: plan, apply, ownership, and every fault path (a route refused mid-batch,
// the socket failing, a rule refused, a family without a default gateway: issue 12 defect 6), plus cleanup.
import t from 'tap'
import type { Desired, DesiredRoute, DesiredRule } from '../../../src/desired/types.js'
import type { Family } from '../../../src/fabedge.js'
import { createLogger } from '../../../src/log.js'
import { NetlinkError, type Route, type RouteOp, type RouteResult, type Rule, type RuleResult, type RuleSpec } from '../../../src/netlink/index.js'
import { RouteMirror, RoutesSubsystem, type RoutesPort } from '../../../src/reconcile/routes.js'
import { passContext } from '../../../src/reconcile/subsystem.js'

const CTX = passContext(['verify'])
const family = (dst: string): Family => (dst.includes(':') ? 6 : 4)

/** Table 220 and the rule list in memory; a replace or delete does what the kernel does, unless told to refuse. */
class FakeRoutes implements RoutesPort {
  routes: Route[] = []
  rules: Rule[] = []
  gw: { 4?: string; 6?: string } = {}
  refuse = new Set<string>()
  broken: Error | null = null
  ruleRefused: Error | null = null
  batches: RouteOp[][] = []

  async listRoutes(): Promise<Route[]> {
    if (this.broken) throw this.broken
    return this.routes.map((r) => ({ ...r }))
  }

  async listRules(): Promise<Rule[]> {
    return this.rules.map((r) => ({ ...r }))
  }

  async applyRoutes(ops: readonly RouteOp[]): Promise<RouteResult[]> {
    if (this.broken) throw this.broken
    this.batches.push([...ops])
    return ops.map(({ op, route }) => {
      if (this.refuse.has(route.dst)) return { ok: false, reason: 'refused', error: NetlinkError.kernel(101, `ip route ${op} ${route.dst}`, 'Nexthop has invalid gateway') }
      // The kernel's delete matches the protocol it is given; a replace takes the slot (destination, table,
      // metric), whatever protocol holds it.
      const at = op === 'del'
        ? this.routes.findIndex((r) => r.dst === route.dst && r.protocol === route.protocol)
        : this.routes.findIndex((r) => r.dst === route.dst && r.table === (route.table ?? 220))
      if (op === 'del') {
        if (at < 0) return { ok: false, reason: 'missing', error: NetlinkError.kernel(3, 'ip route del') }
        this.routes.splice(at, 1)
        return { ok: true }
      }
      const r: Route = { family: family(route.dst), dst: route.dst, via: route.via!, table: route.table ?? 220, protocol: route.protocol ?? 220, scope: 0, type: 1 }
      if (at >= 0) this.routes[at] = r
      else this.routes.push(r)
      return { ok: true }
    })
  }

  async addRule(rule: RuleSpec): Promise<RuleResult> {
    if (this.ruleRefused) throw this.ruleRefused
    this.rules.push({ family: rule.family, priority: rule.priority ?? 220, table: rule.table ?? 220, action: 1, protocol: rule.protocol! })
    return { ok: true }
  }

  async delRule(rule: RuleSpec): Promise<RuleResult> {
    const at = this.rules.findIndex((r) => r.family === rule.family && r.priority === rule.priority && r.protocol === rule.protocol)
    if (at < 0) return { ok: false, reason: 'missing' }
    this.rules.splice(at, 1)
    return { ok: true }
  }

  gwBroken = new Set<Family>()
  async defaultGateway(f: Family): Promise<string | undefined> {
    if (this.gwBroken.has(f)) throw new Error(`dump of IPv${f} routes failed`)
    return this.gw[f]
  }
}

const route = (dst: string, via?: string): DesiredRoute => ({ dst, family: family(dst), table: 220, protocol: 220, ...(via ? { via } : {}) })
const RULES: DesiredRule[] = [{ family: 4, priority: 220, table: 220 }, { family: 6, priority: 220, table: 220 }]
const desired = (routes: DesiredRoute[], rules: DesiredRule[] = RULES): Pick<Desired, 'routes' | 'rules'> => ({ routes, rules })
const log = createLogger('silent')

t.test('routes and rules are written once, then a pass plans nothing', async (t) => {
  const port = new FakeRoutes()
  const s = new RoutesSubsystem(port, log)
  const d = desired([route('10.1.0.0/16', '192.0.2.1'), route('2001:db8:1::/48', '2001:db8::1')])
  const plan = await s.plan(d, CTX)
  t.equal(plan.writes, 4)
  t.same(plan.describe(), [
    'ip -4 rule add from all lookup 220 priority 220 protocol 220',
    'ip -6 rule add from all lookup 220 priority 220 protocol 220',
    'ip route replace 10.1.0.0/16 via 192.0.2.1 table 220 proto 220',
    'ip route replace 2001:db8:1::/48 via 2001:db8::1 table 220 proto 220',
  ])
  t.equal(await s.apply(plan), 4)
  t.equal((await s.plan(d, CTX)).writes, 0)
  t.match(s.summary(), { table: 220, protocol: 220, ownRoutes: 2, rulesPresent: 2, conflicts: 0, unroutable: 0 })
})

t.test('a gateway change replaces every route of that family; removed peers lose their routes; foreign routes stay', async (t) => {
  const port = new FakeRoutes()
  port.routes.push({ family: 4, dst: '10.9.0.0/16', via: '192.0.2.9', table: 220, protocol: 4, scope: 0, type: 1 })
  const s = new RoutesSubsystem(port, log)
  await s.apply(await s.plan(desired([route('10.1.0.0/16', '192.0.2.1'), route('10.2.0.0/16', '192.0.2.1')]), CTX))
  const moved = await s.plan(desired([route('10.1.0.0/16', '192.0.2.254'), route('10.9.0.0/16', '192.0.2.254')]), CTX)
  t.same(moved.describe(), ['ip route replace 10.1.0.0/16 via 192.0.2.254 table 220 proto 220', 'ip route del 10.2.0.0/16 table 220 proto 220'])
  t.match(s.summary(), { conflicts: 1 }, 'the foreign route holding 10.9.0.0/16 is a conflict, left alone')
  await s.apply(moved)
  t.same(port.routes.map((r) => [r.dst, r.via, r.protocol]).sort(), [['10.1.0.0/16', '192.0.2.254', 220], ['10.9.0.0/16', '192.0.2.9', 4]])
})

t.test("FabEdge's own routes (proto unspec) in slots we want are taken over; others stay", async (t) => {
  const port = new FakeRoutes()
  port.routes.push({ family: 4, dst: '10.1.0.0/16', via: '192.0.2.1', table: 220, protocol: 0, scope: 0, type: 1 })
  port.routes.push({ family: 4, dst: '10.7.0.0/16', via: '192.0.2.1', table: 220, protocol: 0, scope: 0, type: 1 })
  const s = new RoutesSubsystem(port, log)
  const d = desired([route('10.1.0.0/16', '192.0.2.1')], [])
  const plan = await s.plan(d, CTX)
  t.same(plan.describe(), ['ip route replace 10.1.0.0/16 via 192.0.2.1 table 220 proto 220'])
  t.match(s.summary(), { conflicts: 0 })
  await s.apply(plan)
  t.same(port.routes.map((r) => [r.dst, r.protocol]).sort(), [['10.1.0.0/16', 220], ['10.7.0.0/16', 0]], 'the unwanted FabEdge route is left alone')
  t.equal((await s.plan(d, CTX)).writes, 0, 'then converged')
})

t.test('gateways() reads the default gateway of each family', async (t) => {
  const port = new FakeRoutes()
  const s = new RoutesSubsystem(port, log)
  t.same(await s.gateways(), {})
  port.gw = { 4: '192.0.2.1' }
  t.same(await s.gateways(), { 4: '192.0.2.1' })
  port.gw[6] = 'fe80::1'
  t.same(await s.gateways(), { 4: '192.0.2.1', 6: 'fe80::1' })
})

t.test('defect 6: a family without a default gateway does not stop the other; the error names the family and routes', async (t) => {
  const port = new FakeRoutes()
  const s = new RoutesSubsystem(port, log)
  const d = desired([route('10.1.0.0/16', '192.0.2.1'), route('2001:db8:1::/48'), route('2001:db8:2::/48')])
  const plan = await s.plan(d, CTX)
  t.equal(plan.writes, 2 + 1 + 2, 'the rules, the v4 route, and the two routes it cannot write')
  t.ok(plan.describe().includes('cannot route 2001:db8:1::/48 table 220: no IPv6 default gateway in the main table'))
  const err = await s.apply(plan).catch((e: unknown) => e)
  t.match(err, { name: 'NetlinkError', code: 'ENOGATEWAY', message: /no IPv6 default gateway in the main table: 2 route\(s\) in table 220 not programmed: 2001:db8:1::\/48, 2001:db8:2::\/48/ })
  t.same(port.routes.map((r) => r.dst), ['10.1.0.0/16'], 'the IPv4 route is programmed')
  t.match(s.summary(), { unroutable: 2 })
  const again = await s.plan(d, CTX)
  t.equal(again.writes, 2, 'the next pass still is not converged: only the unroutable routes are left')
  await t.rejects(s.apply(again), { code: 'ENOGATEWAY' })
})

t.test('defect 6: our route of a family whose gateway vanished is kept, not deleted; many routes are abbreviated', async (t) => {
  const port = new FakeRoutes()
  const s = new RoutesSubsystem(port, log)
  await s.apply(await s.plan(desired([route('2001:db8:1::/48', '2001:db8::1')], []), CTX))
  const many = Array.from({ length: 12 }, (_, i) => route(`2001:db8:${i + 1}::/48`))
  const plan = await s.plan(desired(many, []), CTX)
  t.same(plan.ops, [], 'no delete of the route that still carries traffic via the old gateway')
  await t.rejects(s.apply(plan), { message: /12 route\(s\) .*2001:db8:10::\/48 and 2 more$/ })
  t.same(port.routes.map((r) => r.via), ['2001:db8::1'])
})

t.test('a route refused mid-batch: the others are written, the error says which and how many', async (t) => {
  const port = new FakeRoutes()
  const s = new RoutesSubsystem(port, log)
  port.refuse.add('10.2.0.0/16')
  const d = desired([route('10.1.0.0/16', '192.0.2.1'), route('10.2.0.0/16', '192.0.2.1'), route('10.3.0.0/16', '192.0.2.1')], [])
  await t.rejects(s.apply(await s.plan(d, CTX)), { message: /^1 route op\(s\) failed, first: replace 10\.2\.0\.0\/16: .*Nexthop has invalid gateway/ })
  t.same(port.routes.map((r) => r.dst), ['10.1.0.0/16', '10.3.0.0/16'])
  port.refuse.clear()
  const next = await s.plan(d, CTX)
  t.equal(next.writes, 1, 'the next pass plans only the refused route')
  t.equal(await s.apply(next), 1)
})

t.test('a delete of a route already gone is not a failure', async (t) => {
  const port = new FakeRoutes()
  const s = new RoutesSubsystem(port, log)
  await s.apply(await s.plan(desired([route('10.1.0.0/16', '192.0.2.1')], []), CTX))
  const plan = await s.plan(desired([], []), CTX)
  port.routes = []
  t.equal(await s.apply(plan), 0)
})

t.test('the socket failing: plan throws; in apply it is thrown after the rules were tried', async (t) => {
  const port = new FakeRoutes()
  const s = new RoutesSubsystem(port, log)
  port.broken = new NetlinkError('transport', 'EBADF', 'sendmsg: EBADF')
  await t.rejects(s.plan(desired([route('10.1.0.0/16', '192.0.2.1')]), CTX), { code: 'EBADF' })
  port.broken = null
  const plan = await s.plan(desired([route('10.1.0.0/16', '192.0.2.1')]), CTX)
  port.broken = new NetlinkError('transport', 'EBADF', 'sendmsg: EBADF')
  port.ruleRefused = NetlinkError.kernel(95, 'ip rule add')
  const err = await s.apply(plan).catch((e: unknown) => e)
  t.type(err, AggregateError)
  t.equal((err as AggregateError).errors.length, 3, 'both rules and the batch')
  t.match((err as Error).message, /ENOTSUP.*EBADF/)
})

t.test('cleanup deletes only our routes and our rules', async (t) => {
  const port = new FakeRoutes()
  const s = new RoutesSubsystem(port, log)
  port.routes.push({ family: 4, dst: '10.9.0.0/16', via: '192.0.2.9', table: 220, protocol: 4, scope: 0, type: 1, metric: 5 })
  port.rules.push({ family: 4, priority: 220, table: 220, action: 1 })
  await s.apply(await s.plan(desired([route('10.1.0.0/16', '192.0.2.1'), route('2001:db8:1::/48', '2001:db8::1')]), CTX))
  t.equal(port.rules.length, 2, 'an untagged rule (charon\'s) satisfies IPv4; ours added for IPv6')
  t.same(await s.cleanupRoutes(), ['10.1.0.0/16', '2001:db8:1::/48'])
  t.same(port.routes.map((r) => r.dst), ['10.9.0.0/16'])
  t.equal(await s.cleanupRules(), 1)
  t.same(port.rules, [{ family: 4, priority: 220, table: 220, action: 1 }], 'charon\'s rule stays')
})

t.test('a family whose default route cannot be read counts as without a gateway; the other family keeps its own', async (t) => {
  const port = new FakeRoutes()
  port.gw = { 4: '192.0.2.1', 6: '2001:db8::1' }
  port.gwBroken.add(6)
  const s = new RoutesSubsystem(port, log)
  t.same(await s.gateways(), { 4: '192.0.2.1' })
  port.gwBroken.clear()
  t.same(await s.gateways(), { 4: '192.0.2.1', 6: '2001:db8::1' })
})

const cloudRoute = (dst: string, via?: string): DesiredRoute => ({ ...route(dst, via), viaFrom: 'connector-address' })

t.test('cloud: a connector address the kernel cannot reach is one typed error per family; the other family converges, retried', async (t) => {
  const port = new FakeRoutes()
  const s = new RoutesSubsystem(port, log)
  const d = desired([cloudRoute('10.1.0.0/16', '192.0.2.9'), cloudRoute('10.2.0.0/16', '192.0.2.9'), cloudRoute('2001:db8:1::/48', '2001:db8::9')])
  port.refuse = new Set(['10.1.0.0/16', '10.2.0.0/16'])
  const err = await s.apply(await s.plan(d, CTX)).catch((e: unknown) => e)
  t.match(err, {
    name: 'NetlinkError', code: 'ECONNECTORUNREACHABLE', kind: 'kernel', errno: 101,
    message: /^IPv4 --connector-address 192\.0\.2\.9 is not reachable on-link \(ENETUNREACH: Nexthop has invalid gateway\): 2 route\(s\) in table 220 not programmed: 10\.1\.0\.0\/16, 10\.2\.0\.0\/16$/,
  })
  t.same(port.routes.map((r) => r.dst), ['2001:db8:1::/48'], 'the IPv6 routes are programmed')
  const again = await s.plan(d, CTX)
  t.equal(again.writes, 2, 'the next pass tries the two routes again')
  port.refuse.clear()
  await s.apply(again)
  t.same(port.routes.map((r) => r.dst).sort(), ['10.1.0.0/16', '10.2.0.0/16', '2001:db8:1::/48'], 'written once the connector is reachable')
  t.equal((await s.plan(d, CTX)).writes, 0)
})

t.test('cloud: an unreachable default gateway route is not reported as a connector problem', async (t) => {
  const port = new FakeRoutes()
  const s = new RoutesSubsystem(port, log)
  port.refuse = new Set(['10.1.0.0/16'])
  const err = await s.apply(await s.plan(desired([route('10.1.0.0/16', '192.0.2.1')]), CTX)).catch((e: unknown) => e)
  t.match(err, { message: /^1 route op\(s\) failed, first: replace 10\.1\.0\.0\/16/ })
  t.notMatch((err as Error).message, /connector/)
})

t.test('cloud: a family without a --connector-address is named as such (ENOCONNECTOR)', async (t) => {
  const port = new FakeRoutes()
  const s = new RoutesSubsystem(port, log)
  const plan = await s.plan(desired([cloudRoute('10.1.0.0/16', '192.0.2.9'), cloudRoute('2001:db8:1::/48')]), CTX)
  t.ok(plan.describe().includes('cannot route 2001:db8:1::/48 table 220: no IPv6 --connector-address given'))
  await t.rejects(s.apply(plan), { name: 'NetlinkError', code: 'ENOCONNECTOR', message: 'no IPv6 --connector-address given: 1 route(s) in table 220 not programmed: 2001:db8:1::/48' })
  t.same(port.routes.map((r) => r.dst), ['10.1.0.0/16'])
})

t.test('cloud: a new connector address moves every route of its family (replace, same destinations)', async (t) => {
  const port = new FakeRoutes()
  const s = new RoutesSubsystem(port, log)
  await s.apply(await s.plan(desired([cloudRoute('10.1.0.0/16', '192.0.2.9')]), CTX))
  const moved = await s.plan(desired([cloudRoute('10.1.0.0/16', '192.0.2.10')]), CTX)
  t.same(moved.describe().filter((l) => l.startsWith('ip route')), ['ip route replace 10.1.0.0/16 via 192.0.2.10 table 220 proto 220'])
  await s.apply(moved)
  t.same(port.routes.map((r) => [r.dst, r.via]), [['10.1.0.0/16', '192.0.2.10']])
})

t.test('RouteMirror: one route per destination held as it is, several metrics in first-set order, the same as a map of slots', (t) => {
  const r = (dst: string, metric?: number, via = '10.0.0.1'): Route =>
    ({ family: family(dst), dst, via, table: 220, protocol: 220, scope: 0, type: 1, ...(metric === undefined ? {} : { metric }) }) as Route
  const m = new RouteMirror()
  t.same(m.routes('10.1.0.0/24'), [], 'nothing for an unknown destination')
  m.set(r('10.1.0.0/24'))
  m.set(r('10.1.0.0/24', 0, '10.0.0.2'))
  t.same(m.routes('10.1.0.0/24').map((x) => x.via), ['10.0.0.2'], 'metric 0 and no metric are one slot: replaced')
  m.set(r('10.1.0.0/24', 5))
  m.set(r('10.1.0.0/24', 7))
  m.set(r('10.1.0.0/24', 5, '10.0.0.9'))
  t.same(m.routes('10.1.0.0/24').map((x) => [x.metric ?? 0, x.via]), [[0, '10.0.0.2'], [5, '10.0.0.9'], [7, '10.0.0.1']], 'a replaced slot keeps its place')
  m.delete({ dst: '10.1.0.0/24' })
  t.same(m.routes('10.1.0.0/24').map((x) => x.metric), [5, 7])
  m.delete({ dst: '10.1.0.0/24', metric: 7 })
  t.same(m.routes('10.1.0.0/24').map((x) => x.metric), [5], 'back to one route')
  m.delete({ dst: '10.1.0.0/24', metric: 9 })
  t.same(m.routes('10.1.0.0/24').map((x) => x.metric), [5], 'deleting an absent slot changes nothing')
  m.set(r('fd00::/64'))
  t.same([...m.all()].map((x) => x.dst), ['10.1.0.0/24', 'fd00::/64'])
  m.delete({ dst: '10.1.0.0/24', metric: 5 })
  m.delete({ dst: 'fd00::/64', metric: 3 })
  t.same([...m.all()].map((x) => x.dst), ['fd00::/64'], 'a route of another metric is not deleted')
  m.delete({ dst: 'fd00::/64' })
  t.same([...m.all()], [], 'empty')

  // A random walk against the map of slots it replaces.
  let seed = 7
  const rnd = (n: number): number => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) % n)
  const ref = new Map<string, Map<number, Route>>()
  const mm = new RouteMirror()
  for (let i = 0; i < 3000; i++) {
    const dst = `10.${rnd(3)}.0.0/24`
    const metric = rnd(3) === 0 ? undefined : rnd(3)
    if (rnd(2) === 0) {
      const x = r(dst, metric, `10.0.0.${i % 250}`)
      mm.set(x)
      let at = ref.get(dst)
      if (!at) ref.set(dst, (at = new Map()))
      at.set(metric ?? 0, x)
    } else {
      mm.delete({ dst, ...(metric === undefined ? {} : { metric }) })
      ref.get(dst)?.delete(metric ?? 0)
      if (ref.get(dst)?.size === 0) ref.delete(dst)
    }
    for (const d of ['10.0.0.0/24', '10.1.0.0/24', '10.2.0.0/24']) {
      if (mm.routes(d).length !== (ref.get(d)?.size ?? 0) || mm.routes(d).some((x, k) => x !== [...(ref.get(d)?.values() ?? [])][k])) {
        t.fail(`step ${i}: ${d} differs`)
        return t.end()
      }
    }
  }
  t.pass('3,000 random sets and deletes: the same routes in the same order as the map of slots')
  t.end()
})
