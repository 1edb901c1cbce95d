import t from 'tap'
import { join } from 'node:path'
import { loadConfig } from '../../../src/config/load.js'
import { desiredRoutes, desiredRules } from '../../../src/desired/routes.js'
import { desiredSets } from '../../../src/desired/sets.js'

const FIX = new URL('../../fixtures/config/', import.meta.url).pathname

t.test('xfrm routes: every peer subnet via the default gateway in table 220 with our protocol', async (t) => {
  const { config } = await loadConfig(join(FIX, 'connector.yaml'))
  const routes = desiredRoutes(config, { datapath: 'xfrm', gateways: { 4: '10.40.10.1' } })
  t.same(routes, [
    { dst: '10.96.0.0/12', family: 4, table: 220, protocol: 220, via: '10.40.10.1' },
    { dst: '10.234.1.0/24', family: 4, table: 220, protocol: 220, via: '10.40.10.1' },
    { dst: '10.234.2.0/24', family: 4, table: 220, protocol: 220, via: '10.40.10.1' },
    { dst: '10.244.0.0/24', family: 4, table: 220, protocol: 220, via: '10.40.10.1' },
    { dst: 'fd00:234:2::/64', family: 6, table: 220, protocol: 220 },
  ], 'remote cluster service + pod CIDRs and edge pod CIDRs; v6 without a known gateway is resolved at apply time')
  t.same(desiredRules(config), [
    { family: 4, priority: 220, table: 220 },
    { family: 6, priority: 220, table: 220 },
  ])
})

t.test('libipsec: no tunnel routes (charon installs them on ipsec0), the rule stays', async (t) => {
  const { config } = await loadConfig(join(FIX, 'edge.yaml'))
  t.same(desiredRoutes(config, { datapath: 'libipsec' }), [])
  t.same(desiredRules(config), [{ family: 4, priority: 220, table: 220 }])
})

t.test('connector ipsets: FabEdge names, canonical sorted members, v4/v6 split', async (t) => {
  const { config } = await loadConfig(join(FIX, 'connector.yaml'))
  t.same(desiredSets(config, 'connector'), {
    'FABEDGE-REMOTE-POD-CIDR': { family: 4, members: ['10.96.0.0/12', '10.234.1.0/24', '10.234.2.0/24', '10.244.0.0/24'] },
    'FABEDGE-REMOTE-POD-CIDR6': { family: 6, members: ['fd00:234:2::/64'] },
    'FABEDGE-REMOTE-NODE-CIDR': { family: 4, members: ['10.22.53.116/32', '10.22.53.117/32'] },
    'FABEDGE-REMOTE-NODE-CIDR6': { family: 6, members: [] },
    'FABEDGE-LOCAL-POD-CIDR': { family: 4, members: ['10.233.0.0/18', '10.233.64.0/24', '10.233.65.0/24'] },
    'FABEDGE-LOCAL-POD-CIDR6': { family: 6, members: [] },
    'FABEDGE-LOCAL-NODE-CIDR': { family: 4, members: ['192.168.1.5/32', '192.168.1.6/32'] },
    'FABEDGE-LOCAL-NODE-CIDR6': { family: 6, members: [] },
  }, 'remote connector node IPs are not in REMOTE-NODE; its subnets are in REMOTE-POD')
})

t.test('edge ipsets: REMOTE-CIDR holds every peer subnet and node subnet', async (t) => {
  const { config } = await loadConfig(join(FIX, 'edge.yaml'))
  t.same(desiredSets(config, 'edge'), {
    'FABEDGE-REMOTE-CIDR': { family: 4, members: ['10.22.53.117/32', '10.233.0.0/18', '10.233.64.0/24', '10.233.65.0/24', '10.234.2.0/24', '192.168.1.5/32', '192.168.1.6/32'] },
    'FABEDGE-REMOTE-CIDR6': { family: 6, members: [] },
  })
})
