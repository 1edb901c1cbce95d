// Mediation recovery through the tunnels subsystem and an in-memory charon: which side initiates the mediated
// connection, the takeover, a charon restart for a stale request (and nothing else sent in that pass), status;
// plus the pid-file restarter's every refusal.
import t from 'tap'
import { loadConfig } from '../../../src/config/load.js'
import { desiredState } from '../../../src/desired/index.js'
import { createLogger } from '../../../src/log.js'
import { CharonRestartError, pidfileRestarter, type CharonRestarter } from '../../../src/mediation/charon-restart.js'
import { MediationController } from '../../../src/mediation/controller.js'
import { passContext } from '../../../src/reconcile/subsystem.js'
import { TunnelsSubsystem } from '../../../src/reconcile/tunnels-subsystem.js'
import { FakeCharon } from '../../harness/charon-fake.js'

const CONFIG = new URL('../../fixtures/config/edge.yaml', import.meta.url).pathname
const PEER = 'beijing.edge2'
const POLICY = { takeoverMs: 8_000, restartAfterMs: 20_000, restartIntervalMs: 300_000 }

async function rig(localName?: string, restarter: CharonRestarter | null = null) {
  const { config } = await loadConfig(CONFIG)
  if (localName) config.local.name = localName
  const desired = desiredState(config, { datapath: 'libipsec' })
  const fake = new FakeCharon()
  const clock = { now: 1_000_000 }
  const mediation = new MediationController({ policy: POLICY, restarter, log: createLogger('silent') })
  const sub = new TunnelsSubsystem(fake, { credentials: null, log: createLogger('silent'), trigger: () => undefined, now: () => clock.now, mediation })
  const pass = async () => {
    const ctx = passContext(['test'])
    await sub.prepare(desired, ctx)
    const plan = await sub.plan(desired, ctx)
    const done = plan.writes > 0 ? await sub.apply(plan) : 0
    return { plan, done }
  }
  const initiates = () => fake.calls.filter((c) => c.startsWith(`initiate ${PEER}/`)).length
  return { fake, clock, sub, pass, initiates, mediation, desired }
}

t.test('the designated edge (lower name) initiates the mediated connection once the mediator is up', async (t) => {
  const r = await rig()
  await r.pass()
  await r.pass()
  t.ok(r.initiates() > 0, 'edge1 < edge2: initiated')
  await r.pass() // status is what a plan observed
  const peer = r.sub.peers().find((p) => p.name === PEER)!
  t.equal(peer.path, 'mediated')
  t.match(peer.mediation, { phase: 'up', initiator: 'self' })
})

t.test('the other edge holds until the takeover time, then initiates too', async (t) => {
  const r = await rig('beijing.edge3')
  r.fake.outcome = (conn) => (conn === PEER ? 'pending' : 'up')
  const first = await r.pass()
  const second = await r.pass()
  t.equal(r.initiates(), 0, 'edge3 > edge2: the peer initiates')
  const peer = r.sub.peers().find((p) => p.name === PEER)!
  t.equal(peer.state, 'waiting')
  t.equal(peer.path, 'none')
  t.match(peer.waiting, /the peer initiates; taking over in 8s/)
  t.ok([...first.plan.wakes, ...second.plan.wakes].some((w) => w.reason === `mediation-takeover:${PEER}`), 'a wake at the takeover time')
  r.clock.now += 8_000
  await r.pass()
  t.ok(r.initiates() > 0, 'took over')
  t.match(r.sub.peers().find((p) => p.name === PEER)!.mediation, { phase: 'initiating', detail: /took over/ })
})

t.test('a stale request: charon is restarted in apply, nothing else is sent in that pass, state is reset on reconnect', async (t) => {
  let restarts = 0
  const r = await rig(undefined, { describe: 'fake', restart: async () => { restarts++; return 42 } })
  r.fake.outcome = (conn) => (conn === PEER ? 'pending' : 'up')
  await r.pass()
  await r.pass()
  t.ok(r.initiates() > 0, 'requested under the first mediation SA')
  // The mediation SA is re-established (the server restarted): a new uniqueid.
  const med = r.fake.sas.find((s) => s.name === 'mediator')!
  med.uniqueid = '900'
  await r.pass()
  t.match(r.sub.peers().find((p) => p.name === PEER)!.mediation, { phase: 'stale', detail: /restart in 20s/ })
  t.equal(restarts, 0)
  r.clock.now += 20_000
  const calls = r.fake.calls.length
  const { plan, done } = await r.pass()
  t.match(plan.mediationRestart, /beijing\.edge2/)
  t.match(plan.describe(), [/^restart charon: /])
  t.equal(done, 1)
  t.equal(restarts, 1, 'restarted once')
  t.same(r.fake.calls.slice(calls).filter((c) => !c.startsWith('list')), [], 'nothing sent to a charon about to exit')
  r.fake.restart()
  t.equal(r.mediation.peerState(PEER)?.phase, 'stale', 'the last decision stays until the next pass')
  await r.pass()
  t.not(r.mediation.peerState(PEER)?.phase, 'stale', 'a fresh charon: no stale request')
})

t.test('without a restarter a stale request is reported, never restarted', async (t) => {
  const r = await rig()
  r.fake.outcome = (conn) => (conn === PEER ? 'pending' : 'up')
  await r.pass()
  await r.pass()
  r.fake.sas.find((s) => s.name === 'mediator')!.uniqueid = '900'
  r.clock.now += 3_600_000
  const { plan } = await r.pass()
  t.equal(plan.mediationRestart, undefined)
  t.match(r.mediation.peerState(PEER), { phase: 'stale', detail: /restart off/ })
})

t.test('a failed restart is a pass error and counted', async (t) => {
  const r = await rig(undefined, { describe: 'fake', restart: async () => { throw new CharonRestartError('ENOTCHARON', 'not charon') } })
  r.fake.outcome = (conn) => (conn === PEER ? 'pending' : 'up')
  await r.pass()
  await r.pass()
  r.fake.sas.find((s) => s.name === 'mediator')!.uniqueid = '900'
  await r.pass()
  r.clock.now += 20_000
  await t.rejects(r.pass(), /not charon/)
  t.same(r.mediation.counters, { restarts: 1, restartFailures: 1 })
})

t.test('pid-file restarter: SIGTERM to charon only', async (t) => {
  const files: Record<string, string> = { '/run/charon.pid': '4242\n', '/proc/4242/comm': 'charon\n' }
  const killed: Array<[number, string]> = []
  const io = {
    readFile: async (p: string) => {
      if (!(p in files)) throw Object.assign(new Error(`ENOENT: ${p}`), { code: 'ENOENT' })
      return files[p]!
    },
    kill: (pid: number, sig: NodeJS.Signals) => { killed.push([pid, sig]) },
  }
  const r = pidfileRestarter('/run/charon.pid', io)
  t.equal(await r.restart(), 4242)
  t.same(killed, [[4242, 'SIGTERM']])
  files['/proc/4242/comm'] = 'node\n'
  await t.rejects(r.restart(), { code: 'ENOTCHARON', message: /"node", not charon.*shareProcessNamespace/ })
  delete files['/proc/4242/comm']
  await t.rejects(r.restart(), { code: 'ENOTCHARON', message: /no process we can see/ })
  files['/run/charon.pid'] = 'x1'
  await t.rejects(r.restart(), { code: 'EBADPID' })
  files['/run/charon.pid'] = `${process.pid}`
  await t.rejects(r.restart(), { code: 'ENOTCHARON', message: /names this agent/ })
  await t.rejects(pidfileRestarter('/nope', io).restart(), { code: 'ENOPIDFILE' })
  files['/run/charon.pid'] = '4242'
  files['/proc/4242/comm'] = 'charon'
  const failing = pidfileRestarter('/run/charon.pid', { ...io, kill: () => { throw new Error('EPERM') } })
  await t.rejects(failing.restart(), { code: 'EKILL', message: /EPERM/ })
  t.equal(killed.length, 1, 'nothing but charon was ever signalled')
})

t.test('an orphaned request (our IKE_SA still CREATED while the peer brought the tunnel up): restart in the next down episode', async (t) => {
  let restarts = 0
  const r = await rig(undefined, { describe: 'fake', restart: async () => { restarts++; return 42 } })
  r.fake.outcome = (conn) => (conn === PEER ? 'pending' : 'up')
  await r.pass()
  await r.pass()
  t.ok(r.initiates() > 0, 'edge1 asked the mediator')
  // Our request went to a dead registration: our IKE_SA stays CREATED. The peer takes over: its IKE_SA brings
  // every child up.
  const ours = r.fake.sas.find((s) => s.name === PEER)!
  ours.state = 'CREATED'
  const kids = Object.keys(r.desired.conns[PEER]!.children as object)
  r.fake.sas.push({ name: PEER, uniqueid: '700', state: 'ESTABLISHED', localId: 'x', children: kids.map((name, i) => ({ name, uniqueid: String(710 + i), state: 'INSTALLED' })) })
  await r.pass()
  t.equal(r.mediation.peerState(PEER)?.phase, 'up')
  r.clock.now += 3_600_000
  await r.pass()
  t.equal(restarts, 0, 'nothing restarted while the tunnel is up')
  // The peer's tunnel goes away; ours still waits (a newer request waiting as well does not hide it).
  r.fake.sas = r.fake.sas.filter((s) => s.uniqueid !== '700')
  r.fake.sas.push({ name: PEER, uniqueid: '9000', state: 'CREATED', localId: 'x', children: [] })
  await r.pass()
  t.match(r.mediation.peerState(PEER), { phase: 'stale', detail: /orphaned.*restart in 20s/ })
  r.clock.now += 20_000
  const { plan } = await r.pass()
  t.match(plan.mediationRestart, new RegExp(`${PEER.replace('.', '\\.')}.*IKE_SA #${ours.uniqueid} still waits`))
  t.equal(restarts, 1)
})
