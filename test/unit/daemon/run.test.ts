// `fabtunnel run` wiring (startDaemon) on a node built from fakes (test/harness/fake-node.ts) and a stand-in netlink
// monitor: nothing here opens a netlink socket, runs iptables or reaches charon. What a user sees: the HTTP
// endpoints, every trigger starting a pass with its reason, SIGHUP's deep pass, and a stop that closes everything
// once and never hangs on a stuck pass.
import t, { type Test } from 'tap'
import { EventEmitter } from 'node:events'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { join } from 'node:path'
import { tmpdir } from 'node:os'
import { startDaemon, type ElectionOptions, type RouteMonitor, type Running } from '../../../src/daemon/run.js'
import { OptimizingCompiler } from '../../../src/heap-tuning.js'
import { LeadershipBase, type Leadership } from '../../../src/daemon/leader.js'
import type { NodeOptions } from '../../../src/daemon/node.js'
import type { Route, Rule } from '../../../src/netlink/index.js'
import { FakeCharon } from '../../harness/charon-fake.js'
import type { SaEventHandler } from '../../../src/reconcile/tunnels-port.js'
import { ConfigMapDir } from '../../harness/configmap.js'
import { fakeNode, memoryLogger, until, type FakeNode } from '../../harness/fake-node.js'

const FIX = new URL('../../fixtures/config/', import.meta.url).pathname
const EDGE = readFileSync(join(FIX, 'edge.yaml'), 'utf8')
const CONNECTOR = readFileSync(join(FIX, 'connector.yaml'), 'utf8')

interface Rig {
  running: Running
  fake: FakeNode
  monitor: EventEmitter & { closes: number }
  built: NodeOptions[]
  config: ConfigMapDir
  secrets: ConfigMapDir
  lines: Array<Record<string, unknown>>
  url(path: string): string
}

/** A leadership the test flips by hand (the vip and lease modes have their own tests). */
class ManualLeadership extends LeadershipBase {
  readonly mode = 'vip' as const
  releases = 0
  constructor(initial: boolean) {
    super(initial)
  }
  set(leader: boolean): void {
    this.setLeader(leader)
  }
  async start(): Promise<void> {}
  async release(): Promise<void> {
    this.releases++
  }
  async stop(): Promise<void> {}
}

async function rig(t: Test, opts: { config?: string; stopGraceMs?: number; charon?: FakeCharon; election?: ElectionOptions; leadership?: Leadership; compiler?: OptimizingCompiler } = {}): Promise<Rig> {
  const dir = mkdtempSync(join(tmpdir(), 'ftrun-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const config = await ConfigMapDir.create(join(dir, 'config'), { 'tunnels.yaml': opts.config ?? EDGE })
  const secrets = await ConfigMapDir.create(join(dir, 'secrets'), { 'tls.crt': 'cert v1', 'tls.key': 'key v1', 'ca.crt': 'ca v1' })
  const { log, lines } = await memoryLogger()
  const monitor = Object.assign(new EventEmitter(), { closes: 0, close() { monitor.closes++ } })
  const built: NodeOptions[] = []
  let fake: FakeNode | undefined
  const running = await startDaemon(
    {
      config: config.path('tunnels.yaml'), vici: 'unix:///nonexistent/charon.vici',
      cert: secrets.path('tls.crt'), key: secrets.path('tls.key'), ca: secrets.path('ca.crt'),
      listen: { host: '127.0.0.1', port: 0 }, datapath: 'libipsec', resyncMs: 0, log,
      ...(opts.stopGraceMs !== undefined ? { stopGraceMs: opts.stopGraceMs } : {}),
      ...(opts.election ? { election: opts.election } : {}),
    },
    {
      buildNode: async (o) => {
        built.push(o)
        fake = fakeNode({ config: o.config, cert: o.cert, key: o.key, ca: o.ca, log: o.log, ...(opts.charon ? { charon: opts.charon } : {}), ...(o.leader ? { leader: o.leader } : {}), ...(o.onConfig ? { onConfig: o.onConfig } : {}) })
        return fake.parts
      },
      openMonitor: () => monitor as unknown as RouteMonitor,
      ...(opts.leadership ? { leadership: async () => opts.leadership! } : {}),
      ...(opts.compiler ? { optimizingCompiler: () => opts.compiler! } : {}),
    },
  )
  t.teardown(() => running.stop())
  const r: Rig = {
    running, fake: fake!, monitor, built, config, secrets, lines,
    url: (path) => `http://${running.httpAddress.address}:${running.httpAddress.port}${path}`,
  }
  return r
}

const route = (over: Partial<Route>): Route => ({ family: 4, dst: '10.234.2.0/24', table: 220, protocol: 220, scope: 0, type: 1, ...over })

t.test('the daemon is built with credentials loaded, on its own HTTP port, and converges', async (t) => {
  const r = await rig(t)
  t.equal(r.built.length, 1)
  t.equal(r.built[0]!.credentials, true, 'the daemon loads credentials into charon (plan does not)')
  t.equal(r.running.httpAddress.address, '127.0.0.1')
  t.ok(r.running.httpAddress.port > 0, 'port 0 resolved to the bound port')
  t.ok(r.lines.some((l) => l.msg === 'HTTP endpoints up (/healthz /readyz /is-leader /metrics /status)' && l.listen === `127.0.0.1:${r.running.httpAddress.port}`))
  t.ok(r.fake.triggers.includes('start'), 'the agent was started')
  t.ok(await until(() => r.fake.parts.agent.ready), 'converged')
  t.ok(r.fake.charon.conns.has('beijing.connector'), 'the tunnels reached (fake) charon')
  t.ok(r.fake.routes.live.has('route-for:beijing.connector'), 'the routes subsystem applied')
})

t.test('HTTP: healthz, readyz flips after convergence, is-leader, status', async (t) => {
  // No config yet: up and healthy, not ready.
  const dir = mkdtempSync(join(tmpdir(), 'ftrun-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const r = await rig(t, { config: 'id: x\nname: [broken\n' })
  t.equal((await fetch(r.url('/healthz'))).status, 200)
  t.ok(await until(() => r.fake.parts.agent.lastPass !== null))
  t.equal((await fetch(r.url('/readyz'))).status, 503, 'not ready on a rejected config')
  const leader = await fetch(r.url('/is-leader'))
  t.equal(leader.status, 200)
  t.equal((await leader.text()).trim(), 'true', 'the sole leader')
  await r.config.update({ 'tunnels.yaml': EDGE })
  t.ok(await until(() => r.fake.parts.agent.ready), 'converged once the config is fixed')
  t.equal((await fetch(r.url('/readyz'))).status, 200, 'readyz flipped')
  const status = (await (await fetch(r.url('/status'))).json()) as Record<string, any>
  t.equal(status.ready, true)
  t.same(status.node, { name: 'beijing.edge1', type: 'EdgeNode', role: 'edge' })
  t.equal(status.datapath, 'libipsec')
  t.ok(status.peers.some((p: { name: string; type: string }) => p.name === 'beijing.connector' && p.type === 'Connector'))
  t.match((await (await fetch(r.url('/metrics'))).text()), /fabtunnel_passes_total/)
})

t.test('netlink monitor events start passes with their reasons; foreign ones do not', async (t) => {
  const r = await rig(t)
  t.ok(await until(() => r.fake.parts.agent.ready))
  const emit = (event: string, ...args: unknown[]) => r.monitor.emit(event, ...args)
  const n = r.fake.triggers.length
  emit('route', 'new', route({}))
  emit('route', 'del', route({ protocol: 4 }))
  emit('route', 'new', route({ table: 254, dst: '0.0.0.0/0', protocol: 16, via: '192.0.2.1' }))
  emit('route', 'new', route({ protocol: 4 }))
  emit('route', 'new', route({ table: 254, dst: '10.0.0.0/8' }))
  emit('rule', 'new', { family: 4, priority: 220, table: 220, action: 1 } satisfies Rule)
  emit('rule', 'del', { family: 4, priority: 100, table: 254, action: 1 } satisfies Rule)
  emit('resync')
  t.same(r.fake.triggers.slice(n), ['netlink:route-new', 'netlink:route-del', 'netlink:gateway', 'netlink:rule-new', 'netlink:resync'])
  const pass = () => r.fake.routes.contexts.find((c) => c.reasons.includes('netlink:resync'))
  t.ok(await until(() => pass() !== undefined), 'a pass ran for them')
  t.equal(pass()?.deep, true, 'an overrun (resync) re-observes everything')
  emit('error', new Error('undecodable datagram'))
  t.ok(r.lines.some((l) => l.msg === 'netlink monitor error' && l.err === 'undecodable datagram'), 'a monitor error is logged, not thrown')
})

t.test('a kubelet-style ..data swap of the config or the credentials starts a pass', async (t) => {
  const r = await rig(t)
  t.ok(await until(() => r.fake.parts.agent.ready))
  const since = (n: number) => r.fake.triggers.slice(n)
  const beforeConfig = r.fake.triggers.length
  await r.config.update({ 'tunnels.yaml': CONNECTOR })
  t.ok(await until(() => since(beforeConfig).includes('config')), 'config trigger')
  t.ok(await until(() => r.fake.parts.agent.configInForce?.local.name === 'beijing.connector'), 'the new config is in force')
  t.ok(await until(() => r.fake.parts.agent.ready))
  t.ok(r.fake.charon.conns.has('beijing.edge1'), 'and applied')
  const beforeSecrets = r.fake.triggers.length
  await r.secrets.update({ 'tls.crt': 'cert v2', 'tls.key': 'key v2', 'ca.crt': 'ca v2' })
  t.ok(await until(() => since(beforeSecrets).includes('credentials')), 'credentials trigger')
})

t.test('the optimizing and baseline compilers follow the size of each config accepted, with a log line when they change', async (t) => {
  const flags: string[] = []
  // Small means at most 2 peers here: the edge fixture has 2 (its connector and a community peer), the connector fixture 3.
  const r = await rig(t, { compiler: new OptimizingCompiler((f) => flags.push(f), '', 2) })
  t.ok(await until(() => r.fake.parts.agent.ready))
  t.same(flags, ['--no-turbofan', '--no-sparkplug'], 'an edge: off before its first pass')
  t.ok(r.lines.some((l) => l.msg === 'optimizing compiler off: the config is small' && l.peers === 2 && l.turbofan === false && l.sparkplug === false))
  await r.config.update({ 'tunnels.yaml': CONNECTOR })
  t.ok(await until(() => flags.length === 4), 'a config with more peers')
  t.same(flags, ['--no-turbofan', '--no-sparkplug', '--turbofan', '--sparkplug'], 'turns them on again')
  t.ok(r.lines.some((l) => l.msg === 'optimizing compiler on: the config is not small' && l.peers === 3 && l.turbofan === true && l.sparkplug === true))
  await r.config.update({ 'tunnels.yaml': CONNECTOR.replace('fabedge.io', 'fabedge.org') })
  t.ok(await until(() => r.fake.parts.agent.configState.generation === 3), 'another config of the same size')
  t.same(flags, ['--no-turbofan', '--no-sparkplug', '--turbofan', '--sparkplug'], 'no flag set when nothing changes')
})

t.test('SIGHUP runs a deep pass', async (t) => {
  const r = await rig(t)
  t.ok(await until(() => r.fake.parts.agent.ready))
  await r.fake.parts.agent.idle()
  r.running.sighup()
  t.equal(r.fake.triggers.at(-1), 'sighup')
  const pass = () => r.fake.routes.contexts.find((c) => c.reasons.includes('sighup'))
  t.ok(await until(() => pass() !== undefined), 'a pass ran for it')
  t.equal(pass()?.deep, true, 're-observes everything')
  t.equal(pass()?.credentials, true, 're-reads the credentials')
  t.ok(r.lines.some((l) => l.op === 'sighup'), 'logged')
})

t.test('stop is idempotent and closes HTTP, the monitor, the watch and the node once', async (t) => {
  const r = await rig(t)
  t.ok(await until(() => r.fake.parts.agent.ready))
  const a = r.running.stop()
  const b = r.running.stop()
  t.equal(a, b, 'one stop in progress')
  await a
  await r.running.stop()
  t.equal(r.monitor.closes, 1)
  t.equal(r.fake.closed.count, 1, 'the connections were closed once')
  await t.rejects(fetch(r.url('/healthz')), 'HTTP is closed')
  t.ok(r.lines.some((l) => typeof l.msg === 'string' && l.msg.startsWith('stopped; the data plane stays up')))
  t.notOk(r.lines.some((l) => l.msg === 'a pass is still in flight; closing the connections under it'), 'no pass was in flight')
  // The data plane stays up: stopping is not a cleanup.
  t.ok(r.fake.charon.conns.has('beijing.connector'))
  t.ok(r.fake.routes.live.size > 0)
  // A config change after stop starts nothing (the watch is closed).
  const n = r.fake.triggers.length
  await r.config.update({ 'tunnels.yaml': CONNECTOR })
  await new Promise((res) => setTimeout(res, 300))
  t.equal(r.fake.triggers.length, n, 'no trigger after stop')
})

t.test('stop respects the grace period with a stuck pass', async (t) => {
  const r = await rig(t, { stopGraceMs: 50 })
  t.ok(await until(() => r.fake.parts.agent.ready))
  r.fake.routes.stuck = true
  r.running.sighup()
  t.ok(await until(() => r.fake.routes.enteredStuck), 'a pass is stuck in the routes subsystem')
  await r.running.stop()
  t.ok(r.lines.some((l) => l.msg === 'a pass is still in flight; closing the connections under it' && l.graceMs === 50), 'reported')
  t.equal(r.fake.closed.count, 1, 'the connections under the stuck pass were closed')
  await t.rejects(fetch(r.url('/healthz')), 'HTTP is closed')
})

/** A charon whose first subscribe fails, as when the daemon starts before charon's socket exists. */
class LateCharon extends FakeCharon {
  failures_ = 1
  override async subscribe(h: SaEventHandler): Promise<void> {
    if (this.failures_-- > 0) throw new Error('connect ENOENT /var/run/charon.vici')
    return super.subscribe(h)
  }
}

t.test('charon unreachable at start-up: warned, start-up goes on, a pass subscribes later', async (t) => {
  const r = await rig(t, { charon: new LateCharon() })
  t.ok(r.running.httpAddress.port > 0, 'the daemon is up')
  t.ok(await until(() => r.lines.some((l) => l.msg === 'cannot reach charon yet; retrying with every pass' && l.err === 'connect ENOENT /var/run/charon.vici')), 'warned')
  t.ok(await until(() => r.fake.parts.agent.ready), 'converged once charon answered')
  t.ok(r.fake.charon.conns.has('beijing.connector'))
})

const metric = async (r: Rig, name: string): Promise<number | undefined> => {
  const text = await (await fetch(r.url('/metrics'))).text()
  const m = new RegExp(`^${name} (\\S+)$`, 'm').exec(text)
  return m ? Number(m[1]) : undefined
}

t.test('connector standby -> promotion -> demotion: one pass each; initiators only on the leader; demotion terminates own SAs', async (t) => {
  const leadership = new ManualLeadership(false)
  const r = await rig(t, { config: CONNECTOR, election: { mode: 'vip', vip: '10.40.10.180' }, leadership })
  t.ok(await until(() => r.fake.parts.agent.ready), 'a standby converges (ready) too')
  await r.fake.parts.agent.idle()
  const c = r.fake.charon
  t.ok(c.conns.has('beijing.edge1') && c.conns.has('shanghai.connector'), 'standby: every connection loaded (warm)')
  t.same(c.sas, [], 'standby: nothing initiated')
  const steering = () => [...r.fake.ipsets.live].filter((x) => x.startsWith('FABEDGE-REMOTE-'))
  t.same(steering(), [], 'standby: the steering sets are empty')
  t.ok([...r.fake.ipsets.live].some((x) => x.startsWith('FABEDGE-LOCAL-POD-CIDR:')), 'the local sets are there')
  t.equal(await (await fetch(r.url('/is-leader'))).text(), 'false')
  t.equal(await metric(r, 'fabtunnel_leader'), 0)
  let status = (await (await fetch(r.url('/status'))).json()) as any
  t.match(status.leadership, { mode: 'vip', leader: false, transitions: 0 })

  const passes = r.fake.parts.agent.counters.passes
  leadership.set(true)
  t.equal(r.fake.triggers.at(-1), 'leader:promoted', 'a change triggers a pass at once')
  t.ok(await until(() => c.installed().size > 0), 'promotion initiates the remote connector')
  await r.fake.parts.agent.idle()
  t.same([...c.installed().keys()].sort(), ['shanghai.connector-n2p', 'shanghai.connector-p2n', 'shanghai.connector-p2p'])
  t.ok(r.fake.parts.agent.counters.passes - passes <= 2, 'converged in the promotion pass (plus its verification pass)')
  t.equal(await (await fetch(r.url('/is-leader'))).text(), 'true')
  t.ok(steering().includes('FABEDGE-REMOTE-POD-CIDR:10.234.1.0/24'), 'the leader steers into the tunnels')
  t.equal(await metric(r, 'fabtunnel_leader'), 1)
  t.equal(await metric(r, 'fabtunnel_leader_transitions_total'), 1)
  status = (await (await fetch(r.url('/status'))).json()) as any
  t.match(status.leadership, { mode: 'vip', leader: true, transitions: 1 })

  // An edge dialled the VIP meanwhile (responder SA).
  c.sas.push({ name: 'beijing.edge1', uniqueid: '900', state: 'ESTABLISHED', localId: c.localId, children: [] })
  c.sas.push({ name: 'foreign-vpn', uniqueid: '901', state: 'ESTABLISHED', localId: 'x', children: [] })
  leadership.set(false)
  t.equal(r.fake.triggers.at(-1), 'leader:demoted')
  t.ok(await until(() => !c.sas.some((s) => s.name === 'beijing.edge1' || s.name === 'shanghai.connector')), 'demotion terminates our IKE_SAs')
  t.ok(c.sas.some((s) => s.name === 'foreign-vpn'), 'and only ours')
  t.ok(c.conns.has('beijing.edge1') && c.conns.has('shanghai.connector'), 'connections stay loaded')
  t.ok(r.lines.some((l) => l.op === 'demote' && l.terminated === 2), 'logged with the count')
  await r.fake.parts.agent.idle()
  await new Promise((res) => setTimeout(res, 50))
  t.notOk(c.sas.some((s) => s.name === 'shanghai.connector'), 'a standby does not re-initiate')
  t.same(steering(), [], 'demoted: steering sets emptied')
  t.equal(await metric(r, 'fabtunnel_leader_transitions_total'), 2)
})

t.test('SIGTERM on the leader: /healthz draining, release, then own SAs terminated; a standby terminates nothing', async (t) => {
  const leadership = new ManualLeadership(true)
  const r = await rig(t, { config: CONNECTOR, election: { mode: 'vip', vip: '10.40.10.180' }, leadership })
  t.ok(await until(() => r.fake.parts.agent.ready))
  await r.fake.parts.agent.idle()
  const c = r.fake.charon
  t.ok(c.sas.some((s) => s.name === 'shanghai.connector'), 'the leader initiated')
  c.sas.push({ name: 'beijing.edge1', uniqueid: '900', state: 'ESTABLISHED', localId: c.localId, children: [] })
  await r.running.stop()
  t.equal(leadership.releases, 1, 'leadership released')
  t.same(c.sas.filter((s) => s.name === 'beijing.edge1' || s.name === 'shanghai.connector'), [], 'own IKE_SAs terminated (DELETE to the edges)')
  t.ok(c.conns.has('beijing.edge1'), 'connections stay loaded (no teardown on stop)')
  t.ok(r.lines.some((l) => l.op === 'drain' && l.vip === '10.40.10.180' && l.terminated === 2))

  const standby = new ManualLeadership(false)
  const r2 = await rig(t, { config: CONNECTOR, election: { mode: 'vip', vip: '10.40.10.180' }, leadership: standby })
  t.ok(await until(() => r2.fake.parts.agent.ready))
  t.ok(await until(() => r2.lines.some((l) => l.op === 'standby-start' && l.terminated === 0)), 'started as standby: nothing of ours to end')
  r2.fake.charon.sas.push({ name: 'beijing.edge1', uniqueid: '900', state: 'ESTABLISHED', localId: c.localId, children: [] })
  await r2.running.stop()
  t.equal(r2.fake.charon.sas.length, 1, 'a standby stopping terminates nothing')
  t.notOk(r2.lines.some((l) => l.op === 'drain'))
})

t.test('a connector starting as standby ends the IKE_SAs of ours it finds (left from its time as leader), only ours', async (t) => {
  const charon = new FakeCharon()
  charon.sas.push({ name: 'beijing.edge1', uniqueid: '900', state: 'ESTABLISHED', localId: charon.localId, children: [] })
  charon.sas.push({ name: 'foreign-vpn', uniqueid: '901', state: 'ESTABLISHED', localId: 'x', children: [] })
  const r = await rig(t, { config: CONNECTOR, election: { mode: 'vip', vip: '10.40.10.180' }, leadership: new ManualLeadership(false), charon })
  t.ok(await until(() => !charon.sas.some((s) => s.name === 'beijing.edge1')), 'the stale edge SA is terminated')
  t.ok(charon.sas.some((s) => s.name === 'foreign-vpn'), 'a foreign SA stays')
  t.ok(r.lines.some((l) => l.op === 'standby-start' && l.terminated === 1), 'logged with the count')
  t.ok(charon.conns.has('beijing.edge1'), 'connections stay loaded')

  const leaderCharon = new FakeCharon()
  leaderCharon.sas.push({ name: 'beijing.edge1', uniqueid: '900', state: 'ESTABLISHED', localId: leaderCharon.localId, children: [] })
  const l = await rig(t, { config: CONNECTOR, election: { mode: 'vip', vip: '10.40.10.180' }, leadership: new ManualLeadership(true), charon: leaderCharon })
  t.ok(await until(() => l.fake.parts.agent.ready))
  await l.fake.parts.agent.idle()
  t.ok(leaderCharon.sas.some((s) => s.name === 'beijing.edge1'), 'a connector starting as leader keeps the SAs it finds (zero flap on restart)')
  t.notOk(l.lines.some((x) => x.op === 'standby-start' && (x.terminated as number) > 0))
})

t.test('demotion terminates own SAs after its pass while other triggers keep passes coming', async (t) => {
  const leadership = new ManualLeadership(true)
  const r = await rig(t, { config: CONNECTOR, election: { mode: 'vip', vip: '10.40.10.180' }, leadership })
  const charon = r.fake.charon
  t.ok(await until(() => charon.sas.some((s) => s.name === 'shanghai.connector')), 'the leader initiated')
  charon.sas.push({ name: 'beijing.edge1', uniqueid: '900', state: 'ESTABLISHED', localId: charon.localId, children: [] })
  // A flapping route in table 220 (someone else's tool): passes keep coming, the agent is never idle.
  const flap = setInterval(() => r.monitor.emit('route', 'new', route({})), 2)
  t.teardown(() => clearInterval(flap))
  leadership.set(false)
  t.ok(await until(() => !charon.sas.some((s) => s.name === 'beijing.edge1' || s.name === 'shanghai.connector')), 'own SAs terminated right after the demotion pass')
  clearInterval(flap)
})
