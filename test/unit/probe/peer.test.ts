// One peer's datapath state: up on a reply, down after N consecutive losses of a target that answered before,
// unknown for one that never did; RTT statistics and the loss ratio over the window.
import t from 'tap'
import { PeerProbe, rttStats, WINDOW } from '../../../src/probe/peer.js'

t.test('unknown until the first reply, up on it, down after N losses in a row, up again on the next reply', async (t) => {
  const p = new PeerProbe(3, 0)
  t.equal(p.state, 'unknown')
  t.same(p.onSent(1, 0), { lost: false, changed: false })
  t.equal(p.onReply(2, 5), null, 'a reply to another seq is not ours')
  const r = p.onReply(1, 4)!
  t.equal(r.rttMs, 4)
  t.equal(r.changed, true)
  t.equal(p.state, 'up')
  t.equal(p.onReply(1, 6), null, 'a duplicate reply is ignored')
  p.onSent(2, 1000)
  t.same(p.onSent(3, 2000), { lost: true, changed: false }, 'lost 1')
  p.onSent(4, 3000)
  t.equal(p.state, 'up', 'two losses: still up')
  t.same(p.onSent(5, 4000), { lost: true, changed: true }, 'the third loss marks it down')
  t.equal(p.state, 'down')
  t.equal(p.since, 4000)
  t.equal(p.consecutiveLosses, 3)
  t.equal(p.onReply(4, 4001), null, 'a late reply to a probe already counted lost does not count')
  const back = p.onReply(5, 4010)!
  t.equal(back.changed, true)
  t.equal(p.state, 'up')
  t.equal(p.consecutiveLosses, 0)
  t.equal(p.sent, 5)
  t.equal(p.received, 2)
})

t.test('a target that never answered stays unknown (it may not exist): never down', async (t) => {
  const p = new PeerProbe(2, 0)
  for (let i = 1; i <= 10; i++) p.onSent(i, i * 1000)
  t.equal(p.state, 'unknown')
  t.equal(p.consecutiveLosses, 9)
  t.equal(p.answered, false)
  t.equal(p.lossRatio(), 1)
})

t.test('a send failure is a loss', async (t) => {
  const p = new PeerProbe(2, 0)
  p.onSent(1, 0)
  p.onReply(1, 1)
  t.same(p.onSendFailed(1000), { lost: true, changed: false })
  t.same(p.onSendFailed(2000), { lost: true, changed: true })
  t.equal(p.state, 'down')
  p.onSent(3, 3000)
  t.equal(p.consecutiveLosses, 2, 'no outstanding probe after a failed send: the next send is no extra loss')
})

t.test('RTT stats and loss ratio cover the last WINDOW probes', async (t) => {
  t.equal(rttStats([]), null)
  const s = rttStats([1, 2, 3, 4])!
  t.same(s, { last: 0.004, min: 0.001, avg: 0.0025, max: 0.004, stddev: Math.sqrt(1.25) / 1000, samples: 4 })
  const p = new PeerProbe(5, 0)
  t.equal(p.lossRatio(), null)
  t.equal(p.rtt(), null)
  let seq = 0
  // WINDOW losses, then WINDOW answered probes: the losses have left the window.
  p.onSent(++seq, 0)
  p.onReply(seq, 1)
  for (let i = 0; i < WINDOW; i++) p.onSent(++seq, seq * 10)
  p.onSent(++seq, seq * 10)
  t.ok(p.lossRatio()! > 0.9)
  for (let i = 0; i < WINDOW; i++) {
    p.onSent(++seq, seq * 10)
    p.onReply(seq, seq * 10 + 2)
  }
  t.equal(p.lossRatio(), 0)
  t.equal(p.rtt()!.samples, WINDOW)
  t.equal(p.rtt()!.max, 0.002)
})

t.test('loss ratio and losses in a row over a random walk equal those of the list of the last WINDOW results', async (t) => {
  let seed = 11
  const rnd = (n: number): number => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) % n)
  const q = new PeerProbe(5, 0)
  // The model: every result in order (true: answered, false: lost).
  const list: boolean[] = []
  let outstanding = false
  const seen = new Set<string>()
  for (let step = 0; step < 2000; step++) {
    // Runs of mostly answers and of mostly losses, so the window is all losses, all answers and mixed.
    const answer = step % 400 < 150 ? rnd(30) !== 0 : step % 400 < 300 ? rnd(2) === 0 : false
    if (rnd(25) === 0) {
      // Not sent: an outstanding probe is lost, and so is this one.
      if (outstanding) list.push(false)
      list.push(false)
      outstanding = false
      q.onSendFailed(step)
    } else {
      if (outstanding) list.push(false)
      q.onSent(step + 1, step)
      outstanding = true
      if (answer) {
        q.onReply(step + 1, step + 0.5)
        list.push(true)
        outstanding = false
      }
    }
    const window = list.slice(-WINDOW)
    const want = window.length ? window.filter((x) => !x).length / window.length : null
    let run = 0
    for (let i = list.length - 1; i >= 0 && !list[i]; i--) run++
    if (q.lossRatio() !== want || q.consecutiveLosses !== run) {
      t.fail(`step ${step}: loss ratio ${q.lossRatio()} (want ${want}), losses in a row ${q.consecutiveLosses} (want ${run})`)
      return
    }
    if (window.length === WINDOW) seen.add(want === 1 ? 'all lost' : want === 0 ? 'none lost' : 'mixed')
  }
  t.same([...seen].sort(), ['all lost', 'mixed', 'none lost'], 'the window was all losses, all answers and mixed')
  t.pass('2,000 steps: the same loss ratio and losses in a row as the list of the last WINDOW results')
})
