// The agent end to end, as root, with real charon (kernel-libipsec) in namespaces: a connector and two edge
// nodes (starTopology(2)), each running `fabtunnel run` from its kubelet-style ConfigMap directory.
import t from 'tap'
import { Vici } from '../../../src/vici/index.js'
import { defaultDriver, fabtunnel, type AgentHandle } from '../../harness/agents.js'
import { starTopology } from '../../harness/addressing.js'
import { ping } from '../../harness/matrix.js'
import { needsRoot } from '../../harness/netns.js'
import { Topology, type Gateway } from '../../harness/topology.js'

async function saIds(g: Gateway): Promise<string[]> {
  const v = new Vici({ uri: g.charon.uri, reconnect: false })
  try {
    const sas = await v.listSas()
    return sas.flatMap((s) => [`${s.name}#${s.uniqueid}`, ...s.children.map((c) => `${c.name}#${c.uniqueid}`)]).sort()
  } finally {
    await v.close()
  }
}

/** Exactly `count` peers (of `names`, when given) and every one of them up: never true of an empty list. */
function allUp(s: any, count: number, names?: string[]): boolean {
  const peers = (s.peers as any[]).filter((p) => !names || names.includes(p.name))
  return peers.length === count && peers.every((p) => p.state === 'up')
}

const CONN = 'beijing.connector'
const E1 = 'beijing.edge1'
const E2 = 'beijing.edge2'
const re = (s: string): RegExp => new RegExp(s.replace(/\./g, '\\.'))

t.test('connector + 2 edges driven by fabtunnel run', { skip: needsRoot, timeout: 240_000 }, async (t) => {
  const topo = await Topology.create({ spec: starTopology(2) })
  const driver = await defaultDriver({ logLevel: 'debug' })
  t.teardown(async () => {
    await driver.stopAll()
    await topo.destroy()
  })
  const conn = topo.gateway(CONN)
  const e1 = topo.gateway(E1)
  const e2 = topo.gateway(E2)
  const [ca, a1, a2] = [conn, e1, e2].map((g) => driver.agent(g)) as [AgentHandle, AgentHandle, AgentHandle]
  const connPod = topo.podOf(CONN)
  const e1Pod = topo.podOf(E1)
  const e2Pod = topo.podOf(E2)

  // The pings below prove the tunnels only if the pods cannot reach each other without them.
  t.notOk(await ping(e1Pod.ns, connPod.ip, 1_000), 'before any agent runs, edge1 pod cannot reach the connector pod')

  const t0 = Date.now()
  for (const a of [ca, a1, a2]) await a.start()

  await t.test('tunnels come up from config alone and carry traffic', async (t) => {
    await ca.waitFor('connector sees both edges up', async () => allUp(await ca.status(), 2), 30_000)
    t.pass(`all tunnels up ${Date.now() - t0} ms after the agents started`)
    for (const a of [a1, a2]) {
      const s = await a.status()
      t.ok(allUp(s, 1), `${a.g.name}: connector tunnel up`)
      t.match(s.peers[0], { name: CONN, initiator: true, childrenUp: 3, childrenDesired: 3 })
    }
    t.ok(await ping(e1Pod.ns, connPod.ip), 'edge1 pod -> connector pod (p2p)')
    t.ok(await ping(connPod.ns, e2Pod.ip), 'connector pod -> edge2 pod (p2p)')
    t.ok(await ping(e1Pod.ns, conn.plan.nodeIp), 'edge1 pod -> connector node IP (p2n)')
    const ready = await ca.get('/readyz')
    t.equal(ready.status, 200)
    t.equal((await ca.get('/is-leader')).body, 'true')
    const metrics = (await ca.get('/metrics')).body
    t.match(metrics, /fabtunnel_peers\{state="up"\} 2/)
    t.match(metrics, /fabtunnel_passes_total\{result="converged"\} \d+/)
    const ipt = await conn.ns.run(['iptables-save', '-t', 'nat'])
    t.match(ipt, /-A POSTROUTING -j FABEDGE-POSTROUTING/)
    t.match(await conn.ns.run(['ipset', 'list', 'FABEDGE-REMOTE-POD-CIDR']), re(e1.plan.podCidr))
  })

  await t.test('`fabtunnel plan` against the converged live node finds nothing to do', async (t) => {
    const r = await fabtunnel(e1, ['plan', '--json', '--config', e1.configPath, '--vici', e1.charon.uri, '--cert', e1.cert.certPath,
      '--datapath', 'libipsec', '--log-level', 'silent'])
    t.equal(r.code, 0, r.stderr)
    const plan = JSON.parse(r.stdout)
    t.same(Object.keys(plan), ['ipsets', 'iptables', 'routes', 'tunnels'])
    for (const [name, p] of Object.entries<any>(plan)) t.same(p, { writes: 0, ops: [] }, `${name}: converged`)
    const bad = await fabtunnel(e1, ['plan', '--config', e1.configPath, '--vici', 'unix:///nonexistent/charon.vici', '--datapath', 'libipsec', '--log-level', 'silent'])
    t.equal(bad.code, 1, 'a dead charon is an error, not a crash')
    t.match(bad.stdout, /tunnels: ERROR .*nonexistent/)
  })

  await t.test('restarting an agent with unchanged config flaps nothing and writes nothing', async (t) => {
    const before = await saIds(e1)
    t.ok(before.length > 0, 'edge1 has SAs to keep')
    await a1.restart()
    const s = await a1.waitFor('restarted edge1 ready', async () => {
      const st = await a1.status()
      return st.ready && st.counters.passes >= 1 && allUp(st, 1) && st
    }, 20_000)
    t.equal(s.counters.writes, 0, 'zero writes: no load-conn, no initiate, no ipset/iptables/route write')
    t.same(s.tunnels.counters, { loads: 0, unloads: 0, initiates: 0, terminates: 0, credentialLoads: 0, reconnects: 0 })
    t.equal(s.iptables.counters.restores, 0, 'no iptables-restore')
    t.same(await saIds(e1), before, 'the same IKE and CHILD SA unique ids before and after')
  })

  await t.test('a peer removed from and added back to the config, without touching the other', async (t) => {
    const e1Before = await saIds(e1)
    t.ok(e1Before.length > 0, 'edge1 has SAs to keep')
    await topo.removeEdge(E2)
    await ca.waitFor('edge2 gone from the connector', async () => {
      const s = await ca.status()
      const ids = await saIds(conn)
      // edge1's SAs still listed, so "no edge2 SA" is not true of an empty list
      return s.peers.length === 1 && s.config.generation === 2 && ids.some((id) => id.startsWith(`${E1}#`)) && ids.every((id) => !id.startsWith(`${E2}#`))
    }, 15_000)
    const ipset = await conn.ns.run(['ipset', 'list', 'FABEDGE-REMOTE-POD-CIDR'])
    t.match(ipset, re(e1.plan.podCidr), 'edge1 pod CIDR still in the set')
    t.notMatch(ipset, re(e2.plan.podCidr), 'edge2 pod CIDR left the set')
    t.same(await saIds(e1), e1Before, 'edge1 untouched')
    const added = Date.now()
    await topo.addEdge(E2)
    await ca.waitFor('edge2 back', async () => allUp(await ca.status(), 2, [E1, E2]), 20_000)
    t.pass(`edge2 tunnel back ${Date.now() - added} ms after the ..data swap (edge2 re-initiates with backoff)`)
    t.ok(await ping(connPod.ns, e2Pod.ip), 'traffic flows again')
    t.same(await saIds(e1), e1Before, 'edge1 still untouched')
  })

  await t.test('charon killed and restarted: the agent reconnects, reloads and the tunnel comes back', async (t) => {
    await e1.charon.restart()
    const s = await a1.waitFor('edge1 tunnel back after charon restart', async () => {
      const st = await a1.status()
      // /status can still show the old SAs up right after the reconnect: wait until the new charon has SAs too.
      return allUp(st, 1) && st.tunnels.counters.reconnects >= 1 && (await saIds(e1)).length > 0 && st
    }, 30_000)
    t.ok(s.tunnels.counters.credentialLoads >= 1, 'credentials loaded again into the new charon')
    t.ok(s.tunnels.counters.loads >= 1, 'connections loaded again')
    t.ok(await ping(e1Pod.ns, connPod.ip))
  })

  await t.test('hand-made damage is repaired: rule 220 at once, ipset member and iptables jump on SIGHUP', async (t) => {
    await conn.ns.run(['ip', 'rule', 'del', 'priority', '220'])
    const r0 = Date.now()
    await ca.waitFor('rule 220 back', async () => /lookup 220/.test(await conn.ns.run(['ip', 'rule', 'show', 'priority', '220'])), 5000, 10)
    t.pass(`rule 220 re-added ${Date.now() - r0} ms after deletion (netlink event)`)
    await conn.ns.run(['ipset', 'del', 'FABEDGE-REMOTE-POD-CIDR', e1.plan.podCidr])
    await conn.ns.run(['iptables', '-t', 'nat', '-D', 'POSTROUTING', '-j', 'FABEDGE-POSTROUTING'])
    ca.signal('SIGHUP')
    await ca.waitFor('ipset member and jump back', async () => {
      const set = await conn.ns.run(['ipset', 'list', 'FABEDGE-REMOTE-POD-CIDR'])
      const nat = await conn.ns.run(['iptables-save', '-t', 'nat'])
      return set.includes(e1.plan.podCidr) && /-A POSTROUTING -j FABEDGE-POSTROUTING/.test(nat)
    }, 10_000)
    t.pass('repaired')
  })

  await t.test('invalid config: nothing changes, status shows the error, fixing it converges', async (t) => {
    const before = await saIds(e1)
    t.ok(before.length > 0, 'edge1 has SAs to keep')
    await topo.writeConfig(E1, 'id: x\nname: [broken\n')
    const s = await a1.waitFor('rejection visible', async () => {
      const st = await a1.status()
      return st.config.rejected && st
    }, 10_000)
    t.match(s.config.rejected.message, /YAML syntax/)
    t.ok(s.ready, 'still ready on the last good config')
    t.match((await a1.get('/metrics')).body, /fabtunnel_config_valid 0/)
    t.same(await saIds(e1), before, 'tunnels untouched')
    await topo.restoreConfig(E1)
    await a1.waitFor('accepted again', async () => (await a1.status()).config.rejected === null, 10_000)
    t.same(await saIds(e1), before, 'still untouched: same content as before')
  })

  await t.test('SIGTERM leaves the data plane up; cleanup removes exactly what is ours', async (t) => {
    const foreignChain = await conn.ns.run(['iptables', '-t', 'filter', '-N', 'OTHER-TOOL'])
    t.equal(foreignChain, '')
    t.ok((await saIds(conn)).length > 0, 'the connector has SAs for cleanup to remove')
    t.match(await conn.ns.run(['iptables-save', '-t', 'mangle']), /-A POSTROUTING -j FABEDGE-MSS\n/, 'the MSS clamp (--tcp-mss pmtu by default) for cleanup to remove')
    await ca.stop()
    t.ok(await ping(e1Pod.ns, connPod.ip), 'tunnel still carries traffic with the agent stopped')
    const r = await fabtunnel(conn, ['cleanup', '--json', '--vici', conn.charon.uri, '--log-level', 'silent'])
    t.equal(r.code, 0, r.stderr)
    const report = JSON.parse(r.stdout)
    t.same(report.conns.sort(), [E1, E2])
    t.same(report.errors, [])
    const save = await conn.ns.run(['iptables-save'])
    t.notMatch(save, /FABEDGE/, 'no FABEDGE chain or jump left')
    t.match(save, /:OTHER-TOOL/, 'a foreign chain survives')
    t.equal((await conn.ns.run(['ipset', 'list', '-n'])).trim(), '', 'no set left')
    t.same(await saIds(conn), [], 'no SA left')
    t.notMatch(await conn.ns.run(['ip', 'rule', 'show']), /proto 220/, 'the rule the agent added (tagged proto 220) is gone')
  })
})
