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

t.test('triggerAt: the earliest request wins; stop cancels pending work', async (t) => {
  const seen: string[][] = []
  const s = new PassScheduler(async (r) => { seen.push(r) }, { coalesceMs: 1 })
  s.triggerAt(Date.now() + 200, 'late')
  s.triggerAt(Date.now() + 20, 'early')
  await sleep(80)
  t.same(seen, [['early']])
  s.triggerAt(Date.now() + 20, 'never')
  await s.stop()
  await sleep(40)
  t.same(seen, [['early']], 'nothing runs after stop')
})

t.test('only deep passes observe everything from scratch', async (t) => {
  t.equal(passContext(['vici:child-updown', 'netlink:route-del']).deep, false)
  t.equal(passContext(['backoff:peer']).deep, false)
  t.same(passContext(['config']), { reasons: ['config'], deep: false, credentials: false }, 'a config change: re-read config, reuse expensive observations')
  t.same(passContext(['credentials']), { reasons: ['credentials'], deep: false, credentials: true })
  t.same(passContext(['verify']), { reasons: ['verify'], deep: false, credentials: false }, 'verification re-reads only what is cheap')
  for (const r of ['start', 'resync', 'sighup', 'retry', 'vici:reconnected', 'netlink:resync', 'manual']) {
    t.same(passContext([r]), { reasons: [r], deep: true, credentials: true }, r)
  }
  t.equal(passContext(['vici:child-updown', 'resync']).deep, true, 'any deep reason makes the pass deep')
})
