// The /status document (statusDocument) on a node of fakes (test/harness/fake-node.ts), field by field as a user
// reads it; and buildNode assembling the real node without starting it (it opens two netlink sockets and probes
// the iptables backend, both read-only; it is never started, so nothing is written to the host).
import t, { type Test } from 'tap'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { tmpdir } from 'node:os'
import { buildNode, statusDocument } from '../../../src/daemon/node.js'
import { ROUTE_TABLE, RTPROT_FABTUNNEL } from '../../../src/fabedge.js'
import { IpsetsSubsystem } from '../../../src/reconcile/ipsets.js'
import { IptablesSubsystem } from '../../../src/reconcile/iptables.js'
import { RoutesSubsystem } from '../../../src/reconcile/routes.js'
import { TunnelsSubsystem } from '../../../src/reconcile/tunnels-subsystem.js'
import { VERSION } from '../../../src/version.js'
import { fakeNode, memoryLogger, until } from '../../harness/fake-node.js'

const FIX = new URL('../../fixtures/config/', import.meta.url).pathname
const PKI = new URL('../../fixtures/pki/', import.meta.url).pathname

async function rig(t: Test, opts: { config?: string; cert?: string } = {}) {
  const dir = mkdtempSync(join(tmpdir(), 'ftnode-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const config = join(dir, 'tunnels.yaml')
  if (opts.config) writeFileSync(config, readFileSync(join(FIX, opts.config)))
  const { log, lines } = await memoryLogger()
  const fake = fakeNode({ config, cert: opts.cert ?? join(PKI, 'edge1.crt'), key: join(PKI, 'edge1.key'), ca: join(PKI, 'ca.crt'), log, readCert: true })
  t.teardown(() => fake.parts.close())
  return { ...fake, config, lines }
}

t.test('before any config: not ready, no node, no peers, the reason in config', async (t) => {
  const r = await rig(t)
  r.parts.agent.start()
  await r.parts.agent.idle()
  const s = statusDocument(r.parts, 'libipsec')
  t.equal(s.version, VERSION)
  t.equal(s.node, null)
  t.equal(s.ready, false)
  t.same(s.peers, [])
  t.match(s.config, { path: r.config, generation: 0, rejected: { message: /does not exist yet/ } })
  t.equal(s.datapath, 'libipsec')
})

t.test('a converged connector: every field a user reads', async (t) => {
  const r = await rig(t, { config: 'connector.yaml' })
  r.parts.agent.start()
  t.ok(await until(() => r.parts.agent.ready))
  // Readiness is the last pass; the peer's up event may still be on its way (charon answers asynchronously).
  t.ok(await until(() => r.parts.tunnels!.peers().some((p) => p.name === 'shanghai.connector' && p.state === 'up')))
  const s = statusDocument(r.parts, 'xfrm') as Record<string, any>
  t.same(s.node, { name: 'beijing.connector', type: 'Connector', role: 'connector' })
  t.equal(s.ready, true)
  t.same(s.failing, [])
  t.equal(s.datapath, 'xfrm', 'the datapath the node runs with')
  t.match(s.config, { generation: 1, rejected: null })
  t.equal(s.certificateError, null)
  t.ok(s.lastPass.converged)
  const types = Object.fromEntries((s.peers as Array<{ name: string; type: string }>).map((p) => [p.name, p.type]))
  t.same(types, { 'beijing.edge1': 'EdgeNode', 'beijing.edge2': 'EdgeNode', 'shanghai.connector': 'Connector', mediator: 'Mediator' })
  const strip = (peers: Array<{ type: string }>) => peers.map(({ type: _type, ...rest }) => rest)
  t.same(strip(s.peers), strip(r.parts.tunnels!.peers()), 'each peer as the tunnels subsystem reports it (state, SAs, errors), typed from the config')
  t.ok((s.peers as Array<{ name: string; state: string }>).some((p) => p.name === 'shanghai.connector' && p.state === 'up'), 'the connector peer is up (fake charon)')
  t.match(s.routes, { table: ROUTE_TABLE, protocol: RTPROT_FABTUNNEL, routes: ['route-for:beijing.edge1', 'route-for:beijing.edge2', 'route-for:mediator', 'route-for:shanghai.connector'] })
  t.match(s.ipsets, { ipsets: Array })
  t.ok((s.ipsets.ipsets as string[]).length > 0)
  t.same(s.iptables, { iptables: ['ipv4', 'ipv6'] })
  t.same(s.tunnels, r.parts.tunnels!.summary())
  t.ok(s.counters.passes >= 1)
})

t.test('a failing subsystem and an unreadable certificate are reported', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ftnode-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const r = await rig(t, { config: 'edge.yaml', cert: join(dir, 'missing.crt') })
  r.routes.plan = async () => { throw new Error('netlink down') }
  r.parts.agent.start()
  await r.parts.agent.idle()
  const s = statusDocument(r.parts, 'libipsec') as Record<string, any>
  t.equal(s.ready, false)
  t.same(s.failing, ['routes'])
  t.match(s.certificateError, /missing\.crt/)
  t.match(s.lastPass.errors, { routes: 'netlink down' })
  t.same(s.node, { name: 'beijing.edge1', type: 'EdgeNode', role: 'edge' })
})

t.test('buildNode assembles the real node without starting it; status reads and close releases it', async (t) => {
  // Opens a route and a netfilter netlink socket (nothing is sent on them) and probes the iptables backend (reads
  // only); the VICI client connects on demand, and nothing here asks it to. The agent is never started: no pass,
  // no write. The VICI path points into an empty directory so no charon on the host can be reached anyway.
  const dir = mkdtempSync(join(tmpdir(), 'ftnode-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const { log, lines } = await memoryLogger()
  const node = await buildNode({
    config: join(dir, 'tunnels.yaml'), vici: `unix://${join(dir, 'charon.vici')}`,
    cert: join(PKI, 'edge1.crt'), key: join(PKI, 'edge1.key'), ca: join(PKI, 'ca.crt'),
    datapath: 'libipsec', resyncMs: 0, log,
  })
  let closed = false
  t.teardown(() => (closed ? undefined : node.close(0)))
  t.same(node.paths, { cert: join(PKI, 'edge1.crt'), key: join(PKI, 'edge1.key'), ca: join(PKI, 'ca.crt') })
  t.ok(node.tunnels instanceof TunnelsSubsystem && node.routes instanceof RoutesSubsystem && node.ipsets instanceof IpsetsSubsystem && node.iptables instanceof IptablesSubsystem, 'the four real subsystems')
  t.match(lines.find((l) => l.msg === `fabtunnel ${VERSION} starting`), { backend: /^(nft|legacy)$/, datapath: 'libipsec' })
  const s = statusDocument(node, 'libipsec') as Record<string, any>
  t.equal(s.ready, false, 'never started: not ready')
  t.equal(s.node, null)
  t.same(s.peers, [])
  t.equal(s.iptables.backend, node.iptablesRunner.backend)
  closed = true
  await node.close(0)
  t.notOk(lines.some((l) => l.msg === 'a pass is still in flight; closing the connections under it'), 'no pass ran')
})

t.test('buildNode --role cloud: no VICI client, no tunnels subsystem; status shows the role and the connector address', async (t) => {
  // As above: never started. planAll only reads (table 220, the FABEDGE sets, iptables-save); nothing is written.
  const dir = mkdtempSync(join(tmpdir(), 'ftnode-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  writeFileSync(join(dir, 'tunnels.yaml'), readFileSync(join(FIX, 'connector.yaml')))
  const { log, lines } = await memoryLogger()
  const node = await buildNode({
    config: join(dir, 'tunnels.yaml'), vici: `unix://${join(dir, 'charon.vici')}`,
    cert: join(dir, 'absent.crt'), key: join(dir, 'absent.key'), ca: join(dir, 'absent.crt'),
    datapath: 'xfrm', resyncMs: 0, log, role: 'cloud', connectorAddresses: { 4: '192.168.1.5' },
  })
  t.teardown(() => node.close(0))
  t.equal(node.tunnels, null)
  t.equal(node.vici, null)
  t.match(lines.find((l) => l.msg === `fabtunnel ${VERSION} starting`), { role: 'cloud', connectorAddresses: { 4: '192.168.1.5' } })
  t.equal(await node.agent.reloadConfig(), 'changed')
  const plans = await node.agent.planAll()
  t.same(plans.map((p) => p.subsystem), ['ipsets', 'iptables', 'routes'], 'only what a cloud node runs')
  const desired = await node.agent.desired()
  t.equal(desired?.role, 'cloud')
  t.ok(desired!.routes.filter((r) => r.family === 4).every((r) => r.via === '192.168.1.5'))
  const s = statusDocument(node, 'xfrm') as Record<string, any>
  t.equal(s.role, 'cloud')
  t.same(s.connectorAddress, { 4: '192.168.1.5' })
  t.equal(s.desiredError, null)
  t.same(s.node, { name: 'beijing.connector', type: 'Connector', role: 'cloud' })
  t.same(s.peers, [])
  t.notOk('tunnels' in s, 'no tunnels section: it runs none')
  t.notOk('datapath' in s)
  t.notOk(lines.some((l) => /charon|vici/i.test(String(l.msg)) || /vici/i.test(String(l.err ?? ''))), 'charon is never mentioned, nor dialled')
})

t.test('--tcp-mss reaches the desired ruleset and /status (setting, and whether the role clamps with it)', async (t) => {
  // Never started, as above: only reads.
  const dir = mkdtempSync(join(tmpdir(), 'ftnode-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  writeFileSync(join(dir, 'tunnels.yaml'), readFileSync(join(FIX, 'connector.yaml')))
  const { log } = await memoryLogger()
  const common = {
    config: join(dir, 'tunnels.yaml'), vici: `unix://${join(dir, 'charon.vici')}`,
    cert: join(dir, 'absent.crt'), key: join(dir, 'absent.key'), ca: join(dir, 'absent.crt'), datapath: 'xfrm' as const, resyncMs: 0, log,
  }
  const connector = await buildNode({ ...common, tcpMss: { mode: 'pmtu' } })
  t.teardown(() => connector.close(0))
  t.same((statusDocument(connector, 'xfrm') as Record<string, any>).tcpMss, { setting: 'pmtu', clamping: false }, 'no config yet: nothing clamps')
  t.equal(await connector.agent.reloadConfig(), 'changed')
  t.match((await connector.agent.desired())!.iptables.ipv4, /:FABEDGE-MSS - \[0:0\]\n-A FABEDGE-MSS -p tcp -m set --match-set FABEDGE-REMOTE-POD-CIDR dst .* --clamp-mss-to-pmtu\n/)
  t.same((statusDocument(connector, 'xfrm') as Record<string, any>).tcpMss, { setting: 'pmtu', clamping: true })

  const cloud = await buildNode({ ...common, role: 'cloud', connectorAddresses: { 4: '192.168.1.5' }, tcpMss: { mode: 'pmtu' } })
  t.teardown(() => cloud.close(0))
  await cloud.agent.reloadConfig()
  t.notMatch((await cloud.agent.desired())!.iptables.ipv4, /FABEDGE-MSS/, 'a cloud node: no PMTU clamp')
  t.same((statusDocument(cloud, 'xfrm') as Record<string, any>).tcpMss, { setting: 'pmtu', clamping: false })
  const cloudFixed = await buildNode({ ...common, role: 'cloud', connectorAddresses: { 4: '192.168.1.5' }, tcpMss: { mode: 'fixed', mss: 1300 } })
  t.teardown(() => cloudFixed.close(0))
  await cloudFixed.agent.reloadConfig()
  t.match((await cloudFixed.agent.desired())!.iptables.ipv6, /--match-set FABEDGE-REMOTE-POD-CIDR6 src -m tcp --tcp-flags SYN,RST SYN -j TCPMSS --set-mss 1300\n/)
  t.same((statusDocument(cloudFixed, 'xfrm') as Record<string, any>).tcpMss, { setting: '1300', clamping: true })

  const none = await buildNode(common)
  t.teardown(() => none.close(0))
  await none.agent.reloadConfig()
  t.notMatch((await none.agent.desired())!.iptables.ipv4, /mangle/, 'without the option (tests, library use): no chain')
  t.same((statusDocument(none, 'xfrm') as Record<string, any>).tcpMss, { setting: 'off', clamping: false })
})
