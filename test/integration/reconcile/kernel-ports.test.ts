// The routes and ipsets subsystems over their real netlink ports in throwaway namespaces, with `ip` and `ipset`
// as the oracles: the adapters the unit tests replace with fakes, proven against the kernel (ownership, the
// per-family gateway error, a stale set still used by an iptables rule, cleanup).
import t, { type Test } from 'tap'
import type { Desired, DesiredRoute } from '../../../src/desired/types.js'
import { IPSET } from '../../../src/fabedge.js'
import { createLogger } from '../../../src/log.js'
import { openNetfilter, openRoute, type NetlinkSocket } from '../../../src/netlink/index.js'
import { IpsetsSubsystem, netlinkIpsetsPort } from '../../../src/reconcile/ipsets.js'
import { netlinkRoutesPort, RoutesSubsystem } from '../../../src/reconcile/routes.js'
import { passContext } from '../../../src/reconcile/subsystem.js'
import { Netns, needsRoot } from '../../harness/netns.js'

const CTX = passContext(['resync'])
const log = createLogger('silent')

async function nsWith(t: Test, open: (ns: Netns) => NetlinkSocket): Promise<{ ns: Netns; sock: NetlinkSocket }> {
  const ns = await Netns.create('kp')
  t.teardown(() => ns.destroy())
  const sock = open(ns)
  t.teardown(() => sock.close())
  return { ns, sock }
}

t.test('routes: gateways, both families, foreign routes untouched, a family without gateway reported, cleanup', { skip: needsRoot }, async (t) => {
  const { ns, sock } = await nsWith(t, (ns) => openRoute({ netns: ns.name, timeoutMs: 5000 }))
  await ns.run(['ip', 'link', 'add', 'up0', 'type', 'veth', 'peer', 'name', 'up1'])
  await ns.run(['ip', 'link', 'set', 'up0', 'up'])
  await ns.run(['ip', 'link', 'set', 'up1', 'up'])
  await ns.run(['ip', 'addr', 'add', '10.9.0.1/24', 'dev', 'up0'])
  await ns.run(['ip', '-6', 'addr', 'add', '2001:db8::1/64', 'dev', 'up0', 'nodad'])
  await ns.run(['ip', 'route', 'add', 'default', 'via', '10.9.0.254'])
  await ns.run(['ip', 'route', 'add', '10.50.0.0/16', 'via', '10.9.0.3', 'table', '220', 'proto', 'static'])
  const s = new RoutesSubsystem(netlinkRoutesPort(sock), log)
  const gw = await s.gateways()
  t.same(gw, { 4: '10.9.0.254' }, 'IPv4 only')
  const route = (dst: string): DesiredRoute => {
    const family = dst.includes(':') ? 6 : 4
    const via = gw[family]
    return { dst, family, table: 220, protocol: 220, ...(via ? { via } : {}) }
  }
  const want = (): Pick<Desired, 'routes' | 'rules'> => ({
    routes: ['10.50.0.0/16', '10.60.0.0/16', '2001:db8:60::/48'].map(route),
    rules: [{ family: 4, priority: 220, table: 220 }, { family: 6, priority: 220, table: 220 }],
  })
  await t.rejects(s.apply(await s.plan(want(), CTX)), { code: 'ENOGATEWAY', message: /no IPv6 default gateway.*2001:db8:60::\/48/ })
  t.match(await ns.run(['ip', 'route', 'show', 'table', '220']), /10\.50\.0\.0\/16 via 10\.9\.0\.3 dev up0 proto static/, 'the foreign route keeps its slot')
  t.match(await ns.run(['ip', 'route', 'show', 'table', '220', 'proto', '220']), /^10\.60\.0\.0\/16 via 10\.9\.0\.254 dev up0 $/m)
  t.match(s.summary(), { conflicts: 1, unroutable: 1 })
  for (const f of ['-4', '-6']) t.match(await ns.run(['ip', f, 'rule', 'show', 'priority', '220']), /from all lookup 220 proto 220/, `rule ${f}`)

  await ns.run(['ip', '-6', 'route', 'add', 'default', 'via', '2001:db8::fe'])
  Object.assign(gw, await s.gateways())
  t.equal(await s.apply(await s.plan(want(), CTX)), 1, 'the IPv6 route, once IPv6 has a gateway')
  t.match(await ns.run(['ip', '-6', 'route', 'show', 'table', '220', 'proto', '220']), /^2001:db8:60::\/48 via 2001:db8::fe dev up0/m)
  t.equal((await s.plan(want(), CTX)).writes, 0, 'converged')

  t.same(await s.cleanupRoutes(), ['10.60.0.0/16', '2001:db8:60::/48'])
  t.equal(await s.cleanupRules(), 2)
  t.equal((await ns.run(['ip', 'route', 'show', 'table', '220'])).trim(), '10.50.0.0/16 via 10.9.0.3 dev up0 proto static', 'only the foreign route is left')
})

t.test("routes: FabEdge's own table-220 routes (proto unspec) are taken over in wanted slots, left alone elsewhere", { skip: needsRoot }, async (t) => {
  const { ns, sock } = await nsWith(t, (ns) => openRoute({ netns: ns.name, timeoutMs: 5000 }))
  await ns.run(['ip', 'link', 'add', 'up0', 'type', 'veth', 'peer', 'name', 'up1'])
  await ns.run(['ip', 'link', 'set', 'up0', 'up'])
  await ns.run(['ip', 'link', 'set', 'up1', 'up'])
  await ns.run(['ip', 'addr', 'add', '10.9.0.1/24', 'dev', 'up0'])
  await ns.run(['ip', 'route', 'add', 'default', 'via', '10.9.0.254'])
  // What FabEdge's Go agent leaves on a node (vishvananda/netlink RouteReplace without a protocol), and charon's.
  await ns.run(['ip', 'route', 'add', '10.70.0.0/16', 'via', '10.9.0.254', 'table', '220', 'proto', '0'])
  await ns.run(['ip', 'route', 'add', '10.71.0.0/16', 'via', '10.9.0.254', 'table', '220', 'proto', '0'])
  await ns.run(['ip', 'route', 'add', '10.72.0.0/16', 'via', '10.9.0.3', 'table', '220', 'proto', 'static'])
  const s = new RoutesSubsystem(netlinkRoutesPort(sock), log)
  const want: Pick<Desired, 'routes' | 'rules'> = {
    routes: ['10.70.0.0/16', '10.72.0.0/16'].map((dst) => ({ dst, family: 4, table: 220, protocol: 220, via: '10.9.0.254' })),
    rules: [],
  }
  t.equal(await s.apply(await s.plan(want, CTX)), 1, 'one write: the FabEdge route in a wanted slot')
  const table = (await ns.run(['ip', 'route', 'show', 'table', '220'])).trim().split('\n').map((l) => l.trim()).sort()
  t.same(table, [
    '10.70.0.0/16 via 10.9.0.254 dev up0 proto 220',
    '10.71.0.0/16 via 10.9.0.254 dev up0 proto unspec',
    '10.72.0.0/16 via 10.9.0.3 dev up0 proto static',
  ], 'taken over in place (one route, now ours); the unwanted one and charon\'s stay')
  t.match(s.summary(), { conflicts: 1 }, "charon's route in a wanted slot is still left alone")
  t.equal((await s.plan(want, CTX)).writes, 0, 'converged')
})

t.test('ipsets: create, update, a set of the wrong type, a stale set used by an iptables rule, cleanup', { skip: needsRoot }, async (t) => {
  const { ns, sock } = await nsWith(t, (ns) => openNetfilter({ netns: ns.name, timeoutMs: 5000 }))
  const s = new IpsetsSubsystem(netlinkIpsetsPort(sock), log)
  const members = async (name: string): Promise<string[]> => {
    const lines = (await ns.run(['ipset', 'list', name])).split('\n')
    return lines.slice(lines.indexOf('Members:') + 1).filter(Boolean).sort()
  }
  const local = { ipsets: { [IPSET.localPodCidr]: { family: 4 as const, members: ['10.1.0.0/24'] } } }
  t.equal(await s.apply(await s.plan(local, CTX)), 2)
  t.same(await members(IPSET.localPodCidr), ['10.1.0.0/24'])
  await ns.run(['iptables', '-w', '-A', 'FORWARD', '-m', 'set', '--match-set', IPSET.localPodCidr, 'src', '-j', 'ACCEPT'])
  await ns.run(['ipset', 'create', `${IPSET.remoteCidr}6`, 'hash:ip', 'family', 'inet6'])

  const switched = {
    ipsets: {
      [IPSET.remoteCidr]: { family: 4 as const, members: ['10.2.0.0/16', '10.3.0.0/16'] },
      [`${IPSET.remoteCidr}6`]: { family: 6 as const, members: ['2001:db8:2::/48'] },
    },
  }
  await t.rejects(s.apply(await s.plan(switched, CTX)), { code: 'EWRONGSET', message: /FABEDGE-REMOTE-CIDR6 exists as hash:ip IPv6/ }, 'the wrong set is reported')
  t.same(await members(IPSET.remoteCidr), ['10.2.0.0/16', '10.3.0.0/16'], 'the good set is written anyway')
  t.equal((await ns.capture(['ipset', 'list', IPSET.localPodCidr])).code, 0, 'the stale set used by a rule is still there (first refusal)')
  await ns.run(['ipset', 'destroy', `${IPSET.remoteCidr}6`])
  await t.rejects(s.apply(await s.plan(switched, CTX)), { code: 'IPSET_ERR_BUSY', message: /stale set FABEDGE-LOCAL-POD-CIDR is still used by a rule that is not ours/ })
  t.same(await members(`${IPSET.remoteCidr}6`), ['2001:db8:2::/48'], 'the IPv6 set created meanwhile')
  await ns.run(['iptables', '-w', '-D', 'FORWARD', '-m', 'set', '--match-set', IPSET.localPodCidr, 'src', '-j', 'ACCEPT'])
  t.equal(await s.apply(await s.plan(switched, CTX)), 1, 'destroyed once unused')
  t.equal((await s.plan(switched, CTX)).writes, 0, 'converged')
  t.same(await s.cleanup(), [IPSET.remoteCidr, `${IPSET.remoteCidr}6`])
  t.equal((await ns.run(['ipset', 'list', '-n'])).trim(), '', 'no set left')
})
