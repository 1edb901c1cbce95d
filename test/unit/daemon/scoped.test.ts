// O(change) passes (issue 13): the real Agent with the real ipsets, routes and tunnels subsystems over in-memory
// ports that count every call. A one-peer config change is planned as a scoped pass (PassScope) that never lists
// the 10,000-entry objects (table 220, the sets, charon's connections and SAs) and writes exactly that peer's
// objects; a random walk of edits handled that way leaves a node that a deep pass finds converged (0 writes), and
// equal to what a fresh agent would write. Fault paths: a lost netlink notification, a foreign change seen by the
// deep pass, a route event naming its destination.
import t, { type Test } from 'tap'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { tmpdir } from 'node:os'
import { Agent } from '../../../src/daemon/agent.js'
import { Metrics } from '../../../src/daemon/metrics.js'
import { createLogger } from '../../../src/log.js'
import type { Family } from '../../../src/fabedge.js'
import { NetlinkError, type IpsetInfo, type IpsetResult, type Route, type RouteOp, type RouteResult, type Rule, type RuleResult, type RuleSpec } from '../../../src/netlink/index.js'
import { IpsetsSubsystem, type IpsetsPort } from '../../../src/reconcile/ipsets.js'
import { RoutesSubsystem, type RoutesPort } from '../../../src/reconcile/routes.js'
import { TunnelsSubsystem } from '../../../src/reconcile/tunnels-subsystem.js'
import { FakeCharon } from '../../harness/charon-fake.js'

const log = createLogger('silent')

class CountingRoutes implements RoutesPort {
  routes = new Map<string, Route>()
  rules: Rule[] = []
  calls: string[] = []
  async listRoutes(): Promise<Route[]> {
    this.calls.push('listRoutes')
    return [...this.routes.values()].map((r) => ({ ...r }))
  }
  async listRules(): Promise<Rule[]> {
    this.calls.push('listRules')
    return this.rules.map((r) => ({ ...r }))
  }
  async applyRoutes(ops: readonly RouteOp[]): Promise<RouteResult[]> {
    this.calls.push(`applyRoutes ${ops.length}`)
    return ops.map(({ op, route }) => {
      if (op === 'del') {
        if (!this.routes.delete(route.dst)) return { ok: false, reason: 'missing', error: NetlinkError.kernel(3, 'del') }
        return { ok: true }
      }
      this.routes.set(route.dst, { family: route.dst.includes(':') ? 6 : 4, dst: route.dst, via: route.via!, table: 220, protocol: route.protocol ?? 220, scope: 0, type: 1 })
      return { ok: true }
    })
  }
  async addRule(rule: RuleSpec): Promise<RuleResult> {
    this.rules.push({ family: rule.family, priority: rule.priority ?? 220, table: rule.table ?? 220, action: 1, protocol: rule.protocol! })
    return { ok: true }
  }
  async delRule(): Promise<RuleResult> {
    return { ok: true }
  }
  async defaultGateway(f: Family): Promise<string | undefined> {
    return f === 4 ? '192.0.2.1' : undefined
  }
}

class CountingIpsets implements IpsetsPort {
  sets = new Map<string, IpsetInfo>()
  calls: string[] = []
  async list(name: string): Promise<IpsetInfo | undefined> {
    this.calls.push(`list ${name}`)
    const s = this.sets.get(name)
    return s && { ...s, members: [...s.members] }
  }
  async create(name: string, family: Family): Promise<void> {
    this.sets.set(name, { name, type: 'hash:net', family, revision: 7, members: [] })
  }
  async addMany(name: string, members: readonly string[]): Promise<void> {
    this.calls.push(`add ${name} ${members.length}`)
    const s = this.sets.get(name)!
    s.members = [...new Set([...s.members, ...members])]
  }
  async delMany(name: string, members: readonly string[]): Promise<void> {
    this.calls.push(`del ${name} ${members.length}`)
    const s = this.sets.get(name)!
    const gone = new Set(members)
    s.members = s.members.filter((m) => !gone.has(m))
  }
  async destroy(name: string): Promise<IpsetResult> {
    return this.sets.delete(name) ? { ok: true } : { ok: false, reason: 'missing' }
  }
}

interface Peer { i: number; sub: number }
const peerYaml = (p: Peer): string => [
  `  - id: C=CN, O=fabedge.io, CN=e${p.i}`, `    name: e${p.i}`, '    publicAddresses:', `      - 172.20.${p.i >> 8}.${p.i & 255}`,
  '    subnets:', `      - 10.${100 + (p.i >> 8)}.${p.i & 255}.${p.sub}/28`, '    nodeSubnets:', `      - 172.21.${p.i >> 8}.${p.i & 255}`, '    type: EdgeNode',
].join('\n')
const configYaml = (peers: Peer[]): string => [
  'id: C=CN, O=fabedge.io, CN=conn', 'name: conn', 'publicAddresses:', '  - 172.19.0.1', 'subnets:', '  - 10.96.0.0/16', 'nodeSubnets:', '  - 172.19.0.1',
  'type: Connector', 'peers:', ...peers.map(peerYaml), '',
].join('\n')

function setup(t: Test, peers: Peer[]) {
  const dir = mkdtempSync(join(tmpdir(), 'ftscoped-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const configPath = join(dir, 'tunnels.yaml')
  writeFileSync(configPath, configYaml(peers))
  const charon = new FakeCharon('C=CN, O=fabedge.io, CN=conn')
  const routesPort = new CountingRoutes()
  const ipsetsPort = new CountingIpsets()
  let agent: Agent | null = null
  const tunnels = new TunnelsSubsystem(charon, { credentials: null, log, trigger: (r, conns) => agent?.trigger(r, conns) })
  const routes = new RoutesSubsystem(routesPort, log)
  const ipsets = new IpsetsSubsystem(ipsetsPort, log)
  agent = new Agent({
    configPath, datapath: 'xfrm', subsystems: [ipsets, routes, tunnels], gateways: () => routes.gateways(), log,
    metrics: new Metrics({ processMetrics: false }), coalesceMs: 1, resyncMs: 0,
  })
  t.teardown(() => agent!.stop())
  return { configPath, agent, charon, routesPort, ipsetsPort, routes, tunnels }
}

/** Runs one pass for `reason` (and its verification pass, if it wrote); returns every port call made meanwhile. */
async function pass(s: ReturnType<typeof setup>, reason: string, keys?: string[]) {
  const marks = [s.charon.calls.length, s.routesPort.calls.length, s.ipsetsPort.calls.length] as const
  const passes = s.agent.counters.passes
  const writes = s.agent.counters.writes
  s.agent.trigger(reason, keys)
  await s.agent.idle()
  return {
    records: s.agent.counters.passes - passes,
    writes: s.agent.counters.writes - writes,
    charon: s.charon.calls.slice(marks[0]),
    routes: s.routesPort.calls.slice(marks[1]),
    ipsets: s.ipsetsPort.calls.slice(marks[2]),
  }
}

const N = 400

t.test('a one-peer change is a scoped pass: no listing of routes, sets or connections; only its objects written', async (t) => {
  const peers = Array.from({ length: N }, (_, i) => ({ i, sub: 0 }))
  const s = setup(t, peers)
  s.agent.start()
  await s.agent.idle()
  t.ok(s.agent.ready, 'cold start converged')
  t.equal(s.charon.conns.size, N)
  t.equal(s.routesPort.routes.size, N)

  // Add one peer in the middle of the file.
  peers.splice(200, 0, { i: N, sub: 0 })
  writeFileSync(s.configPath, configYaml(peers))
  const add = await pass(s, 'config')
  t.equal(s.agent.lastPass?.scope?.conns, 1, 'the verification pass is scoped to the one connection too')
  t.same(add.routes, ['applyRoutes 1'], 'table 220 not listed; one route written')
  t.same(add.ipsets.sort(), ['add FABEDGE-REMOTE-NODE-CIDR 1', 'add FABEDGE-REMOTE-POD-CIDR 1'], 'no set listed; one member per set')
  t.notOk(add.charon.includes('listConns'), 'list-conns not called')
  t.ok(add.charon.filter((c) => c.startsWith('listSas')).every((c) => c === `listSas e${N}`), `SAs listed for the changed connection only: ${add.charon.filter((c) => c.startsWith('listSas'))}`)
  t.ok(add.charon.includes(`loadConn e${N}`), 'its connection loaded')
  const firstLoad = add.charon.indexOf(`loadConn e${N}`)
  t.notOk(add.charon.slice(0, firstLoad).includes(`listSas e${N}`), 'a connection charon does not have yet: no SA listing before it is loaded')
  t.ok(add.charon.slice(firstLoad).includes(`listSas e${N}`), 'once loaded, the verification pass lists its SAs')
  t.ok(s.charon.conns.has(`e${N}`) && s.routesPort.routes.has(`10.${100 + (N >> 8)}.${N & 255}.0/28`))

  // Change one peer's subnet, and remove another.
  peers[10] = { ...peers[10]!, sub: 16 }
  peers.splice(300, 1)
  writeFileSync(s.configPath, configYaml(peers))
  const change = await pass(s, 'config')
  t.same(change.routes, ['applyRoutes 3'], 'one route replaced by another, one deleted: one batch')
  t.notOk(change.charon.includes('listConns'))
  t.ok(change.charon.includes('unloadConn e299') && change.charon.includes('loadConn e10'), 'the removed peer unloaded, the changed one reloaded')
  t.notOk(change.routes.includes('listRoutes') || change.ipsets.some((c) => c.startsWith('list ')))

  // A deep pass looks at everything and finds nothing to do.
  const deep = await pass(s, 'resync')
  t.equal(deep.writes, 0, 'a deep pass after scoped passes writes nothing')
  t.ok(deep.routes.includes('listRoutes') && deep.charon.includes('listConns') && deep.ipsets.some((c) => c.startsWith('list ')), 'the deep pass lists everything')
})

t.test('random edits through scoped passes end where a fresh agent would: the deep pass and a fresh start write nothing', async (t) => {
  let seed = 5
  const rand = (): number => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31)
  let next = 60
  let peers = Array.from({ length: next }, (_, i) => ({ i, sub: 0 }))
  const s = setup(t, peers)
  s.agent.start()
  await s.agent.idle()
  let scoped = 0
  for (let step = 0; step < 40; step++) {
    const r = rand()
    if (r < 0.35) peers.splice(Math.floor(rand() * peers.length), 0, { i: next++, sub: 0 })
    else if (r < 0.6 && peers.length > 1) peers.splice(Math.floor(rand() * peers.length), 1)
    else if (r < 0.9) { const k = Math.floor(rand() * peers.length); peers[k] = { ...peers[k]!, sub: (peers[k]!.sub + 16) % 256 } }
    else peers = [...peers].reverse()
    writeFileSync(s.configPath, configYaml(peers))
    await pass(s, 'config')
    if (s.agent.lastPass?.scope) scoped++
    t.ok(s.agent.ready, `step ${step}: converged`)
  }
  t.ok(scoped >= 30, `most edits were scoped passes (${scoped} of 40)`)
  const deep = await pass(s, 'resync')
  t.equal(deep.writes, 0, 'the deep pass finds the scoped passes left nothing undone or stale')
  t.same([...s.charon.conns.keys()].sort(), peers.map((p) => `e${p.i}`).sort(), 'charon holds exactly the peers of the file')
  t.same([...s.routesPort.routes.keys()].sort(), peers.map((p) => `10.${100 + (p.i >> 8)}.${p.i & 255}.${p.sub}/28`).sort(), 'table 220 holds exactly their subnets')
  t.same([...s.ipsetsPort.sets.get('FABEDGE-REMOTE-POD-CIDR')!.members].sort(), peers.map((p) => `10.${100 + (p.i >> 8)}.${p.i & 255}.${p.sub}/28`).sort())
})

t.test('route notifications keep the mirror: a route deleted by hand is restored by the scoped pass its event starts', async (t) => {
  const peers = Array.from({ length: 20 }, (_, i) => ({ i, sub: 0 }))
  const s = setup(t, peers)
  s.agent.start()
  await s.agent.idle()
  const dst = '10.100.5.0/28'
  const gone = s.routesPort.routes.get(dst)!
  s.routesPort.routes.delete(dst)
  s.routes.observe('del', gone)
  const p = await pass(s, 'netlink:route-del', [dst])
  t.same(p.routes[0], 'applyRoutes 1', 'restored without listing the table')
  t.ok(s.routesPort.routes.has(dst))
  t.equal(s.agent.lastPass?.scope?.dsts, 1)

  // A change no notification reports (e.g. the monitor overran): scoped passes cannot see it, the deep pass does.
  s.routesPort.routes.delete(dst)
  const blind = await pass(s, 'config')
  t.equal(blind.writes, 0, 'a scoped pass trusts its mirror')
  const deep = await pass(s, 'resync')
  t.equal(deep.writes, 1, 'the deep pass lists table 220 and restores it')
  t.ok(s.routesPort.routes.has(dst))

  // A lost notification drops the mirror: the next pass, even a scoped one, lists the table.
  s.routes.observe('lost')
  const relist = await pass(s, 'netlink:route-del', [dst])
  t.ok(relist.routes.includes('listRoutes'), 'no mirror: listed again')
})

t.test('an SA event names its connection: the scoped pass lists only that connection\'s SAs', async (t) => {
  const peers = Array.from({ length: 20 }, (_, i) => ({ i, sub: 0 }))
  const s = setup(t, peers)
  s.agent.start()
  await s.agent.idle()
  const p = await pass(s, 'vici:child-updown', ['e7'])
  t.same(p.charon.filter((c) => c.startsWith('list')), ['listSas e7'])
  t.equal(p.writes, 0)
  const unnamed = await pass(s, 'vici:child-updown')
  t.ok(unnamed.charon.includes('listSas'), 'an event without names: every SA listed')
  // An event for a connection charon does not list (say, an SA up before the listing saw its connection) is asked.
  const unknown = await pass(s, 'vici:ike-updown', ['e99'])
  t.same(unknown.charon.filter((c) => c.startsWith('list')), ['listSas e99'], 'an event names an unknown connection: asked anyway')
})

t.test('the cheap views (peer counts for the gauges, tunnel states for the prober) say what peers() says', async (t) => {
  const peers = Array.from({ length: 12 }, (_, i) => ({ i, sub: 0 }))
  const s = setup(t, peers)
  s.agent.start()
  await s.agent.idle()
  const all = s.tunnels.peers()
  t.ok(all.length === 12, 'twelve peers')
  const p = all.filter((x) => x.name !== 'mediator')
  t.same(s.tunnels.peerCounts(), { desired: p.length, loaded: p.filter((x) => x.loaded).length, up: p.filter((x) => x.state === 'up').length, childSasUp: p.reduce((n, x) => n + x.childrenUp, 0) })
  const { peerTunnel } = await import('../../../src/probe/daemon.js')
  t.same(s.tunnels.tunnelStates(), new Map(all.map((x) => [x.name, peerTunnel(x)])))
})
