// The probe schedule: peers spread over the period, the rate cap stretching the period, membership changes, and a
// late caller never getting a burst.
import t from 'tap'
import { MAX_LAG_MS, ProbeSchedule, probePeriodMs } from '../../../src/probe/schedule.js'

t.test('the period is the interval until the rate cap stretches it', async (t) => {
  t.equal(probePeriodMs(0, { intervalMs: 1000, maxRate: 500 }), 1000)
  t.equal(probePeriodMs(500, { intervalMs: 1000, maxRate: 500 }), 1000)
  t.equal(probePeriodMs(1000, { intervalMs: 1000, maxRate: 500 }), 2000)
  t.equal(probePeriodMs(10_000, { intervalMs: 1000, maxRate: 500 }), 20_000, '10,000 peers at 500/s: each every 20 s')
  t.throws(() => new ProbeSchedule({ intervalMs: 0, maxRate: 1 }, 0), RangeError)
  t.throws(() => new ProbeSchedule({ intervalMs: 1000, maxRate: 0 }, 0), RangeError)
})

t.test('four peers over 1 s: one every 250 ms, each once per period', async (t) => {
  const s = new ProbeSchedule({ intervalMs: 1000, maxRate: 500 }, 0)
  t.same(s.due(0), [])
  t.equal(s.nextAt(), Number.POSITIVE_INFINITY, 'no peers: nothing due ever')
  s.setPeers(['a', 'b', 'c', 'd'], 0)
  const seen: Array<[number, string]> = []
  for (let now = 0; now < 2000; now += 10) for (const p of s.due(now)) seen.push([now, p])
  t.same(seen, [[0, 'a'], [250, 'b'], [500, 'c'], [750, 'd'], [1000, 'a'], [1250, 'b'], [1500, 'c'], [1750, 'd']])
  t.equal(s.nextAt(), 2000)
})

t.test('with the rate cap, probes per second never exceed it', async (t) => {
  const names = Array.from({ length: 2000 }, (_, i) => `p${i}`)
  const s = new ProbeSchedule({ intervalMs: 1000, maxRate: 500 }, 0)
  s.setPeers(names, 0)
  t.equal(s.periodMs, 4000)
  const perSecond = new Map<number, number>()
  const counts = new Map<string, number>()
  for (let now = 0; now < 8000; now += 2) {
    for (const p of s.due(now)) {
      perSecond.set(Math.floor(now / 1000), (perSecond.get(Math.floor(now / 1000)) ?? 0) + 1)
      counts.set(p, (counts.get(p) ?? 0) + 1)
    }
  }
  t.ok([...perSecond.values()].every((n) => n <= 500), `per second: ${[...perSecond.values()].join(',')}`)
  t.equal(perSecond.size, 8)
  t.ok(names.every((n) => counts.get(n) === 2), 'every peer probed once per 4 s period')
})

t.test('unchanged membership keeps the timing; a change restarts the ring', async (t) => {
  const s = new ProbeSchedule({ intervalMs: 1000, maxRate: 500 }, 0)
  s.setPeers(['a', 'b'], 0)
  t.same(s.due(0), ['a'])
  s.setPeers(['a', 'b'], 100)
  t.equal(s.nextAt(), 500, 'same peers: b still at 500')
  s.setPeers(['a', 'b', 'c'], 100)
  t.equal(s.size, 3)
  t.same(s.due(100), ['a'], 'restarted at the change')
  t.equal(s.nextAt(), 100 + 1000 / 3)
})

t.test('a caller late by more than MAX_LAG_MS owes nothing for the lost time (no burst)', async (t) => {
  const s = new ProbeSchedule({ intervalMs: 1000, maxRate: 500 }, 0)
  s.setPeers(Array.from({ length: 100 }, (_, i) => `p${i}`), 0)
  t.equal(s.due(0).length, 1)
  // The event loop was blocked for 900 ms: 90 probes were due.
  const late = s.due(900)
  t.equal(late.length, 1, 'only the current slot, not a burst of 90')
  t.same(late, ['p1'], 'the ring goes on where it stood')
  t.equal(s.due(900 + 10).length, 1)
  // Lateness within MAX_LAG_MS is caught up (bounded by the lag at the cap).
  const s2 = new ProbeSchedule({ intervalMs: 1000, maxRate: 500 }, 0)
  s2.setPeers(Array.from({ length: 100 }, (_, i) => `p${i}`), 0)
  t.equal(s2.due(MAX_LAG_MS - 10).length, Math.floor((MAX_LAG_MS - 10) / 10) + 1)
})
