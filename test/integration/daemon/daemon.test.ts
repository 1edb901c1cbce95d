// The agent end to end, as root, with real charon (kernel-libipsec) in namespaces: a connector and two edge
// nodes, each running `fabtunnel run` from its kubelet-style ConfigMap directory.
import t from 'tap'
import { Vici } from '../../../src/vici/index.js'
import { needsRoot } from '../../harness/netns.js'
import { Cluster, type ClusterNode } from '../../harness/cluster.js'

async function saIds(node: ClusterNode): Promise<string[]> {
  const v = new Vici({ uri: node.charon.uri, reconnect: false })
  try {
    const sas = await v.listSas()
    return sas.flatMap((s) => [`${s.name}#${s.uniqueid}`, ...s.children.map((c) => `${c.name}#${c.uniqueid}`)]).sort()
  } finally {
    await v.close()
  }
}

function allUp(s: any, names?: string[]): boolean {
  const peers = (s.peers as any[]).filter((p) => !names || names.includes(p.name))
  return peers.length > 0 && peers.every((p) => p.state === 'up')
}

t.test('connector + 2 edges driven by fabtunnel run', { skip: needsRoot, timeout: 240_000 }, async (t) => {
  const c = await Cluster.create(2)
  t.teardown(() => c.destroy())
  const [conn, e1, e2] = c.nodes as [ClusterNode, ClusterNode, ClusterNode]
  const t0 = Date.now()
  for (const n of c.nodes) {
    await c.writeConfig(n, c.tunnelsYaml(n))
    n.agent.start()
  }

  await t.test('tunnels come up from config alone and carry traffic', async (t) => {
    await conn.agent.waitFor('connector sees both edges up', async () => allUp(await conn.agent.status()), 30_000)
    t.pass(`all tunnels up ${Date.now() - t0} ms after the agents started`)
    for (const e of [e1, e2]) {
      const s = await e.agent.status()
      t.ok(allUp(s), `${e.name}: connector tunnel up`)
      t.match(s.peers[0], { name: 'test.connector', initiator: true, childrenUp: 3, childrenDesired: 3 })
    }
    t.ok(await c.ping(e1.pod, conn.podIp), 'edge1 pod -> connector pod (p2p)')
    t.ok(await c.ping(conn.pod, e2.podIp), 'connector pod -> edge2 pod (p2p)')
    t.ok(await c.ping(e1.pod, conn.nodeIp), 'edge1 pod -> connector node IP (p2n)')
    const ready = await conn.agent.get('/readyz')
    t.equal(ready.status, 200)
    t.equal((await conn.agent.get('/is-leader')).body, 'true')
    const metrics = (await conn.agent.get('/metrics')).body
    t.match(metrics, /fabtunnel_peers\{state="up"\} 2/)
    t.match(metrics, /fabtunnel_passes_total\{result="converged"\} \d+/)
    const ipt = await conn.ns.run(['iptables-save', '-t', 'nat'])
    t.match(ipt, /-A POSTROUTING -j FABEDGE-POSTROUTING/)
    t.match(await conn.ns.run(['ipset', 'list', 'FABEDGE-REMOTE-POD-CIDR']), new RegExp(`${e1.podCidr.replace(/\./g, '\\.')}`))
  })

  await t.test('`fabtunnel plan` against the converged live node finds nothing to do', async (t) => {
    const { execCapture } = await import('../../harness/exec.js')
    const root = new URL('../../../', import.meta.url).pathname
    const o = e1.agent.opts
    const r = await execCapture(['ip', 'netns', 'exec', e1.ns.name, process.execPath, '--import', 'tsx', `${root}src/cli.ts`, 'plan', '--json',
      '--config', o.config, '--vici', o.vici, '--cert', o.cert, '--datapath', 'libipsec', '--log-level', 'silent'], { cwd: root, timeoutMs: 30_000 })
    t.equal(r.code, 0, r.stderr)
    const plan = JSON.parse(r.stdout)
    t.same(Object.keys(plan), ['ipsets', 'iptables', 'routes', 'tunnels'])
    for (const [name, p] of Object.entries<any>(plan)) t.same(p, { writes: 0, ops: [] }, `${name}: converged`)
    const bad = await execCapture(['ip', 'netns', 'exec', e1.ns.name, process.execPath, '--import', 'tsx', `${root}src/cli.ts`, 'plan',
      '--config', o.config, '--vici', 'unix:///nonexistent/charon.vici', '--datapath', 'libipsec', '--log-level', 'silent'], { cwd: root, timeoutMs: 30_000 })
    t.equal(bad.code, 1, 'a dead charon is an error, not a crash')
    t.match(bad.stdout, /tunnels: ERROR .*nonexistent/)
  })

  await t.test('restarting an agent with unchanged config flaps nothing and writes nothing', async (t) => {
    const before = await saIds(e1)
    await e1.agent.stop()
    e1.agent.start()
    const s = await e1.agent.waitFor('restarted edge1 ready', async () => {
      const st = await e1.agent.status()
      return st.ready && st.counters.passes >= 1 && allUp(st) && st
    }, 20_000)
    t.equal(s.counters.writes, 0, 'zero writes: no load-conn, no initiate, no ipset/iptables/route write')
    t.same(s.tunnels.counters, { loads: 0, unloads: 0, initiates: 0, terminates: 0, credentialLoads: 0, reconnects: 0 })
    t.equal(s.iptables.counters.restores, 0, 'no iptables-restore')
    t.same(await saIds(e1), before, 'the same IKE and CHILD SA unique ids before and after')
  })

  await t.test('a peer removed from and added back to the config, without touching the other', async (t) => {
    const e1Before = await saIds(e1)
    await c.writeConfig(conn, c.tunnelsYaml(conn, [e1]))
    await conn.agent.waitFor('edge2 gone from the connector', async () => {
      const s = await conn.agent.status()
      return s.peers.length === 1 && s.config.generation === 2 && (await saIds(conn)).every((id) => !id.startsWith('test.edge2'))
    }, 15_000)
    const ipset = await conn.ns.run(['ipset', 'list', 'FABEDGE-REMOTE-POD-CIDR'])
    t.notMatch(ipset, new RegExp(e2.podCidr.replace(/\./g, '\\.')), 'edge2 pod CIDR left the set')
    t.same(await saIds(e1), e1Before, 'edge1 untouched')
    const added = Date.now()
    await c.writeConfig(conn, c.tunnelsYaml(conn))
    await conn.agent.waitFor('edge2 back', async () => allUp(await conn.agent.status(), ['test.edge1', 'test.edge2']) && (await conn.agent.status()).peers.length === 2, 20_000)
    t.pass(`edge2 tunnel back ${Date.now() - added} ms after the ..data swap (edge2 re-initiates with backoff)`)
    t.ok(await c.ping(conn.pod, e2.podIp), 'traffic flows again')
    t.same(await saIds(e1), e1Before, 'edge1 still untouched')
  })

  await t.test('charon killed and restarted: the agent reconnects, reloads and the tunnel comes back', async (t) => {
    await e1.charon.restart()
    const s = await e1.agent.waitFor('edge1 tunnel back after charon restart', async () => {
      const st = await e1.agent.status()
      return allUp(st) && st.tunnels.counters.reconnects >= 1 && st
    }, 30_000)
    t.ok(s.tunnels.counters.credentialLoads >= 1, 'credentials loaded again into the new charon')
    t.ok(s.tunnels.counters.loads >= 1, 'connections loaded again')
    t.ok(await c.ping(e1.pod, conn.podIp))
  })

  await t.test('hand-made damage is repaired: rule 220 at once, ipset member and iptables jump on SIGHUP', async (t) => {
    await conn.ns.run(['ip', 'rule', 'del', 'priority', '220'])
    const r0 = Date.now()
    await conn.agent.waitFor('rule 220 back', async () => /lookup 220/.test(await conn.ns.run(['ip', 'rule', 'show', 'priority', '220'])), 5000, 10)
    t.pass(`rule 220 re-added ${Date.now() - r0} ms after deletion (netlink event)`)
    await conn.ns.run(['ipset', 'del', 'FABEDGE-REMOTE-POD-CIDR', e1.podCidr])
    await conn.ns.run(['iptables', '-t', 'nat', '-D', 'POSTROUTING', '-j', 'FABEDGE-POSTROUTING'])
    process.kill(conn.agent.pid!, 'SIGHUP')
    await conn.agent.waitFor('ipset member and jump back', async () => {
      const set = await conn.ns.run(['ipset', 'list', 'FABEDGE-REMOTE-POD-CIDR'])
      const nat = await conn.ns.run(['iptables-save', '-t', 'nat'])
      return set.includes(e1.podCidr) && /-A POSTROUTING -j FABEDGE-POSTROUTING/.test(nat)
    }, 10_000)
    t.pass('repaired')
  })

  await t.test('invalid config: nothing changes, status shows the error, fixing it converges', async (t) => {
    const before = await saIds(e1)
    await c.writeConfig(e1, 'id: x\nname: [broken\n')
    const s = await e1.agent.waitFor('rejection visible', async () => {
      const st = await e1.agent.status()
      return st.config.rejected && st
    }, 10_000)
    t.match(s.config.rejected.message, /YAML syntax/)
    t.ok(s.ready, 'still ready on the last good config')
    t.match((await e1.agent.get('/metrics')).body, /fabtunnel_config_valid 0/)
    t.same(await saIds(e1), before, 'tunnels untouched')
    await c.writeConfig(e1, c.tunnelsYaml(e1))
    await e1.agent.waitFor('accepted again', async () => (await e1.agent.status()).config.rejected === null, 10_000)
    t.same(await saIds(e1), before, 'still untouched: same content as before')
  })

  await t.test('SIGTERM leaves the data plane up; cleanup removes exactly what is ours', async (t) => {
    const foreignChain = await conn.ns.run(['iptables', '-t', 'filter', '-N', 'OTHER-TOOL'])
    t.equal(foreignChain, '')
    await conn.agent.stop()
    t.ok(await c.ping(e1.pod, conn.podIp), 'tunnel still carries traffic with the agent stopped')
    const { execCapture } = await import('../../harness/exec.js')
    const root = new URL('../../../', import.meta.url).pathname
    const r = await execCapture(['ip', 'netns', 'exec', conn.ns.name, process.execPath, '--import', 'tsx', `${root}src/cli.ts`, 'cleanup', '--json', '--vici', conn.charon.uri, '--log-level', 'silent'], { cwd: root, timeoutMs: 30_000 })
    t.equal(r.code, 0, r.stderr)
    const report = JSON.parse(r.stdout)
    t.same(report.conns.sort(), ['test.edge1', 'test.edge2'])
    t.same(report.errors, [])
    const save = await conn.ns.run(['iptables-save'])
    t.notMatch(save, /FABEDGE/, 'no FABEDGE chain or jump left')
    t.match(save, /:OTHER-TOOL/, 'a foreign chain survives')
    t.equal((await conn.ns.run(['ipset', 'list', '-n'])).trim(), '', 'no set left')
    t.same(await saIds(conn), [], 'no SA left')
    t.notMatch(await conn.ns.run(['ip', 'rule', 'show']), /proto 220/, 'the rule the agent added (tagged proto 220) is gone')
  })
})
