// Leader gating of a connector's desired state: what a standby keeps (warm: credentials, every connection loaded,
// responder-only toward edges) and what only the leader has (initiators, table-220 routes, the remote members of
// the steering ipsets).
import t from 'tap'
import { join } from 'node:path'
import { loadConfig } from '../../../src/config/load.js'
import { desiredState, standbyState } from '../../../src/desired/index.js'

const FIX = new URL('../../fixtures/config/', import.meta.url).pathname
const PEM = '-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n'
const GW = { 4: '10.40.10.1', 6: 'fd00::1' }

t.test('standby connector: connections stay loaded, nothing initiated, no routes, steering sets empty', async (t) => {
  const { config } = await loadConfig(join(FIX, 'connector.yaml'))
  const leader = desiredState(config, { datapath: 'xfrm', certPem: PEM, gateways: GW })
  const standby = desiredState(config, { datapath: 'xfrm', certPem: PEM, gateways: GW, standby: true })
  // The positive case first: the leader has every leader-only part, so the checks below can fail.
  t.same(leader.initiate, ['shanghai.connector'], 'the leader initiates the remote connector')
  t.ok(leader.routes.length > 0, 'the leader has table-220 routes')
  t.ok(leader.ipsets['FABEDGE-REMOTE-POD-CIDR']!.members.length > 0)
  t.ok(leader.ipsets['FABEDGE-REMOTE-NODE-CIDR']!.members.length > 0)

  t.same(Object.keys(standby.conns), Object.keys(leader.conns), 'every connection stays loaded (warm standby)')
  for (const name of Object.keys(leader.conns)) t.same(standby.conns[name], leader.conns[name], `${name}: the same section (no reload on a flip)`)
  t.same(standby.initiate, [], 'a standby initiates nothing')
  t.same(standby.initiateChildren, {})
  t.same(standby.routes, [], 'no route towards an SA that does not exist here')
  t.same(standby.rules, leader.rules, 'the lookup-220 rule stays (an empty table routes nothing)')
  for (const name of ['FABEDGE-REMOTE-POD-CIDR', 'FABEDGE-REMOTE-POD-CIDR6', 'FABEDGE-REMOTE-NODE-CIDR', 'FABEDGE-REMOTE-NODE-CIDR6']) {
    t.same(standby.ipsets[name], { family: leader.ipsets[name]!.family, members: [] }, `${name} exists, empty: the rules using it are inert`)
  }
  t.same(standby.ipsets['FABEDGE-LOCAL-POD-CIDR'], leader.ipsets['FABEDGE-LOCAL-POD-CIDR'], 'local sets unchanged')
  t.same(standby.ipsets['FABEDGE-LOCAL-NODE-CIDR'], leader.ipsets['FABEDGE-LOCAL-NODE-CIDR'])
  t.equal(standby.iptables.ipv4, leader.iptables.ipv4, 'the ruleset text is unchanged: a flip never rewrites iptables')
  t.equal(standby.iptables.ipv6, leader.iptables.ipv6)
  const edgeConn = standby.conns['beijing.edge1']!
  t.notOk('remote_addrs' in edgeConn, 'edge connections are responder-only (no remote address to dial)')
})

t.test('edges are never gated (standby only means something on a connector)', async (t) => {
  const { config } = await loadConfig(join(FIX, 'edge.yaml'))
  const full = desiredState(config, { datapath: 'xfrm', gateways: GW })
  t.ok(full.initiate.length > 0)
  t.same(desiredState(config, { datapath: 'xfrm', gateways: GW, standby: true }), full)
  t.equal(standbyState(full), full)
})

t.test('drainVip: IKE_SA_INIT drops for the VIP of its family only, ahead of the IKE accepts', async (t) => {
  const { config } = await loadConfig(join(FIX, 'connector.yaml'))
  const plain = desiredState(config, { datapath: 'xfrm' })
  const v4 = desiredState(config, { datapath: 'xfrm', drainVip: '10.40.10.200' })
  t.not(v4.iptables.ipv4, plain.iptables.ipv4)
  t.equal(v4.iptables.ipv6, plain.iptables.ipv6, 'an IPv4 VIP leaves the IPv6 ruleset alone')
  const input = v4.iptables.ipv4.split('\n').filter((l) => l.startsWith('-A FABEDGE-INPUT'))
  t.match(input[0], /^-A FABEDGE-INPUT -d 10\.40\.10\.200\/32 -p udp -m udp --dport 500 -m u32 --u32 ".*" -j DROP$/)
  t.match(input[1], /^-A FABEDGE-INPUT -d 10\.40\.10\.200\/32 -p udp -m udp --dport 4500 -m u32 --u32 ".*" -j DROP$/)
  t.match(input[2], /--dport 500 -j ACCEPT$/)
  const v6 = desiredState(config, { datapath: 'xfrm', drainVip: 'fd00::200' })
  t.equal(v6.iptables.ipv4, plain.iptables.ipv4)
  t.match(v6.iptables.ipv6, /-A FABEDGE-INPUT -d fd00::200\/128 -p udp -m udp --dport 500 -m u32 --u32 "0x38=0x0&&0x3c=0x0&&0x3f&0xff=0x22" -j DROP/)
})
