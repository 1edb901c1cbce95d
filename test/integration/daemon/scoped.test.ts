// O(change) passes against the real kernel and the real charon (issue 13): a connector with 150 edge peers, xfrm
// datapath. Adding, changing and removing one peer through a kubelet-style `..data` swap runs a scoped pass
// (PassScope) whose writes are exactly that peer's route, set members and connection, and the kernel and charon
// then hold them (or no longer do); a deep pass (SIGHUP) afterwards lists everything again and writes nothing.
import t from 'tap'
import { defaultDriver } from '../../harness/agents.js'
import { connectorEndpoint, renderTunnelsYaml, starTopology, type EndpointView } from '../../harness/addressing.js'
import { needsRoot } from '../../harness/netns.js'
import { Topology } from '../../harness/topology.js'

const edge = (i: number, sub = 0): EndpointView & { type: 'EdgeNode' } => ({
  id: `C=CN, O=fabedge.io, CN=beijing.far${i}`,
  name: `beijing.far${i}`,
  publicAddresses: [],
  subnets: [`10.${60 + (i >> 8)}.${i & 255}.${sub}/28`],
  nodeSubnets: [`10.${70 + (i >> 8)}.${i & 255}.1/32`],
  type: 'EdgeNode',
})

t.test('one-peer changes are scoped passes that write exactly that peer; a deep pass then writes nothing', { skip: needsRoot, timeout: 180_000 }, async (t) => {
  const topo = await Topology.create({ spec: starTopology(0) })
  const driver = await defaultDriver({ datapath: 'xfrm' })
  t.teardown(async () => {
    await driver.stopAll()
    await topo.destroy()
  })
  const conn = topo.gateway('beijing.connector')
  const agent = driver.agent(conn)
  await conn.ns.run(['ip', 'route', 'add', 'default', 'via', '10.77.0.1'])
  let peers = Array.from({ length: 150 }, (_, i) => edge(i))
  const write = () => topo.writeConfig(conn.name, renderTunnelsYaml({ local: connectorEndpoint(topo.plan.clusters[0]!), peers, mediator: null }))
  const route = async (dst: string) => (await conn.ns.run(['ip', 'route', 'show', 'table', '220', 'proto', '220', dst])).trim()
  const member = async (set: string, m: string) => (await conn.ns.capture(['ipset', 'test', set, m])).code === 0
  const loaded = async (name: string) => (await conn.ns.run(['swanctl', '--list-conns', '--uri', conn.charon.uri])).includes(`${name}:`)
  const lastPass = async () => ((await agent.status()) as { lastPass: { reasons: string[]; writes: Record<string, number>; scope?: { conns: number; dsts: number; members: number } } }).lastPass
  await write()
  await agent.start()
  await agent.waitFor('150 routes', async () => (await conn.ns.run(['ip', 'route', 'show', 'table', '220', 'proto', '220'])).trim().split('\n').length === 150, 60_000)
  await driver.waitReady(conn, 30_000)

  // Each pass's reasons and scope from the agent's log, for the messages: which reason made a pass plan everything.
  const passes = async () => (await agent.logTail(400)).split('\n').filter((l) => l.includes('"msg":"pass done"') || l.includes('"msg":"config accepted"'))
    .map((l) => {
      const r = JSON.parse(l) as { msg: string; reasons: string[]; scope?: unknown; parsed?: unknown; desiredFull?: string }
      return r.msg === 'config accepted' ? `config accepted (parsed ${JSON.stringify(r.parsed)})` : `${r.reasons.join('+')}${r.scope ? ` ${JSON.stringify(r.scope)}` : ` (full${r.desiredFull ? `: desired state built in full, ${r.desiredFull}` : ''})`}`
    }).join('; ')
  const plans = async () => ((await agent.status()) as { tunnels: { plans: { full: number; scoped: number } } }).tunnels.plans
  const before = await plans()
  // Added: one peer in the middle of the file.
  peers.splice(75, 0, edge(200))
  await write()
  await agent.waitFor('the added peer in charon, table 220 and the sets', async () => (await route('10.60.200.0/28')) !== '' && await member('FABEDGE-REMOTE-POD-CIDR', '10.60.200.0/28') && await member('FABEDGE-REMOTE-NODE-CIDR', '10.70.200.1') && await loaded('beijing.far200'), 20_000)
  await driver.waitReady(conn, 10_000)
  let p = await lastPass()
  t.same(p.scope, { conns: 1, dsts: 1, members: 2 }, `the last pass (the verification) was scoped to the one peer (passes: ${await passes()})`)
  const after = await plans()
  t.ok(after.scoped >= before.scoped + 2 && after.full === before.full, `the tunnels subsystem planned the scope alone (plans before ${JSON.stringify(before)}, after ${JSON.stringify(after)}; passes: ${await passes()})`)
  // A failed read of the default route (two dumps at once on one netlink socket: EBUSY) made one pass see no
  // gateway and the next see it again, each rebuilding the desired state in full.
  t.notMatch(await passes(), /built in full, context/, 'the default gateway read the same in every pass')

  // Changed subnet, and one removed.
  peers[10] = edge(10, 16)
  peers = peers.filter((e) => e.name !== 'beijing.far20')
  await write()
  await agent.waitFor('changed and removed peers applied', async () => (await route('10.60.10.16/28')) !== '' && (await route('10.60.10.0/28')) === '' && (await route('10.60.20.0/28')) === '' && !await member('FABEDGE-REMOTE-POD-CIDR', '10.60.20.0/28') && !await loaded('beijing.far20'), 20_000)
  await driver.waitReady(conn, 10_000)
  p = await lastPass()
  t.ok(p.scope && p.scope.conns === 2, `scoped to the two peers: ${JSON.stringify(p.scope)}`)
  t.ok(await loaded('beijing.far10') && await loaded('beijing.far150') === false, 'the changed peer stays loaded')

  // The positive case of the negative: the deep pass really lists and compares everything.
  const countersBefore = (await agent.status()) as { counters: { passes: number; writes: number } }
  agent.signal('SIGHUP')
  await agent.waitFor('the SIGHUP pass', async () => ((await lastPass()).reasons ?? []).includes('sighup'), 15_000)
  p = await lastPass()
  t.equal(p.scope, undefined, 'the deep pass is not scoped')
  t.same(p.writes, {}, 'and writes nothing: the scoped passes left the node exactly as desired')
  const countersAfter = (await agent.status()) as { counters: { passes: number; writes: number } }
  t.equal(countersAfter.counters.writes, countersBefore.counters.writes)
  t.equal((await conn.ns.run(['ip', 'route', 'show', 'table', '220', 'proto', '220'])).trim().split('\n').length, 150, '150 routes: 151 peers less the removed one, none stale')
})
