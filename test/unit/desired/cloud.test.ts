import t from 'tap'
import { join } from 'node:path'
import { loadConfig } from '../../../src/config/load.js'
import { cloudDesired, cloudPrefixes, desiredState, nodeDesired, parseConnectorAddresses } from '../../../src/desired/index.js'
import { parseConfig } from '../../../src/config/load.js'

const FIX = new URL('../../fixtures/config/', import.meta.url).pathname

t.test('cloud routes: every peer prefix (pods, services, node IPs) via the connector address, never the local subnets', async (t) => {
  const { config } = await loadConfig(join(FIX, 'connector.yaml'))
  const d = cloudDesired(config, { connectorAddresses: { 4: '192.168.1.5', 6: 'fd00::5' } })
  t.equal(d.role, 'cloud')
  const via4 = { family: 4, table: 220, protocol: 220, viaFrom: 'connector-address', via: '192.168.1.5' }
  t.same(d.routes, [
    { dst: '10.22.53.116/32', ...via4 },
    { dst: '10.22.53.117/32', ...via4 },
    { dst: '10.50.0.9/32', ...via4 },
    { dst: '10.96.0.0/12', ...via4 },
    { dst: '10.234.1.0/24', ...via4 },
    { dst: '10.234.2.0/24', ...via4 },
    { dst: '10.244.0.0/24', ...via4 },
    { dst: 'fd00:234:2::/64', family: 6, table: 220, protocol: 220, viaFrom: 'connector-address', via: 'fd00::5' },
  ], 'edge pods and nodes, the remote cluster\'s service, pod and node prefixes; canonical, sorted')
  const local = [...config.local.subnets, ...config.local.nodeSubnets]
  t.ok(local.length > 0 && local.every((c) => !d.routes.some((r) => r.dst === c)), 'none of the connector\'s own subnets or node IPs')
  t.same(d.rules, [{ family: 4, priority: 220, table: 220 }, { family: 6, priority: 220, table: 220 }], 'from all lookup 220 priority 220, both families in use')
  t.same(d.conns, {}, 'no connections')
  t.same(d.initiate, [])
  t.same(d.initiateChildren, {})
})

t.test('cloud ipsets: FABEDGE-REMOTE-POD-CIDR(6) hold exactly the routed prefixes (FabEdge cloud-agent ensureIPSet)', async (t) => {
  const { config } = await loadConfig(join(FIX, 'connector.yaml'))
  const d = cloudDesired(config, { connectorAddresses: { 4: '192.168.1.5' } })
  t.same(Object.keys(d.ipsets).sort(), ['FABEDGE-REMOTE-POD-CIDR', 'FABEDGE-REMOTE-POD-CIDR6'])
  t.same(d.ipsets['FABEDGE-REMOTE-POD-CIDR'], { family: 4, members: d.routes.filter((r) => r.family === 4).map((r) => r.dst) })
  t.same(d.ipsets['FABEDGE-REMOTE-POD-CIDR6'], { family: 6, members: ['fd00:234:2::/64'] })
  t.same(cloudPrefixes(config), d.routes.map((r) => r.dst))
})

t.test('cloud iptables: the chains of FabEdge cloud-agent iptables.go tmpl, both families', async (t) => {
  const { config } = await loadConfig(join(FIX, 'connector.yaml'))
  const d = cloudDesired(config, { connectorAddresses: { 4: '192.168.1.5' } })
  t.equal(d.iptables.ipv4, [
    '*filter',
    ':FABEDGE-FORWARD - [0:0]',
    '-A FABEDGE-FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT',
    '-A FABEDGE-FORWARD -m set --match-set FABEDGE-REMOTE-POD-CIDR src -j ACCEPT',
    '-A FABEDGE-FORWARD -m set --match-set FABEDGE-REMOTE-POD-CIDR dst -j ACCEPT',
    'COMMIT',
    '*nat',
    ':FABEDGE-POSTROUTING - [0:0]',
    '-A FABEDGE-POSTROUTING -m mark --mark 0x4000/0x4000 -j KUBE-POSTROUTING',
    '-A FABEDGE-POSTROUTING -m set --match-set FABEDGE-REMOTE-POD-CIDR dst -j ACCEPT',
    '-A FABEDGE-POSTROUTING -m set --match-set FABEDGE-REMOTE-POD-CIDR src -j ACCEPT',
    'COMMIT',
    '',
  ].join('\n'))
  t.match(d.iptables.ipv6, /--match-set FABEDGE-REMOTE-POD-CIDR6 src -j ACCEPT/)
  t.notMatch(d.iptables.ipv4 + d.iptables.ipv6, /FABEDGE-INPUT/, 'no INPUT chain: a cloud node terminates no IPsec')
})

t.test('a family without a connector address keeps its routes without via (reported by the routes subsystem)', async (t) => {
  const { config } = await loadConfig(join(FIX, 'connector.yaml'))
  const d = cloudDesired(config, { connectorAddresses: { 4: '192.168.1.5' } })
  const v6 = d.routes.filter((r) => r.family === 6)
  t.equal(v6.length, 1)
  t.equal(v6[0]!.via, undefined)
  t.equal(v6[0]!.viaFrom, 'connector-address')
  t.ok(d.routes.filter((r) => r.family === 4).every((r) => r.via === '192.168.1.5'))
})

t.test('a peer added to the config gets its route; a removed one loses it (pure, same input same output)', async (t) => {
  const base = `name: c.connector\nid: C=CN, CN=c.connector\ntype: Connector\nsubnets: [10.1.0.0/16]\nnodeSubnets: [192.168.0.2]\npeers:\n`
  const peer = (n: number): string => `  - name: c.e${n}\n    id: C=CN, CN=c.e${n}\n    type: EdgeNode\n    subnets: [10.2.${n}.0/24]\n    nodeSubnets: [172.16.0.${n}]\n`
  const one = parseConfig(base + peer(1), 'x.yaml').config
  const two = parseConfig(base + peer(1) + peer(2), 'x.yaml').config
  const o = { connectorAddresses: { 4: '192.168.0.2' } }
  t.same(cloudDesired(one, o).routes.map((r) => r.dst), ['10.2.1.0/24', '172.16.0.1/32'])
  t.same(cloudDesired(two, o).routes.map((r) => r.dst), ['10.2.1.0/24', '10.2.2.0/24', '172.16.0.1/32', '172.16.0.2/32'])
  t.same(cloudDesired(two, o), cloudDesired(two, o))
  t.same(cloudDesired(one, { connectorAddresses: { 4: '192.168.0.3' } }).routes.map((r) => r.via), ['192.168.0.3', '192.168.0.3'], 'routes follow the address')
})

t.test('a cloud node reads the connector\'s config: an edge config is a typed error', async (t) => {
  const { config } = await loadConfig(join(FIX, 'edge.yaml'))
  t.throws(() => cloudDesired(config, { connectorAddresses: { 4: '10.0.0.1' } }), { name: 'DesiredError', code: 'ROLE_MISMATCH', message: /--role cloud needs the connector's tunnels.yaml/ })
})

t.test('nodeDesired: role from the config unless given; an explicit role must agree; cloud only when given', async (t) => {
  const { config: conn } = await loadConfig(join(FIX, 'connector.yaml'))
  const { config: edge } = await loadConfig(join(FIX, 'edge.yaml'))
  const opts = { datapath: 'xfrm' as const, gateways: { 4: '10.0.0.1' } }
  t.same(nodeDesired(conn, undefined, opts), desiredState(conn, opts))
  t.same(nodeDesired(conn, 'connector', opts), desiredState(conn, opts))
  t.same(nodeDesired(edge, 'edge', opts), desiredState(edge, opts))
  t.throws(() => nodeDesired(edge, 'connector', opts), { name: 'DesiredError', code: 'ROLE_MISMATCH', message: /--role connector but the config's local endpoint \S+ is of type EdgeNode/ })
  t.throws(() => nodeDesired(conn, 'edge', opts), { code: 'ROLE_MISMATCH', message: /--role edge but .* Connector/ })
  const cloud = nodeDesired(conn, 'cloud', { ...opts, connectorAddresses: { 4: '192.168.1.5' } })
  t.equal(cloud.role, 'cloud')
  t.ok(cloud.routes.length > 0 && cloud.routes.filter((r) => r.family === 4).every((r) => r.via === '192.168.1.5'), 'never the default gateway')
})

t.test('--connector-address parsing', async (t) => {
  t.same(parseConnectorAddresses('192.168.1.5'), { ok: true, addresses: { 4: '192.168.1.5' } })
  t.same(parseConnectorAddresses(' 192.168.1.5 , FD00:0::5 '), { ok: true, addresses: { 4: '192.168.1.5', 6: 'fd00::5' } }, 'dual-stack, canonical')
  t.same(parseConnectorAddresses('fd00::5'), { ok: true, addresses: { 6: 'fd00::5' } })
  const bad: Array<[string, RegExp]> = [
    ['', /needs one address/],
    ['10.0.0.1,', /needs one address/],
    ['10.0.0.0/24', /not an IP address \(give the address, not a prefix\)/],
    ['connector.local', /not an IP address/],
    ['010.0.0.1', /not an IP address/],
    ['10.0.0.1,10.0.0.2', /two IPv4 addresses/],
    ['fd00::1,fd00::2', /two IPv6 addresses/],
    ['127.0.0.1', /loopback/],
    ['0.0.0.0', /unspecified/],
    ['::', /unspecified/],
    ['224.0.0.5', /multicast/],
    ['255.255.255.255', /broadcast/],
    ['fe80::1', /linkLocal/],
    ['fe80::1%eth0', /not an IP address/],
  ]
  for (const [text, re] of bad) {
    const r = parseConnectorAddresses(text)
    t.equal(r.ok, false, text)
    if (!r.ok) t.match(r.message, re, text)
  }
})
