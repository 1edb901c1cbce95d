import t from 'tap'
import { DEFAULT_MEDIATION_POLICY, designatedInitiator, MediationRecovery, type MediatedPeer } from '../../../src/mediation/recovery.js'

const P = { takeoverMs: 8_000, restartAfterMs: 20_000, restartIntervalMs: 300_000 }
const peer = (designated: boolean, up = false): MediatedPeer => ({ conn: 'b.edge2', designated, up })

t.test('designated initiator: lower name', async (t) => {
  t.equal(designatedInitiator('beijing.edge1', 'beijing.edge2'), true)
  t.equal(designatedInitiator('beijing.edge2', 'beijing.edge1'), false)
})

t.test('nothing is initiated before our mediation SA is up', async (t) => {
  const r = new MediationRecovery(P)
  const d = r.decide({ now: 0, mediatorId: null, peers: [peer(true)] })
  t.equal(d.hold.get('b.edge2'), 'waiting for the mediator')
  t.equal(d.peers[0]!.phase, 'waiting-mediator')
  t.equal(d.restart, null)
})

t.test('the designated side initiates at once; the other waits for the takeover time, then initiates too', async (t) => {
  const a = new MediationRecovery(P)
  const d = a.decide({ now: 1_000, mediatorId: '1', peers: [peer(true)] })
  t.notOk(d.hold.has('b.edge2'))
  t.equal(d.peers[0]!.phase, 'initiating')

  const b = new MediationRecovery(P)
  const d0 = b.decide({ now: 1_000, mediatorId: '1', peers: [peer(false)] })
  t.match(d0.hold.get('b.edge2'), /the peer initiates; taking over in 8s/)
  t.same(d0.wakes, [{ at: 9_000, reason: 'mediation-takeover:b.edge2' }], 'a pass is asked for when the takeover is due')
  t.ok(b.decide({ now: 8_999, mediatorId: '1', peers: [peer(false)] }).hold.has('b.edge2'))
  const d1 = b.decide({ now: 9_000, mediatorId: '1', peers: [peer(false)] })
  t.notOk(d1.hold.has('b.edge2'), 'took over')
  t.match(d1.peers[0], { phase: 'initiating', initiator: 'self', detail: /took over/ })
})

t.test('the takeover clock starts when our mediation SA came up, not before', async (t) => {
  const b = new MediationRecovery(P)
  b.decide({ now: 0, mediatorId: null, peers: [peer(false)] })
  t.ok(b.decide({ now: 10_000, mediatorId: '5', peers: [peer(false)] }).hold.has('b.edge2'), 'mediator just came up: hold')
  t.notOk(b.decide({ now: 18_000, mediatorId: '5', peers: [peer(false)] }).hold.has('b.edge2'))
})

t.test('takeover 0 never takes over', async (t) => {
  const b = new MediationRecovery({ ...P, takeoverMs: 0 })
  const d = b.decide({ now: 1e9, mediatorId: '1', peers: [peer(false)] })
  t.equal(d.hold.get('b.edge2'), 'the peer initiates (takeover off)')
  t.same(d.wakes, [])
})

t.test('a pending request under the same mediation SA is never restarted, however long', async (t) => {
  const a = new MediationRecovery(P)
  for (let now = 0; now < 3_600_000; now += 60_000) {
    const d = a.decide({ now, mediatorId: '1', peers: [peer(true)] })
    t.equal(d.restart, null)
    if (d.peers[0]!.phase !== 'initiating') t.fail(`phase ${d.peers[0]!.phase}`)
  }
})

t.test('stale: the mediation SA changed while down; restart after restartAfterMs, rate limited', async (t) => {
  const a = new MediationRecovery(P)
  a.decide({ now: 0, mediatorId: '1', peers: [peer(true)] })
  const d1 = a.decide({ now: 5_000, mediatorId: null, peers: [peer(true)] })
  t.equal(d1.peers[0]!.phase, 'waiting-mediator')
  const d2 = a.decide({ now: 6_000, mediatorId: '7', peers: [peer(true)] })
  t.match(d2.peers[0], { phase: 'stale', detail: /restart in 20s/ })
  t.same(d2.wakes, [{ at: 26_000, reason: 'mediation-restart:b.edge2' }])
  t.equal(d2.restart, null)
  t.equal(a.decide({ now: 25_999, mediatorId: '7', peers: [peer(true)] }).restart, null)
  const d3 = a.decide({ now: 26_000, mediatorId: '7', peers: [peer(true)] })
  t.match(d3.restart, /b\.edge2.*#1, now #7.*queued/)
  t.equal(a.size, 0, 'a restart forgets every episode (charon forgets its requests)')
  // charon back with a new mediation SA; the request under it is good until that SA changes again
  t.equal(a.decide({ now: 27_000, mediatorId: '1', peers: [peer(true)] }).peers[0]!.phase, 'initiating')
  a.decide({ now: 28_000, mediatorId: '2', peers: [peer(true)] })
  const d4 = a.decide({ now: 60_000, mediatorId: '2', peers: [peer(true)] })
  t.equal(d4.restart, null, 'stale again, but within the restart interval')
  t.same(d4.wakes, [{ at: 26_000 + 300_000, reason: 'mediation-restart:b.edge2' }])
  t.match(a.decide({ now: 326_000, mediatorId: '2', peers: [peer(true)] }).restart, /b\.edge2/)
})

t.test('restartAfterMs 0: stale is reported, never restarted', async (t) => {
  const a = new MediationRecovery({ ...P, restartAfterMs: 0 })
  a.decide({ now: 0, mediatorId: '1', peers: [peer(true)] })
  const d = a.decide({ now: 1e9, mediatorId: '2', peers: [peer(true)] })
  t.match(d.peers[0], { phase: 'stale', detail: /restart off/ })
  t.equal(d.restart, null)
  t.same(d.wakes, [])
})

t.test('up ends the episode; peers leaving the config leave nothing', async (t) => {
  const a = new MediationRecovery(P)
  a.decide({ now: 0, mediatorId: '1', peers: [peer(true), { conn: 'b.edge3', designated: true, up: false }] })
  t.equal(a.size, 2)
  const d = a.decide({ now: 1, mediatorId: '1', peers: [peer(true, true)] })
  t.same(d.peers, [{ conn: 'b.edge2', phase: 'up', initiator: 'self', downSince: null, detail: null }])
  t.equal(a.size, 0)
  // an up peer's old episode does not count: its next down is a new episode under the current SA
  a.decide({ now: 2, mediatorId: '9', peers: [peer(true)] })
  t.equal(a.decide({ now: 1e6, mediatorId: '9', peers: [peer(true)] }).restart, null)
})

t.test('one restart per decision even with several stale peers; reset keeps the rate limit', async (t) => {
  const a = new MediationRecovery(P)
  const two = [peer(true), { conn: 'b.edge3', designated: true, up: false }]
  a.decide({ now: 0, mediatorId: '1', peers: two })
  a.decide({ now: 1, mediatorId: '2', peers: two })
  const d = a.decide({ now: 20_001, mediatorId: '2', peers: two })
  t.ok(d.restart)
  a.reset()
  a.decide({ now: 20_002, mediatorId: '1', peers: two })
  a.decide({ now: 20_003, mediatorId: '2', peers: two })
  t.equal(a.decide({ now: 60_000, mediatorId: '2', peers: two }).restart, null, 'rate limit outlives reset')
})

t.test('policy is validated', async (t) => {
  t.throws(() => new MediationRecovery({ ...DEFAULT_MEDIATION_POLICY, takeoverMs: -1 }), RangeError)
  t.throws(() => new MediationRecovery({ ...DEFAULT_MEDIATION_POLICY, restartAfterMs: Number.NaN }), RangeError)
})

t.test('orphaned request: our SA still waiting while the tunnel came up; the next episode is stale from its start', async (t) => {
  const a = new MediationRecovery(P)
  const w = (up: boolean, waiting: string | null): MediatedPeer => ({ conn: 'b.edge2', designated: true, up, waiting })
  t.equal(a.decide({ now: 0, mediatorId: '1', peers: [w(false, '8')] }).peers[0]!.phase, 'initiating', 'a waiting SA alone is a pending request')
  // The peer took over: the tunnel is up through its IKE_SA, ours (#8) still waits for the mediator.
  const up = a.decide({ now: 10_000, mediatorId: '1', peers: [w(true, '8')] })
  t.equal(up.peers[0]!.phase, 'up')
  t.equal(up.restart, null)
  for (let now = 20_000; now < 3_600_000; now += 600_000) t.equal(a.decide({ now, mediatorId: '1', peers: [w(true, '8')] }).restart, null, 'never restarted while up')
  // Down again under the same mediation SA: the orphan queues every request, so it is stale at once.
  const d1 = a.decide({ now: 4_000_000, mediatorId: '1', peers: [w(false, '8')] })
  t.match(d1.peers[0], { phase: 'stale', detail: /orphaned \(never answered\); charon restart in 20s/ })
  t.notOk(d1.hold.has('b.edge2'), 'still initiated (queued in charon, harmless)')
  t.same(d1.wakes, [{ at: 4_020_000, reason: 'mediation-restart:b.edge2' }])
  const d2 = a.decide({ now: 4_020_000, mediatorId: '1', peers: [w(false, '8')] })
  t.match(d2.restart, /b\.edge2.*IKE_SA #8 still waits.*never answered/)
})

t.test('orphan: a waiting SA that moved on or a takeover that wins first ends it; reset and leaving the config too', async (t) => {
  const w = (up: boolean, waiting: string | null, conn = 'b.edge2'): MediatedPeer => ({ conn, designated: true, up, waiting })
  const a = new MediationRecovery(P)
  a.decide({ now: 0, mediatorId: '1', peers: [w(true, '8')] })
  a.decide({ now: 1, mediatorId: '1', peers: [w(true, null)] }) // #8 went on to negotiate: it was no orphan
  t.equal(a.decide({ now: 2, mediatorId: '1', peers: [w(false, '8')] }).peers[0]!.phase, 'initiating')
  const b = new MediationRecovery(P)
  b.decide({ now: 0, mediatorId: '1', peers: [w(true, '8')] })
  b.decide({ now: 1, mediatorId: '1', peers: [w(false, '9')] })
  t.equal(b.decide({ now: 2, mediatorId: '1', peers: [w(false, '9')] }).peers[0]!.phase, 'initiating', 'another waiting SA is a new request')
  const stale = b.decide({ now: 3, mediatorId: '1', peers: [w(true, '9')] })
  t.equal(stale.peers[0]!.phase, 'up')
  // Down with the orphan; the peer's takeover brings it up before the restart is due: no restart.
  b.decide({ now: 10, mediatorId: '1', peers: [w(false, '9')] })
  t.equal(b.decide({ now: 15_000, mediatorId: '1', peers: [w(true, '9')] }).restart, null)
  const c = new MediationRecovery(P)
  c.decide({ now: 0, mediatorId: '1', peers: [w(true, '8')] })
  c.reset()
  t.equal(c.decide({ now: 1, mediatorId: '1', peers: [w(false, '8')] }).peers[0]!.phase, 'initiating', 'reset (charon restarted) forgets orphans')
  const d = new MediationRecovery(P)
  d.decide({ now: 0, mediatorId: '1', peers: [w(true, '8')] })
  d.decide({ now: 1, mediatorId: '1', peers: [] })
  t.equal(d.decide({ now: 2, mediatorId: '1', peers: [w(false, '8')] }).peers[0]!.phase, 'initiating', 'a peer that left the config leaves no orphan')
})

t.test('orphan on the side that takes over: held until the takeover time, then stale', async (t) => {
  const a = new MediationRecovery(P)
  const w = (up: boolean): MediatedPeer => ({ conn: 'b.edge2', designated: false, up, waiting: '8' })
  a.decide({ now: 0, mediatorId: '1', peers: [w(true)] })
  t.equal(a.decide({ now: 1_000, mediatorId: '1', peers: [w(false)] }).peers[0]!.phase, 'waiting-takeover')
  const d = a.decide({ now: 9_000, mediatorId: '1', peers: [w(false)] })
  t.match(d.peers[0], { phase: 'stale', initiator: 'self' })
  t.same(d.wakes, [{ at: 29_000, reason: 'mediation-restart:b.edge2' }])
})
