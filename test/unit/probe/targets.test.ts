// Which address pair probes each peer: from the config in force and this node's addresses.
import t from 'tap'
import type { Endpoint } from '../../../src/config/schema.js'
import { parseCidr } from '../../../src/config/cidr.js'
import { firstHost, probeTarget, probeTargets, MAX_CANDIDATES } from '../../../src/probe/targets.js'

const ep = (name: string, subnets: string[], nodeSubnets: string[]): Endpoint =>
  ({ id: `CN=${name}`, name, publicAddresses: ['192.0.2.1'], subnets, nodeSubnets, type: 'EdgeNode', port: null }) as Endpoint

const cidr = (s: string) => { const r = parseCidr(s); if (!r.ok) throw new Error(s); return r.cidr }

t.test('firstHost', async (t) => {
  t.equal(firstHost(cidr('10.81.2.0/24')), '10.81.2.1')
  t.equal(firstHost(cidr('10.78.1.2/32')), '10.78.1.2')
  t.equal(firstHost(cidr('10.0.0.0/31')), '10.0.0.0')
  t.equal(firstHost(cidr('fd00:1::/64')), 'fd00:1::1')
})

t.test('edge -> connector: from our pod gateway to the connector\'s most specific pod subnet, then the others', async (t) => {
  const local = ep('edge1', ['10.81.2.0/24'], ['10.78.1.2/32'])
  const connector = ep('connector', ['10.91.0.0/16', '10.81.1.0/24', '10.81.4.0/24'], ['10.78.1.1/32'])
  const r = probeTarget(local, connector, ['127.0.0.1', '10.77.1.2', '10.81.2.1', '10.78.1.2'])
  t.same(r.pairs, [
    { family: 4, src: '10.81.2.1', dst: '10.81.1.1' },
    { family: 4, src: '10.81.2.1', dst: '10.81.4.1' },
    { family: 4, src: '10.81.2.1', dst: '10.91.0.1' },
    { family: 4, src: '10.81.2.1', dst: '10.78.1.1' },
  ])
  t.equal(r.pairs.length, MAX_CANDIDATES)
})

t.test('no pod address here: node IP as source, pods only as target (no node-node child)', async (t) => {
  const local = ep('edge1', ['10.81.2.0/24'], ['10.78.1.2/32'])
  const peer = ep('edge2', ['10.81.3.0/24'], ['10.78.1.3/32'])
  t.same(probeTarget(local, peer, ['10.78.1.2']).pairs, [{ family: 4, src: '10.78.1.2', dst: '10.81.3.1' }])
})

t.test('the pod gateway is preferred over other local pod addresses; IPv6 too', async (t) => {
  const local = ep('edge1', ['10.81.2.0/24', 'fd00:2::/64'], [])
  const peer = ep('edge2', ['fd00:3::/64'], [])
  t.same(probeTarget(local, peer, ['10.81.2.7', 'fd00:2::9', 'fd00:2::1']).pairs, [{ family: 6, src: 'fd00:2::1', dst: 'fd00:3::1' }])
})

t.test('no usable pair: unknown with a reason', async (t) => {
  const local = ep('edge1', ['10.81.2.0/24'], [])
  t.match(probeTarget(local, ep('edge2', ['10.81.3.0/24'], []), ['10.77.1.2']), { pairs: [], reason: /no local address/ })
  t.match(probeTarget(local, ep('edge2', [], []), ['10.81.2.1']), { pairs: [], reason: /no subnets/ })
  t.match(probeTarget(local, ep('edge2', ['fd00:3::/64'], []), ['10.81.2.1']), { pairs: [], reason: /no local address/ }, 'families must match')
})

t.test('probeTargets: one entry per peer of the config', async (t) => {
  const local = ep('edge1', ['10.81.2.0/24'], [])
  const m = probeTargets({ local, peers: [ep('a', ['10.81.3.0/24'], []), ep('b', [], [])], mediator: null } as never, ['10.81.2.1'])
  t.same([...m.keys()], ['a', 'b'])
  t.equal(m.get('a')!.pairs.length, 1)
  t.equal(m.get('b')!.pairs.length, 0)
})
