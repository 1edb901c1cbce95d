// The datapath prober: probes every peer through its tunnel on the schedule (schedule.ts), keeps each peer's state
// (peer.ts), reports it (status, metrics) and repairs peers whose datapath is down while IKE says up (repair.ts)
// through the tunnels subsystem. The I/O is behind ports: ProbePort (ICMP) and RepairPort (charon); the clock and
// the timer are injected, so unit tests run it with fakes and a fake clock (test/unit/probe/prober.test.ts).
import type { Logger } from '../log.js'
import { PeerProbe, type DatapathState, type RttStats } from './peer.js'
import type { ProbePort, ProbeReply } from './port.js'
import { DEFAULT_REPAIR_POLICY, repairDecision, type RepairMemory, type RepairPolicy, type RepairScope } from './repair.js'
import { ProbeSchedule } from './schedule.js'
import type { ProbePair, TargetChoice } from './targets.js'
import { isoTime } from '../iso-time.js'

export interface ProberOptions {
  intervalMs: number
  /** Consecutive lost probes that mark a peer down. */
  downAfter: number
  /** Most probes per second over all peers. */
  maxRate: number
  repair: boolean
  /** Shortest wait between two timer wake-ups (probes due meanwhile leave together). Default 20 ms. */
  tickMs?: number
  /** Default: DEFAULT_REPAIR_POLICY with the first backoff at twice the time to detect a fault. */
  policy?: RepairPolicy
}

/** What the tunnels subsystem says of a peer, refreshed after every pass. */
export interface PeerTunnel {
  initiator: boolean
  ike: 'up' | 'established' | 'down'
}

export interface RepairPort {
  /**
   * Ends the peer's CHILD_SAs (or its IKE_SA); the reconcile loop initiates them again. Resolves with how many, or
   * null when `stillNeeded()` (asked once charon answered) said no.
   */
  reestablish(peer: string, scope: RepairScope, stillNeeded: () => boolean): Promise<number | null>
}

/** What the prober pushes to metrics as it happens; per-peer gauges are read from gaugeRows() when scraped. */
export interface ProbeMetricsSink {
  rtt(seconds: number): void
  repaired(peer: string): void
}

export interface ProbeGaugeRow {
  name: string
  datapath: DatapathState
  /** Seconds. */
  rttLast: number | null
  lossRatio: number | null
}

export interface PeerProbeStatus {
  name: string
  datapath: DatapathState
  /** Why the state is unknown (no address pair, never answered, not probed yet); null otherwise. */
  reason: string | null
  since: string
  probe: ProbePair | null
  /** How many address pairs the peer has; the prober moves to the next while its target never answered. */
  candidates: number
  rtt: RttStats | null
  lossRatio: number | null
  sent: number
  received: number
  consecutiveLosses: number
  repairs: number
  lastRepair: { at: string; scope: RepairScope; attempt: number; error: string | null } | null
  /** Why a down peer is not being repaired now; null when not down or a repair was just started. */
  repairWaiting: string | null
}

export interface ProberStatus {
  enabled: true
  intervalMs: number
  /** Each peer's probe period (the interval, stretched by the rate cap). */
  periodMs: number
  downAfter: number
  maxRate: number
  repair: boolean
  peers: PeerProbeStatus[]
}

interface Entry {
  probe: PeerProbe
  pairs: ProbePair[]
  /** Index into pairs of the target in use. */
  candidate: number
  pair: ProbePair | null
  reason: string | null
  seq: number | null
  tunnel: PeerTunnel
  memory: RepairMemory | undefined
  repairs: number
  lastRepair: PeerProbeStatus['lastRepair']
  repairWaiting: string | null
  repairing: boolean
  /** Since when (monotonic ms) IKE has said the peer is up without a break; null while it does not. */
  ikeUpAt: number | null
}

export interface ProberDeps {
  port: ProbePort
  repairs: RepairPort
  log: Logger
  metrics: ProbeMetricsSink
  /** Monotonic ms: schedules, backoff, ages (the port's own clock only ever meets itself, in RTTs). */
  now: () => number
  /** Wall clock for status timestamps. Default Date.now. */
  wallNow?: () => number
  setTimer?: (fn: () => void, ms: number) => { cancel(): void }
}

const realTimer = (fn: () => void, ms: number): { cancel(): void } => {
  const t = setTimeout(fn, ms)
  t.unref()
  return { cancel: () => clearTimeout(t) }
}

export class Prober {
  private readonly peers = new Map<string, Entry>()
  /** The targets of the last update (the same object: the config did not change). */
  private lastTargets: ReadonlyMap<string, TargetChoice> | null = null
  private readonly bySeq = new Map<number, string>()
  /** gaugeRows()' rows, reused. */
  private readonly rows: ProbeGaugeRow[] = []
  private nextSeq = 1
  private readonly schedule: ProbeSchedule
  private readonly recentRepairs: number[] = []
  private readonly policy: RepairPolicy
  private timer: { cancel(): void } | null = null
  private running = false
  private readonly setTimer: NonNullable<ProberDeps['setTimer']>

  constructor(private readonly o: ProberOptions, private readonly d: ProberDeps) {
    if (!Number.isInteger(o.downAfter) || o.downAfter < 1) throw new RangeError('probe down-after must be a positive integer')
    this.schedule = new ProbeSchedule({ intervalMs: o.intervalMs, maxRate: o.maxRate }, d.now())
    this.policy = o.policy ?? { ...DEFAULT_REPAIR_POLICY, baseBackoffMs: 2 * o.downAfter * o.intervalMs }
    this.setTimer = d.setTimer ?? realTimer
    d.port.onReply((r) => this.onReply(r))
    d.port.onError((err) => d.log.warn({ op: 'probe', err: err.message }, 'probe socket receive error'))
  }

  /**
   * The peers to probe and their address pairs (after every pass). Peers that left the config are forgotten; a
   * changed address pair starts the peer afresh (its history was about other addresses).
   */
  update(targets: ReadonlyMap<string, TargetChoice>, tunnels: ReadonlyMap<string, PeerTunnel>): void {
    const now = this.d.now()
    if (targets === this.lastTargets) {
      // The same targets (the config did not change): only the tunnels' state moves.
      for (const [name, e] of this.peers) {
        const tunnel = tunnels.get(name) ?? { initiator: false, ike: 'down' as const }
        if (tunnel.ike !== 'up') e.ikeUpAt = null
        else if (e.ikeUpAt === null) e.ikeUpAt = now
        e.tunnel = tunnel
      }
      return
    }
    this.lastTargets = targets
    for (const name of [...this.peers.keys()]) {
      if (!targets.has(name)) this.forget(name)
    }
    for (const [name, choice] of targets) {
      const tunnel = tunnels.get(name) ?? { initiator: false, ike: 'down' as const }
      const e = this.peers.get(name)
      const samePair = e && JSON.stringify(e.pairs) === JSON.stringify(choice.pairs)
      if (e && samePair) {
        if (tunnel.ike !== 'up') e.ikeUpAt = null
        else if (e.ikeUpAt === null) e.ikeUpAt = now
        e.tunnel = tunnel
        continue
      }
      if (e) this.forget(name)
      this.peers.set(name, {
        probe: new PeerProbe(this.o.downAfter, now), pairs: choice.pairs, candidate: 0, pair: choice.pairs[0] ?? null,
        reason: choice.pairs.length ? 'not probed yet' : choice.reason ?? 'no probe target',
        seq: null, tunnel, memory: undefined, repairs: e?.repairs ?? 0, lastRepair: e?.lastRepair ?? null, repairWaiting: null, repairing: false,
        ikeUpAt: tunnel.ike === 'up' ? now : null,
      })
      if (!choice.pairs.length) this.d.log.warn({ op: 'probe', peer: name, reason: choice.reason }, 'peer cannot be probed; its datapath state stays unknown')
    }
    this.schedule.setPeers([...this.peers.entries()].filter(([, e]) => e.pair).map(([n]) => n), now)
    if (this.running) this.arm()
  }

  private forget(name: string): void {
    const e = this.peers.get(name)
    if (e?.seq !== null && e?.seq !== undefined) this.bySeq.delete(e.seq)
    this.peers.delete(name)
  }

  start(): void {
    this.running = true
    this.arm()
  }

  stop(): void {
    this.running = false
    this.timer?.cancel()
    this.timer = null
  }

  private arm(): void {
    this.timer?.cancel()
    this.timer = null
    const at = this.schedule.nextAt()
    if (!Number.isFinite(at)) return
    const wait = Math.max(this.o.tickMs ?? 20, at - this.d.now())
    this.timer = this.setTimer(() => {
      this.timer = null
      this.tick()
      if (this.running) this.arm()
    }, wait)
  }

  /** Reads the replies in, then sends the probes due now and decides repairs for the peers probed. */
  tick(): void {
    this.d.port.poll?.()
    const now = this.d.now()
    for (const name of this.schedule.due(now)) {
      const e = this.peers.get(name)
      if (!e?.pair) continue
      this.probeOne(name, e, now)
    }
  }

  private allocSeq(): number {
    for (let i = 0; i < 0x10000; i++) {
      const s = this.nextSeq
      this.nextSeq = (this.nextSeq % 0xffff) + 1
      if (!this.bySeq.has(s)) return s
    }
    throw new RangeError('no free ICMP sequence number')
  }

  private probeOne(name: string, e: Entry, now: number): void {
    if (e.seq !== null) this.bySeq.delete(e.seq)
    e.seq = null
    const seq = this.allocSeq()
    let outcome
    try {
      const at = this.d.port.send({ family: e.pair!.family, src: e.pair!.src, dst: e.pair!.dst }, seq)
      e.seq = seq
      this.bySeq.set(seq, name)
      outcome = e.probe.onSent(seq, at, now)
    } catch (err) {
      // Not sent (e.g. no route: the tunnel's route is gone): the datapath cannot carry it, which is a loss.
      outcome = e.probe.onSendFailed(now)
      if (e.probe.consecutiveLosses === 1 || e.probe.consecutiveLosses === this.o.downAfter) {
        this.d.log.warn({ op: 'probe', peer: name, src: e.pair!.src, dst: e.pair!.dst, err: (err as Error).message }, 'cannot send probe')
      }
    }
    if (outcome.lost || outcome.changed) this.report(name, e, outcome.changed)
    if (e.probe.state === 'down') this.considerRepair(name, e, now)
  }

  private onReply(r: ProbeReply): void {
    const name = this.bySeq.get(r.seq)
    if (name === undefined) return
    const e = this.peers.get(name)
    if (!e?.pair || e.pair.dst !== r.from || e.pair.family !== r.family) return
    const got = e.probe.onReply(r.seq, r.at, this.d.now())
    if (!got) return
    this.bySeq.delete(r.seq)
    e.seq = null
    this.d.metrics.rtt(got.rttMs / 1000)
    this.report(name, e, got.changed)
  }

  private report(name: string, e: Entry, changed: boolean): void {
    const p = e.probe
    if (!p.answered && p.consecutiveLosses >= this.o.downAfter && e.pairs.length > 1) {
      // This target never answered: try the next candidate (and cycle; one of them may answer later).
      e.candidate = (e.candidate + 1) % e.pairs.length
      e.pair = e.pairs[e.candidate]!
      e.probe = new PeerProbe(this.o.downAfter, this.d.now())
      e.reason = `target ${e.pairs[(e.candidate + e.pairs.length - 1) % e.pairs.length]!.dst} never answered; trying ${e.pair.dst} (candidate ${e.candidate + 1} of ${e.pairs.length})`
      this.d.log.info({ op: 'probe', peer: name, src: e.pair.src, dst: e.pair.dst, candidate: e.candidate + 1, candidates: e.pairs.length }, 'probe target never answered; trying the next candidate')
      return
    }
    e.reason = p.state === 'unknown' ? (p.consecutiveLosses >= this.o.downAfter ? 'the target has never answered' : e.candidate > 0 ? e.reason : 'not enough probes yet') : null
    if (!changed) return
    const ratio = p.lossRatio()
    const fields = { op: 'probe', peer: name, datapath: p.state, src: e.pair?.src, dst: e.pair?.dst, consecutiveLosses: p.consecutiveLosses, lossRatio: ratio, ike: e.tunnel.ike }
    if (p.state === 'down') this.d.log.warn(fields, `datapath to ${name} down: ${p.consecutiveLosses} probes lost in a row`)
    else if (p.state === 'up') {
      this.d.log.info({ ...fields, rttMs: (p.rtt()?.last ?? 0) * 1000, repairs: e.memory?.attempts ?? 0 }, `datapath to ${name} up`)
      e.memory = undefined
      e.repairWaiting = null
    } else this.d.log.warn(fields, `datapath to ${name} unknown: ${e.reason}`)
  }

  private considerRepair(name: string, e: Entry, now: number): void {
    if (e.repairing) return
    while (this.recentRepairs.length && this.recentRepairs[0]! <= now - this.policy.windowMs) this.recentRepairs.shift()
    const d = repairDecision({
      enabled: this.o.repair, datapathDown: true, initiator: e.tunnel.initiator, ike: e.tunnel.ike,
      ikeUpForMs: e.ikeUpAt === null ? 0 : now - e.ikeUpAt, evidenceMs: this.o.downAfter * this.schedule.periodMs,
      memory: e.memory, recent: this.recentRepairs, now, policy: this.policy,
    })
    if (!d.repair) {
      e.repairWaiting = d.reason
      return
    }
    e.repairWaiting = null
    e.memory = { attempts: d.attempt, lastAt: now }
    this.recentRepairs.push(now)
    e.repairing = true
    const p = e.probe
    const evidence = {
      op: 'probe-repair', peer: name, scope: d.scope, attempt: d.attempt, src: e.pair?.src, dst: e.pair?.dst,
      consecutiveLosses: p.consecutiveLosses, lossRatio: p.lossRatio(), lastReplyAgoMs: p.lastReplyAt === null ? null : Math.round(now - p.lastReplyAt), ike: e.tunnel.ike,
    }
    const wall = (this.d.wallNow ?? Date.now)()
    const probe = e.probe
    this.d.repairs.reestablish(name, d.scope, () => this.peers.get(name) === e && e.probe === probe && probe.state === 'down').then((n) => {
      if (n === null) {
        this.d.log.info({ ...evidence, datapath: e.probe.state }, `datapath to ${name} no longer down once charon answered: repair skipped`)
        return
      }
      e.repairs++
      e.lastRepair = { at: isoTime(wall), scope: d.scope, attempt: d.attempt, error: null }
      this.d.metrics.repaired(name)
      this.d.log.warn({ ...evidence, terminated: n }, `datapath to ${name} down while IKE says ${e.tunnel.ike}: re-establishing its ${d.scope === 'ike' ? 'IKE_SA' : 'CHILD_SAs'}`)
    }, (err: unknown) => {
      e.lastRepair = { at: isoTime(wall), scope: d.scope, attempt: d.attempt, error: (err as Error).message }
      this.d.log.error({ ...evidence, err: (err as Error).message }, `datapath to ${name} down: repair failed`)
    }).finally(() => {
      e.repairing = false
    })
  }

  /**
   * The per-peer gauges' values (read at scrape time), valid until the next call: the rows are refilled in place.
   * A scrape reads them once per per-peer gauge (three times); 10,000 new rows each time, alive across the
   * gauge's refill, were promoted to the old generation at every scrape (~1.4 MB at 10,000 peers).
   */
  gaugeRows(): ProbeGaugeRow[] {
    const rows = this.rows
    if (rows.length > this.peers.size) rows.length = this.peers.size
    let i = 0
    for (const [name, e] of this.peers) {
      const last = e.probe.lastRttMs
      const rttLast = last === null ? null : last / 1000
      const lossRatio = e.probe.lossRatio()
      const r = rows[i]
      if (r === undefined) rows.push({ name, datapath: e.probe.state, rttLast, lossRatio })
      else {
        r.name = name
        r.datapath = e.probe.state
        r.rttLast = rttLast
        r.lossRatio = lossRatio
      }
      i++
    }
    return rows
  }

  status(): ProberStatus {
    const now = this.d.now()
    const wall = (this.d.wallNow ?? Date.now)()
    return {
      enabled: true,
      intervalMs: this.o.intervalMs,
      periodMs: this.schedule.periodMs,
      downAfter: this.o.downAfter,
      maxRate: this.o.maxRate,
      repair: this.o.repair,
      peers: [...this.peers.entries()].map(([name, e]) => ({
        name,
        datapath: e.probe.state,
        reason: e.reason,
        since: isoTime(wall - (now - e.probe.since)),
        probe: e.pair,
        candidates: e.pairs.length,
        rtt: e.probe.rtt(),
        lossRatio: e.probe.lossRatio(),
        sent: e.probe.sent,
        received: e.probe.received,
        consecutiveLosses: e.probe.consecutiveLosses,
        repairs: e.repairs,
        lastRepair: e.lastRepair,
        repairWaiting: e.probe.state === 'down' ? e.repairWaiting : null,
      })),
    }
  }

  close(): void {
    this.stop()
    this.d.port.close()
  }
}
