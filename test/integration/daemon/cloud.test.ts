// The cloud role end to end, as root, in namespaces: a connector and edges with real charon (kernel-libipsec),
// and a cloud node on the connector's LAN whose only way to the edges is `fabtunnel run --role cloud
// --connector-address <connector LAN IP>` reading the connector's tunnels.yaml (Topology option cloudAgents: no
// static route on the cloud node). `ip`, `iptables-save`, `ipset` and ping are the oracles.
import t from 'tap'
import type { TopologySpec } from '../../harness/addressing.js'
import { defaultDriver, fabtunnel, startAgents, type AgentHandle } from '../../harness/agents.js'
import { ping } from '../../harness/matrix.js'
import { needsRoot } from '../../harness/netns.js'
import { Topology } from '../../harness/topology.js'

const SPEC: TopologySpec = {
  clusters: [{
    name: 'beijing',
    nodes: [
      { name: 'connector', role: 'connector' },
      { name: 'cloud1', role: 'cloud' },
      { name: 'edge1', role: 'edge' },
      { name: 'edge2', role: 'edge' },
    ],
  }],
  edgeMesh: 'none',
}
const CONN = 'beijing.connector'
const CLOUD = 'beijing.cloud1'
const E1 = 'beijing.edge1'
const E2 = 'beijing.edge2'

interface Route220 { dst: string; via: string | null; proto: string | null }

/** `ip route show table 220` of a namespace, one entry per route. */
function routes220(text: string): Route220[] {
  return text.trim().split('\n').filter(Boolean).map((l) => ({
    dst: l.split(' ')[0]!,
    via: /\bvia (\S+)/.exec(l)?.[1] ?? null,
    proto: /\bproto (\S+)/.exec(l)?.[1] ?? null,
  }))
}

t.test('cloud node: routes through the connector from the connector\'s config, only with the agent', { skip: needsRoot, timeout: 300_000 }, async (t) => {
  const topo = await Topology.create({ spec: SPEC, inactiveEdges: [E2], cloudAgents: true })
  const driver = await defaultDriver({ logLevel: 'debug' })
  t.teardown(async () => {
    await driver.stopAll()
    await topo.destroy()
  })
  const conn = topo.gateway(CONN)
  const cloud = topo.cloudNode(CLOUD)
  const ca = driver.agent(conn)
  const cloudAgent: AgentHandle = driver.agent(cloud)
  const cloudPod = topo.podOf(CLOUD)
  const e1 = topo.gateway(E1)
  const e1Pod = topo.podOf(E1)
  const e2 = topo.gateway(E2)
  const e2Pod = topo.podOf(E2)
  const lanIp = conn.plan.lanCidr!.split('/')[0]!
  const table220 = async (): Promise<Route220[]> => {
    const r = await cloud.ns.capture(['ip', 'route', 'show', 'table', '220'])
    // A table that never held a route does not exist yet: empty, like one whose routes were all deleted.
    if (r.code !== 0 && /FIB table does not exist/.test(r.stderr)) return []
    if (r.code !== 0) throw new Error(`ip route show table 220: ${r.stderr}`)
    return routes220(r.stdout)
  }
  const readyz = async (): Promise<number> => (await cloudAgent.get('/readyz')).status

  await startAgents(topo, driver)
  await ca.waitFor('connector sees edge1 up', async () => (await ca.status()).peers.some((p: any) => p.name === E1 && p.state === 'up'), 30_000)

  await t.test('without the cloud agent, the cloud pod reaches the connector but no edge', async (t) => {
    t.ok(await ping(cloudPod.ns, lanIp), 'control: cloud pod -> connector LAN address works (the LAN is up)')
    t.ok(await ping(e1Pod.ns, conn.plan.nodeIp), 'control: the edge1 tunnel carries traffic')
    t.notOk(await ping(cloudPod.ns, e1Pod.ip, 1_500), 'cloud pod -> edge1 pod fails')
    t.notOk(await ping(e1Pod.ns, cloudPod.ip, 1_500), 'edge1 pod -> cloud pod fails (no way back)')
    t.same(await table220(), [], 'table 220 of the cloud node is empty')
  })

  await cloudAgent.start()
  await cloudAgent.waitFor('cloud agent ready', async () => (await readyz()) === 200, 30_000)

  await t.test('with it: routes in table 220 proto 220 via the connector, FabEdge\'s chains and set, traffic flows', async (t) => {
    const routes = await table220()
    t.same(routes.map((r) => r.dst).sort(), [e1.plan.nodeIp, e1.plan.podCidr].sort(), 'edge1\'s pod CIDR and node IP; nothing of the local cluster')
    t.ok(routes.length > 0 && routes.every((r) => r.via === lanIp && r.proto === '220'), 'every route via the connector LAN address, proto 220')
    t.notOk(routes.some((r) => r.dst === cloudPod.node.podCidr), 'the cloud node\'s own pod CIDR (in the connector\'s subnets) is never routed away')
    t.match(await cloud.ns.run(['ip', 'rule', 'show']), /^220:\s+from all lookup 220/m)
    t.ok(await ping(cloudPod.ns, e1Pod.ip), 'cloud pod -> edge1 pod')
    t.ok(await ping(e1Pod.ns, cloudPod.ip), 'edge1 pod -> cloud pod')
    t.ok(await ping(cloudPod.ns, e1.plan.nodeIp), 'cloud pod -> edge1 node IP (nodeSubnets routed too)')
    const filter = await cloud.ns.run(['iptables-save', '-t', 'filter'])
    t.match(filter, /-A FORWARD -j FABEDGE-FORWARD/)
    t.match(filter, /-A FABEDGE-FORWARD -m set --match-set FABEDGE-REMOTE-POD-CIDR src -j ACCEPT/)
    t.notMatch(filter, /FABEDGE-INPUT/, 'no INPUT chain: no IPsec ends here')
    const nat = await cloud.ns.run(['iptables-save', '-t', 'nat'])
    t.match(nat, /-A POSTROUTING -j FABEDGE-POSTROUTING/)
    t.match(nat, /-A FABEDGE-POSTROUTING -m set --match-set FABEDGE-REMOTE-POD-CIDR dst -j ACCEPT\n-A FABEDGE-POSTROUTING -m set --match-set FABEDGE-REMOTE-POD-CIDR src -j ACCEPT/)
    t.notMatch(nat, /KUBE-POSTROUTING/, 'no kube-proxy here: its masquerade rule is left out')
    const set = await cloud.ns.run(['ipset', 'list', 'FABEDGE-REMOTE-POD-CIDR'])
    t.match(set, new RegExp(`^${e1.plan.podCidr.replace(/\./g, '\\.')}$`, 'm'))
    t.match(set, new RegExp(`^${e1.plan.nodeIp.replace(/\./g, '\\.')}$`, 'm'), 'node IPs are NAT-exempt too')
    const s = await cloudAgent.status()
    t.equal(s.role, 'cloud')
    t.same(s.connectorAddress, { 4: lanIp })
    t.same(s.peers, [])
    t.notOk('tunnels' in s)
    t.same(Object.keys(s.lastPass.writes ?? {}).filter((k) => k === 'tunnels'), [], 'no tunnels subsystem ran')
    const text = await driver.statusText(cloud)
    t.match(text, new RegExp(`^cloud node of ${CONN.replace('.', '\\.')} \\(Connector\\)  ready=yes  via connector ${lanIp.replace(/\./g, '\\.')}  routes=2`))
  })

  await t.test('kube-proxy\'s KUBE-POSTROUTING appearing: FabEdge\'s masquerade hand-off is added on the next full pass', async (t) => {
    await cloud.ns.run(['iptables', '-t', 'nat', '-N', 'KUBE-POSTROUTING'])
    cloudAgent.signal('SIGHUP')
    await cloudAgent.waitFor('KUBE-POSTROUTING rule', async () => /-A FABEDGE-POSTROUTING -m mark --mark 0x4000\/0x4000 -j KUBE-POSTROUTING\n-A FABEDGE-POSTROUTING -m set/.test(await cloud.ns.run(['iptables-save', '-t', 'nat'])))
    t.pass('first in FABEDGE-POSTROUTING, as FabEdge\'s cloud-agent writes it')
  })

  await t.test('a peer added to the connector\'s config is routed at once, without a restart', async (t) => {
    const pid = cloudAgent.pid
    const gen = (await cloudAgent.status()).config.generation
    await topo.addEdge(E2)
    await cloudAgent.waitFor('edge2 routes', async () => {
      const dsts = (await table220()).map((r) => r.dst)
      return dsts.includes(e2.plan.podCidr) && dsts.includes(e2.plan.nodeIp)
    }, 20_000)
    t.equal(cloudAgent.pid, pid, 'same process')
    t.ok((await cloudAgent.status()).config.generation > gen, 'a new config generation (the directory watch)')
    await driver.agent(e2).start()
    await ca.waitFor('connector sees edge2 up', async () => (await ca.status()).peers.some((p: any) => p.name === E2 && p.state === 'up'), 30_000)
    t.ok(await ping(cloudPod.ns, e2Pod.ip, 10_000), 'cloud pod -> edge2 pod')
    t.match(await cloud.ns.run(['ipset', 'list', 'FABEDGE-REMOTE-POD-CIDR']), new RegExp(`^${e2.plan.podCidr.replace(/\./g, '\\.')}$`, 'm'))
  })

  await t.test('the routes follow a new --connector-address (restart)', async (t) => {
    const vip = lanIp.replace(/\.\d+$/, '.200')
    await conn.ns.run(['ip', 'addr', 'add', `${vip}/24`, 'dev', 'lanbr'])
    cloud.connectorAddress = vip
    await cloudAgent.restart()
    await cloudAgent.waitFor('routes via the new address', async () => {
      const r = await table220()
      return r.length === 4 && r.every((x) => x.via === vip && x.proto === '220')
    }, 20_000)
    await cloudAgent.waitFor('ready', async () => (await readyz()) === 200)
    t.ok(await ping(cloudPod.ns, e1Pod.ip), 'cloud pod -> edge1 pod through the new address')
    t.same((await cloudAgent.status()).connectorAddress, { 4: vip })
  })

  await t.test('an address not on the LAN: a typed error, not ready, the last routes keep serving', async (t) => {
    cloud.connectorAddress = '10.66.0.1'
    await cloudAgent.restart()
    const s = await cloudAgent.waitFor('routes failing', async () => {
      const st = await cloudAgent.status()
      return st.failing.includes('routes') ? st : null
    }, 20_000)
    t.match(s.lastPass.errors.routes, /IPv4 --connector-address 10\.66\.0\.1 is not reachable on-link \(\w+.*\): 4 route\(s\) in table 220 not programmed/)
    t.equal(await readyz(), 503, 'not ready')
    t.ok(s.failing.every((f: string) => f === 'routes'), 'ipsets and iptables converged all the same')
    t.ok((await table220()).every((r) => r.via !== '10.66.0.1'), 'nothing written via the bad address')
    t.ok(await ping(cloudPod.ns, e1Pod.ip), 'the routes already there still carry traffic')
    cloud.connectorAddress = lanIp
    await cloudAgent.restart()
    await cloudAgent.waitFor('ready again', async () => (await readyz()) === 200, 20_000)
    t.ok((await table220()).every((r) => r.via === lanIp))
  })

  await t.test('cleanup --role cloud removes it all (no charon needed) and the edges are unreachable again', async (t) => {
    await cloudAgent.stop()
    t.ok(await ping(cloudPod.ns, e1Pod.ip), 'stopping the agent leaves the data plane up')
    const r = await fabtunnel(cloud, ['cleanup', '--role', 'cloud', '--config', cloud.configPath, '--log-level', 'silent'])
    t.equal(r.code, 0, r.stderr)
    t.notMatch(r.stdout, /connections unloaded/, 'no charon steps on a cloud node')
    t.match(r.stdout, /routes deleted \(table 220, proto 220\): 4/)
    t.same(await table220(), [])
    t.notMatch(await cloud.ns.run(['iptables-save']), /FABEDGE/)
    t.notMatch(await cloud.ns.run(['ipset', 'list', '-n']), /FABEDGE/)
    t.notOk(await ping(cloudPod.ns, e1Pod.ip, 1_500), 'cloud pod -> edge1 pod fails again')
    t.ok(await ping(cloudPod.ns, lanIp), 'control: the LAN still works')
    t.match(await cloud.ns.run(['iptables-save', '-t', 'nat']), /:KUBE-POSTROUTING/, 'kube-proxy\'s chain is not ours: left alone')
  })
})
