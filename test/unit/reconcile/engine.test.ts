import t from 'tap'
import { PassEngine } from '../../../src/reconcile/engine.js'
import { passContext, type PassContext, type Subsystem, type SubsystemPlan } from '../../../src/reconcile/subsystem.js'
import type { Desired } from '../../../src/desired/types.js'
import { createLogger } from '../../../src/log.js'

const desired = { ipsets: {}, conns: {} } as unknown as Desired
const log = createLogger('silent')

/**
 * A subsystem shaped like the iptables one: it caches what it rendered and, on a shallow pass, trusts that cache
 * (skips observing). Its apply can be made to fail.
 */
class CachingSubsystem implements Subsystem {
  readonly name = 'iptables' as const
  cached = false
  live = false
  failApply = false
  contexts: PassContext[] = []
  async plan(_d: Desired, ctx: PassContext): Promise<SubsystemPlan> {
    this.contexts.push(ctx)
    if (!ctx.deep && this.cached) return { writes: 0, describe: () => [] }
    this.cached = true
    const writes = this.live ? 0 : 1
    return { writes, describe: () => (writes ? ['restore'] : []) }
  }
  async apply(): Promise<number> {
    if (this.failApply) throw new Error('iptables-restore: exit 1')
    this.live = true
    return 1
  }
}

t.test('a subsystem whose apply failed plans its next pass deep, and the pass is not converged until it succeeds', async (t) => {
  const sub = new CachingSubsystem()
  const engine = new PassEngine({ subsystems: [sub], log, wake: () => {} })
  sub.failApply = true
  const first = await engine.run(desired, passContext(['start']))
  t.equal(first.converged, false)
  t.match(first.errors, { iptables: /exit 1/ })
  t.same(engine.dirtySubsystems, ['iptables'])

  // A shallow pass (an SA event) would hit the subsystem's cache and plan nothing: the engine makes it deep.
  const second = await engine.run(desired, passContext(['vici:child-updown']))
  t.equal(sub.contexts[1]!.deep, true, 'the dirty subsystem was asked for a deep plan')
  t.equal(second.converged, false, 'still failing: still not converged')

  sub.failApply = false
  const third = await engine.run(desired, passContext(['vici:child-updown']))
  t.equal(third.converged, true)
  t.same(third.writes, { iptables: 1 })
  t.same(engine.dirtySubsystems, [])
  const fourth = await engine.run(desired, passContext(['vici:child-updown']))
  t.equal(sub.contexts[3]!.deep, false, 'once clean, shallow passes stay shallow')
  t.same(fourth.writes, {})
})

t.test('a failing subsystem does not stop the others; order is kept', async (t) => {
  const order: string[] = []
  const mk = (name: 'ipsets' | 'routes' | 'tunnels', fail: boolean): Subsystem => ({
    name,
    async plan() {
      order.push(`${name}:plan`)
      if (fail) throw new Error(`${name} broke`)
      return { writes: 1, describe: () => ['x'] }
    },
    async apply() {
      order.push(`${name}:apply`)
      return 1
    },
  })
  const engine = new PassEngine({ subsystems: [mk('ipsets', false), mk('routes', true), mk('tunnels', false)], log, wake: () => {} })
  const r = await engine.run(desired, passContext(['start']))
  t.same(order, ['ipsets:plan', 'ipsets:apply', 'routes:plan', 'tunnels:plan', 'tunnels:apply'])
  t.same(r.writes, { ipsets: 1, tunnels: 1 })
  t.same(r.errors, { routes: 'routes broke' })
  t.equal(r.converged, false)
  t.same(Object.keys(r.timings).sort(), ['ipsets', 'routes', 'tunnels'])
})

t.test('wakes a plan asks for reach the scheduler, also from a plan with nothing to write', async (t) => {
  const wakes: Array<[number, string]> = []
  const sub: Subsystem = {
    name: 'tunnels',
    async plan() {
      return { writes: 0, describe: () => [], wakes: [{ at: 1234, reason: 'backoff:peer' }] }
    },
    async apply() {
      throw new Error('not called')
    },
  }
  const engine = new PassEngine({ subsystems: [sub], log, wake: (at, reason) => wakes.push([at, reason]) })
  const r = await engine.run(desired, passContext(['verify']))
  t.same(wakes, [[1234, 'backoff:peer']])
  t.equal(r.converged, true)
})

t.test('unsettled failures (peers backing off) keep the pass from converging, without forcing deep passes', async (t) => {
  let unsettled: string | undefined = '1 peer(s) backing off after failed initiates'
  const contexts: PassContext[] = []
  const sub: Subsystem = {
    name: 'tunnels',
    async plan(_d, ctx) {
      contexts.push(ctx)
      return { writes: 0, describe: () => [], ...(unsettled ? { unsettled } : {}) }
    },
    async apply() { return 0 },
  }
  const engine = new PassEngine({ subsystems: [sub], log, wake: () => {} })
  const r1 = await engine.run(desired, passContext(['vici:child-updown']))
  t.equal(r1.converged, false, 'not converged while a peer backs off: readiness does not lie')
  t.same(r1.errors, { tunnels: unsettled })
  t.same(r1.unsettled, ['tunnels'])
  t.same(engine.dirtySubsystems, [], 'nothing to re-observe: not dirty')
  await engine.run(desired, passContext(['vici:child-updown']))
  t.equal(contexts[1]!.deep, false, 'the next pass stays shallow')
  unsettled = undefined
  const r3 = await engine.run(desired, passContext(['backoff:peer']))
  t.equal(r3.converged, true)
  t.same(r3.unsettled, [])
})
