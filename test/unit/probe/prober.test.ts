// The prober over a fake ICMP port, a fake repair port and a fake clock: state per peer from replies and losses,
// metrics and status, repairs (who, when, escalation, backoff, skipped when no longer needed, failing charon),
// target candidates, address-less peers, socket errors, membership changes and the timer.
import t from 'tap'
import type { Logger } from '../../../src/log.js'
import { createLogger } from '../../../src/log.js'
import { Metrics } from '../../../src/daemon/metrics.js'
import { probeMetricsSink } from '../../../src/probe/metrics.js'
import { ProbeError } from '../../../src/probe/codec.js'
import type { ProbePort, ProbeReply, ProbeSend } from '../../../src/probe/port.js'
import { Prober, type PeerTunnel, type ProberOptions } from '../../../src/probe/prober.js'
import type { RepairScope } from '../../../src/probe/repair.js'
import type { TargetChoice } from '../../../src/probe/targets.js'

class FakePort implements ProbePort {
  sent: Array<{ p: ProbeSend; seq: number; at: number }> = []
  replyFns: Array<(r: ProbeReply) => void> = []
  errorFns: Array<(e: Error) => void> = []
  fail: ((p: ProbeSend) => Error | undefined) | null = null
  closed = false
  polls = 0
  constructor(private readonly clock: { now: number }) {}
  send(p: ProbeSend, seq: number): number {
    const err = this.fail?.(p)
    if (err) throw err
    this.sent.push({ p, seq, at: this.clock.now })
    return this.clock.now
  }
  onReply(fn: (r: ProbeReply) => void): void { this.replyFns.push(fn) }
  onError(fn: (e: Error) => void): void { this.errorFns.push(fn) }
  close(): void { this.closed = true }
  poll(): void { this.polls++ }
  /** Answers every outstanding probe to `dst` after `rttMs`. */
  answer(dst: string, rttMs = 2): void {
    const last = [...this.sent].reverse().find((s) => s.p.dst === dst)
    if (last) for (const fn of this.replyFns) fn({ family: last.p.family, from: dst, seq: last.seq, at: last.at + rttMs })
  }
}

interface Rig {
  clock: { now: number }
  port: FakePort
  repairs: Array<{ peer: string; scope: RepairScope; stillNeeded: boolean }>
  repairResult: (peer: string) => Promise<number | null>
  prober: Prober
  metrics: Metrics
  logs: Array<Record<string, unknown>>
  /** Advances the clock in 10 ms steps, ticking, answering probes to the `answering` addresses. */
  run(ms: number, answering?: Set<string>): Promise<void>
}

function rig(opts: Partial<ProberOptions> = {}): Rig {
  const clock = { now: 1_000 }
  const port = new FakePort(clock)
  const logs: Array<Record<string, unknown>> = []
  const log: Logger = createLogger('info', { write: (line: string) => { logs.push(JSON.parse(line)) } })
  const metrics = new Metrics({ processMetrics: false })
  const r: Rig = {
    clock, port, logs, metrics, repairs: [],
    repairResult: async () => 3,
    prober: undefined as unknown as Prober,
    async run(ms, answering = new Set()) {
      for (let i = 0; i < ms; i += 10) {
        const before = port.sent.length
        r.prober.tick()
        for (const s of port.sent.slice(before)) if (answering.has(s.p.dst)) port.answer(s.p.dst)
        await new Promise((res) => setImmediate(res))
        clock.now += 10
      }
    },
  }
  r.prober = new Prober({ intervalMs: 1000, downAfter: 5, maxRate: 500, repair: true, ...opts }, {
    port, log, metrics: probeMetricsSink(metrics, () => r.prober.gaugeRows()), now: () => clock.now, wallNow: () => 1_700_000_000_000 + clock.now,
    repairs: { reestablish: (peer, scope, stillNeeded) => { r.repairs.push({ peer, scope, stillNeeded: stillNeeded() }); return r.repairResult(peer) } },
    setTimer: () => ({ cancel: () => undefined }),
  })
  return r
}

const pair = (dst: string, src = '10.81.1.1') => ({ family: 4 as const, src, dst })
const targets = (m: Record<string, string[]>): Map<string, TargetChoice> => new Map(Object.entries(m).map(([k, v]) => [k, { pairs: v.map((d) => pair(d)) }]))
const tun = (m: Record<string, PeerTunnel>): Map<string, PeerTunnel> => new Map(Object.entries(m))
const UP_INIT: PeerTunnel = { initiator: true, ike: 'up' }
const status = (r: Rig, peer: string) => r.prober.status().peers.find((p) => p.name === peer)!

async function metricValue(m: Metrics, name: string, peer: string): Promise<number | undefined> {
  const got = await m.registry.getSingleMetric(name)!.get()
  return got.values.find((v) => v.labels.peer === peer)?.value
}

t.test('healthy peers: up, RTT in status and metrics, probes spread over the interval', async (t) => {
  const r = rig()
  r.prober.update(targets({ a: ['10.81.2.1'], b: ['10.81.3.1'] }), tun({ a: UP_INIT, b: UP_INIT }))
  await r.run(3000, new Set(['10.81.2.1', '10.81.3.1']))
  t.equal(r.port.sent.length, 6, 'each peer once per second')
  t.equal(r.port.polls, 300, 'replies read in at every tick')
  t.same(r.port.sent.slice(0, 2).map((s) => s.at - r.port.sent[0]!.at), [0, 500], 'spread: the second peer half an interval later')
  const a = status(r, 'a')
  t.equal(a.datapath, 'up')
  t.same(a.probe, pair('10.81.2.1'))
  t.equal(a.rtt!.last, 0.002)
  t.equal(a.lossRatio, 0)
  t.equal(await metricValue(r.metrics, 'fabtunnel_peer_datapath_up', 'a'), 1)
  t.equal(await metricValue(r.metrics, 'fabtunnel_peer_rtt_seconds', 'a'), 0.002)
  const s = r.prober.status()
  t.match(s, { enabled: true, intervalMs: 1000, periodMs: 1000, downAfter: 5, maxRate: 500, repair: true })
})

t.test('down after 5 losses while IKE says up: the initiator re-establishes the CHILD_SAs, then the IKE_SA', async (t) => {
  const r = rig()
  r.prober.update(targets({ a: ['10.81.2.1'], b: ['10.81.3.1'] }), tun({ a: UP_INIT, b: UP_INIT }))
  await r.run(10_000, new Set(['10.81.2.1', '10.81.3.1']))
  await r.run(6_000, new Set(['10.81.3.1']))
  t.equal(status(r, 'a').datapath, 'down')
  t.equal(status(r, 'b').datapath, 'up', 'the other peer is unaffected')
  t.equal(await metricValue(r.metrics, 'fabtunnel_peer_datapath_up', 'a'), 0)
  t.same(r.repairs, [{ peer: 'a', scope: 'children', stillNeeded: true }])
  t.equal(await metricValue(r.metrics, 'fabtunnel_datapath_repairs_total', 'a'), 1)
  const ev = r.logs.find((l) => l.op === 'probe-repair')!
  t.match(ev, { peer: 'a', scope: 'children', attempt: 1, consecutiveLosses: 5, dst: '10.81.2.1', ike: 'up', terminated: 3 }, 'logged with the evidence')
  t.match(status(r, 'a'), { repairs: 1, lastRepair: { scope: 'children', attempt: 1, error: null } })
  // Still down: backoff (2 x 5 probes = 10 s), then the IKE_SA, even while the children are being redone.
  r.prober.update(targets({ a: ['10.81.2.1'], b: ['10.81.3.1'] }), tun({ a: { initiator: true, ike: 'established' }, b: UP_INIT }))
  await r.run(5_000, new Set(['10.81.3.1']))
  t.equal(r.repairs.length, 1, 'backing off')
  t.match(status(r, 'a').repairWaiting, /backoff/)
  await r.run(6_000, new Set(['10.81.3.1']))
  t.same(r.repairs.map((x) => x.scope), ['children', 'ike'])
  // Back up: the memory is reset; the next fault starts with the children again.
  r.prober.update(targets({ a: ['10.81.2.1'], b: ['10.81.3.1'] }), tun({ a: UP_INIT, b: UP_INIT }))
  await r.run(2_000, new Set(['10.81.2.1', '10.81.3.1']))
  t.equal(status(r, 'a').datapath, 'up')
  t.ok(r.logs.some((l) => l.msg === 'datapath to a up' && l.repairs === 2))
  await r.run(6_000, new Set(['10.81.3.1']))
  t.same(r.repairs.map((x) => x.scope), ['children', 'ike', 'children'])
})

t.test('a responder only reports; repair off only reports; IKE not up: the loop is at work', async (t) => {
  for (const [tunnel, opts, reason] of [
    [{ initiator: false, ike: 'up' }, {}, /responder/],
    [UP_INIT, { repair: false }, /disabled/],
    [{ initiator: true, ike: 'down' }, {}, /IKE not up/],
  ] as const) {
    const r = rig(opts)
    r.prober.update(targets({ a: ['10.81.2.1'] }), tun({ a: tunnel }))
    await r.run(6_000, new Set(['10.81.2.1']))
    await r.run(6_000)
    t.equal(status(r, 'a').datapath, 'down')
    t.same(r.repairs, [])
    t.match(status(r, 'a').repairWaiting, reason)
  }
})

t.test('a repair charon refuses is logged and kept in status, not counted; one no longer needed is skipped', async (t) => {
  const r = rig()
  r.repairResult = async () => { throw new Error('terminate failed: no such SA') }
  r.prober.update(targets({ a: ['10.81.2.1'] }), tun({ a: UP_INIT }))
  await r.run(10_000, new Set(['10.81.2.1']))
  await r.run(6_000)
  t.equal(r.repairs.length, 1)
  t.match(status(r, 'a').lastRepair, { scope: 'children', error: 'terminate failed: no such SA' })
  t.equal(status(r, 'a').repairs, 0)
  t.equal(await metricValue(r.metrics, 'fabtunnel_datapath_repairs_total', 'a'), undefined)
  t.ok(r.logs.some((l) => l.op === 'probe-repair' && l.err === 'terminate failed: no such SA' && l.level === 50))

  const s = rig()
  s.repairResult = async () => null
  s.prober.update(targets({ a: ['10.81.2.1'] }), tun({ a: UP_INIT }))
  await s.run(10_000, new Set(['10.81.2.1']))
  await s.run(6_000)
  t.equal(s.repairs.length, 1)
  t.equal(status(s, 'a').repairs, 0)
  t.ok(s.logs.some((l) => l.op === 'probe-repair' && /repair skipped/.test(String(l.msg))))
})

t.test('at most 10 repairs per 10 s over all peers', async (t) => {
  const r = rig({ maxRate: 1000 })
  const names = Array.from({ length: 15 }, (_, i) => `p${i}`)
  const all = new Set(names.map((_, i) => `10.82.${i}.1`))
  r.prober.update(targets(Object.fromEntries(names.map((n, i) => [n, [`10.82.${i}.1`]]))), tun(Object.fromEntries(names.map((n) => [n, UP_INIT]))))
  await r.run(10_000, all)
  await r.run(6_500)
  t.equal(r.repairs.length, 10)
  t.ok(r.prober.status().peers.some((p) => /budget/.test(p.repairWaiting ?? '')))
})

t.test('targets: a never-answering target is not down but unknown, and the next candidate is tried', async (t) => {
  const r = rig()
  r.prober.update(new Map([['a', { pairs: [pair('10.91.0.1'), pair('10.81.1.1')] }]]), tun({ a: UP_INIT }))
  await r.run(6_500, new Set(['10.81.1.1']))
  t.ok(r.logs.some((l) => l.msg === 'probe target never answered; trying the next candidate'))
  await r.run(2_000, new Set(['10.81.1.1']))
  t.match(status(r, 'a'), { datapath: 'up', probe: pair('10.81.1.1'), candidates: 2 })
  t.same(r.repairs, [], 'a silent target never drove a repair')

  const one = rig()
  one.prober.update(new Map([['a', { pairs: [pair('10.91.0.1')] }]]), tun({ a: UP_INIT }))
  await one.run(8_000)
  t.match(status(one, 'a'), { datapath: 'unknown', reason: 'the target has never answered' })
  t.same(one.repairs, [])
})

t.test('no address pair: unknown with the reason, never probed', async (t) => {
  const r = rig()
  r.prober.update(new Map([['a', { pairs: [], reason: 'no local address inside the local subnets/nodeSubnets to probe from' }]]), tun({ a: UP_INIT }))
  await r.run(3_000)
  t.equal(r.port.sent.length, 0)
  t.match(status(r, 'a'), { datapath: 'unknown', reason: /no local address/, probe: null })
  t.ok(r.logs.some((l) => l.msg === 'peer cannot be probed; its datapath state stays unknown'))
})

t.test('send errors (the addon refuses: no route, no socket) count as losses and are logged, bounded', async (t) => {
  const r = rig()
  r.prober.update(targets({ a: ['10.81.2.1'] }), tun({ a: UP_INIT }))
  await r.run(3_000, new Set(['10.81.2.1']))
  r.port.fail = () => new ProbeError('ENETUNREACH', 'sendmsg ENETUNREACH')
  await r.run(8_000)
  t.equal(status(r, 'a').datapath, 'down')
  t.equal(r.logs.filter((l) => l.msg === 'cannot send probe').length, 2, 'the first and the N-th failure, not every one')
  for (const fn of r.port.errorFns) fn(new Error('recvfrom EIO'))
  t.ok(r.logs.some((l) => l.msg === 'probe socket receive error' && l.err === 'recvfrom EIO'))
})

t.test('replies that are not ours, late or from elsewhere are ignored', async (t) => {
  const r = rig()
  r.prober.update(targets({ a: ['10.81.2.1'] }), tun({ a: UP_INIT }))
  await r.run(1_000)
  const s = r.port.sent[0]!
  for (const fn of r.port.replyFns) {
    fn({ family: 4, from: '10.99.0.1', seq: s.seq, at: s.at + 1 })
    fn({ family: 4, from: '10.81.2.1', seq: s.seq + 1000, at: s.at + 1 })
  }
  t.equal(status(r, 'a').received, 0)
})

t.test('membership: a removed peer loses its series; a changed pair starts afresh; the timer follows', async (t) => {
  const r = rig()
  const armed: number[] = []
  let cancelled = 0
  const timed = new Prober({ intervalMs: 1000, downAfter: 5, maxRate: 500, repair: true }, {
    port: r.port, log: createLogger('silent'), metrics: { rtt: () => undefined, repaired: () => undefined }, now: () => r.clock.now,
    repairs: { reestablish: async () => 0 },
    setTimer: (_fn, ms) => { armed.push(ms); return { cancel: () => { cancelled++ } } },
  })
  timed.start()
  t.same(armed, [], 'no peers: no timer')
  timed.update(targets({ a: ['10.81.2.1'] }), tun({ a: UP_INIT }))
  t.same(armed, [20], 'armed for the first probe (at least one tick)')
  timed.stop()
  t.equal(cancelled, 1)
  timed.close()
  t.ok(r.port.closed)

  r.prober.update(targets({ a: ['10.81.2.1'], b: ['10.81.3.1'] }), tun({ a: UP_INIT, b: UP_INIT }))
  await r.run(2_000, new Set(['10.81.2.1', '10.81.3.1']))
  t.equal(await metricValue(r.metrics, 'fabtunnel_peer_rtt_seconds', 'b'), 0.002)
  r.prober.update(targets({ a: ['10.81.2.9'] }), tun({ a: UP_INIT }))
  t.equal(await metricValue(r.metrics, 'fabtunnel_peer_rtt_seconds', 'b'), undefined, 'b gone: its series too')
  t.match(status(r, 'a'), { datapath: 'unknown', sent: 0, probe: pair('10.81.2.9') }, 'a new pair: history about other addresses dropped')
  t.same(r.prober.status().peers.map((p) => p.name), ['a'])
  t.throws(() => new Prober({ intervalMs: 1000, downAfter: 0, maxRate: 1, repair: true }, { port: r.port, log: createLogger('silent'), metrics: { rtt: () => undefined, repaired: () => undefined }, now: () => 0, repairs: { reestablish: async () => 0 } }), RangeError)
})

t.test('gauge rows: refilled in place on every read, following the peers and their state', async (t) => {
  const r = rig()
  r.prober.update(targets({ a: ['10.81.2.1'], b: ['10.81.3.1'], c: ['10.81.4.1'] }), tun({ a: UP_INIT, b: UP_INIT, c: UP_INIT }))
  const first = r.prober.gaugeRows()
  t.same(first.map((x) => [x.name, x.datapath, x.rttLast, x.lossRatio]), [['a', 'unknown', null, null], ['b', 'unknown', null, null], ['c', 'unknown', null, null]])
  const rowA = first[0]
  await r.run(2_000, new Set(['10.81.2.1', '10.81.4.1']))
  const second = r.prober.gaugeRows()
  t.equal(second, first, 'the same array')
  t.equal(second[0], rowA, 'the same row objects')
  t.same(second.map((x) => [x.name, x.datapath, x.rttLast]), [['a', 'up', 0.002], ['b', 'unknown', null], ['c', 'up', 0.002]])
  t.equal(second[1]!.lossRatio, 1, 'b: every probe lost')
  t.equal(second[0]!.lossRatio, 0)
  r.prober.update(targets({ c: ['10.81.4.1'] }), tun({ c: UP_INIT }))
  t.same(r.prober.gaugeRows().map((x) => [x.name, x.datapath]), [['c', 'up']], 'peers removed: the rows shrink to the peers left')
  r.prober.update(targets({ c: ['10.81.4.1'], d: ['10.81.5.1'] }), tun({ c: UP_INIT, d: UP_INIT }))
  t.same(r.prober.gaugeRows().map((x) => [x.name, x.datapath, x.lossRatio]), [['c', 'up', 0], ['d', 'unknown', null]], 'and grow again')
})
