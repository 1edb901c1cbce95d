// The lease election's state machine (client-go leaderelection semantics) on a fake clock against an in-process
// API double with optimistic concurrency (resourceVersion; 409 conflicts). No API server runs here: the real
// adapter (@kubernetes/client-node) is NOT proven against one; see README.
import t from 'tap'
import { LeaseConflict, LeaseLeadership, LEASE_DEFAULTS, checkLeaseTimings, type LeaseApi, type LeaseClock, type LeaseObject, type LeaseRecord } from '../../../src/daemon/lease.js'

/** Virtual time: sleeps resolve only when advance() passes their deadline, in deadline order. */
class FakeClock implements LeaseClock {
  t = 1_000_000
  private timers: Array<{ at: number; resolve: () => void; seq: number }> = []
  private seq = 0
  now(): number {
    return this.t
  }
  sleep(ms: number, signal: AbortSignal): Promise<void> {
    return new Promise((resolve) => {
      if (signal.aborted) return resolve()
      const timer = { at: this.t + Math.max(0, ms), resolve, seq: this.seq++ }
      this.timers.push(timer)
      signal.addEventListener('abort', () => {
        this.timers = this.timers.filter((x) => x !== timer)
        resolve()
      }, { once: true })
    })
  }
  async settle(): Promise<void> {
    for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r))
  }
  /** Advances virtual time by `ms`, firing due timers in order; `each` runs after every step. */
  async advance(ms: number, each?: () => void): Promise<void> {
    const end = this.t + ms
    for (;;) {
      await this.settle()
      each?.()
      this.timers.sort((a, b) => a.at - b.at || a.seq - b.seq)
      const next = this.timers[0]
      if (!next || next.at > end) break
      this.timers.shift()
      this.t = Math.max(this.t, next.at)
      next.resolve()
    }
    this.t = end
    await this.settle()
    each?.()
  }
}

/** One Lease in memory with the API server's optimistic concurrency; per-client faults. */
class LeaseStore {
  obj: LeaseObject | null = null
  private rv = 100
  conflicts = 0
  writes: Array<{ by: string; spec: LeaseRecord }> = []
  /** Clients whose requests fail (network partition, API server down for them). */
  readonly down = new Set<string>()
  /** Clients whose requests never answer. */
  readonly hang = new Set<string>()

  client(name: string): LeaseApi {
    const gate = async (): Promise<void> => {
      if (this.hang.has(name)) await new Promise(() => undefined)
      if (this.down.has(name)) throw new Error('connect ECONNREFUSED')
    }
    return {
      get: async () => {
        await gate()
        return this.obj ? structuredClone(this.obj) : null
      },
      create: async (spec) => {
        await gate()
        if (this.obj) {
          this.conflicts++
          throw new LeaseConflict('leases.coordination.k8s.io "connector" already exists')
        }
        this.obj = { resourceVersion: String(++this.rv), spec: structuredClone(spec) }
        this.writes.push({ by: name, spec: structuredClone(spec) })
        return structuredClone(this.obj)
      },
      replace: async (resourceVersion, spec) => {
        await gate()
        if (!this.obj || this.obj.resourceVersion !== resourceVersion) {
          this.conflicts++
          throw new LeaseConflict('the object has been modified; please apply your changes to the latest version')
        }
        this.obj = { resourceVersion: String(++this.rv), spec: structuredClone(spec) }
        this.writes.push({ by: name, spec: structuredClone(spec) })
        return structuredClone(this.obj)
      },
    }
  }
}

const OPTS = { namespace: 'fabedge', name: 'connector', ...LEASE_DEFAULTS }

function candidate(store: LeaseStore, clock: FakeClock, identity: string, random = () => 0.5): LeaseLeadership {
  return new LeaseLeadership(store.client(identity), { ...OPTS, identity }, { clock, random })
}

/** Leadership timeline: every change with its virtual time. */
function track(l: LeaseLeadership, clock: FakeClock, into: Array<{ who: string; leader: boolean; at: number }>): void {
  l.onChange((leader) => into.push({ who: l.opts.identity, leader, at: clock.now() }))
}

t.test('timings: client-go checks', async (t) => {
  t.equal(checkLeaseTimings(LEASE_DEFAULTS), null, '15/10/2 is valid')
  t.match(checkLeaseTimings({ ...LEASE_DEFAULTS, renewDeadlineMs: 15_000 }), /lease-duration must be greater/)
  t.match(checkLeaseTimings({ ...LEASE_DEFAULTS, retryPeriodMs: 9_000 }), /1\.2 x --leader-retry-period/)
})

t.test('one candidate: creates the Lease, leads at once, renews every RetryPeriod', async (t) => {
  const clock = new FakeClock()
  const store = new LeaseStore()
  const a = candidate(store, clock, 'node-a')
  t.equal(a.isLeader(), false, 'a standby until the lease is ours')
  await a.start()
  await clock.advance(0)
  t.equal(a.isLeader(), true)
  t.match(store.obj?.spec, { holderIdentity: 'node-a', leaseDurationSeconds: 15, leaseTransitions: 0, acquireTime: clock.now(), renewTime: clock.now() })
  const acquired = store.obj!.spec.acquireTime
  await clock.advance(10_000)
  t.equal(store.writes.length, 1 + 5, 'a renew every 2 s')
  t.equal(store.obj?.spec.renewTime, clock.now(), 'renewTime moves')
  t.equal(store.obj?.spec.acquireTime, acquired, 'acquireTime stays while we hold it')
  t.match(a.status(), { mode: 'lease', leader: true, transitions: 1, lease: { namespace: 'fabedge', name: 'connector', identity: 'node-a', holder: 'node-a' } })
  await a.stop()
})

t.test('two candidates contending from the same instant: exactly one leads, the loser hits a conflict, never both', async (t) => {
  const clock = new FakeClock()
  const store = new LeaseStore()
  const timeline: Array<{ who: string; leader: boolean; at: number }> = []
  const a = candidate(store, clock, 'node-a', () => 0)
  const b = candidate(store, clock, 'node-b', () => 0)
  track(a, clock, timeline)
  track(b, clock, timeline)
  await Promise.all([a.start(), b.start()])
  let both = 0
  let none = 0
  await clock.advance(60_000, () => {
    if (a.isLeader() && b.isLeader()) both++
    if (clock.now() > 1_000_000 && !a.isLeader() && !b.isLeader()) none++
  })
  t.equal(both, 0, 'never two leaders at once')
  t.equal(none, 0, 'and never none once started')
  t.ok(store.conflicts >= 1, `the race was decided by optimistic concurrency (${store.conflicts} conflict(s))`)
  t.equal(timeline.length, 1, 'one promotion, no flapping over a minute')
  const leader = a.isLeader() ? a : b
  t.equal(store.obj?.spec.holderIdentity, leader.opts.identity)
  t.equal((a.isLeader() ? b : a).status().lease?.holder, leader.opts.identity, 'the standby reports the holder')
  await Promise.all([a.stop(), b.stop()])
})

t.test('leader crash (no renew, no release): takeover after a full LeaseDuration without a change, not before', async (t) => {
  const clock = new FakeClock()
  const store = new LeaseStore()
  const a = candidate(store, clock, 'node-a')
  await a.start()
  await clock.advance(0)
  const b = candidate(store, clock, 'node-b')
  await b.start()
  await clock.advance(7_000)
  t.equal(b.isLeader(), false)
  await a.stop() // a crash: the loop stops, the lease stays with node-a
  const lastRenew = store.obj!.spec.renewTime!
  let promotedAt: number | null = null
  b.onChange((l) => { if (l) promotedAt = clock.now() })
  await clock.advance(30_000)
  t.ok(promotedAt !== null, 'the standby took over')
  const after = promotedAt! - lastRenew
  // b observed the last renew at most one retry (<= 2 s x 2.2) after it happened; it then waits 15 s without change.
  t.ok(after >= 15_000, `not before a LeaseDuration (${after} ms after the last renew)`)
  t.ok(after <= 15_000 + 2 * 4_400, `within LeaseDuration + two jittered retries (${after} ms)`)
  t.match(store.obj?.spec, { holderIdentity: 'node-b', leaseTransitions: 1 })
  await b.stop()
})

t.test('release (SIGTERM): holder cleared at once, the standby takes over within one jittered RetryPeriod', async (t) => {
  const clock = new FakeClock()
  const store = new LeaseStore()
  const a = candidate(store, clock, 'node-a')
  await a.start()
  await clock.advance(0)
  const b = candidate(store, clock, 'node-b', () => 1)
  await b.start()
  await clock.advance(5_000)
  const changes: boolean[] = []
  a.onChange((l) => changes.push(l))
  const t0 = clock.now()
  await a.release()
  t.same(changes, [false], 'demoted before the release is written')
  t.match(store.obj?.spec, { holderIdentity: '', leaseDurationSeconds: 1, leaseTransitions: 0 }, "client-go's release record")
  let promotedAt: number | null = null
  b.onChange((l) => { if (l) promotedAt = clock.now() })
  await clock.advance(10_000)
  t.ok(promotedAt !== null)
  t.ok(promotedAt! - t0 <= 2_000 * (1 + 1.2), `took over ${promotedAt! - t0} ms after the release (<= RetryPeriod x 2.2, not a LeaseDuration)`)
  t.match(store.obj?.spec, { holderIdentity: 'node-b', leaseTransitions: 1 })
  await a.release()
  t.equal(store.obj?.spec.holderIdentity, 'node-b', 'a second release by a non-holder writes nothing')
  await b.stop()
})

t.test('renew failures: the leader demotes before anyone could take the lease; back as a standby after', async (t) => {
  for (const fault of ['down', 'hang'] as const) {
    const clock = new FakeClock()
    const store = new LeaseStore()
    const timeline: Array<{ who: string; leader: boolean; at: number }> = []
    const a = candidate(store, clock, 'node-a')
    track(a, clock, timeline)
    await a.start()
    await clock.advance(0)
    const b = candidate(store, clock, 'node-b')
    track(b, clock, timeline)
    await b.start()
    await clock.advance(4_000)
    const lastRenew = store.obj!.spec.renewTime!
    store[fault].add('node-a') // only node-a loses the API server
    await clock.advance(40_000)
    const aDown = timeline.find((e) => e.who === 'node-a' && !e.leader)
    const bUp = timeline.find((e) => e.who === 'node-b' && e.leader)
    t.ok(aDown && bUp, `${fault}: a demoted, b promoted`)
    t.ok(aDown!.at - lastRenew <= 2_000 + 10_000, `${fault}: a stepped down ${aDown!.at - lastRenew} ms after its last renew (<= RetryPeriod + RenewDeadline)`)
    t.ok(aDown!.at < bUp!.at, `${fault}: a stepped down (${aDown!.at - lastRenew} ms) before b took over (${bUp!.at - lastRenew} ms)`)
    t.ok(bUp!.at - lastRenew >= 15_000, `${fault}: b respected the LeaseDuration`)
    store[fault].delete('node-a')
    await clock.advance(30_000)
    t.equal(a.isLeader(), false, `${fault}: a campaigns again but respects b's renewed lease`)
    t.equal(b.isLeader(), true)
    t.equal(timeline.length, 3, `${fault}: no flapping`)
    await b.stop() // now b crashes: a, healed, must not be stuck on a request that never answered
    await clock.advance(30_000)
    t.equal(a.isLeader(), true, `${fault}: a takes over again after b's crash`)
    await a.stop()
  }
})

t.test('API errors and a lease held by someone else: a newcomer waits, counting from its own observation', async (t) => {
  const clock = new FakeClock()
  const store = new LeaseStore()
  // A lease written long ago by a holder that still renews: its old timestamps must not matter (clock skew).
  store.obj = { resourceVersion: '1', spec: { holderIdentity: 'node-z', leaseDurationSeconds: 15, acquireTime: 0, renewTime: 0, leaseTransitions: 4 } }
  const b = candidate(store, clock, 'node-b')
  await b.start()
  await clock.advance(10_000)
  t.equal(b.isLeader(), false, 'renewTime in the past is not expiry: b has not yet seen 15 s without a change')
  await clock.advance(10_000)
  t.equal(b.isLeader(), true, 'after a LeaseDuration of no change it takes over')
  t.equal(store.obj.spec.leaseTransitions, 5, 'leaseTransitions counts holders')
  store.down.add('node-b')
  await clock.advance(1_000)
  t.equal(b.isLeader(), true, 'a failed renew alone does not demote')
  await b.stop()
})
