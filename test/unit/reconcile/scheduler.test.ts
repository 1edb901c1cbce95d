import t from 'tap'
import { PassScheduler } from '../../../src/reconcile/scheduler.js'
import { passContext } from '../../../src/reconcile/subsystem.js'

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

t.test('triggers inside the window collapse into one pass with all reasons', async (t) => {
  const seen: string[][] = []
  const s = new PassScheduler(async (r) => { seen.push(r) }, { coalesceMs: 10 })
  s.trigger('a'); s.trigger('b'); s.trigger('a')
  await s.idle()
  t.same(seen, [['a', 'b']])
  await s.stop()
})

t.test('single flight: triggers during a pass give exactly one follow-up pass', async (t) => {
  let running = 0
  let maxRunning = 0
  const seen: string[][] = []
  const s = new PassScheduler(async (r) => {
    running++
    maxRunning = Math.max(maxRunning, running)
    seen.push(r)
    await sleep(30)
    running--
  }, { coalesceMs: 1 })
  s.trigger('first')
  await sleep(10)
  for (let i = 0; i < 20; i++) s.trigger(`during-${i % 2}`)
  await s.idle()
  t.equal(maxRunning, 1, 'never two passes at once')
  t.same(seen, [['first'], ['during-0', 'during-1']])
  await s.stop()
})

t.test('a failing pass is reported and scheduling goes on', async (t) => {
  const errors: unknown[] = []
  let n = 0
  const s = new PassScheduler(async () => {
    if (n++ === 0) throw new Error('boom')
  }, { coalesceMs: 1, onError: (e) => errors.push(e) })
  s.trigger('x')
  await s.idle()
  s.trigger('y')
  await s.idle()
  t.equal(n, 2)
  t.match(errors, [{ message: 'boom' }])
  await s.stop()
})

t.test('triggerAt: the earliest request per reason wins; stop cancels pending work', async (t) => {
  const seen: string[][] = []
  const s = new PassScheduler(async (r) => { seen.push(r) }, { coalesceMs: 1 })
  s.triggerAt(Date.now() + 200, 'x')
  s.triggerAt(Date.now() + 20, 'x')
  await sleep(80)
  t.same(seen, [['x']], 'the earlier request for the same reason replaced the later one')
  await sleep(200)
  t.same(seen, [['x']], 'and the later one never fires')
  s.triggerAt(Date.now() + 20, 'never')
  await s.stop()
  await sleep(40)
  t.same(seen, [['x']], 'nothing runs after stop')
  t.equal(s.pendingWakes().size, 0)
})

t.test('a later wake with another reason is not dropped because an earlier one is pending', async (t) => {
  // A shallow backoff wake must not swallow the deep retry of a failed subsystem.
  const seen: string[][] = []
  const s = new PassScheduler(async (r) => { seen.push(r) }, { coalesceMs: 1 })
  t.teardown(() => s.stop())
  s.triggerAt(Date.now() + 20, 'backoff:peer')
  s.triggerAt(Date.now() + 80, 'retry')
  t.same([...s.pendingWakes().keys()].sort(), ['backoff:peer', 'retry'])
  const deadline = Date.now() + 2000
  while (seen.length < 2 && Date.now() < deadline) await sleep(10)
  t.same(seen, [['backoff:peer'], ['retry']], 'both wakes ran, each with its own reason')
  t.equal(s.pendingWakes().size, 0, 'fired wakes are forgotten')
})

t.test('wakes that fall due together run as one pass', async (t) => {
  let now = 1_000
  const seen: string[][] = []
  const s = new PassScheduler(async (r) => { seen.push(r) }, { coalesceMs: 1, now: () => now })
  t.teardown(() => s.stop())
  s.triggerAt(1_010, 'a')
  s.triggerAt(1_011, 'b')
  now = 2_000
  const deadline = Date.now() + 2000
  while (seen.length < 1 && Date.now() < deadline) await sleep(5)
  await s.idle()
  t.same(seen.map((r) => r.sort()), [['a', 'b']])
})

t.test('stop resolves with the pass in flight and starts nothing new', async (t) => {
  let release!: () => void
  let passes = 0
  const s = new PassScheduler(async () => {
    passes++
    await new Promise<void>((r) => { release = r })
  }, { coalesceMs: 1 })
  s.trigger('a')
  await sleep(20)
  s.trigger('b')
  let settled = false
  const stopped = s.stop().then(() => { settled = true })
  await sleep(20)
  t.equal(settled, false, 'waits for the pass in flight')
  release()
  await stopped
  await sleep(20)
  t.equal(passes, 1, 'the follow-up pass requested during the pass never starts')
})

t.test('only deep passes observe everything from scratch', async (t) => {
  t.equal(passContext(['vici:child-updown', 'netlink:route-del']).deep, false)
  t.equal(passContext(['backoff:peer']).deep, false)
  t.same(passContext(['config']), { reasons: ['config'], deep: false, credentials: false }, 'a config change: re-read config, reuse expensive observations')
  t.same(passContext(['credentials']), { reasons: ['credentials'], deep: false, credentials: true })
  t.same(passContext(['verify']), { reasons: ['verify'], deep: false, credentials: false }, 'verification re-reads only what is cheap')
  t.same(passContext(['retry']), { reasons: ['retry'], deep: false, credentials: false }, 'a retry: the engine makes the failed subsystems plan deep, not every subsystem')
  for (const r of ['start', 'resync', 'sighup', 'vici:reconnected', 'netlink:resync', 'manual']) {
    t.same(passContext([r]), { reasons: [r], deep: true, credentials: true }, r)
  }
  t.equal(passContext(['vici:child-updown', 'resync']).deep, true, 'any deep reason makes the pass deep')
})
