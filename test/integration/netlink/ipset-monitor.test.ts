// ipsets written through nfnetlink checked against ipset(8), and the route monitor against `ip route del`,
// in throwaway namespaces.
import t, { type Test } from 'tap'
import { spawnSync } from 'node:child_process'
import { Netns, needsRoot } from '../../harness/netns.js'
import {
  canonicalCidr, ipsetAdd, ipsetAddMany, ipsetCreate, ipsetDel, ipsetDelMany, ipsetDestroy, ipsetList, ipsetPlan, ipsetSwap,
  ipsetTest, Monitor, openNetfilter, openRoute, routeReplace, type NetlinkSocket, type Route,
} from '../../../src/netlink/index.js'

/** The library's verbs composed as docs/netlink.md shows: set `name` holds exactly `members`. */
async function setSync(nf: NetlinkSocket, name: string, family: 4 | 6, members: string[]): Promise<{ added: string[]; removed: string[] }> {
  await ipsetCreate(nf, name, family)
  const d = ipsetPlan(members, (await ipsetList(nf, name))!.members)
  await ipsetAddMany(nf, name, d.add)
  await ipsetDelMany(nf, name, d.del)
  return { added: d.add, removed: d.del }
}

async function nsWith(t: Test): Promise<Netns> {
  const ns = await Netns.create('nl')
  t.teardown(() => ns.destroy())
  return ns
}

async function nfSock(t: Test, ns: Netns): Promise<NetlinkSocket> {
  const s = openNetfilter({ netns: ns.name, timeoutMs: 5000 })
  t.teardown(() => s.close())
  return s
}

/** Members as ipset(8) prints them, canonicalized (it omits /32 and /128). */
async function ipsetMembers(ns: Netns, name: string): Promise<string[]> {
  const out = await ns.run(['ipset', 'list', name])
  const lines = out.split('\n')
  const from = lines.indexOf('Members:')
  return lines.slice(from + 1).filter((l) => l.trim()).map((l) => canonicalCidr(l.trim())).sort()
}

t.test('members we write equal `ipset list`, and members added by `ipset add` are seen by ipsetList', { skip: needsRoot }, async (t) => {
  const ns = await nsWith(t)
  const nf = await nfSock(t, ns)
  const want4 = [...Array.from({ length: 300 }, (_, i) => `10.${i >> 8}.${i & 255}.0/24`), '192.168.7.7']
  const r = await setSync(nf, 'FT-V4', 4, want4)
  t.equal(r.added.length, 301)
  t.same(await ipsetMembers(ns, 'FT-V4'), want4.map(canonicalCidr).sort())
  await setSync(nf, 'FT-V6', 6, ['2001:db8:1::/48', 'fd00::1'])
  t.same(await ipsetMembers(ns, 'FT-V6'), ['2001:db8:1::/48', 'fd00::1/128'])
  t.match(await ns.run(['ipset', 'list', 'FT-V6']), /family inet6/)

  await ns.run(['ipset', 'add', 'FT-V4', '172.16.0.0/12'])
  await ns.run(['ipset', 'del', 'FT-V4', '10.0.0.0/24'])
  const listed = await ipsetList(nf, 'FT-V4')
  t.same(listed!.members, await ipsetMembers(ns, 'FT-V4'), 'both views agree')
  t.ok(listed!.members.includes('172.16.0.0/12'))
  const back = await setSync(nf, 'FT-V4', 4, want4)
  t.same(back, { added: ['10.0.0.0/24'], removed: ['172.16.0.0/12'] }, 'sync undoes foreign edits with a minimal diff')
  t.same(await setSync(nf, 'FT-V4', 4, want4), { added: [], removed: [] }, 'converged')
})

t.test('expected refusals are values', { skip: needsRoot }, async (t) => {
  const ns = await nsWith(t)
  const nf = await nfSock(t, ns)
  t.same(await ipsetCreate(nf, 'FT-E', 4), { ok: true })
  t.same(await ipsetCreate(nf, 'FT-E', 4), { ok: true }, '-exist: same set again is fine')
  t.same(await ipsetCreate(nf, 'FT-E', 4, { exist: false }), { ok: false, reason: 'exists' })
  await t.rejects(ipsetCreate(nf, 'FT-E', 6), { kind: 'kernel', code: 'IPSET_ERR_EXIST' }, 'same name, other family: a real error')
  t.same(await ipsetAdd(nf, 'FT-E', '10.1.0.0/16'), { ok: true })
  t.same(await ipsetAdd(nf, 'FT-E', '10.1.0.0/16'), { ok: false, reason: 'exists' })
  t.same(await ipsetAdd(nf, 'FT-E', '10.1.0.0/16', { exist: true }), { ok: true })
  t.equal(await ipsetTest(nf, 'FT-E', '10.1.0.0/16'), true)
  t.equal(await ipsetTest(nf, 'FT-E', '10.2.0.0/16'), false)
  t.same(await ipsetDel(nf, 'FT-E', '10.2.0.0/16'), { ok: false, reason: 'missing' })
  t.same(await ipsetAdd(nf, 'FT-NOPE', '10.1.0.0/16'), { ok: false, reason: 'missing' })
  t.equal(await ipsetList(nf, 'FT-NOPE'), undefined)
  t.same(await ipsetDestroy(nf, 'FT-E'), { ok: true })
  t.same(await ipsetDestroy(nf, 'FT-E'), { ok: false, reason: 'missing' })
  t.equal((await ns.capture(['ipset', 'list', 'FT-E'])).code, 1, 'gone for ipset(8) too')
})

t.test('swap exchanges the members of two sets atomically', { skip: needsRoot }, async (t) => {
  const ns = await nsWith(t)
  const nf = await nfSock(t, ns)
  await setSync(nf, 'FT-A', 4, ['10.1.0.0/16', '10.2.0.0/16'])
  await setSync(nf, 'FT-B', 4, ['192.168.0.0/16'])
  t.same(await ipsetSwap(nf, 'FT-A', 'FT-B'), { ok: true })
  t.same(await ipsetMembers(ns, 'FT-A'), ['192.168.0.0/16'])
  t.same(await ipsetMembers(ns, 'FT-B'), ['10.1.0.0/16', '10.2.0.0/16'])
  t.same(await ipsetSwap(nf, 'FT-A', 'FT-NOPE'), { ok: false, reason: 'missing' })
  await ipsetCreate(nf, 'FT-C6', 6)
  await t.rejects(ipsetSwap(nf, 'FT-A', 'FT-C6'), { code: 'IPSET_ERR_TYPE_MISMATCH' })
})

t.test('the monitor sees a route deleted by `ip route del` within a bounded wait', { skip: needsRoot }, async (t) => {
  const ns = await nsWith(t)
  await ns.run(['ip', 'link', 'add', 'mo0', 'type', 'veth', 'peer', 'name', 'mo1'])
  await ns.run(['ip', 'link', 'set', 'mo0', 'up'])
  await ns.run(['ip', 'addr', 'add', '10.9.0.1/24', 'dev', 'mo0'])
  const rt = openRoute({ netns: ns.name })
  t.teardown(() => rt.close())
  await routeReplace(rt, { dst: '10.70.0.0/16', via: '10.9.0.2' })
  const mon = Monitor.open({ netns: ns.name })
  t.teardown(() => mon.close())
  const seen = new Promise<[Route, number]>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('no RTM_DELROUTE within 2 s')), 2000)
    mon.on('route', (action, route) => {
      if (action === 'del' && route.dst === '10.70.0.0/16') {
        clearTimeout(timer)
        resolve([route, performance.now()])
      }
    })
  })
  // Measured from issuing the command, so it includes starting `ip` (the event usually arrives before its exit).
  const issued = performance.now()
  await ns.run(['ip', 'route', 'del', '10.70.0.0/16', 'table', '220'])
  const exited = performance.now()
  const [route, at] = await seen
  t.match(route, { table: 220, protocol: 220, via: '10.9.0.2' })
  const latency = at - issued
  t.comment(`monitor saw the delete ${latency.toFixed(2)} ms after issuing ip route del (process ran ${(exited - issued).toFixed(2)} ms)`)
  t.ok(latency < 500, `seen within 500 ms (${latency.toFixed(2)} ms)`)
})

t.test('a monitor that falls behind gets a resync event, not silence', { skip: needsRoot }, async (t) => {
  const ns = await nsWith(t)
  await ns.run(['ip', 'link', 'add', 'mo0', 'type', 'veth', 'peer', 'name', 'mo1'])
  await ns.run(['ip', 'link', 'set', 'mo0', 'up'])
  await ns.run(['ip', 'addr', 'add', '10.9.0.1/24', 'dev', 'mo0'])
  const mon = Monitor.open({ netns: ns.name, rcvbuf: 4096 })
  t.teardown(() => mon.close())
  const resync = new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('no resync within 2 s')), 2000)
    mon.on('resync', (e) => {
      clearTimeout(timer)
      resolve(e.code)
    })
  })
  // spawnSync blocks this event loop, so the monitor cannot read while 2000 notifications pile up.
  const lines = Array.from({ length: 2000 }, (_, i) => `route add 10.${100 + (i >> 8)}.${i & 255}.0/24 via 10.9.0.2 table 220\n`)
  const r = spawnSync('ip', ['-n', ns.name, '-batch', '-'], { input: lines.join(''), timeout: 10_000 })
  t.equal(r.status, 0, 'ip -batch ran')
  t.equal(await resync, 'ENOBUFS')
  const after = new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('monitor went deaf after the overrun')), 2000)
    mon.on('route', (action, route) => {
      if (action === 'del' && route.dst === '10.100.0.0/24') {
        clearTimeout(timer)
        resolve()
      }
    })
  })
  await ns.run(['ip', 'route', 'del', '10.100.0.0/24', 'table', '220'])
  await after
  t.pass('still receiving after the resync')
})
