import t, { type Test } from 'tap'
import { mkdtempSync, rmSync, writeFileSync, readFileSync, renameSync } from 'node:fs'
import { join } from 'node:path'
import { tmpdir } from 'node:os'
import { Agent } from '../../../src/daemon/agent.js'
import { Metrics } from '../../../src/daemon/metrics.js'
import { createLogger } from '../../../src/log.js'
import type { Desired } from '../../../src/desired/types.js'
import { passContext, type PassContext, type Subsystem, type SubsystemName, type SubsystemPlan } from '../../../src/reconcile/subsystem.js'

const FIX = new URL('../../fixtures/config/', import.meta.url).pathname

/** A fake subsystem holding a "live" state that converges to the members of one desired set. */
class FakeSubsystem implements Subsystem {
  live = new Set<string>()
  applied: string[][] = []
  failPlan: Error | null = null
  calls: string[] = []
  constructor(readonly name: SubsystemName, private readonly pick: (d: Desired) => string[], private readonly log: string[]) {}
  async plan(d: Desired, _ctx: PassContext): Promise<SubsystemPlan & { add: string[] }> {
    this.log.push(`${this.name}:plan`)
    if (this.failPlan) throw this.failPlan
    const add = this.pick(d).filter((x) => !this.live.has(x))
    return { add, writes: add.length, describe: () => add.map((a) => `add ${a}`) }
  }
  async apply(p: SubsystemPlan & { add: string[] }): Promise<number> {
    this.log.push(`${this.name}:apply`)
    for (const a of p.add) this.live.add(a)
    this.applied.push(p.add)
    return p.add.length
  }
}

function setup(t: Test) {
  const dir = mkdtempSync(join(tmpdir(), 'ftagent-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const configPath = join(dir, 'tunnels.yaml')
  const order: string[] = []
  const ipsets = new FakeSubsystem('ipsets', (d) => Object.entries(d.ipsets).flatMap(([n, s]) => s.members.map((m) => `${n}:${m}`)), order)
  const tunnels = new FakeSubsystem('tunnels', (d) => Object.keys(d.conns), order)
  const metrics = new Metrics({ processMetrics: false })
  const agent = new Agent({ configPath, datapath: 'libipsec', subsystems: [ipsets, tunnels], log: createLogger('silent'), metrics, coalesceMs: 1, resyncMs: 0 })
  t.teardown(() => agent.stop())
  return { dir, configPath, agent, ipsets, tunnels, order, metrics }
}

t.test('converges from config, in subsystem order, then a pass writes nothing', async (t) => {
  const { configPath, agent, ipsets, tunnels, order } = setup(t)
  writeFileSync(configPath, readFileSync(join(FIX, 'connector.yaml')))
  agent.start()
  await agent.idle()
  t.ok(agent.ready)
  t.same(order.slice(0, 4), ['ipsets:plan', 'ipsets:apply', 'tunnels:plan', 'tunnels:apply'], 'ipsets before tunnels')
  t.same([...tunnels.live].sort(), ['beijing.edge1', 'beijing.edge2', 'mediator', 'shanghai.connector'])
  t.ok(ipsets.live.has('FABEDGE-LOCAL-POD-CIDR:10.233.0.0/18'))
  t.equal(agent.lastPass?.reasons.includes('verify'), true, 'a pass that wrote is followed by a verification pass')
  t.same(agent.lastPass?.writes, {}, 'the verification pass wrote nothing')
  const writes = agent.counters.writes
  agent.trigger('resync')
  await agent.idle()
  t.equal(agent.counters.writes, writes, 'converged: zero writes')
})

t.test('bad config keeps the last good one and recovers when fixed', async (t) => {
  const { configPath, agent, tunnels, metrics } = setup(t)
  writeFileSync(configPath, readFileSync(join(FIX, 'edge.yaml')))
  agent.start()
  await agent.idle()
  const before = [...tunnels.live].sort()
  t.equal(agent.configState.generation, 1)
  writeFileSync(configPath, 'id: x\nname: [broken\n')
  agent.trigger('config')
  await agent.idle()
  t.equal(agent.configState.generation, 1, 'still the last good config')
  t.match(agent.configState.rejected, { errors: [{ message: /YAML syntax/ }] })
  t.same([...tunnels.live].sort(), before, 'nothing changed on the node')
  t.ok(agent.ready, 'still serving and converged on the last good config')
  t.match(await metrics.registry.getSingleMetricAsString('fabtunnel_config_reload_errors_total'), /fabtunnel_config_reload_errors_total 1/)
  // kubelet-style atomic replace with a fixed file
  writeFileSync(`${configPath}.new`, readFileSync(join(FIX, 'connector.yaml')))
  renameSync(`${configPath}.new`, configPath)
  agent.trigger('config')
  await agent.idle()
  t.equal(agent.configState.generation, 2)
  t.equal(agent.configState.rejected, null)
  t.ok(tunnels.live.has('shanghai.connector'))
})

t.test('missing config: not ready, waits, converges when the file appears', async (t) => {
  const { configPath, agent } = setup(t)
  agent.start()
  await agent.idle()
  t.notOk(agent.ready)
  t.match(agent.configState.rejected, { message: /does not exist yet/ })
  writeFileSync(configPath, readFileSync(join(FIX, 'edge.yaml')))
  // the agent looks again within about a second without any trigger
  const deadline = Date.now() + 3000
  while (!agent.ready && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50))
  t.ok(agent.ready, 'ready once the file exists')
})

t.test('a failing subsystem is reported, the others still converge, and it is retried with backoff', async (t) => {
  const { configPath, agent, ipsets, tunnels } = setup(t)
  writeFileSync(configPath, readFileSync(join(FIX, 'edge.yaml')))
  ipsets.failPlan = new Error('netlink down')
  agent.start()
  await agent.idle()
  t.notOk(agent.ready)
  t.match(agent.lastPass?.errors, { ipsets: 'netlink down' })
  t.ok(tunnels.live.size > 0, 'tunnels converged regardless')
  ipsets.failPlan = null
  const deadline = Date.now() + 3000
  while (!agent.ready && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20))
  t.ok(agent.ready, 'the retry converged without any external trigger')
})

t.test('an unreadable certificate keeps the last good one in every connection: no mass reload', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ftagent-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const configPath = join(dir, 'tunnels.yaml')
  writeFileSync(configPath, readFileSync(join(FIX, 'edge.yaml')))
  let cert: string | Error = '-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n'
  const agent = new Agent({
    configPath, datapath: 'libipsec', subsystems: [], log: createLogger('silent'), metrics: new Metrics({ processMetrics: false }), coalesceMs: 1, resyncMs: 0,
    certPem: async () => {
      if (cert instanceof Error) throw cert
      return cert
    },
  })
  t.teardown(() => agent.stop())
  await agent.reloadConfig()
  const good = await agent.desired(passContext(['start']))
  const section = Object.values(good!.conns)[0] as { local: { certs?: string[] } }
  t.same(section.local.certs, [cert], 'the certificate is in local.certs')

  cert = new Error('/etc/ipsec.d/certs/tls.crt: no PEM CERTIFICATE block found')
  const broken = await agent.desired(passContext(['credentials']))
  t.equal(broken, good, 'the same desired state (same section objects): nothing is reloaded')
  t.match(agent.certError, /no PEM CERTIFICATE block/, 'the problem is reported')

  cert = '-----BEGIN CERTIFICATE-----\nBBBB\n-----END CERTIFICATE-----\n'
  const rotated = await agent.desired(passContext(['credentials']))
  t.not(rotated, good)
  t.same((Object.values(rotated!.conns)[0] as { local: { certs?: string[] } }).local.certs, [cert], 'a good new certificate takes over')
  t.equal(agent.certError, null)
})

t.test('a certificate that was never readable: connections without local.certs, and it is reported', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ftagent-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const configPath = join(dir, 'tunnels.yaml')
  writeFileSync(configPath, readFileSync(join(FIX, 'edge.yaml')))
  const agent = new Agent({
    configPath, datapath: 'libipsec', subsystems: [], log: createLogger('silent'), metrics: new Metrics({ processMetrics: false }), coalesceMs: 1, resyncMs: 0,
    certPem: async () => { throw new Error('ENOENT') },
  })
  t.teardown(() => agent.stop())
  await agent.reloadConfig()
  const d = await agent.desired(passContext(['start']))
  t.ok(d, 'the desired state is still computed')
  t.equal((Object.values(d!.conns)[0] as { local: { certs?: string[] } }).local.certs, undefined)
  t.equal(agent.certError, 'ENOENT')
})

t.test('stop waits for a pass in flight only up to its grace period', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ftagent-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const configPath = join(dir, 'tunnels.yaml')
  writeFileSync(configPath, readFileSync(join(FIX, 'edge.yaml')))
  let release!: () => void
  let planned = 0
  const stuck: Subsystem = {
    name: 'tunnels',
    async plan() {
      planned++
      // A VICI call to a frozen charon: answers only when released.
      await new Promise<void>((r) => { release = r })
      return { writes: 0, describe: () => [] }
    },
    async apply() { return 0 },
  }
  const agent = new Agent({ configPath, datapath: 'libipsec', subsystems: [stuck], log: createLogger('silent'), metrics: new Metrics({ processMetrics: false }), coalesceMs: 1, resyncMs: 0 })
  agent.start()
  while (planned === 0) await new Promise((r) => setTimeout(r, 5))
  t.equal(await agent.stop(50), false, 'gave up waiting: the pass is still in flight')
  release()
  t.equal(await agent.stop(1000), true, 'a second stop sees it finished')
  await new Promise((r) => setTimeout(r, 20))
  t.equal(planned, 1, 'no pass started after stop')
})

t.test('a desired state that cannot be computed (default gateways unreadable) is retried without any trigger', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ftagent-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const configPath = join(dir, 'tunnels.yaml')
  writeFileSync(configPath, readFileSync(join(FIX, 'edge.yaml')))
  let failures = 1
  const agent = new Agent({
    configPath, datapath: 'xfrm', subsystems: [], log: createLogger('silent'), metrics: new Metrics({ processMetrics: false }), coalesceMs: 1, resyncMs: 0,
    gateways: async () => {
      if (failures-- > 0) throw new Error('netlink: ENOBUFS')
      return { 4: '192.0.2.1' }
    },
  })
  t.teardown(() => agent.stop())
  agent.start()
  await agent.idle()
  t.notOk(agent.ready, 'not ready while the desired state cannot be computed')
  const deadline = Date.now() + 3000
  while (!agent.ready && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20))
  t.ok(agent.ready, 'the retry computed it and converged')
})

t.test('role: cloud desired state from the connector config; a --role contradicting the config is reported, never applied', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ftagent-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const configPath = join(dir, 'tunnels.yaml')
  const order: string[] = []
  const ipsets = new FakeSubsystem('ipsets', (d) => Object.entries(d.ipsets).flatMap(([n, s]) => s.members.map((m) => `${n}:${m}`)), order)
  const routes = new FakeSubsystem('routes', (d) => d.routes.map((r) => `${r.dst} via ${r.via}`), order)
  const mk = (role: 'cloud' | 'edge') => new Agent({
    configPath, datapath: 'xfrm', role, connectorAddresses: { 4: '192.168.1.5' }, subsystems: [ipsets, routes],
    // A cloud node's next hop is the connector: reading the default gateway would be a defect.
    gateways: async () => {
      if (role === 'cloud') throw new Error('a cloud node never reads the default gateway')
      return { 4: '10.0.0.1' }
    },
    log: createLogger('silent'), metrics: new Metrics({ processMetrics: false }), coalesceMs: 1, resyncMs: 0,
  })
  writeFileSync(configPath, readFileSync(join(FIX, 'connector.yaml')))
  const cloud = mk('cloud')
  t.teardown(() => cloud.stop())
  cloud.start()
  await cloud.idle()
  t.equal(cloud.desiredError, null)
  t.equal((await cloud.desired())?.role, 'cloud')
  t.ok(routes.live.has('10.234.1.0/24 via 192.168.1.5') && routes.live.has('10.22.53.116/32 via 192.168.1.5'), 'routes via the connector address')
  t.ok(ipsets.live.has('FABEDGE-REMOTE-POD-CIDR:10.234.1.0/24'))
  t.notOk([...routes.live].some((r) => r.startsWith('10.233.')), 'never the connector\'s own pod CIDRs')
  t.ok(cloud.ready, 'ready without any tunnels subsystem')
  await cloud.stop()

  const before = routes.applied.length
  const edge = mk('edge')
  t.teardown(() => edge.stop())
  edge.start()
  await edge.idle()
  t.match(edge.desiredError, /--role edge but the config's local endpoint beijing\.connector is of type Connector/)
  t.notOk(edge.ready)
  t.equal(routes.applied.length, before, 'nothing applied')
})
