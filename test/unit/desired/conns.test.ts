import t from 'tap'
import { join } from 'node:path'
import { loadConfig, parseConfig } from '../../../src/config/load.js'
import { desiredConns, EDGE_DPD_DELAY, initiatesTo } from '../../../src/desired/conns.js'

const FIX = new URL('../../fixtures/config/', import.meta.url).pathname
const PEM = '-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n'
const CONNECTOR_SUBNETS = ['10.233.0.0/18', '10.233.64.0/24', '10.233.65.0/24']

t.test('connector: golden load-conn sections for edge peers, a remote connector and the mediator', async (t) => {
  const { config } = await loadConfig(join(FIX, 'connector.yaml'))
  const d = desiredConns(config, { datapath: 'xfrm', certPem: PEM })
  t.same(Object.keys(d.conns), ['mediator', 'shanghai.connector', 'beijing.edge1', 'beijing.edge2'])
  t.same(d.conns['beijing.edge1'], {
    version: '2',
    mobike: 'no',
    local: { auth: 'pubkey', id: 'C=CN, O=fabedge.io, CN=beijing.connector', certs: [PEM] },
    remote: { auth: 'pubkey', id: 'C=CN, O=fabedge.io, CN=beijing.edge1' },
    children: {
      'beijing.edge1-p2p': { local_ts: CONNECTOR_SUBNETS, remote_ts: ['10.234.1.0/24'], start_action: 'none', dpd_action: 'clear' },
      'beijing.edge1-n2p': { local_ts: ['192.168.1.5/32', '192.168.1.6/32'], remote_ts: ['10.234.1.0/24'], start_action: 'none', dpd_action: 'clear' },
      'beijing.edge1-p2n': { local_ts: CONNECTOR_SUBNETS, remote_ts: ['10.22.53.116/32'], start_action: 'none', dpd_action: 'clear' },
    },
  }, 'edge peer: responder only, no addresses, no DPD')
  t.same((d.conns['beijing.edge2']!.children as any)['beijing.edge2-p2p'].remote_ts, ['10.234.2.0/24', 'fd00:234:2::/64'], 'dual-stack peer keeps both families in one selector list')
  t.same(d.conns['shanghai.connector'], {
    version: '2',
    remote_addrs: ['10.50.0.9'],
    dpd_delay: EDGE_DPD_DELAY,
    mobike: 'no',
    local: { auth: 'pubkey', id: 'C=CN, O=fabedge.io, CN=beijing.connector', certs: [PEM] },
    remote: { auth: 'pubkey', id: 'C=CN, O=fabedge.io, CN=shanghai.connector' },
    children: {
      'shanghai.connector-p2p': { local_ts: CONNECTOR_SUBNETS, remote_ts: ['10.96.0.0/12', '10.244.0.0/24'], start_action: 'none', dpd_action: 'trap' },
      'shanghai.connector-n2p': { local_ts: ['192.168.1.5/32', '192.168.1.6/32'], remote_ts: ['10.96.0.0/12', '10.244.0.0/24'], start_action: 'none', dpd_action: 'trap' },
      'shanghai.connector-p2n': { local_ts: CONNECTOR_SUBNETS, remote_ts: ['10.50.0.9/32'], start_action: 'none', dpd_action: 'trap' },
    },
  }, 'remote cluster connector: remote_addrs, and beijing < shanghai so beijing initiates')
  t.same(d.conns.mediator, {
    version: '2',
    mediation: 'yes',
    dpd_delay: EDGE_DPD_DELAY,
    local: { auth: 'pubkey', id: 'C=CN, O=fabedge.io, CN=beijing.connector', certs: [PEM] },
  }, 'the connector is the mediation server: no remote, never initiated; DPD drops registrations of vanished edges')
  t.same(d.initiate, ['shanghai.connector'])
  t.same(d.initiateChildren, { 'shanghai.connector': ['shanghai.connector-p2p', 'shanghai.connector-n2p', 'shanghai.connector-p2n'] })
})

t.test('edge: initiates to every peer, mediator first, connector before edges; mediated edge peers', async (t) => {
  const { config } = await loadConfig(join(FIX, 'edge.yaml'))
  const d = desiredConns(config, { datapath: 'libipsec' })
  t.same(Object.keys(d.conns), ['mediator', 'beijing.connector', 'beijing.edge2'])
  t.same(d.initiate, ['mediator', 'beijing.connector', 'beijing.edge2'])
  t.same(d.initiateChildren.mediator, [], 'the mediation connection has no children: initiate the IKE SA')
  t.same(d.conns.mediator, {
    version: '2', mediation: 'yes', remote_addrs: ['10.40.10.180'], remote_port: '45000', local_port: '4500', dpd_delay: EDGE_DPD_DELAY,
    // registered under its name (FabEdge: ensureMediatorConnection LocalID = current.Name), what the other edge's
    // mediation_peer asks for
    local: { auth: 'pubkey', id: 'beijing.edge1' },
    remote: { auth: 'pubkey', id: 'C=CN, O=fabedge.io, CN=beijing.connector' },
  })
  t.equal(d.conns['beijing.edge2']!.mediation_peer, 'beijing.edge2', 'asks the server for the name edge2 registers under')
  t.same(d.conns['beijing.connector'], {
    version: '2', remote_addrs: ['10.40.10.180'], remote_port: '45000', local_port: '4500', dpd_delay: EDGE_DPD_DELAY,
    local: { auth: 'pubkey', id: 'C=CN, O=fabedge.io, CN=beijing.edge1' },
    remote: { auth: 'pubkey', id: 'C=CN, O=fabedge.io, CN=beijing.connector' },
    children: {
      'beijing.connector-p2p': { local_ts: ['10.234.1.0/24'], remote_ts: CONNECTOR_SUBNETS, start_action: 'none', dpd_action: 'trap' },
      'beijing.connector-n2p': { local_ts: ['10.22.53.116/32'], remote_ts: CONNECTOR_SUBNETS, start_action: 'none', dpd_action: 'trap' },
      'beijing.connector-p2n': { local_ts: ['10.234.1.0/24'], remote_ts: ['192.168.1.5/32', '192.168.1.6/32'], start_action: 'none', dpd_action: 'trap' },
    },
  }, 'no certs without a PEM: charon picks the loaded certificate by id')
  const e2 = d.conns['beijing.edge2']!
  t.equal(e2.mediated_by, 'mediator')
  t.equal(e2.mediation_peer, 'beijing.edge2')
  t.notOk('remote_addrs' in e2, 'mediated: addresses come from the mediator')
  t.notOk('remote_port' in e2)
})

t.test('children with an empty side are left out, and a peer with no children is not initiated', async (t) => {
  const { config } = parseConfig(`id: A
name: c.edge1
subnets:
    - 10.2.1.0/24
type: EdgeNode
peers:
    - id: B
      name: c.connector
      publicAddresses:
        - 192.168.0.1
      subnets:
        - 10.1.0.0/16
      type: Connector
    - id: C
      name: c.edge9
      publicAddresses:
        - 192.168.0.9
      type: EdgeNode
`)
  const d = desiredConns(config, { datapath: 'xfrm' })
  t.same(Object.keys(d.conns['c.connector']!.children as object), ['c.connector-p2p'], 'no nodeSubnets anywhere: only p2p')
  t.same(d.conns['c.edge9']!.children, {}, 'a peer with no subnets at all has no children')
  t.same(d.initiate, ['c.connector'])
})

t.test('connector-to-connector initiator rule is deterministic and antisymmetric', async (t) => {
  const mk = (self: string, peer: string) => parseConfig(`id: ${self}\nname: ${self}\nsubnets:\n    - 10.${self === 'a.connector' ? 1 : 2}.0.0/16\ntype: Connector\npeers:\n    - id: ${peer}\n      name: ${peer}\n      publicAddresses: [192.168.7.1]\n      subnets:\n        - 10.${self === 'a.connector' ? 2 : 1}.0.0/16\n      type: Connector\n`).config
  const a = mk('a.connector', 'b.connector')
  const b = mk('b.connector', 'a.connector')
  t.equal(initiatesTo(a, a.peers[0]!), true, 'a initiates to b')
  t.equal(initiatesTo(b, b.peers[0]!), false, 'b only responds to a')
  t.same(desiredConns(b, { datapath: 'xfrm' }).initiate, [])
  t.notOk('dpd_delay' in desiredConns(b, { datapath: 'xfrm' }).conns['a.connector']!, 'the responder leaves DPD to the initiator')
})

t.test('dpdDelay: every connection this node initiates carries it, responders never; 0s turns DPD off', async (t) => {
  const { config } = await loadConfig(join(FIX, 'edge.yaml'))
  t.equal(EDGE_DPD_DELAY, '3s', 'the default (docs/ha.md: a dead connector is noticed within ~8.4 s)')
  const fabedge = desiredConns(config, { datapath: 'libipsec', dpdDelay: '10s' })
  t.same(Object.values(fabedge.conns).map((c) => c.dpd_delay), ['10s', '10s', '10s'], 'mediator, connector and edge peer')
  const off = desiredConns(config, { datapath: 'libipsec', dpdDelay: '0s' })
  t.same(Object.values(off.conns).map((c) => 'dpd_delay' in c), [false, false, false])
  const { config: connector } = await loadConfig(join(FIX, 'connector.yaml'))
  const c = desiredConns(connector, { datapath: 'xfrm', dpdDelay: '7s' })
  t.equal(c.conns['shanghai.connector']!.dpd_delay, '7s', 'the connector-to-connector initiator')
  t.notOk('dpd_delay' in c.conns['beijing.edge1']!, 'edge peers: the connector responds only')
})

t.test('MOBIKE: a connector turns it off on every peer connection (its SAs stay on the VIP); edges keep the default', async (t) => {
  const { config } = await loadConfig(join(FIX, 'connector.yaml'))
  const d = desiredConns(config, { datapath: 'xfrm' })
  t.same(config.peers.map((p) => d.conns[p.name]!.mobike), config.peers.map(() => 'no'))
  const { config: edge } = await loadConfig(join(FIX, 'edge.yaml'))
  t.same(Object.values(desiredConns(edge, { datapath: 'xfrm' }).conns).filter((c) => 'mobike' in c), [])
})
