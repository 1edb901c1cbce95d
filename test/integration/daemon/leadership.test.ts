// Connector leadership against the real kernel and real charon, in namespaces:
// 1. vip mode: adding/removing the VIP on an interface (what keepalived does) flips /is-leader through netlink
//    address events, and one pass installs (or removes) the leader-only state: table-220 routes, the initiated
//    connector<->connector tunnel, the steering ipset members. IPv4 and IPv6 VIPs.
// 2. SIGTERM on the leader: /healthz goes 503 at once, the edge's IKE_SA (which came in on the VIP) is deleted by
//    our DELETE, the edge's immediate re-initiation is dropped while the VIP is still here (drain rules), the
//    connections stay loaded; a restarted agent removes the drain rules and the edge comes back.
// The full two-connector keepalived failover is the e2e suite's (test/e2e).
import t from 'tap'
import { defaultDriver, saSnapshot, type AgentHandle } from '../../harness/agents.js'
import { connectorEndpoint, edgeEndpoint, renderTunnelsYaml, starTopology, type EndpointView } from '../../harness/addressing.js'
import { needsRoot } from '../../harness/netns.js'
import { Topology, type Gateway } from '../../harness/topology.js'
import { Vici } from '../../../src/vici/index.js'

/** A remote cluster's connector nobody runs: beijing initiates to it (name order); the IKE_SA stays CONNECTING. */
const SHANGHAI: EndpointView & { type: 'Connector' } = {
  id: 'C=CN, O=fabedge.io, CN=shanghai.connector',
  name: 'shanghai.connector',
  publicAddresses: ['10.77.9.1'],
  subnets: ['10.99.0.0/16', '10.89.1.0/24'],
  nodeSubnets: ['10.78.9.1/32'],
  type: 'Connector',
}

async function underlayIf(g: Gateway): Promise<string> {
  const out = await g.ns.run(['ip', '-o', '-4', 'addr', 'show', 'to', `${g.plan.publicIp}/32`])
  const m = /^\d+:\s+(\S+?)(@\S+)?\s/.exec(out)
  if (!m) throw new Error(`no underlay interface in ${g.name}: ${out}`)
  return m[1]!
}

async function conns(g: Gateway): Promise<{ loaded: string[]; sas: Array<{ name: string; state: string; uniqueid: string }> }> {
  const vici = new Vici({ uri: g.charon.uri, reconnect: false, timeoutMs: 5_000 })
  try {
    await vici.connect()
    return {
      loaded: (await vici.listConns()).map((c) => c.name).sort(),
      sas: (await vici.listSas()).map((s) => ({ name: s.name, state: s.state, uniqueid: s.uniqueid })),
    }
  } finally {
    await vici.close()
  }
}

const text = async (a: AgentHandle, path: string): Promise<string> => (await a.get(path)).body.trim()

t.test('vip mode: the VIP on an interface is leadership; one pass adds or removes routes, initiator, steering sets', { skip: needsRoot, timeout: 180_000 }, async (t) => {
  const topo = await Topology.create({ spec: starTopology(0) })
  const VIP4 = '10.77.1.250'
  const VIP6 = 'fd00:77::250'
  let vip = VIP4
  // The connectors' internal VIP as a standby's next hop (here just an unused underlay address).
  const INTERNAL = '10.77.1.251'
  let viaConnector = true
  const driver = await defaultDriver({ datapath: 'xfrm', logLevel: 'debug', extraArgs: () => ['--leader-election', 'vip', '--vip', vip, ...(viaConnector ? ['--connector-address', INTERNAL] : [])] })
  t.teardown(async () => {
    await driver.stopAll()
    await topo.destroy()
  })
  const conn = topo.gateway('beijing.connector')
  const agent = driver.agent(conn)
  const ul = await underlayIf(conn)
  await conn.ns.run(['ip', 'route', 'add', 'default', 'via', '10.77.0.1'])
  const edge: EndpointView & { type: 'EdgeNode' } = { id: 'C=CN, O=fabedge.io, CN=beijing.far', name: 'beijing.far', publicAddresses: [], subnets: ['10.61.0.0/24'], nodeSubnets: ['10.77.5.5'], type: 'EdgeNode' }
  await topo.writeConfig(conn.name, renderTunnelsYaml({ local: connectorEndpoint(topo.plan.clusters[0]!), peers: [edge, SHANGHAI], mediator: null }))
  const routes = async () => {
    const r = await conn.ns.capture(['ip', 'route', 'show', 'table', '220', 'proto', '220'])
    // An empty table 220 does not exist at all.
    if (r.code !== 0 && /FIB table does not exist/.test(r.stderr)) return []
    if (r.code !== 0) throw new Error(r.stderr)
    return r.stdout.trim().split('\n').filter(Boolean).map((l) => l.split(' ')[0]!).sort()
  }
  const nextHops = async () => new Set((await conn.ns.run(['ip', 'route', 'show', 'table', '220', 'proto', '220'])).trim().split('\n').map((l) => /via (\S+)/.exec(l)?.[1]))
  const STANDBY_ROUTES = ['10.61.0.0/24', '10.77.5.5', '10.78.9.1', '10.89.1.0/24', '10.99.0.0/16']
  const members = async (set: string) => (await conn.ns.run(['ipset', 'list', set])).split('Members:\n')[1]!.trim().split('\n').filter(Boolean).sort()
  const shanghaiSa = async () => (await conns(conn)).sas.some((s) => s.name === 'shanghai.connector')

  await agent.start()
  await agent.waitFor('standby ready', async () => (await agent.get('/readyz')).status === 200, 30_000)
  t.equal(await text(agent, '/is-leader'), 'false', 'no VIP here: standby')
  t.same(await routes(), STANDBY_ROUTES, 'standby with --connector-address: every remote prefix routed like a cloud node')
  t.same(await nextHops(), new Set([INTERNAL]), '... via the connectors\' internal address, never into a tunnel here')
  t.ok((await members('FABEDGE-LOCAL-POD-CIDR')).length > 0, 'the local sets are filled')
  t.same((await conns(conn)).loaded, ['beijing.far', 'shanghai.connector'], 'standby: every connection loaded (warm)')
  t.equal(await shanghaiSa(), false, 'standby: the remote connector is not initiated')
  const before = (await agent.status()).counters.passes as number

  await conn.ns.run(['ip', 'addr', 'add', `${VIP4}/32`, 'dev', ul])
  await agent.waitFor('promoted', async () => (await text(agent, '/is-leader')) === 'true', 10_000, 20)
  await agent.waitFor('leader state', async () => (await routes()).length === 3 && (await shanghaiSa()), 10_000, 20)
  t.same(await routes(), ['10.61.0.0/24', '10.89.1.0/24', '10.99.0.0/16'], 'leader: a table-220 route per peer subnet')
  t.same(await nextHops(), new Set(['10.77.0.1']), 'via the default gateway (xfrm), no longer via the connector address')
  t.same(await members('FABEDGE-REMOTE-POD-CIDR'), ['10.61.0.0/24', '10.89.1.0/24', '10.99.0.0/16'], 'leader: steering set filled')
  const s = await agent.status()
  t.match(s.leadership, { mode: 'vip', leader: true, transitions: 1, vip: { address: VIP4, present: true } })
  const promoted = s.lastPass
  t.ok(s.counters.passes - before <= 3, `promotion converged in one pass plus its verification (${s.counters.passes - before} passes)`)
  t.match(await text(agent, '/metrics'), /^fabtunnel_leader 1$/m)
  t.match(await text(agent, '/metrics'), /^fabtunnel_leader_transitions_total 1$/m)
  t.ok(promoted, 'a pass ran')
  const log = await agent.logTail(200)
  const promotionPass = log.split('\n').map((l) => { try { return JSON.parse(l) } catch { return null } })
    .find((l) => l?.op === 'pass' && l.reasons?.includes('leader:promoted'))
  t.ok(promotionPass, 'a pass ran for the promotion')
  // The sets stay filled on a standby routing via --connector-address: routes and the initiate are what change.
  t.match(promotionPass?.writes, { routes: Number, tunnels: Number }, 'that one pass wrote the routes and the initiate')

  await conn.ns.run(['ip', 'addr', 'del', `${VIP4}/32`, 'dev', ul])
  await agent.waitFor('demoted', async () => (await text(agent, '/is-leader')) === 'false', 10_000, 20)
  await agent.waitFor('standby state', async () => (await routes()).join() === STANDBY_ROUTES.join() && !(await shanghaiSa()), 10_000, 20)
  t.same(await nextHops(), new Set([INTERNAL]), 'demoted: back to routing via the connector address')
  t.same((await conns(conn)).loaded, ['beijing.far', 'shanghai.connector'], 'demoted: connections stay loaded')
  t.match(await text(agent, '/metrics'), /^fabtunnel_leader 0$/m)

  // IPv6 VIP (keepalived adds it without DAD); and a standby without --connector-address has no route at all.
  await agent.stop()
  vip = VIP6
  viaConnector = false
  await conn.ns.run(['ip', '-6', 'addr', 'add', `${VIP6}/128`, 'dev', ul, 'nodad'])
  await agent.start()
  await agent.waitFor('leader with the IPv6 VIP present at start', async () => (await text(agent, '/is-leader').catch(() => '')) === 'true', 30_000)
  await agent.waitFor('leader routes', async () => (await routes()).length === 3, 10_000, 20)
  await conn.ns.run(['ip', '-6', 'addr', 'del', `${VIP6}/128`, 'dev', ul])
  await agent.waitFor('IPv6 VIP removed: standby', async () => (await text(agent, '/is-leader')) === 'false', 10_000, 20)
  await agent.waitFor('no route at all', async () => (await routes()).length === 0, 10_000, 20)
  t.same(await members('FABEDGE-REMOTE-POD-CIDR'), [], 'standby without --connector-address: steering set empty, no table-220 route')
})

t.test('SIGTERM on the leader: healthz draining, edge IKE_SA deleted, re-initiation to the VIP dropped, conns kept', { skip: needsRoot, timeout: 180_000 }, async (t) => {
  const topo = await Topology.create({ spec: starTopology(1) })
  const VIP = '10.77.1.250'
  const driver = await defaultDriver({ logLevel: 'debug', extraArgs: (g) => (g.plan.role === 'connector' ? ['--leader-election', 'vip', '--vip', VIP] : []) })
  t.teardown(async () => {
    await driver.stopAll()
    await topo.destroy()
  })
  const conn = topo.gateway('beijing.connector')
  const edgeGw = topo.gateway('beijing.edge1')
  await conn.ns.run(['ip', 'addr', 'add', `${VIP}/32`, 'dev', await underlayIf(conn)])
  // The edge dials the VIP, as with keepalived in front of two connectors.
  const c = topo.plan.clusters[0]!
  await topo.writeConfig(edgeGw.name, renderTunnelsYaml({ local: edgeEndpoint(edgeGw.plan), peers: [{ ...connectorEndpoint(c), publicAddresses: [VIP] }], mediator: null }))
  const ca = driver.agent(conn)
  const ea = driver.agent(edgeGw)
  await ca.start()
  await ca.waitFor('connector leads', async () => (await text(ca, '/is-leader')) === 'true', 30_000)
  await ea.start()
  const up = await ea.waitFor('edge tunnel up', async () => (await saSnapshot(edgeGw)).ike['beijing.connector'], 30_000)
  const vici = new Vici({ uri: edgeGw.charon.uri, reconnect: false, timeoutMs: 5_000 })
  await vici.connect()
  t.teardown(() => vici.close())
  const sa = (await vici.listSas()).find((s) => s.name === 'beijing.connector')!
  t.equal(sa.remoteHost, VIP, 'the edge IKE_SA is to the VIP')

  const drops = async () => {
    const out = await conn.ns.run(['iptables', '-w', '-L', 'FABEDGE-INPUT', '-v', '-n', '-x'])
    return out.split('\n').filter((l) => /\bDROP\b/.test(l)).reduce((n, l) => n + Number(l.trim().split(/\s+/)[0]), 0)
  }
  t.equal(await drops(), 0, 'no drain rule while running')

  // The drain as keepalived sees it: /healthz 503 from the moment SIGTERM arrives.
  const pid = ca.pid!
  const t0 = Date.now()
  process.kill(pid, 'SIGTERM')
  const health = await conn.ns.capture(['curl', '-s', '-m', '1', '-w', '%{http_code}', `http://${conn.listen}/healthz`], { timeoutMs: 3_000 })
  // Either answer fails keepalived's check: 503 "draining" while the agent drains, or, once it has closed its
  // endpoints (a stop can take ~100 ms, about what starting curl in the namespace takes), a refused connection
  // (curl's exit 7, status "000"). Not accepted: a connection taken and never answered (curl 52, 56 or 28).
  t.ok(/^draining\n503$/.test(health.stdout) || (health.code === 7 && health.stdout === '000'), `healthz during the stop: ${JSON.stringify(health.stdout)}, curl exit ${health.code} (503 draining, or refused: already closed)`)
  await ca.waitFor('exited', async () => {
    try {
      process.kill(pid, 0)
      return false
    } catch {
      return true
    }
  }, 10_000, 20).catch(() => undefined)
  const stopMs = Date.now() - t0
  t.ok(stopMs < 5_000, `the agent exited within the 5 s stop deadline (${stopMs} ms)`)

  // The edge learned at once (DELETE), far sooner than DPD (10 s) plus retransmissions would tell it.
  const gone = await ea.waitFor('edge IKE_SA deleted', async () => {
    const now = await saSnapshot(edgeGw)
    return now.ike['beijing.connector'] !== up ? Date.now() - t0 : null
  }, 8_000, 20)
  t.ok(gone < 8_000, `edge's IKE_SA ${up} deleted ${gone} ms after SIGTERM`)
  const edgeLog = await ea.logTail(400)
  t.match(edgeLog, /ike-updown down/, 'the edge agent saw the IKE_SA go down')

  // Its re-initiation to the VIP (still here: no keepalived in this test) is dropped, not answered by the dying node.
  await ea.waitFor('IKE_SA_INIT dropped', async () => (await drops()) > 0, 15_000, 100)
  t.ok((await drops()) > 0, 'the drain rules dropped the edge IKE_SA_INIT')
  await new Promise((r) => setTimeout(r, 3000))
  t.equal((await saSnapshot(edgeGw)).ike['beijing.connector'], undefined, 'no tunnel with the dying node while it drains')
  const after = await conns(conn)
  t.ok(after.loaded.includes('beijing.edge1'), 'connections stay loaded on the stopped connector (no teardown)')

  // A restarted agent (the VIP came back to it) removes the drain rules: the edge's retransmission is answered.
  await ca.start()
  await ca.waitFor('leader again', async () => (await text(ca, '/is-leader').catch(() => '')) === 'true', 30_000)
  await ea.waitFor('edge back up', async () => (await saSnapshot(edgeGw)).ike['beijing.connector'], 40_000, 200)
  const rules = await conn.ns.run(['iptables', '-w', '-S', 'FABEDGE-INPUT'])
  t.notMatch(rules, /DROP/, 'drain rules removed by the first pass')

  // Control: without the drain (SIGKILL), the edge keeps its IKE_SA: the deletion above was our DELETE.
  const again = (await saSnapshot(edgeGw)).ike['beijing.connector']
  await ca.kill('SIGKILL')
  await new Promise((r) => setTimeout(r, 2500))
  t.equal((await saSnapshot(edgeGw)).ike['beijing.connector'], again, 'after SIGKILL the edge IKE_SA is still there (it would wait for DPD)')
})
