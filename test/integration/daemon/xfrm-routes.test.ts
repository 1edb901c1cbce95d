// The production datapath's route programming (kernel ESP: strongSwan with install_routes = no, the agent owns
// `<peer subnet> via <default gateway> table 220 proto 220`). Packets cannot flow here (no ESP in this kernel),
// but what the agent writes to the kernel can be checked exactly, with `ip` as the oracle.
import t from 'tap'
import { defaultDriver, fabtunnel } from '../../harness/agents.js'
import { connectorEndpoint, renderTunnelsYaml, starTopology, type EndpointView } from '../../harness/addressing.js'
import { needsRoot } from '../../harness/netns.js'
import { Topology } from '../../harness/topology.js'

const far = (subnets: string[][]): Array<EndpointView & { type: 'EdgeNode' }> => subnets.map((s, i) => ({
  id: `C=CN, O=fabedge.io, CN=beijing.far${i}`,
  name: `beijing.far${i}`,
  publicAddresses: [],
  subnets: s,
  nodeSubnets: [],
  type: 'EdgeNode',
}))

t.test('xfrm datapath: table-220 routes via the default gateway, repaired at once, foreign routes untouched', { skip: needsRoot, timeout: 120_000 }, async (t) => {
  const topo = await Topology.create({ spec: starTopology(0) })
  const driver = await defaultDriver({ datapath: 'xfrm', logLevel: 'debug' })
  t.teardown(async () => {
    await driver.stopAll()
    await topo.destroy()
  })
  const conn = topo.gateway('beijing.connector')
  const agent = driver.agent(conn)
  // An underlay address no node holds (nodes are 10.77.<cluster>.<k>, cluster >= 1).
  const gw = '10.77.0.1'
  await conn.ns.run(['ip', 'route', 'add', 'default', 'via', gw])
  await conn.ns.run(['ip', 'route', 'add', '10.200.0.0/16', 'via', gw, 'table', '220', 'proto', 'static'])
  const write = (subnets: string[][]) =>
    topo.writeConfig(conn.name, renderTunnelsYaml({ local: connectorEndpoint(topo.plan.clusters[0]!), peers: far(subnets), mediator: null }))
  const ours = async () => (await conn.ns.run(['ip', 'route', 'show', 'table', '220', 'proto', '220'])).trim().split('\n').filter(Boolean).sort()
  await write([['10.61.0.0/24', '10.62.0.0/24'], ['10.63.0.0/24']])
  await agent.start()
  await agent.waitFor('routes programmed', async () => (await ours()).length === 3, 20_000)
  for (const dst of ['10.61.0.0/24', '10.62.0.0/24', '10.63.0.0/24']) {
    t.match((await ours()).find((l) => l.startsWith(`${dst} `)), new RegExp(`^${dst.replace(/\./g, '\\.')} via ${gw.replace(/\./g, '\\.')} dev \\S+`), `${dst} via the default gateway`)
  }
  t.match(await conn.ns.run(['ip', 'rule', 'show', 'priority', '220']), /from all lookup 220/)

  await conn.ns.run(['ip', 'route', 'del', '10.62.0.0/24', 'table', '220'])
  const t0 = Date.now()
  await agent.waitFor('deleted route back', async () => (await ours()).some((l) => l.startsWith('10.62.0.0/24 ')), 5000, 10)
  t.pass(`a route deleted by hand is back after ${Date.now() - t0} ms (netlink event, no resync)`)

  await write([['10.61.0.0/24']])
  await agent.waitFor('removed peer routes gone', async () => (await ours()).length === 1, 10_000)
  t.match((await ours())[0], /^10\.61\.0\.0\/24 via /)
  t.match(await conn.ns.run(['ip', 'route', 'show', 'table', '220']), /10\.200\.0\.0\/16 via .* proto static/, 'a foreign route in table 220 survives every sync')
  const s = await agent.status()
  t.match(s.routes, { ownRoutes: 1, conflicts: 0 })

  await agent.stop()
  const r = await fabtunnel(conn, ['cleanup', '--json', '--vici', conn.charon.uri, '--log-level', 'silent'])
  t.equal(r.code, 0, r.stderr)
  t.same(JSON.parse(r.stdout).routes, ['10.61.0.0/24'])
  t.same(await ours(), [], 'cleanup removed our route')
  t.match(await conn.ns.run(['ip', 'route', 'show', 'table', '220']), /10\.200\.0\.0\/16/, 'and only ours')
})
