// The tunnels subsystem through its port, against an in-memory charon: plan/apply, side-effect-free planning,
// initiates in flight (no duplicate CHILD_SAs), a failed load-conn, our own credentials only (rotation, foreign
// credentials, interrupted swaps), ownership, per-peer memory bounds, reconnects and every fault path.
import t from 'tap'
import { copyFile, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { loadConfig } from '../../../src/config/load.js'
import type { TunnelConfig } from '../../../src/config/schema.js'
import { cleanupConnections, cleanupCredentials } from '../../../src/daemon/cleanup.js'
import { desiredState } from '../../../src/desired/index.js'
import type { Desired, ViciSection } from '../../../src/desired/types.js'
import { createLogger } from '../../../src/log.js'
import { certSubject, keyIdOf, pemToDer } from '../../../src/reconcile/credentials.js'
import { passContext } from '../../../src/reconcile/subsystem.js'
import { TunnelsSubsystem, withLocalCert, type TunnelsPlan } from '../../../src/reconcile/tunnels-subsystem.js'
import { attemptKey, DEFAULT_BACKOFF, normalizeId } from '../../../src/reconcile/tunnels.js'
import { FakeCharon } from '../../harness/charon-fake.js'

const CONFIG = new URL('../../fixtures/config/edge.yaml', import.meta.url).pathname
const PKI = new URL('../../fixtures/pki/', import.meta.url).pathname
const CONNECTOR = 'beijing.connector'
const P2N = 'beijing.connector-p2n'
const ME = 'C=CN, O=fabedge.io, CN=beijing.edge1'

const pem = (f: string): Promise<string> => readFile(join(PKI, f), 'utf8')

async function baseConfig(): Promise<TunnelConfig> {
  return (await loadConfig(CONFIG)).config
}

/** Credential files in a temp dir, as the Secret mounts them. */
async function credentialFiles(t: { teardown(fn: () => unknown): void }, which = 'edge1'): Promise<{ cert: string; key: string; ca: string; dir: string }> {
  const dir = await mkdtemp(join(tmpdir(), 'ft-tun-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const paths = { cert: join(dir, 'tls.crt'), key: join(dir, 'tls.key'), ca: join(dir, 'ca.crt'), dir }
  await copyFile(join(PKI, `${which}.crt`), paths.cert)
  await copyFile(join(PKI, `${which}.key`), paths.key)
  await copyFile(join(PKI, 'ca.crt'), paths.ca)
  return paths
}

async function rotate(paths: { cert: string; key: string }, to: string): Promise<void> {
  await copyFile(join(PKI, `${to}.key`), paths.key)
  await copyFile(join(PKI, `${to}.crt`), paths.cert)
}

interface Rig {
  fake: FakeCharon
  sub: TunnelsSubsystem
  triggers: string[]
  reconnects: number
  clock: { now: number }
  /** One engine pass: prepare, plan, apply when it writes. Resolves with the plan (apply errors in `error`). */
  pass(desired: Desired, ...reasons: string[]): Promise<{ plan: TunnelsPlan; error: Error | null }>
}

function rig(opts: { credentials?: { cert: string; key: string; ca: string } | null; fake?: FakeCharon } = {}): Rig {
  const fake = opts.fake ?? new FakeCharon(ME)
  const clock = { now: 1_000_000 }
  const triggers: string[] = []
  const r: Rig = {
    fake, clock, triggers, reconnects: 0,
    sub: undefined as unknown as TunnelsSubsystem,
    async pass(desired, ...reasons) {
      const ctx = passContext(reasons.length ? reasons : ['start'])
      await r.sub.prepare(desired, ctx)
      const plan = await r.sub.plan(desired, ctx)
      let error: Error | null = null
      if (plan.writes > 0) await r.sub.apply(plan).catch((e: Error) => { error = e })
      return { plan, error }
    },
  }
  r.sub = new TunnelsSubsystem(fake, {
    credentials: opts.credentials ?? null,
    log: createLogger('silent'),
    trigger: (x) => triggers.push(x),
    onReconnect: () => r.reconnects++,
    now: () => clock.now,
  })
  return r
}

async function desired(config?: TunnelConfig, certPem?: string): Promise<Desired> {
  return desiredState(config ?? (await baseConfig()), { datapath: 'libipsec', ...(certPem ? { certPem } : {}) })
}

const initiatesOf = (fake: FakeCharon, child: string): number => fake.calls.filter((c) => c === `initiate ${CONNECTOR}/${child}`).length

t.test('cold start converges, the next pass writes nothing, and planning alone changes nothing', async (t) => {
  const r = rig()
  const d = await desired()
  const first = await r.pass(d)
  t.equal(first.error, null)
  t.ok(first.plan.writes > 0)
  // The mediated peer waited for the mediator; the mediator's up event triggered a pass.
  t.ok(r.triggers.includes('vici:ike-updown'))
  await r.pass(d, 'vici:ike-updown')
  const calls = r.fake.calls.length
  const again = await r.sub.plan(d, passContext(['verify']))
  t.equal(again.writes, 0, 'converged')
  const twice = await r.sub.plan(d, passContext(['resync']))
  t.equal(twice.writes, 0)
  t.same(r.fake.calls.slice(calls).filter((c) => !/^list/.test(c)), [], 'plan only reads charon')
  t.same(r.sub.peers().map((p) => p.state), ['up', 'up', 'up'])
})

t.test('plan() has no side effects: no subscription, no credential adoption, no initiate memory, no wakes', async (t) => {
  const paths = await credentialFiles(t)
  const r = rig({ credentials: paths })
  const d = await desired(undefined, await pem('edge1.crt'))
  // `fabtunnel plan` never runs prepare(): no subscription.
  const p1 = await r.sub.plan(d, passContext(['manual']))
  t.notOk(r.fake.calls.includes('subscribe'))
  const p2 = await r.sub.plan(d, passContext(['manual']))
  t.same(p2.describe(), p1.describe(), 'the same plan twice: planning changed nothing it reads')
  t.equal(r.sub.residue().attempts, 0)
  t.equal(r.sub.summary().credentialsLoaded, false)
})

t.test('defect 3: an initiate in flight on an ESTABLISHED IKE_SA is not sent again before charon lists the child', async (t) => {
  const r = rig()
  const d = await desired()
  await r.pass(d)
  await r.pass(d, 'vici:ike-updown')
  t.equal(r.fake.installed().get(P2N), 1)
  // p2n goes down; its re-initiate negotiates slowly: charon lists the child only once the exchange is done.
  r.fake.outcome = () => 'pending'
  r.fake.drop(CONNECTOR, P2N)
  const before = initiatesOf(r.fake, P2N)
  const down = await r.pass(d, 'vici:child-updown')
  t.equal(initiatesOf(r.fake, P2N) - before, 1, 'a child that went down is redone at once')
  t.ok(r.fake.sas.find((s) => s.name === CONNECTOR)?.state === 'ESTABLISHED', 'on the ESTABLISHED IKE_SA')
  t.same(down.plan.wakes, [], 'no wake needed before the first initiate')
  // The verification pass (and any event pass) races the negotiation.
  r.clock.now += 5
  const verify = await r.pass(d, 'verify')
  r.clock.now += 1000
  await r.pass(d, 'vici:child-updown')
  t.equal(initiatesOf(r.fake, P2N) - before, 1, 'no second initiate while the first is in flight')
  t.match(verify.plan.wakes, [{ at: r.clock.now - 1005 + DEFAULT_BACKOFF.inflightMs, reason: `backoff:${CONNECTOR}` }], 'a wake at the end of the in-flight window')
  t.match(r.sub.peers().find((p) => p.name === CONNECTOR), { waiting: 'initiate in flight' })
  r.fake.complete()
  t.equal(r.fake.installed().get(P2N), 1, 'exactly one CHILD_SA per child')
  t.equal(r.sub.residue().attempts, 0, 'the up event settled the memory')
})

t.test('defect 3: a failed initiate is retried after the backoff, never at once; an unanswered one after the window', async (t) => {
  const r = rig()
  const d = await desired()
  await r.pass(d)
  await r.pass(d, 'vici:ike-updown')
  const before = initiatesOf(r.fake, P2N)
  r.fake.outcome = () => 'down'
  r.fake.drop(CONNECTOR, P2N)
  await r.pass(d, 'vici:child-updown')
  t.equal(initiatesOf(r.fake, P2N) - before, 1)
  const verify = await r.pass(d, 'verify')
  t.equal(initiatesOf(r.fake, P2N) - before, 1, 'the first retry is not at 0 ms')
  t.match(verify.plan.wakes, [{ at: r.clock.now + DEFAULT_BACKOFF.baseMs }])
  t.match(r.sub.peers().find((p) => p.name === CONNECTOR)?.waiting, /backoff after 1 failed/)
  t.equal(verify.plan.unsettled, `1 peer(s) backing off after failed initiates: ${CONNECTOR}`, 'not converged while it backs off')
  r.clock.now += DEFAULT_BACKOFF.baseMs
  r.fake.outcome = () => 'pending'
  await r.pass(d, `backoff:${CONNECTOR}`)
  t.equal(initiatesOf(r.fake, P2N) - before, 2, 'retried once the backoff expired')
  r.clock.now += DEFAULT_BACKOFF.inflightMs - 1
  await r.pass(d, 'verify')
  t.equal(initiatesOf(r.fake, P2N) - before, 2, 'still in flight')
  r.clock.now += 1
  await r.pass(d, `backoff:${CONNECTOR}`)
  t.equal(initiatesOf(r.fake, P2N) - before, 3, 'an initiate unanswered for the whole window is retried')
  r.fake.fail('initiate')
  r.clock.now += DEFAULT_BACKOFF.inflightMs
  const third = await r.pass(d, `backoff:${CONNECTOR}`)
  t.same(third.plan.wakes, [], 'the third attempt expired unanswered too: retried (and refused) at once, its backoff long over')
  r.fake.heal()
  const afterRefusal = await r.pass(d, 'verify')
  t.same(afterRefusal.plan.wakes, [{ at: r.clock.now + 8 * DEFAULT_BACKOFF.baseMs, reason: `backoff:${CONNECTOR}` }])
  t.equal(r.sub.peers().find((p) => p.name === CONNECTOR)?.waiting, 'backoff after 4 failed attempt(s)', 'down, expired, expired, refused: four failures')
  // charon refusing the initiate call itself is a failed attempt too.
  r.fake.fail('initiate')
  r.clock.now += DEFAULT_BACKOFF.inflightMs + 10 * DEFAULT_BACKOFF.maxMs
  const refused = await r.pass(d, 'resync')
  t.match(refused.error?.message, /initiate child beijing.connector-p2n: initiate failed/)
  t.match(r.sub.peers().find((p) => p.name === CONNECTOR)?.lastError, /initiate failed/)
  const next = await r.pass(d, 'verify')
  t.equal(next.plan.ops.length, 0, 'backing off after the refusal')
})

t.test('defect 4: a failed load-conn leaves the peer\'s live SAs alone, at every retry', async (t) => {
  const r = rig()
  const config = await baseConfig()
  const d = await desired(config)
  await r.pass(d)
  await r.pass(d, 'vici:ike-updown')
  const ids = r.fake.sas.find((s) => s.name === CONNECTOR)!.children.map((c) => c.uniqueid)
  // The connector's pod subnets change: its p2p and p2n children would be replaced after the reload.
  const changed = structuredClone(config)
  changed.peers.find((p) => p.name === CONNECTOR)!.subnets.push('10.233.66.0/24')
  const d2 = await desired(changed)
  r.fake.fail('loadConn', (name) => name === CONNECTOR)
  for (let i = 0; i < 3; i++) {
    const { plan, error } = await r.pass(d2, 'config')
    t.ok(plan.ops.some((o) => o.op === 'terminate-child'), 'the plan would replace changed children')
    t.match(error?.message, /load-conn beijing.connector \(changed\): loadConn failed/)
    t.same(r.fake.sas.find((s) => s.name === CONNECTOR)!.children.map((c) => c.uniqueid), ids, `retry ${i}: no child terminated or initiated`)
  }
  t.notOk(r.fake.calls.some((c) => c.startsWith('terminate')), 'nothing terminated')
  r.fake.heal()
  const ok = await r.pass(d2, 'retry')
  t.equal(ok.error, null)
  t.ok(r.fake.calls.some((c) => c.startsWith('terminate child#')), 'once loaded, the changed children are replaced')
})

t.test('defect 5: only our credentials are loaded and unloaded; foreign ones survive start, rotation and cleanup', async (t) => {
  const paths = await credentialFiles(t)
  const fake = new FakeCharon(ME)
  // Another VPN on the same charon: its certificate, key and CA (a PSK lives outside our port: never touched).
  await fake.loadCert(await pem('foreign.crt'))
  const foreignKey = await fake.loadKey(await pem('foreign.key'))
  await fake.loadAuthority('office-ca', await pem('foreign.crt'))
  const r = rig({ credentials: paths, fake })
  const config = await baseConfig()
  const d = await desired(config, await pem('edge1.crt'))
  const first = await r.pass(d)
  t.equal(first.error, null)
  const oldId = keyIdOf(pemToDer(await pem('edge1.crt')))
  t.same([...fake.keys.keys()].sort(), [foreignKey, oldId].sort(), 'our key next to the foreign one')
  t.same([...fake.authorities.keys()].sort(), ['fabtunnel-ca', 'office-ca'])
  t.equal(r.sub.summary().credentialsLoaded, true)

  // Rotation: new key and certificate, same subject.
  await rotate(paths, 'edge1-rotated')
  const d2 = await desired(config, await pem('edge1-rotated.crt'))
  const rot = await r.pass(d2, 'credentials')
  t.equal(rot.error, null)
  const newId = keyIdOf(pemToDer(await pem('edge1-rotated.crt')))
  t.same([...fake.keys.keys()].sort(), [foreignKey, newId].sort(), 'the old key unloaded, the foreign one kept')
  const order = fake.calls.slice(fake.calls.indexOf('loadKey'))
  t.ok(order.indexOf(`unloadKey ${oldId}`) > order.lastIndexOf(`loadConn ${CONNECTOR}`), 'the old key goes only after the connections name the new certificate')
  for (const section of fake.conns.values()) t.same(((section.local as ViciSection).certs as string[])[0], await pem('edge1-rotated.crt'))
  t.notOk(fake.calls.includes('clearCreds'))

  // An agent restart finds everything in place: no writes.
  const r2 = rig({ credentials: paths, fake })
  t.equal((await r2.pass(d2)).plan.writes, 0, 'adopted after a restart')

  // cleanup: ours gone (key, authority; all our connections), the foreign ones stay.
  fake.foreignConns.set('office', { 'local-1': { id: 'C=DE, O=office, CN=office-vpn' }, children: { office: {} } })
  const conns = await cleanupConnections(fake, { ids: new Set([normalizeId(ME)]), loaded: new Set() })
  t.same(conns.conns.sort(), Object.keys(d2.conns).sort())
  const creds = await cleanupCredentials(fake, certSubject(pemToDer(await pem('edge1-rotated.crt'))))
  t.same(creds, { keys: [newId], authorities: ['fabtunnel-ca'] })
  t.same([...fake.keys.keys()], [foreignKey])
  t.same([...fake.authorities.keys()], ['office-ca'])
  t.same([...(await fake.listConns()).keys()], ['office'])
})

t.test('defect 5: a rotation interrupted at any call never leaves a connection without the key of its certificate', async (t) => {
  const steps = ['loadAuthority', 'loadCert', 'loadKey', 'loadConn', 'unloadKey'] as const
  for (const step of steps) {
    const paths = await credentialFiles(t)
    const r = rig({ credentials: paths })
    const config = await baseConfig()
    await r.pass(await desired(config, await pem('edge1.crt')))
    await rotate(paths, 'edge1-rotated')
    const d2 = await desired(config, await pem('edge1-rotated.crt'))
    r.fake.fail(step)
    await r.pass(d2, 'credentials').catch(() => undefined)
    const usable = (): boolean => [...r.fake.conns.values()].every((s) => r.fake.keys.has(keyIdOf(pemToDer(((s.local as ViciSection).certs as string[])[0]!))))
    t.ok(usable(), `interrupted at ${step}: every connection's certificate still has its key`)
    t.ok(r.fake.keys.size >= 1)
    // A restarted agent (memory lost) finishes the swap.
    r.fake.heal()
    const r2 = rig({ credentials: paths, fake: r.fake })
    const done = await r2.pass(d2)
    t.equal(done.error, null, `after ${step}: the next agent completes the rotation`)
    t.same([...r.fake.keys.keys()], [keyIdOf(pemToDer(await pem('edge1-rotated.crt')))], `after ${step}: only the new key is left`)
    t.ok(usable())
  }
})

t.test('defect 5: credential faults are reported with the last good credentials kept', async (t) => {
  const paths = await credentialFiles(t)
  const r = rig({ credentials: paths })
  const config = await baseConfig()
  const d = await desired(config, await pem('edge1.crt'))
  r.fake.fail('loadKey')
  const failed = await r.pass(d)
  t.match(failed.error?.message, /loadKey failed/)
  r.fake.heal()
  t.equal((await r.pass(d, 'retry')).error, null)
  // A key that does not belong to the certificate (swapped between the read and the load): taken back, reported.
  const r2 = rig({ credentials: paths })
  await r2.sub.prepare(d, passContext(['start']))
  const plan = await r2.sub.plan(d, passContext(['start']))
  await copyFile(join(PKI, 'foreign.key'), paths.key)
  await t.rejects(r2.sub.apply(plan), { code: 'EMISMATCH' })
  t.equal(r2.fake.keys.size, 0, 'the stray key was unloaded again')
  // A broken file: reported, the last good ones stay in force (no writes, but the pass is not converged).
  await writeFile(paths.cert, 'garbage')
  const broken = await r.pass(d, 'credentials').catch((e: Error) => ({ error: e }))
  t.match((broken as { error: Error }).error, { code: 'EFORMAT' })
  t.equal(r.sub.credentials.current?.keyId, keyIdOf(pemToDer(await pem('edge1.crt'))))
})

t.test('defect 7: a broken certificate file never changes the sections we load', async (t) => {
  const paths = await credentialFiles(t)
  const r = rig({ credentials: paths })
  const config = await baseConfig()
  await r.pass(await desired(config, await pem('edge1.crt')))
  await r.pass(await desired(config, await pem('edge1.crt')), 'vici:ike-updown')
  const loads = r.sub.counters.loads
  await writeFile(paths.cert, 'not a certificate')
  // The desired state as an agent would compute it without a readable certificate: no local.certs at all.
  const bare = await desired(config)
  const ctx = passContext(['credentials'])
  await r.sub.prepare(bare, ctx)
  await t.rejects(r.sub.plan(bare, ctx), { code: 'EFORMAT' }, 'reported, with nothing to write')
  t.equal(r.sub.counters.loads, loads, 'no connection reloaded')
  const deep = passContext(['resync'])
  await r.sub.prepare(bare, deep)
  await t.rejects(r.sub.plan(bare, deep), { code: 'EFORMAT' })
  t.equal(r.sub.counters.loads, loads, 'not on a deep pass either')
  const section = { local: { id: ME }, children: {} } as ViciSection
  t.equal(withLocalCert(section, 'PEM'), withLocalCert(section, 'PEM'), 'patched sections are memoized (hashes stay cached)')
})

t.test('defect 8: a peer without children is ours (unloaded, also after a restart); orphan SAs of ours are ended', async (t) => {
  const config = await baseConfig()
  // A peer whose selectors are all empty on one side: every child is left out (desired/conns.ts).
  const childless = structuredClone(config)
  childless.peers.push({ ...structuredClone(config.peers[1]!), name: 'beijing.edge9', id: 'C=CN, O=fabedge.io, CN=beijing.edge9', subnets: [], nodeSubnets: [] })
  const d9 = await desired(childless)
  t.same(d9.conns['beijing.edge9']!.children, {}, 'loaded without children')
  const r = rig()
  await r.pass(d9)
  t.ok(r.fake.conns.has('beijing.edge9'))
  const d = await desired(config)
  // Removed while this instance runs.
  const removed = await r.pass(d, 'config')
  t.ok(removed.plan.ops.some((o) => o.op === 'unload' && o.conn === 'beijing.edge9'))
  t.notOk(r.fake.conns.has('beijing.edge9'))
  // Removed while the agent was down: a new instance knows it by our identity as its local id.
  await r.pass(d9, 'config')
  const restarted = rig({ fake: r.fake })
  await restarted.pass(d)
  t.notOk(r.fake.conns.has('beijing.edge9'), 'unloaded by an agent that never loaded it')
  // Foreign connections and SAs are never touched; orphan IKE_SAs of ours (no children, not loaded) are ended.
  r.fake.foreignConns.set('office', { 'local-1': { id: 'C=DE, O=office, CN=office-vpn' }, children: {} })
  r.fake.sas.push({ name: 'office', uniqueid: '900', state: 'ESTABLISHED', localId: 'C=DE, O=office, CN=office-vpn', children: [] })
  r.fake.sas.push({ name: 'beijing.edge8', uniqueid: '901', state: 'ESTABLISHED', localId: ME, children: [] })
  r.fake.sas.push({ name: 'gone-foreign', uniqueid: '902', state: 'ESTABLISHED', localId: 'C=DE, CN=other', children: [] })
  const orphan = await restarted.pass(d, 'resync')
  t.same(orphan.plan.ops, [{ op: 'terminate-ike', conn: 'beijing.edge8', ikeId: '901' }])
  r.fake.sas.push({ name: 'beijing.edge7', uniqueid: '903', state: 'ESTABLISHED', localId: 'C=CN,O=fabedge.io,CN=beijing.edge1', children: [] })
  const cleaned = await cleanupConnections(r.fake, { ids: new Set([normalizeId(ME)]), loaded: new Set() })
  t.same(cleaned.conns.sort(), Object.keys(d.conns).sort(), 'cleanup unloads our connections only')
  t.same(r.fake.sas.map((s) => s.name).sort(), ['gone-foreign', 'office'], 'and ends every SA of ours, orphans included')
  t.ok(cleaned.sasTerminated >= 4)
})

t.test('defect 9: 10,000 peer add/remove cycles leave no per-peer residue', async (t) => {
  const r = rig()
  const config = await baseConfig()
  config.mediator = null
  config.peers = config.peers.filter((p) => p.name === CONNECTOR)
  const base = await desired(config)
  await r.pass(base)
  const baseline = r.sub.residue()
  t.same(baseline, { loaded: 1, attempts: 0, terminated: 0, replacing: 0, since: 1, lastError: 0 })
  const extra = structuredClone(config.peers[0]!)
  for (let i = 0; i < 10_000; i++) {
    const name = `beijing.peer${i}`
    const c = { ...config, peers: [...config.peers, { ...extra, name, id: `C=CN, O=fabedge.io, CN=${name}` }] }
    // Every way a peer leaves memory behind: a failed load, a refused initiate, an initiate still in flight.
    r.fake.heal()
    if (i % 3 === 0) r.fake.fail('loadConn', (n) => n === name)
    else if (i % 3 === 1) r.fake.fail('initiate', (a) => a.startsWith(`${name}/`))
    r.fake.outcome = (conn) => (conn === name ? 'pending' : 'up')
    r.clock.now += 1
    await r.pass(desiredState(c, { datapath: 'libipsec' }), 'config')
    r.fake.heal()
    await r.pass(base, 'config')
  }
  t.same(r.sub.residue(), baseline, 'no per-peer residue')
  t.same([...r.fake.conns.keys()], [CONNECTOR])
})

t.test('reconnect: memory of the old charon is dropped, the callback fires, everything is loaded again', async (t) => {
  const paths = await credentialFiles(t)
  const r = rig({ credentials: paths })
  const d = await desired(await baseConfig(), await pem('edge1.crt'))
  await r.pass(d)
  r.fake.outcome = () => 'pending'
  r.fake.drop(CONNECTOR, P2N)
  await r.pass(d, 'vici:child-updown')
  t.equal(r.sub.residue().attempts, 4, 'p2n and the three children of the mediated peer in flight')
  r.fake.outcome = () => 'up'
  r.fake.restart()
  t.equal(r.reconnects, 1, 'onReconnect (metric fabtunnel_vici_reconnects_total)')
  t.equal(r.sub.counters.reconnects, 1)
  t.ok(r.triggers.includes('vici:reconnected'))
  t.same(r.sub.residue(), { loaded: 0, attempts: 4, terminated: 0, replacing: 0, since: 3, lastError: 0 }, 'initiates in flight kept, unconfirmed')
  t.equal(r.sub.summary().credentialsLoaded, false)
  const back = await r.pass(d, 'vici:reconnected')
  t.equal(back.error, null)
  t.equal(r.sub.residue().attempts, 0, 'settled by the new charon')
  t.equal(r.fake.conns.size, 3, 'connections loaded again')
  t.equal(r.fake.keys.size, 1, 'credentials loaded again')
})

t.test('fault paths: listing, subscribe, terminate and unload failures are reported and retried', async (t) => {
  const r = rig()
  const d = await desired()
  r.fake.failures.set('subscribe' as never, () => new Error('charon not up'))
  await t.rejects(r.pass(d), /charon not up/, 'prepare fails while charon is unreachable')
  r.fake.heal()
  r.fake.fail('listConns')
  await t.rejects(r.pass(d), /listConns failed/)
  r.fake.heal()
  r.fake.fail('listSas')
  await t.rejects(r.pass(d, 'verify'), /listSas failed/)
  r.fake.heal()
  await r.pass(d)
  await r.pass(d, 'vici:ike-updown')
  t.equal(r.fake.calls.filter((c) => c === 'subscribe').length, 2, 'subscribed once charon answered, then never again')
  // A stale connection of ours whose unload and terminate fail.
  r.fake.conns.set('beijing.edge5', { local: { id: ME }, children: {} })
  r.fake.sas.push({ name: 'beijing.edge5', uniqueid: '77', state: 'ESTABLISHED', localId: ME, children: [] })
  r.fake.fail('unloadConn')
  r.fake.failures.set('terminate', () => new Error('terminate failed'))
  const failed = await r.pass(d, 'resync')
  t.match(failed.error?.message, /2 tunnel operation\(s\) failed: unload-conn beijing.edge5: unloadConn failed; terminate ike beijing.edge5 #77: terminate failed/)
  r.fake.heal()
  t.equal((await r.pass(d, 'retry')).error, null)
  t.notOk(r.fake.conns.has('beijing.edge5'))
  // A child with selectors no longer desired is terminated.
  r.fake.sas.find((s) => s.name === CONNECTOR)!.children.push({ name: 'beijing.connector-old', uniqueid: '78', state: 'INSTALLED' })
  const stale = await r.pass(d, 'resync')
  t.same(stale.plan.ops, [{ op: 'terminate-child', conn: CONNECTOR, child: 'beijing.connector-old', childId: '78' }])
  t.match(stale.plan.describe(), ['terminate child beijing.connector-old #78'])
})

t.test('status: per-peer states and since timestamps follow the observation', async (t) => {
  const r = rig()
  const d = await desired()
  t.same(r.sub.peers(), [], 'nothing observed yet')
  r.fake.outcome = (conn) => (conn === 'mediator' ? 'pending' : 'up')
  await r.pass(d)
  t.same(r.sub.peers().map((p) => p.state), ['down', 'down', 'waiting'], 'the status shows what the plan observed')
  await r.pass(d, 'verify')
  const byName = Object.fromEntries(r.sub.peers().map((p) => [p.name, p]))
  t.match(byName, {
    mediator: { state: 'connecting', type: 'Mediator', initiator: true, loaded: true },
    [CONNECTOR]: { state: 'up', childrenUp: 3, childrenDesired: 3 },
    'beijing.edge2': { state: 'waiting', waiting: 'waiting for the mediator' },
  })
  r.fake.drop(CONNECTOR, P2N)
  r.fake.outcome = () => 'pending'
  r.clock.now += 1000
  await r.pass(d, 'vici:child-updown')
  const connector = r.sub.peers().find((p) => p.name === CONNECTOR)!
  t.equal(connector.state, 'partial')
  t.equal(connector.since, new Date(r.clock.now).toISOString())
  t.equal(r.sub.residue().attempts, 2, 'mediator and p2n in flight')
  t.ok(r.sub.residue().attempts <= Object.keys(d.conns).length * 3)
  t.equal(attemptKey('a', ''), 'a/')
})

t.test('ownership: a foreign connection and SA using our identity survive start, peer removal, restart and cleanup', async (t) => {
  const config = await baseConfig()
  const fake = new FakeCharon(ME)
  // A bare-metal edge's own VPN with the node certificate: our local id, a child not named by FabEdge.
  fake.foreignConns.set('office', { 'local-1': { id: ME }, children: { office: { 'local-ts': ['10.1.0.0/16'], 'remote-ts': ['10.2.0.0/16'] } } })
  fake.sas.push({ name: 'office', uniqueid: '500', state: 'ESTABLISHED', localId: ME, children: [{ name: 'office', uniqueid: '501', state: 'INSTALLED' }] })
  // And an SA of it whose connection is no longer loaded.
  fake.sas.push({ name: 'office-old', uniqueid: '502', state: 'ESTABLISHED', localId: ME, children: [{ name: 'office-old', uniqueid: '503', state: 'INSTALLED' }] })
  const untouched = (when: string): void => {
    t.ok(fake.foreignConns.has('office'), `${when}: the foreign connection is loaded`)
    t.same(fake.sas.filter((s) => s.name.startsWith('office')).map((s) => [s.uniqueid, s.children.map((c) => c.uniqueid)]), [['500', ['501']], ['502', ['503']]], `${when}: its SAs are up`)
    t.same(fake.calls.filter((c) => /office|#50[0-3]/.test(c)), [], `${when}: never named in a call`)
  }
  const r = rig({ fake })
  await r.pass(await desired(config))
  await r.pass(await desired(config), 'vici:ike-updown')
  untouched('start')
  const fewer = structuredClone(config)
  fewer.peers = fewer.peers.filter((p) => p.name !== 'beijing.edge2')
  const removed = await r.pass(await desired(fewer), 'config')
  t.ok(removed.plan.ops.some((o) => o.op === 'unload' && o.conn === 'beijing.edge2'), 'our removed peer is unloaded')
  untouched('peer removal')
  await rig({ fake }).pass(await desired(fewer))
  untouched('agent restart')
  const cleaned = await cleanupConnections(fake, { ids: new Set([normalizeId(ME)]), loaded: new Set() })
  t.notOk(cleaned.conns.includes('office'))
  t.same([...fake.conns.keys()], [], 'cleanup unloaded every connection of ours')
  untouched('cleanup')
})

t.test('defect 3: a late down event of a child we replaced does not cancel the initiate of its replacement', async (t) => {
  const r = rig()
  const config = await baseConfig()
  await r.pass(await desired(config))
  await r.pass(await desired(config), 'vici:ike-updown')
  const old = r.fake.sas.find((s) => s.name === CONNECTOR)!.children.map((c) => c.uniqueid)
  const changed = structuredClone(config)
  changed.peers.find((p) => p.name === CONNECTOR)!.subnets.push('10.233.66.0/24')
  const d2 = await desired(changed)
  // charon deletes the old children (and sends their down events) only after the replacements' initiates; until
  // then it still lists them as installed (slow link).
  r.fake.lateDownEvents = 'deletion'
  r.fake.outcome = () => 'pending'
  const callsBefore = r.fake.calls.length
  const { plan, error } = await r.pass(d2, 'config')
  t.equal(error, null)
  const replaced = plan.ops.flatMap((o) => (o.op === 'terminate-child' ? [o.child] : []))
  t.ok(replaced.length > 0, 'children with changed selectors are replaced')
  const initiates = (): string[] => r.fake.calls.slice(callsBefore).filter((c) => c.startsWith('initiate '))
  t.same(initiates().sort(), replaced.map((c) => `initiate ${CONNECTOR}/${c}`).sort(), 'one initiate per replaced child')
  // Passes while the old children are still listed: no second terminate, no second initiate.
  r.clock.now += 5
  await r.pass(d2, 'verify')
  await r.pass(d2, 'resync')
  t.equal(r.fake.calls.slice(callsBefore).filter((c) => c.startsWith('terminate ')).length, replaced.length, 'each old child terminated once')
  t.same(initiates().sort(), replaced.map((c) => `initiate ${CONNECTOR}/${c}`).sort(), 'the old children still listed do not settle the new initiates')
  r.fake.deliverLate()
  t.equal(r.sub.residue().terminated, 0, 'the down events of the terminated children were recognised and forgotten')
  r.clock.now += 1000
  await r.pass(d2, 'vici:child-updown')
  await r.pass(d2, 'resync')
  t.same(initiates().sort(), replaced.map((c) => `initiate ${CONNECTOR}/${c}`).sort(), 'no second initiate while the first is in flight')
  r.fake.complete()
  const children = r.fake.sas.find((s) => s.name === CONNECTOR)!.children
  t.same(children.map((c) => c.name).sort(), Object.keys(d2.conns[CONNECTOR]!.children as object).sort(), 'exactly one CHILD_SA per child')
  t.notOk(children.some((c) => replaced.includes(c.name) && old.includes(c.uniqueid)), 'the old children are gone')
})

t.test('defect 3: a late ike-updown down of an IKE_SA we terminated does not cancel a new initiate of the connection', async (t) => {
  const r = rig()
  const config = await baseConfig()
  const d = await desired(config)
  await r.pass(d)
  await r.pass(d, 'vici:ike-updown')
  r.fake.lateDownEvents = 'event'
  const without = structuredClone(config)
  without.peers = without.peers.filter((p) => p.name !== CONNECTOR)
  const removed = await r.pass(await desired(without), 'config')
  t.ok(removed.plan.ops.some((o) => o.op === 'terminate-ike' && o.conn === CONNECTOR))
  // Added back before charon finished deleting the old IKE_SA; the new negotiation is slow.
  r.fake.outcome = () => 'pending'
  await r.pass(d, 'config')
  const before = initiatesOf(r.fake, P2N)
  t.equal(before, 2, 'initiated again')
  r.fake.deliverLate()
  r.clock.now += 1000
  await r.pass(d, 'vici:ike-updown')
  t.equal(initiatesOf(r.fake, P2N), before, 'no second initiate while the first is in flight')
  r.fake.complete()
  t.equal(r.fake.installed().get(P2N), 1)
})

t.test('replacing children: a failed terminate after a successful load is retried on shallow and deep passes', async (t) => {
  const r = rig()
  const config = await baseConfig()
  await r.pass(await desired(config))
  await r.pass(await desired(config), 'vici:ike-updown')
  const old = r.fake.sas.find((s) => s.name === CONNECTOR)!.children.map((c) => c.uniqueid)
  const changed = structuredClone(config)
  changed.peers.find((p) => p.name === CONNECTOR)!.subnets.push('10.233.66.0/24')
  const d2 = await desired(changed)
  r.fake.fail('terminate')
  const first = await r.pass(d2, 'config')
  t.match(first.error?.message, /terminate child .*: terminate failed/)
  t.ok(r.fake.conns.get(CONNECTOR), 'loaded')
  const stale = first.plan.ops.flatMap((o) => (o.op === 'terminate-child' ? [o.childId] : []))
  t.ok(stale.length > 0)
  const shallow = await r.pass(d2, 'verify')
  t.same(shallow.plan.ops.map((o) => (o.op === 'terminate-child' ? o.childId : o.op)).sort(), [...stale].sort(), 'a shallow pass terminates them again, and nothing else')
  t.match(shallow.error?.message, /terminate failed/)
  r.fake.heal()
  const deep = await r.pass(d2, 'resync')
  t.same(deep.plan.ops.map((o) => (o.op === 'terminate-child' ? o.childId : o.op)).sort(), [...stale].sort(), 'so does a deep pass')
  t.equal(deep.error, null)
  const children = r.fake.sas.find((s) => s.name === CONNECTOR)!.children
  t.same([...r.fake.installed().values()].filter((n) => n !== 1), [], 'exactly one CHILD_SA per child')
  t.same(children.map((c) => c.name).sort(), Object.keys(d2.conns[CONNECTOR]!.children as object).sort())
  t.notOk(children.some((c) => stale.includes(c.uniqueid)), 'the old-selector children are gone')
  t.ok(stale.every((id) => old.includes(id)), 'only old children were terminated')
  const after = await r.pass(d2, 'resync')
  t.equal(after.plan.writes, 0, 'converged')
  t.equal(r.sub.residue().replacing, 0, 'nothing left to replace')
})

t.test('reconnect to the same busy charon: an initiate still negotiating is not sent again', async (t) => {
  const r = rig()
  const d = await desired()
  await r.pass(d)
  await r.pass(d, 'vici:ike-updown')
  r.fake.outcome = () => 'pending'
  r.fake.drop(CONNECTOR, P2N)
  await r.pass(d, 'vici:child-updown')
  const before = initiatesOf(r.fake, P2N)
  // The client gave up on a late answer and reconnected; charon kept negotiating.
  r.fake.reconnect()
  await r.pass(d, 'vici:reconnected')
  r.clock.now += 1000
  await r.pass(d, 'verify')
  t.equal(initiatesOf(r.fake, P2N), before, 'no duplicate initiate')
  r.fake.complete()
  t.equal(r.fake.installed().get(P2N), 1, 'exactly one CHILD_SA')
  t.equal(r.sub.residue().attempts, 0)
})

t.test('reconnect after a charon restart: an initiate that was in flight is sent again at once', async (t) => {
  const r = rig()
  const d = await desired()
  await r.pass(d)
  await r.pass(d, 'vici:ike-updown')
  r.fake.outcome = () => 'pending'
  r.fake.drop(CONNECTOR, P2N)
  await r.pass(d, 'vici:child-updown')
  const before = initiatesOf(r.fake, P2N)
  r.fake.restart()
  r.fake.outcome = () => 'up'
  const back = await r.pass(d, 'vici:reconnected')
  t.equal(back.error, null)
  t.equal(initiatesOf(r.fake, P2N), before + 1, 'initiated in the first pass, not after the in-flight window')
  t.equal(r.fake.installed().get(P2N), 1)
})

t.test('subscribe: concurrent calls register one handler; every event triggers one pass', async (t) => {
  const r = rig()
  const d = await desired()
  // The daemon subscribes at start without waiting while the first pass subscribes too.
  const early = r.sub.subscribe()
  await r.pass(d)
  await early
  await r.pass(d, 'vici:ike-updown')
  t.equal(r.fake.subscribers, 1, 'one handler')
  t.equal(r.fake.calls.filter((c) => c === 'subscribe').length, 1)
  const triggers = r.triggers.length
  r.fake.drop(CONNECTOR, P2N)
  t.same(r.triggers.slice(triggers), ['vici:child-updown'], 'one trigger per event')
})
