// The scaling benchmark's floor must build the same end state the agent builds, or the ratio means nothing: these
// tests derive the agent's desired state from the generated tunnels.yaml and compare it with the floor's inputs.
import t from 'tap'
import { parseConfig } from '../../../src/config/load.js'
import { desiredState } from '../../../src/desired/index.js'
import {
  CONNECTOR, connectorSets, connectorYaml, edgeYaml, firstPeers, ipsetRestore, MAX_PEER_INDEX, peerName, peerNodeIp, peerSubnet,
  routeBatch, swanctlConf,
} from '../../../scripts/bench/scale/gen.js'

const desired = (peers: Parameters<typeof connectorYaml>[0]) =>
  desiredState(parseConfig(connectorYaml(peers), 'tunnels.yaml').config, { datapath: 'xfrm', gateways: { 4: '172.19.0.254' } })

t.test('address plan: distinct names and subnets, alternates disjoint from primaries, bounded', async (t) => {
  t.equal(peerName(7), 'bench.e7')
  t.equal(peerSubnet(0), '10.100.0.0/24')
  t.equal(peerSubnet(257), '10.101.1.0/24')
  t.equal(peerSubnet(257, true), '10.165.1.0/24')
  t.equal(peerNodeIp(257), '172.20.1.1')
  const n = MAX_PEER_INDEX + 1
  const all = new Set<string>()
  for (let i = 0; i < n; i++) {
    all.add(peerSubnet(i))
    all.add(peerSubnet(i, true))
  }
  t.equal(all.size, 2 * n, 'every primary and alternate subnet is unique')
  t.throws(() => peerSubnet(MAX_PEER_INDEX + 1), RangeError)
  t.throws(() => peerName(-1), RangeError)
})

t.test('connector config: the agent parses it into N edge peers with the generated subnets', async (t) => {
  const peers = [...firstPeers(3), { index: 9, alt: true }]
  const { config } = parseConfig(connectorYaml(peers), 'tunnels.yaml')
  t.equal(config.local.name, CONNECTOR.name)
  t.equal(config.local.type, 'Connector')
  t.same(config.peers.map((p) => p.name), ['bench.e0', 'bench.e1', 'bench.e2', 'bench.e9'])
  t.same(config.peers.map((p) => p.subnets[0]), ['10.100.0.0/24', '10.100.1.0/24', '10.100.2.0/24', '10.164.9.0/24'])
  t.ok(config.peers.every((p) => p.type === 'EdgeNode'))
})

t.test('edge config: one peer, the connector at the given address', async (t) => {
  const { config } = parseConfig(edgeYaml('172.19.0.254'), 'tunnels.yaml')
  t.equal(config.local.type, 'EdgeNode')
  t.same(config.peers.map((p) => [p.name, p.type, p.publicAddresses]), [[CONNECTOR.name, 'Connector', ['172.19.0.254']]])
})

t.test('floor routes are exactly the routes the agent wants (xfrm: via the gateway, table 220, proto 220)', async (t) => {
  const peers = [...firstPeers(300), { index: 400, alt: true }]
  const want = desired(peers).routes.map((r) => `route replace ${r.dst} via ${r.via} table ${r.table} proto ${r.protocol}`).sort()
  const batch = routeBatch(peers, '172.19.0.254').trimEnd().split('\n').sort()
  t.equal(batch.length, 301)
  t.same(batch, want)
})

t.test('floor sets are exactly the agent inet sets with their members', async (t) => {
  const peers = firstPeers(50)
  const d = desired(peers)
  const inet = Object.fromEntries(Object.entries(d.ipsets).filter(([, s]) => s.family === 4).map(([k, s]) => [k, [...s.members].sort()]))
  const ours = Object.fromEntries(Object.entries(connectorSets(peers)).map(([k, m]) => [k, [...m].sort()]))
  t.same(ours, inet)
  t.ok(Object.values(inet).some((m) => m.length === 50), 'the check covers a set with every peer in it')
  const text = ipsetRestore(peers)
  t.match(text, /^create FABEDGE-REMOTE-POD-CIDR hash:net family inet\nadd FABEDGE-REMOTE-POD-CIDR 10\.100\.0\.0\/24\n/)
  t.equal(text.split('\n').filter((l) => l.startsWith('add ')).length, 50 + 50 + 2 + 1)
})

t.test('floor swanctl.conf: the agent connections, same ids, certificate and child selectors', async (t) => {
  const peers = [{ index: 0 }, { index: 5, alt: true }]
  const d = desired(peers)
  const conf = swanctlConf(peers, '/tmp/x/bench.connector.crt')
  for (const p of peers) {
    const name = peerName(p.index)
    const conn = d.conns[name] as Record<string, any>
    const block = conf.slice(conf.indexOf(`  ${name.replace('.', '_')} {`))
    t.match(block, `id = "${conn.local.id}"`)
    t.match(block, `id = "${conn.remote.id}"`)
    t.match(block, 'certs = /tmp/x/bench.connector.crt')
    t.match(block, `mobike = ${conn.mobike}`)
    for (const [kid, c] of Object.entries(conn.children as Record<string, any>)) {
      const k = kid.replace(`${name}-`, '')
      const re = new RegExp(`${name.replace('.', '_')}-${k} \\{\\n\\s+local_ts = ${c.local_ts.join(', ')}\\n\\s+remote_ts = ${c.remote_ts.join(', ')}\\n\\s+start_action = ${c.start_action}\\n\\s+dpd_action = ${c.dpd_action}`)
      t.match(block, re, `${kid} selectors`)
    }
  }
  t.equal(conf.match(/^ {2}bench_e\d+ \{$/gm)?.length, 2, 'one connection per peer')
  t.throws(() => swanctlConf(peers, 'relative.crt'))
  t.throws(() => swanctlConf(peers, '/tmp/a b.crt'))
})
