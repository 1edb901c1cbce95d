// `fabtunnel cleanup` (cleanupNode) on a node of fakes (test/harness/fake-node.ts: the in-memory charon behind the
// TunnelsPort, kernel-side subsystems in memory): it removes what the agent owns and nothing else, in the order the
// kernel needs, and one failing step is reported without stopping the others. No host state is touched.
import t, { type Test } from 'tap'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { tmpdir } from 'node:os'
import { cleanupNode } from '../../../src/daemon/cleanup.js'
import { FakeCharon } from '../../harness/charon-fake.js'
import { fakeNode, memoryLogger, until } from '../../harness/fake-node.js'

const FIX = new URL('../../fixtures/config/', import.meta.url).pathname
const PKI = new URL('../../fixtures/pki/', import.meta.url).pathname
const pem = (f: string) => readFileSync(join(PKI, f), 'utf8')
const ME = 'C=CN, O=fabedge.io, CN=beijing.edge1'

/** A node that ran (converged on edge.yaml, our credentials in charon) next to another VPN sharing the charon. */
async function rig(t: Test, opts: { cert?: string; converge?: boolean } = {}) {
  const dir = mkdtempSync(join(tmpdir(), 'ftcleanup-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const config = join(dir, 'tunnels.yaml')
  writeFileSync(config, readFileSync(join(FIX, 'edge.yaml')))
  const charon = new FakeCharon(ME)
  const { log } = await memoryLogger()
  const fake = fakeNode({ config, cert: opts.cert ?? join(PKI, 'edge1.crt'), key: join(PKI, 'edge1.key'), ca: join(PKI, 'ca.crt'), log, charon })
  t.teardown(() => fake.parts.close())
  if (opts.converge !== false) {
    fake.parts.agent.start()
    t.ok(await until(() => fake.parts.agent.ready), 'the node converged first')
    await fake.parts.agent.stop()
  }
  // Our credentials, as the daemon loads them.
  await charon.loadCert(pem('edge1.crt'))
  const ourKey = await charon.loadKey(pem('edge1.key'))
  await charon.loadAuthority('fabtunnel-ca', pem('ca.crt'))
  // Another VPN on the same charon: its connection, SA, certificate, key and authority.
  charon.foreignConns.set('office', {
    local_addrs: ['%any'], remote_addrs: ['198.51.100.7'], version: 'IKEv2',
    'local-1': { id: 'C=DE, O=office, CN=office-vpn', class: 'public key', groups: [], certs: [] },
    'remote-1': { groups: [], certs: [] },
    children: { lan: { mode: 'TUNNEL' } },
  })
  charon.sas.push({ name: 'office', uniqueid: '900', state: 'ESTABLISHED', localId: 'C=DE, O=office, CN=office-vpn', children: [{ name: 'lan', uniqueid: '901', state: 'INSTALLED' }] })
  await charon.loadCert(pem('foreign.crt'))
  const foreignKey = await charon.loadKey(pem('foreign.key'))
  await charon.loadAuthority('office-ca', pem('ca.crt'))
  // An orphan: an SA of a connection of ours that is no longer loaded (an earlier terminate failed).
  charon.sas.push({ name: 'beijing.old-peer', uniqueid: '950', state: 'ESTABLISHED', localId: ME, children: [] })
  return { ...fake, ourKey, foreignKey }
}

t.test('removes our connections, SAs (orphans too), credentials, chains, sets, routes and rules; nothing foreign', async (t) => {
  const r = await rig(t)
  const ours = [...r.charon.conns.keys()].sort()
  t.ok(ours.includes('beijing.connector') && ours.includes('mediator'), 'our connections were loaded')
  const ourSas = r.charon.sas.filter((s) => s.name !== 'office').map((s) => s.uniqueid)
  t.ok(ourSas.includes('950') && ourSas.length > 1, 'our SAs and the orphan are up')
  const live = { iptables: [...r.iptables.live].sort(), ipsets: [...r.ipsets.live].sort(), routes: [...r.routes.live].sort() }
  t.ok(live.iptables.length > 0 && live.ipsets.length > 0 && live.routes.length > 0)

  const report = await cleanupNode(r.parts)

  t.same(report.errors, [])
  t.same([...report.conns].sort(), ours)
  t.equal(r.charon.conns.size, 0, 'every connection of ours unloaded')
  t.equal(report.sasTerminated, ourSas.length)
  t.same(r.charon.sas.map((s) => s.name), ['office'], 'only the foreign SA is left; the orphan of ours was ended')
  t.ok(r.charon.foreignConns.has('office'), 'the foreign connection stays')
  t.same(report.keys, [r.ourKey])
  t.same([...r.charon.keys.keys()], [r.foreignKey], 'the foreign key stays')
  t.same(report.authorities, ['fabtunnel-ca'])
  t.same([...r.charon.authorities.keys()], ['office-ca'], 'the foreign authority stays')
  t.same(report.iptables, [{ family: 4, chains: live.iptables }, { family: 6, chains: [] }])
  t.same(report.ipsets, live.ipsets)
  t.same(report.routes, live.routes)
  t.equal(report.rules, 0)
  t.same(r.cleanupOrder, ['iptables cleanup 4', 'iptables cleanup 6', 'ipsets cleanup', 'routes cleanupRoutes', 'routes cleanupRules'],
    'rules referencing sets go before the sets; routes, then rules')
  t.notOk(r.charon.calls.some((c) => /^(unloadConn|terminate) .*(office|#900|#901)/.test(c)), 'no call touched the foreign VPN')
})

t.test('a failing step is reported and the later steps still run', async (t) => {
  const r = await rig(t)
  r.charon.fail('listConns', () => true, 'VICI timeout')
  r.ipsets.cleanupFailures.set('cleanup', new Error('set in use'))
  const report = await cleanupNode(r.parts)
  t.same(report.errors, ['connections: VICI timeout', 'ipsets: set in use'])
  t.same(report.conns, [])
  t.ok(r.charon.conns.size > 0, 'connections untouched when they cannot be listed')
  t.same(report.keys, [r.ourKey], 'credentials still cleaned')
  t.same(report.authorities, ['fabtunnel-ca'])
  t.ok(report.iptables.length === 2 && report.iptables[0]!.chains.length > 0, 'iptables still cleaned')
  t.ok(report.routes.length > 0, 'routes still cleaned after the failed ipsets step')
  t.same(r.cleanupOrder.slice(-2), ['routes cleanupRoutes', 'routes cleanupRules'])
})

t.test('a failing iptables family and failing rules are reported per step', async (t) => {
  const r = await rig(t)
  r.iptables.cleanupFailures.set('cleanup 6', new Error('ip6tables-restore: exit 4'))
  r.routes.cleanupFailures.set('cleanupRules', new Error('EPERM'))
  const report = await cleanupNode(r.parts)
  t.same(report.errors, ['iptables (IPv6): ip6tables-restore: exit 4', 'rules: EPERM'])
  t.same(report.iptables.map((x) => x.family), [4], 'IPv4 reported, IPv6 failed')
  t.ok(report.ipsets.length > 0 && report.routes.length > 0)
})

t.test('a missing certificate file: connections found through the config id, our key cannot be identified and stays', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ftcleanup-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const r = await rig(t, { cert: join(dir, 'gone.crt') })
  const ours = [...r.charon.conns.keys()].sort()
  t.ok(ours.length > 0)
  const report = await cleanupNode(r.parts)
  t.same(report.errors, [])
  t.same([...report.conns].sort(), ours)
  t.same(r.charon.sas.map((s) => s.name), ['office'], 'the orphan matched through the config id')
  t.same(report.keys, [], 'no certificate subject: no key is ours for sure')
  t.ok(r.charon.keys.has(r.ourKey) && r.charon.keys.has(r.foreignKey))
  t.same(report.authorities, ['fabtunnel-ca'], 'our authority is known by its name')
})

t.test('no config and no certificate: only what is ours by name or child naming goes', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ftcleanup-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const r = await rig(t, { cert: join(dir, 'gone.crt'), converge: false })
  rmSync(r.parts.agent.configState.path)
  const report = await cleanupNode(r.parts)
  t.same(report.errors, [])
  t.same(report.conns, [])
  t.equal(report.sasTerminated, 0, 'the orphan of ours carries our id only: without config or certificate it is not provably ours')
  t.same(r.charon.sas.map((s) => s.name).sort(), ['beijing.old-peer', 'office'])
})
