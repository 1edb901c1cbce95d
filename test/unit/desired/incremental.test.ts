// The incremental parser and desired-state builder against their whole-text counterparts: over a random walk of
// edits (add, remove, change a peer; change the head; v6 appearing), ConfigParser.parse equals parseConfig, and
// DesiredBuilder.build equals nodeDesired, field by field; every difference from the previous desired state is named
// in the delta (a delta that misses a key would leave a scoped pass blind to it).
import t, { type Test } from 'tap'
import { ConfigParser, parseConfig, splitPeers } from '../../../src/config/load.js'
import { DesiredBuilder, type DesiredDelta } from '../../../src/desired/incremental.js'
import { nodeDesired, type Desired, type NodeDesiredOptions } from '../../../src/desired/index.js'

interface Peer { i: number; sub: number; v6: boolean; type: 'EdgeNode' | 'Connector'; nodes: number }

function peerYaml(p: Peer, indent: string): string {
  const l = [
    `${indent}- id: C=CN, O=fabedge.io, CN=e${p.i}`,
    `${indent}  name: e${p.i}`,
    `${indent}  publicAddresses:`, `${indent}    - 172.20.${p.i >> 8}.${p.i & 255}`,
    `${indent}  subnets:`, `${indent}    - 10.${100 + (p.i >> 8)}.${p.i & 255}.${p.sub}/28`,
  ]
  if (p.v6) l.push(`${indent}    - fd00:${p.i.toString(16)}::/64`)
  l.push(`${indent}  nodeSubnets:`)
  for (let n = 0; n < p.nodes; n++) l.push(`${indent}    - 172.21.${p.i >> 8}.${(p.i & 255)}/32`.replace(/\/32$/, n ? '' : '/32'))
  l.push(`${indent}  type: ${p.type}`)
  return l.join('\n')
}

function configYaml(peers: Peer[], head: { sub: number; edge: boolean }, indent: string): string {
  return [
    `id: C=CN, O=fabedge.io, CN=${head.edge ? 'me' : 'conn'}`, `name: ${head.edge ? 'me' : 'conn'}`, 'publicAddresses:', '    - 172.19.0.1',
    'subnets:', `    - 10.${head.sub}.0.0/16`, 'nodeSubnets:', '    - 172.19.0.1', `type: ${head.edge ? 'EdgeNode' : 'Connector'}`,
    '# the peers', 'peers:', ...peers.map((p) => peerYaml(p, indent)), '',
  ].join('\n')
}

function rng(seed: number): () => number {
  let s = seed
  return () => ((s = (s * 1103515245 + 12345) % 2 ** 31) / 2 ** 31)
}

// After an incremental change, a changed or added peer's connection comes last (the order only matters for the
// first load of a node, which is always a full build): orders are compared on full builds only.
const materialize = (d: Desired, ordered = true): unknown => ({
  role: d.role, conns: d.conns, connOrder: ordered ? Object.keys(d.conns) : Object.keys(d.conns).sort(),
  initiate: ordered ? d.initiate : [...d.initiate].sort(), initiateChildren: d.initiateChildren,
  routes: d.routes, rules: d.rules, ipsets: Object.fromEntries(Object.entries(d.ipsets).map(([k, v]) => [k, { family: v.family, members: [...v.members] }])),
  iptables: d.iptables,
})

function checkDelta(t: Test, prev: Desired, next: Desired, delta: DesiredDelta): void {
  const names = new Set([...Object.keys(prev.conns), ...Object.keys(next.conns)])
  for (const n of names) {
    if (JSON.stringify(prev.conns[n]) !== JSON.stringify(next.conns[n]) && !delta.conns.has(n)) t.fail(`conn ${n} differs but is not in the delta`)
  }
  const routes = (d: Desired): Map<string, string> => new Map(d.routes.map((r) => [r.dst, JSON.stringify(r)]))
  const [a, b] = [routes(prev), routes(next)]
  for (const dst of new Set([...a.keys(), ...b.keys()])) if (a.get(dst) !== b.get(dst) && !delta.dsts.has(dst)) t.fail(`route ${dst} differs but is not in the delta`)
  for (const set of Object.keys(next.ipsets)) {
    const x = new Set(prev.ipsets[set]?.members ?? [])
    const y = new Set(next.ipsets[set]!.members)
    for (const m of new Set([...x, ...y])) if (x.has(m) !== y.has(m) && !delta.members.get(set)?.has(m)) t.fail(`member ${m} of ${set} differs but is not in the delta`)
  }
}

for (const [label, edge, datapath] of [['connector, xfrm', false, 'xfrm'], ['edge, xfrm', true, 'xfrm'], ['connector, libipsec', false, 'libipsec']] as const) {
  t.test(`random edits, ${label}: incremental == whole, delta names every difference`, async (t) => {
    const rand = rng(edge ? 7 : datapath === 'xfrm' ? 42 : 99)
    let next = 0
    const mk = (): Peer => ({ i: next++, sub: 0, v6: false, type: !edge && rand() < 0.05 ? 'Connector' : 'EdgeNode', nodes: 1 })
    let peers: Peer[] = Array.from({ length: 40 }, mk)
    const head = { sub: 96, edge }
    const parser = new ConfigParser()
    // The agent's path: the file's bytes (parseBytes), compared the same way.
    const byBytes = new ConfigParser()
    let patched = 0
    const builder = new DesiredBuilder()
    const opts: NodeDesiredOptions = { datapath, gateways: { 4: '10.0.0.1', 6: 'fd00::1' } }
    let prev: Desired | null = null
    let incremental = 0
    let deltas = 0
    for (let step = 0; step < 80; step++) {
      const r = rand()
      if (r < 0.3) peers.splice(Math.floor(rand() * (peers.length + 1)), 0, mk())
      else if (r < 0.55 && peers.length > 1) peers.splice(Math.floor(rand() * peers.length), 1)
      else if (r < 0.8 && peers.length) { const k = Math.floor(rand() * peers.length); peers[k] = { ...peers[k]!, sub: (peers[k]!.sub + 16) % 256 } }
      else if (r < 0.85 && peers.length) { const k = Math.floor(rand() * peers.length); peers[k] = { ...peers[k]!, v6: !peers[k]!.v6 } }
      else if (r < 0.88) head.sub = head.sub === 96 ? 97 : 96
      else if (r < 0.9) peers = [...peers].reverse()
      // else: the same text again
      const text = configYaml(peers, head, step % 10 === 0 ? '' : '    ')
      const whole = parseConfig(text)
      const inc = parser.parse(text)
      t.same(inc, whole, `step ${step}: same config`)
      if (!parser.last.whole) incremental++
      t.same(byBytes.parseBytes(Buffer.from(text)), whole, `step ${step}: same config from the bytes`)
      if (byBytes.last.bytes) patched++
      const want = nodeDesired(whole.config, undefined, opts)
      const got = builder.build(inc.config, undefined, opts, parser.change)
      t.same(materialize(got.desired, got.delta === null), materialize(want, got.delta === null), `step ${step}: same desired state`)
      if (prev && got.delta) {
        deltas++
        checkDelta(t, prev, got.desired, got.delta)
      }
      prev = got.desired
    }
    t.ok(incremental > 40, `the incremental parse path was taken (${incremental} of 80)`)
    t.ok(deltas > 25, `the builder produced deltas (${deltas} of 80)`)
    t.ok(patched > 30, `the byte-level path was taken (${patched} of 80)`)
  })
}

t.test('a full build says why (the agent logs it with the pass that planned everything)', async (t) => {
  const parser = new ConfigParser()
  const builder = new DesiredBuilder()
  const peer = (i: number, type: Peer['type'] = 'EdgeNode'): Peer => ({ i, sub: 0, v6: false, type, nodes: 1 })
  let peers = [peer(0), peer(1), peer(2)]
  const head = { sub: 96, edge: false }
  let opts: NodeDesiredOptions = { datapath: 'xfrm', gateways: { 4: '10.0.0.1' } }
  const build = (role?: 'cloud') => {
    const { config } = parser.parse(configYaml(peers, head, '    '))
    const r = builder.build(config, role, opts, parser.change)
    return { delta: r.delta === null ? null : 'delta', ...builder.stats }
  }
  t.match(build(), { delta: null, full: true, why: 'first' })
  t.match(build(), { delta: 'delta', full: false, why: null }, 'the same config: nothing derived')
  opts = { datapath: 'xfrm', gateways: {} }
  t.match(build(), { delta: null, why: 'context' }, 'the default gateway gone')
  peers = [...peers, peer(3)]
  t.match(build(), { delta: 'delta', full: false, why: null, derived: 1 }, 'an edge peer added: that peer alone')
  peers = [...peers, peer(4, 'Connector')]
  t.match(build(), { delta: null, why: 'connector-peer' })
  head.sub = 97
  t.match(build(), { delta: null, why: 'local' })
  t.match(build('cloud'), { delta: null, why: 'role' })
})

t.test('splitPeers: plain block layouts split per item; anything else is left to the whole parse', async (t) => {
  const s = splitPeers('name: x\npeers:\n  - name: a\n    type: EdgeNode\n  # c\n  - name: b\nmediator:\n  name: m\n')
  t.same(s?.chunks, ['  - name: a\n    type: EdgeNode\n  # c\n', '  - name: b\n'])
  t.equal(s?.head, 'name: x\npeers:\nmediator:\n  name: m\n')
  t.same(splitPeers('peers:\n- name: a\n- name: b\ntype: x\n')?.chunks, ['- name: a\n', '- name: b\n'], 'a sequence at the key\'s own indent')
  t.equal(splitPeers('peers: [a, b]\n'), null, 'flow sequence')
  t.equal(splitPeers('peers:\n  [a]\n'), null)
  t.equal(splitPeers('---\npeers:\n  - a\n'), null, 'document marker')
  t.equal(splitPeers('peers:\n\t- a\n'), null, 'tab')
  t.equal(splitPeers('peers:\n  - a\npeers:\n  - b\n'), null, 'two peers keys')
  t.same(splitPeers('name: x\n')?.chunks, [], 'no peers')
})

t.test('ConfigParser: an anchor shared across peers and a peer with a warning go through the whole parse', async (t) => {
  const p = new ConfigParser()
  const base = 'id: a\nname: a\ntype: Connector\nsubnets:\n  - 10.1.0.0/16\npeers:\n'
  const anchored = `${base}  - &e\n    id: b\n    name: b\n    type: EdgeNode\n    subnets: [10.2.0.0/16]\n`
  t.same(p.parse(anchored), parseConfig(anchored))
  t.equal(p.last.whole, true)
  const warned = `${base}  - id: b\n    name: b\n    type: EdgeNode\n    subnets: [10.2.0.1/16]\n`
  t.same(p.parse(warned), parseConfig(warned))
  t.equal(p.last.whole, true, 'host bits: a warning, reported with its line by the whole parse')
  t.ok(p.parse(warned).warnings.length === 1)
  const dup = `${base}  - id: b\n    name: b\n    type: EdgeNode\n  - id: c\n    name: b\n    type: EdgeNode\n`
  t.throws(() => p.parse(dup), /duplicate peer name/)
  const ok = `${base}  - id: b\n    name: b\n    type: EdgeNode\n    subnets: [10.2.0.0/16]\n`
  p.parse(ok)
  const overlap = `${ok}  - id: c\n    name: c\n    type: EdgeNode\n    subnets: [10.2.1.0/24]\n`
  t.throws(() => p.parse(overlap), /overlaps/, 'a new peer overlapping an unchanged one is caught')
  t.same(p.parse(ok), parseConfig(ok))
})
