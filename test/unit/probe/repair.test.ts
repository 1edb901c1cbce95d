// The repair decision: who repairs, when, how (children first, then the IKE_SA), backoff and the cap per window.
import t from 'tap'
import { DEFAULT_REPAIR_POLICY, repairBackoffMs, repairDecision, type RepairInput } from '../../../src/probe/repair.js'

const base: RepairInput = { enabled: true, datapathDown: true, initiator: true, ike: 'up', ikeUpForMs: 60_000, evidenceMs: 5_000, memory: undefined, recent: [], now: 100_000 }

t.test('an initiator whose datapath is down while IKE says up re-establishes its CHILD_SAs first', async (t) => {
  t.same(repairDecision(base), { repair: true, scope: 'children', attempt: 1 })
})

t.test('no repair: not down, disabled, responder, IKE not up, IKE up too recently', async (t) => {
  t.match(repairDecision({ ...base, datapathDown: false }), { repair: false, reason: /not down/ })
  t.match(repairDecision({ ...base, enabled: false }), { repair: false, reason: /disabled/ })
  t.match(repairDecision({ ...base, initiator: false }), { repair: false, reason: /responder/ })
  t.match(repairDecision({ ...base, ike: 'down' }), { repair: false, reason: /IKE not up/ })
  t.match(repairDecision({ ...base, ike: 'established' }), { repair: false, reason: /IKE not up/ }, 'children not all installed: the loop is at it')
  t.match(repairDecision({ ...base, ikeUpForMs: 4_999 }), { repair: false, reason: /too recently/ })
})

t.test('escalation: after a repair, backoff, then the IKE_SA (also while the CHILD_SAs are being redone)', async (t) => {
  const memory = { attempts: 1, lastAt: 100_000 }
  const wait = repairDecision({ ...base, memory, now: 105_000 })
  t.match(wait, { repair: false, reason: /backoff after 1/, until: 100_000 + DEFAULT_REPAIR_POLICY.baseBackoffMs })
  t.same(repairDecision({ ...base, memory, now: 110_000, ike: 'established', ikeUpForMs: 0 }), { repair: true, scope: 'ike', attempt: 2 })
  t.match(repairDecision({ ...base, memory, now: 110_000, ike: 'down' }), { repair: false, reason: /IKE not up/ })
  t.equal(repairBackoffMs(1), 10_000)
  t.equal(repairBackoffMs(2), 20_000)
  t.equal(repairBackoffMs(20), DEFAULT_REPAIR_POLICY.maxBackoffMs)
})

t.test('at most maxPerWindow repairs over all peers per window', async (t) => {
  const recent = Array.from({ length: DEFAULT_REPAIR_POLICY.maxPerWindow }, (_, i) => 95_000 + i)
  t.match(repairDecision({ ...base, recent }), { repair: false, reason: /budget/, until: 95_000 + DEFAULT_REPAIR_POLICY.windowMs })
  t.match(repairDecision({ ...base, recent, now: 105_001 }), { repair: true }, 'once the oldest left the window')
})
