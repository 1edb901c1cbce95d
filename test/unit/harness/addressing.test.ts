import t from 'tap'
import { mkdtemp, readFile, readlink, readdir, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { parseConfig } from '../../../src/config/load.js'
import { desiredState } from '../../../src/desired/index.js'
import {
  defaultTopology,
  planTopology,
  renderTunnelsYaml,
  starTopology,
  tunnelsView,
  TopologySpecError,
  type NodePlan,
} from '../../harness/addressing.js'
import { ConfigMapDir } from '../../harness/configmap.js'
import { classifyCapture } from '../../harness/matrix.js'

const plan = planTopology(defaultTopology())
const node = (name: string): NodePlan => plan.clusters.flatMap((c) => c.nodes).find((n) => n.fullName === name)!

t.test('default topology: addresses follow the documented plan', async (t) => {
  t.same(plan.gateways.map((g) => g.fullName), ['beijing.connector', 'beijing.edge1', 'beijing.edge2', 'shanghai.connector'])
  const c = node('beijing.connector')
  t.equal(c.publicIp, '10.77.1.1')
  t.equal(c.nodeIp, '10.78.1.1')
  t.same(c.podbrAddrs, ['10.81.1.1/24', '10.78.1.1/32', '10.91.0.10/32', '10.81.2.254/32'], 'pod gw, node IP, ClusterIP, cloud anchor')
  t.same(c.routes, [{ dst: '10.81.2.0/24', via: '10.79.1.2' }], 'connector routes cloud pods into the LAN')
  const cloud = node('beijing.cloud1')
  t.equal(cloud.publicIp, null, 'cloud node has no underlay address')
  t.equal(cloud.lanCidr, '10.79.1.2/24')
  t.same(cloud.routes, [{ dst: 'default', via: '10.79.1.1' }])
  const e1 = node('beijing.edge1')
  t.equal(e1.id, 'C=CN, O=fabedge.io, CN=beijing.edge1')
  t.same(e1.pods, [{ name: 'beijing.edge1.pod1', ip: '10.81.3.10' }])
  t.equal(node('shanghai.connector').pods[0]!.ip, '10.82.1.10')
  t.equal(plan.clusters[1]!.serviceIp, '10.92.0.10')
})

t.test('node IPs never equal IKE addresses, and every gateway owns an address in each of its local subnets', async (t) => {
  for (const g of plan.gateways) {
    t.not(g.nodeIp, g.publicIp, `${g.fullName}: node IP differs from the IKE address`)
    const { config } = parseConfig(renderTunnelsYaml(tunnelsView(plan, g)), g.fullName)
    const owned = g.podbrAddrs.map((a) => a.split('/')[0]!)
    for (const cidr of [...config.local.subnets, ...config.local.nodeSubnets]) {
      const [base, len] = cidr.split('/')
      const n = (ip: string): number => ip.split('.').reduce((a, o) => a * 256 + Number(o), 0)
      const mask = len === '0' ? 0 : (0xffffffff << (32 - Number(len))) >>> 0
      t.ok(owned.some((ip) => ((n(ip) & mask) >>> 0) === ((n(base!) & mask) >>> 0)), `${g.fullName} owns an address in ${cidr}`)
    }
  }
})

t.test('tunnels.yaml: operator layout, accepted by the config loader, FabEdge peer shape', async (t) => {
  const yaml = renderTunnelsYaml(tunnelsView(plan, node('beijing.edge1')))
  t.equal(
    yaml,
    `id: C=CN, O=fabedge.io, CN=beijing.edge1
name: beijing.edge1
publicAddresses:
    - 10.77.1.3
subnets:
    - 10.81.3.0/24
nodeSubnets:
    - 10.78.1.3
type: EdgeNode
peers:
    - id: C=CN, O=fabedge.io, CN=beijing.connector
      name: beijing.connector
      publicAddresses:
        - 10.77.1.1
      subnets:
        - 10.91.0.0/16
        - 10.81.1.0/24
        - 10.81.2.0/24
      nodeSubnets:
        - 10.78.1.1
      type: Connector
    - id: C=CN, O=fabedge.io, CN=beijing.edge2
      name: beijing.edge2
      publicAddresses:
        - 10.77.1.4
      subnets:
        - 10.81.4.0/24
      nodeSubnets:
        - 10.78.1.4
      type: EdgeNode
`,
  )
  for (const g of plan.gateways) {
    const { config, warnings } = parseConfig(renderTunnelsYaml(tunnelsView(plan, g)), g.fullName)
    t.same(warnings, [], `${g.fullName}: no warnings`)
    t.ok(desiredState(config, { datapath: 'libipsec' }), `${g.fullName}: desired state derives`)
  }
  const bj = parseConfig(renderTunnelsYaml(tunnelsView(plan, node('beijing.connector')))).config
  t.same(bj.peers.map((p) => `${p.name}:${p.type}`), ['beijing.edge1:EdgeNode', 'beijing.edge2:EdgeNode', 'shanghai.connector:Connector'])
  t.same(bj.peers[2]!.subnets, ['10.92.0.0/16', '10.82.1.0/24'], 'remote connector carries service CIDR first, then pods')
})

t.test('mediated mesh writes a mediator; edge sets limit the peers', async (t) => {
  const spec = defaultTopology()
  spec.edgeMesh = 'mediated'
  const p = planTopology(spec)
  const e1 = p.gateways.find((g) => g.fullName === 'beijing.edge1')!
  const view = tunnelsView(p, e1)
  t.equal(view.mediator?.name, 'mediator')
  t.same(view.mediator?.publicAddresses, ['10.77.1.1'])
  const cfg = parseConfig(renderTunnelsYaml(view)).config
  t.equal(cfg.mediator?.id, 'C=CN, O=fabedge.io, CN=beijing.connector')
  const alone = tunnelsView(p, p.gateways[0]!, new Set(['beijing.edge1']))
  t.same(alone.peers.map((x) => x.name), ['beijing.edge1', 'shanghai.connector'], 'connector sees only active edges')
  t.equal(alone.mediator, null, 'no mediator with fewer than two edges')
})

t.test('star topology for the benchmark', async (t) => {
  const p = planTopology(starTopology(20))
  t.equal(p.gateways.length, 21)
  t.equal(p.gateways[20]!.publicIp, '10.77.1.21')
  t.equal(p.gateways[20]!.podCidr, '10.81.21.0/24')
})

t.test('bad specs are typed errors', async (t) => {
  t.throws(() => planTopology({ clusters: [] }), TopologySpecError)
  t.throws(() => planTopology({ clusters: [{ name: 'a', nodes: [{ name: 'e', role: 'edge' }] }] }), /exactly one connector/)
  t.throws(() => planTopology({ clusters: [{ name: 'A b', nodes: [] }] }), /bad cluster name/)
  t.throws(() => planTopology({ clusters: [{ name: 'a', nodes: [{ name: 'connector', role: 'connector' }, { name: 'x', role: 'edge', pods: -1 }] }] }), /pods must be/)
  t.throws(() => planTopology({ ...defaultTopology(), communities: [['beijing', 'nowhere']] }), /unknown cluster/)
  t.throws(() => tunnelsView(plan, node('beijing.cloud1')), /cloud node/)
})

t.test('underlay capture classification', async (t) => {
  const r = classifyCapture(
    [
      '19:40:01.1 vu1 P   IP 10.77.1.3.4500 > 10.77.1.1.4500: UDP-encap: ESP(spi=0x1,seq=0x2), length 132',
      '19:40:01.2 vu1 P   IP 10.77.1.3.500 > 10.77.1.1.500: isakmp: parent_sa ikev2_init[I]',
      '19:40:01.3 vu1 P   ARP, Request who-has 10.77.1.1 tell 10.77.1.3, length 28',
      '19:40:01.4 vu1 P   IP 10.81.3.10 > 10.81.2.10: ICMP echo request, id 1, seq 1, length 64',
      '',
    ].join('\n'),
  )
  t.same({ ...r, plaintext: r.plaintext.length }, { packets: 4, esp: 1, ike: 1, plaintext: 1, captured: null, dropped: null, truncated: false })
  t.match(r.plaintext[0], /ICMP echo request/)
})

t.test('ConfigMap directory: kubelet layout and atomic ..data swap', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'ft-cm-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const cm = await ConfigMapDir.create(join(dir, 'cm'), { 'tunnels.yaml': 'a: 1\n' })
  t.equal(await readlink(cm.path('tunnels.yaml')), '..data/tunnels.yaml')
  const first = await readlink(join(dir, 'cm', '..data'))
  t.match(first, /^\.\.\d{4}_\d\d_\d\d_\d\d_\d\d_\d\d\.\d+$/)
  await cm.update({ 'tunnels.yaml': 'a: 2\n' })
  t.equal(await readFile(cm.path('tunnels.yaml'), 'utf8'), 'a: 2\n')
  const second = await readlink(join(dir, 'cm', '..data'))
  t.not(second, first)
  t.same((await readdir(join(dir, 'cm'))).sort(), [second, '..data', 'tunnels.yaml'].sort(), 'old data dir removed, no temp link left')
})

t.test('edges behind NAT: a NAT per edge, or one shared; peers see the NAT, charon speaks from inside', async (t) => {
  const spec = starTopology(2)
  spec.edgeMesh = 'mediated'
  spec.edgeNat = 'each'
  const p = planTopology(spec)
  const [c, e1, e2] = p.clusters[0]!.nodes
  t.equal(c!.nat, null, 'the connector is on the underlay')
  t.equal(c!.ikeIp, c!.publicIp)
  t.same(e1!.nat, { name: 'nat-beijing.edge1', publicIp: '10.77.101.2', insideIp: '172.17.2.1', insideCidr: '172.17.2.0/24' })
  t.equal(e1!.publicIp, '10.77.101.2', "FabEdge's publicAddresses: the NAT's address")
  t.equal(e1!.ikeIp, '172.17.2.2')
  t.equal(e2!.nat!.publicIp, '10.77.101.3')
  t.equal(p.nats.length, 2)
  t.same(tunnelsView(p, e1!).local.publicAddresses, ['10.77.101.2'])
  spec.edgeNat = 'shared'
  const s = planTopology(spec)
  const [, s1, s2] = s.clusters[0]!.nodes
  t.equal(s1!.nat, s2!.nat, 'one NAT object for both')
  t.equal(s.nats.length, 1)
  t.same([s1!.ikeIp, s2!.ikeIp, s1!.publicIp], ['172.17.0.3', '172.17.0.4', '10.77.201.1'])
})
