// TunnelsSubsystem.reestablish (the probes' repair) against the in-memory charon: children scope ends the peer's
// CHILD_SAs and the next pass initiates them again under the same IKE_SA; ike scope ends the IKE_SA and the next
// pass brings it back at once (no initiate left "in flight" on the ended SA); a repair no longer needed ends
// nothing; a failing terminate rejects.
import t from 'tap'
import { loadConfig } from '../../../src/config/load.js'
import { desiredState } from '../../../src/desired/index.js'
import type { Desired } from '../../../src/desired/types.js'
import { createLogger } from '../../../src/log.js'
import { passContext } from '../../../src/reconcile/subsystem.js'
import { TunnelsSubsystem } from '../../../src/reconcile/tunnels-subsystem.js'
import { FakeCharon } from '../../harness/charon-fake.js'

const CONFIG = new URL('../../fixtures/config/edge.yaml', import.meta.url).pathname
const CONNECTOR = 'beijing.connector'

async function rig(): Promise<{ fake: FakeCharon; sub: TunnelsSubsystem; triggers: string[]; d: Desired; pass(...r: string[]): Promise<void> }> {
  const fake = new FakeCharon('C=CN, O=fabedge.io, CN=beijing.edge1')
  const triggers: string[] = []
  const clock = { now: 1_000_000 }
  const sub = new TunnelsSubsystem(fake, { credentials: null, log: createLogger('silent'), trigger: (x) => triggers.push(x), now: () => clock.now })
  const d = desiredState((await loadConfig(CONFIG)).config, { datapath: 'libipsec' })
  const pass = async (...reasons: string[]): Promise<void> => {
    const ctx = passContext(reasons.length ? reasons : ['start'])
    await sub.prepare(d, ctx)
    const plan = await sub.plan(d, ctx)
    if (plan.writes > 0) await sub.apply(plan)
    clock.now += 10
  }
  await pass()
  await pass('vici:ike-updown')
  return { fake, sub, triggers, d, pass }
}

const childIds = (fake: FakeCharon) => fake.sas.filter((s) => s.name === CONNECTOR).flatMap((s) => s.children.map((c) => c.uniqueid)).sort()
const ikeIds = (fake: FakeCharon) => fake.sas.filter((s) => s.name === CONNECTOR).map((s) => s.uniqueid)

t.test('children: every CHILD_SA of the peer ends; the next pass redoes them under the same IKE_SA', async (t) => {
  const r = await rig()
  const ike = ikeIds(r.fake)
  const before = childIds(r.fake)
  t.equal(before.length, 3)
  t.equal(await r.sub.reestablish(CONNECTOR, 'children'), 3)
  t.same(childIds(r.fake), [], 'ended')
  t.ok(r.triggers.includes(`probe-repair`), "asked for a pass")
  await r.pass(`probe-repair`)
  t.equal(childIds(r.fake).length, 3, 'initiated again')
  t.notSame(childIds(r.fake), before, 'new CHILD_SAs')
  t.same(ikeIds(r.fake), ike, 'same IKE_SA')
  await r.pass('vici:child-updown')
  t.equal(r.sub.peers().find((p) => p.name === CONNECTOR)!.state, 'up')
})

t.test('ike: the IKE_SA ends and the next pass brings the peer back at once', async (t) => {
  const r = await rig()
  const ike = ikeIds(r.fake)
  // An initiate left in flight on the IKE_SA about to end must not hold back the re-initiate.
  r.fake.outcome = () => 'pending'
  r.fake.drop(CONNECTOR, 'beijing.connector-p2n')
  await r.pass('vici:child-updown')
  r.fake.outcome = () => 'up'
  t.equal(await r.sub.reestablish(CONNECTOR, 'ike'), 1)
  t.same(ikeIds(r.fake), [])
  await r.pass(`probe-repair`)
  t.equal(ikeIds(r.fake).length, 1)
  t.notSame(ikeIds(r.fake), ike, 'a new IKE_SA')
  await r.pass('vici:ike-updown')
  t.equal(r.sub.peers().find((p) => p.name === CONNECTOR)!.state, 'up')
})

t.test('no longer needed once charon answered: nothing ends; a failing terminate rejects', async (t) => {
  const r = await rig()
  t.equal(await r.sub.reestablish(CONNECTOR, 'children', () => false), null)
  t.equal(childIds(r.fake).length, 3)
  r.fake.fail('terminate')
  await t.rejects(r.sub.reestablish(CONNECTOR, 'children'), /terminate failed/)
  t.equal(await r.sub.reestablish('beijing.nobody', 'ike'), 0, 'a peer without SAs: nothing to end')
})
