import t from 'tap'
import { formatStatus, type StatusDoc } from '../../../src/daemon/status-format.js'

// Every expectation is the whole table `fabtunnel status` prints, so a column that moves or a field that drops out
// shows up as a diff of what the operator reads.
const NOW = Date.parse('2026-11-30T12:00:00.000Z')
const before = (seconds: number): string => new Date(NOW - seconds * 1000).toISOString()

type Peer = NonNullable<StatusDoc['peers']>[number]
const peer = (p: Partial<Peer> & { name: string; state: string }): Peer => ({
  type: 'Peer', since: before(5), childrenUp: 0, childrenDesired: 1, initiator: false, lastError: null, waiting: null, ...p,
})

t.test('before the first config: no node, not ready, unknown datapath, and an explicit "(no peers)"', async (t) => {
  t.equal(formatStatus({}, NOW), [
    'node (no config yet)  ready=no  datapath=?  iptables=?  fabtunnel',
    '',
    'PEER  TYPE  ROLE  STATE  SINCE  CHILDREN  PATH  LAST ERROR',
    '(no peers)',
  ].join('\n'))
  t.equal(formatStatus({ version: '1.2.3', node: null, ready: false, datapath: 'xfrm', peers: [] }, NOW).split('\n')[0],
    'node (no config yet)  ready=no  datapath=xfrm  iptables=?  fabtunnel 1.2.3')
})

t.test('a converged connector: one row per peer in each state, aligned columns', async (t) => {
  const doc: StatusDoc = {
    version: '0.4.0',
    node: { name: 'beijing.connector', type: 'Connector' },
    ready: true,
    datapath: 'xfrm',
    iptables: { backend: 'nft' },
    config: { path: '/etc/fabedge/tunnels.yaml', generation: 3, rejected: null },
    lastPass: { startedAt: before(7), durationMs: 12.345, writes: { tunnels: 0, routes: 2 }, errors: {}, converged: true },
    peers: [
      peer({ name: 'beijing.edge1', state: 'up', since: before(119), childrenUp: 2, childrenDesired: 2, path: 'direct' }),
      peer({ name: 'beijing.edge2', state: 'partial', since: before(120), childrenUp: 1, childrenDesired: 2, lastError: 'child edge2-n2n: TS_UNACCEPTABLE', path: 'direct' }),
      peer({ name: 'shanghai.connector', state: 'connecting', since: before(7199), initiator: true }),
      peer({ name: 'beijing.edge3', state: 'waiting', since: before(7200), waiting: 'retry in 8s' }),
      peer({ name: 'mediator', type: 'Mediator', state: 'down', since: before(-30), childrenDesired: 0, lastError: 'load-conn failed', waiting: 'retry in 2s' }),
    ],
  }
  t.equal(formatStatus(doc, NOW), [
    'node beijing.connector (Connector)  ready=yes  datapath=xfrm  iptables=nft  fabtunnel 0.4.0',
    'config /etc/fabedge/tunnels.yaml generation 3',
    'last pass 7s ago, 12.3 ms, writes {"tunnels":0,"routes":2}',
    '',
    'PEER                TYPE      ROLE       STATE       SINCE  CHILDREN  PATH    LAST ERROR',
    'beijing.edge1       Peer      responder  up          119s   2/2       direct',
    'beijing.edge2       Peer      responder  partial     2m     1/2       direct  child edge2-n2n: TS_UNACCEPTABLE',
    'shanghai.connector  Peer      initiator  connecting  120m   0/1       -',
    'beijing.edge3       Peer      responder  waiting     2h     0/1       -       retry in 8s',
    // A clock step backwards shows 0s, not a negative age; a peer without children shows "-"; the error wins over
    // the waiting note because it says why.
    'mediator            Mediator  responder  down        0s     -         -       load-conn failed',
  ].join('\n'))
})

t.test('a rejected config and failing subsystems are on the first lines', async (t) => {
  const doc: StatusDoc = {
    node: { name: 'beijing.edge1', type: 'EdgeNode' },
    ready: false,
    datapath: 'libipsec',
    config: {
      path: '/etc/fabedge/tunnels.yaml',
      generation: 1,
      rejected: { message: 'tunnels.yaml:4:7: error: subnets[0]: bad CIDR\ntunnels.yaml:9:3: error: peers[0].name: missing\ntunnels.yaml:12:1: error: three\ntunnels.yaml:13:1: error: four' },
    },
    lastPass: { startedAt: before(3 * 3600), durationMs: 30001, writes: {}, errors: { iptables: 'iptables-restore: exit 1', routes: 'no IPv6 default route' }, converged: false },
    peers: [peer({ name: 'beijing.connector', state: 'down', initiator: true, lastError: 'initiate: timeout', path: 'none' })],
  }
  const lines = formatStatus(doc, NOW).split('\n')
  t.equal(lines[0], 'node beijing.edge1 (EdgeNode)  ready=no  datapath=libipsec  iptables=?  fabtunnel')
  t.equal(lines[1], 'config /etc/fabedge/tunnels.yaml generation 1  REJECTED: tunnels.yaml:4:7: error: subnets[0]: bad CIDR | tunnels.yaml:9:3: error: peers[0].name: missing | tunnels.yaml:12:1: error: three',
    'the first three lines of the rejection, on one line; the config in force keeps its generation')
  t.equal(lines[2], 'last pass 3h ago, 30001.0 ms, writes {}, errors: iptables: iptables-restore: exit 1; routes: no IPv6 default route')
  t.equal(lines[5], 'beijing.connector  Peer  initiator  down   5s     0/1       none  initiate: timeout')
  t.equal(lines.length, 6)
})

t.test('a cloud node: its connector address and routes, no peer table (it runs no tunnels)', async (t) => {
  const doc: StatusDoc = {
    version: '1.2.3', node: { name: 'beijing.connector', type: 'Connector' }, role: 'cloud', connectorAddress: { 4: '192.168.1.5', 6: 'fd00::5' },
    ready: true, routes: { ownRoutes: 7 }, iptables: { backend: 'nft' },
    config: { path: '/etc/fabedge/tunnels.yaml', generation: 2, rejected: null },
    lastPass: { startedAt: before(3), durationMs: 1.25, writes: {}, errors: {}, converged: true },
  }
  t.equal(formatStatus(doc, NOW), [
    'cloud node of beijing.connector (Connector)  ready=yes  via connector 192.168.1.5,fd00::5  routes=7  iptables=nft  fabtunnel 1.2.3',
    'config /etc/fabedge/tunnels.yaml generation 2',
    'last pass 3s ago, 1.3 ms, writes {}',
  ].join('\n'))
})

t.test('leadership line: vip and lease modes; none prints nothing (a single connector)', async (t) => {
  const since = new Date(NOW - 65_000).toISOString()
  const vip = formatStatus({ leadership: { mode: 'vip', leader: true, since, transitions: 1, vip: { address: '10.0.0.100', present: true, interfaces: [2] } } }, NOW)
  t.equal(vip.split('\n')[1], 'leadership vip 10.0.0.100: LEADER since 65s ago (1 transition)')
  const lease = formatStatus({ leadership: { mode: 'lease', leader: false, since, transitions: 2, lease: { namespace: 'fabedge', name: 'connector', identity: 'node-a', holder: 'node-b', lastRenew: null } } }, NOW)
  t.equal(lease.split('\n')[1], 'leadership lease fabedge/connector as node-a, holder node-b: STANDBY since 65s ago (2 transitions)')
  t.notMatch(formatStatus({ leadership: { mode: 'none', leader: true, since, transitions: 0 } }, NOW), /leadership/)
})

t.test('an edge behind NAT: the path of each peer, and the mediation recovery state of a mediated peer that is down', async (t) => {
  const doc: StatusDoc = {
    node: { name: 'beijing.edge2', type: 'EdgeNode' },
    ready: true,
    datapath: 'libipsec',
    peers: [
      peer({ name: 'mediator', type: 'Mediator', state: 'up', childrenDesired: 0, initiator: true, path: 'direct' }),
      peer({ name: 'beijing.connector', type: 'Connector', state: 'up', childrenUp: 3, childrenDesired: 3, initiator: true, path: 'direct' }),
      peer({ name: 'beijing.edge1', type: 'EdgeNode', state: 'up', childrenUp: 3, childrenDesired: 3, initiator: true, path: 'mediated' }),
      peer({ name: 'beijing.edge3', type: 'EdgeNode', state: 'waiting', childrenDesired: 3, initiator: true, path: 'none',
        waiting: 'the peer initiates; taking over in 3s', mediation: { detail: 'the peer initiates; taking over in 3s' } }),
    ],
  }
  t.equal(formatStatus(doc, NOW).split('\n').slice(2).join('\n'), [
    'PEER               TYPE       ROLE       STATE    SINCE  CHILDREN  PATH      LAST ERROR',
    'mediator           Mediator   initiator  up       5s     -         direct',
    'beijing.connector  Connector  initiator  up       5s     3/3       direct',
    'beijing.edge1      EdgeNode   initiator  up       5s     3/3       mediated',
    'beijing.edge3      EdgeNode   initiator  waiting  5s     0/3       none      the peer initiates; taking over in 3s',
  ].join('\n'))
})
