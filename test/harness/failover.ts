// Failover measurement on the HA harness (ha.ts), shared by the e2e test (test/e2e/ha.test.ts), the benchmark
// (scripts/bench/failover.ts) and `scripts/demo --ha`:
// - ReplicaSampler: one shell loop per connector namespace, every ~100 ms: /is-leader, whether the public VIP is
//   on an interface, the number of table-220 routes. Long-lived, so sampling costs no process spawn per sample in
//   the test runner;
// - Pinger: `ping -D -O -i 0.1` from an edge pod to the cloud pod, timestamped replies;
// - failover(): a fault (crash of the active replica, or SIGTERM of its agent), then the phases: VIP moved (the
//   sampler), edges noticed (their agents' ike-updown down), tunnels up (child-updown up on every edge), first
//   successful ping from every edge, and the loss window.
// Timings are measured and reported, never asserted (the machine is shared and noisy).
import { spawn, type ChildProcess } from 'node:child_process'
import { readFile } from 'node:fs/promises'
import { agentLog, waitFor, type DaemonDriver } from './agents.js'
import type { HaTopology, Replica } from './ha.js'
import type { Netns } from './netns.js'
import { AGENT_LISTEN, type Gateway } from './topology.js'

export interface ReplicaSample {
  /** Wall clock, ms. */
  at: number
  /** `true` / `false` from /is-leader, or `down` when the agent did not answer. */
  leader: 'true' | 'false' | 'down'
  vip: boolean
  routes220: number
}

/** Runs `sh -c script` inside ns for as long as the sampler lives; parses one line per sample. */
abstract class LineProcess<T> {
  readonly samples: T[] = []
  private child: ChildProcess | null = null
  private buf = ''

  protected start(ns: Netns, argv: string[]): void {
    const child = spawn('ip', ['netns', 'exec', ns.name, ...argv], { stdio: ['ignore', 'pipe', 'ignore'] })
    this.child = child
    ns.onDestroy(() => this.stop())
    child.stdout!.on('data', (b: Buffer) => {
      this.buf += b.toString('utf8')
      let nl
      while ((nl = this.buf.indexOf('\n')) >= 0) {
        const line = this.buf.slice(0, nl)
        this.buf = this.buf.slice(nl + 1)
        const s = this.parse(line)
        if (s !== null) this.samples.push(s)
      }
    })
  }

  protected abstract parse(line: string): T | null

  stop(): void {
    if (this.child && this.child.exitCode === null && this.child.signalCode === null) this.child.kill('SIGKILL')
    this.child = null
  }
}

export class ReplicaSampler extends LineProcess<ReplicaSample> {
  constructor(readonly replica: Replica, vip: string, everyMs = 100) {
    super()
    if (!/^[0-9.]+$/.test(vip)) throw new Error(`bad vip ${vip}`)
    // bash, three processes per sample (curl, ip, sleep): the rest is shell builtins, so the loop keeps its pace
    // on a loaded machine. `ip -batch` prints the addresses (lines `N: if inet A/P ...`) then the table-220 routes.
    const script = [
      'while :; do',
      '  t=${EPOCHREALTIME/./}',
      `  l=$(curl -s -m 0.5 http://${AGENT_LISTEN}/is-leader || true)`,
      "  out=$(printf 'addr show up\\nroute show table 220\\n' | ip -o -4 -batch -)",
      '  v=0; r=0',
      '  while IFS= read -r line; do',
      '    case "$line" in',
      '      *" inet $1/"*) v=1 ;;',
      '      [0-9]*": "*|"") ;;',
      '      *) r=$((r+1)) ;;',
      '    esac',
      '  done <<< "$out"',
      '  echo "${t:0:-3} ${l:-down} $v $r"',
      `  sleep ${(everyMs / 1000).toFixed(3)}`,
      'done',
    ].join('\n')
    this.start(replica.gateway.ns, ['bash', '-c', script, 'sampler', vip])
  }

  protected parse(line: string): ReplicaSample | null {
    const m = /^(\d+) (true|false|down|\S*) (\d+) (\d+)$/.exec(line.trim())
    if (!m) return null
    const leader = m[2] === 'true' || m[2] === 'false' ? m[2] : 'down'
    return { at: Number(m[1]), leader, vip: Number(m[3]) > 0, routes220: Number(m[4]) }
  }

  /** The sample taken nearest to `at`. */
  nearest(at: number): ReplicaSample | undefined {
    let best: ReplicaSample | undefined
    for (const s of this.samples) if (!best || Math.abs(s.at - at) < Math.abs(best.at - at)) best = s
    return best
  }

  /** The sample in force at `at` (the last one taken at or before it). */
  at(at: number): ReplicaSample | undefined {
    let best: ReplicaSample | undefined
    for (const s of this.samples) {
      if (s.at > at) break
      best = s
    }
    return best
  }
}

export class Pinger extends LineProcess<{ at: number; seq: number }> {
  constructor(readonly pod: Netns, target: string) {
    super()
    if (!/^[0-9.]+$/.test(target)) throw new Error(`bad target ${target}`)
    this.start(pod, ['ping', '-D', '-n', '-O', '-i', '0.1', '-W', '1', target])
  }

  /** Successful replies only, receive time in ms. */
  protected parse(line: string): { at: number; seq: number } | null {
    const m = /^\[(\d+\.\d+)\] \d+ bytes from .*icmp_seq=(\d+)/.exec(line)
    return m ? { at: Math.round(Number(m[1]) * 1000), seq: Number(m[2]) } : null
  }

  lastReplyBefore(at: number): number | undefined {
    return this.samples.filter((s) => s.at <= at).at(-1)?.at
  }

  firstReplyAfter(at: number): number | undefined {
    return this.samples.find((s) => s.at > at)?.at
  }

  /** The longest gap between consecutive replies received in [from, to], ms (0 without two replies). */
  longestGap(from: number, to: number): number {
    const xs = this.samples.filter((s) => s.at >= from && s.at <= to)
    let gap = 0
    for (let i = 1; i < xs.length; i++) gap = Math.max(gap, xs[i]!.at - xs[i - 1]!.at)
    return gap
  }
}

interface LogLine { time: number; op?: string; conn?: string; up?: boolean }

export async function agentEvents(g: Gateway): Promise<LogLine[]> {
  const text = await readFile(agentLog(g), 'utf8').catch(() => '')
  const out: LogLine[] = []
  for (const l of text.split('\n')) {
    if (!l.startsWith('{')) continue
    try {
      const o = JSON.parse(l) as Omit<LogLine, 'time'> & { time: string }
      out.push({ ...o, time: Date.parse(o.time) })
    } catch {
      // a line cut by a crash
    }
  }
  return out
}

export type FaultKind = 'crash' | 'switchover'

export interface FailoverResult {
  kind: FaultKind
  from: string
  to: string
  /** ms after the fault; null when it did not happen within the bound. */
  vipMoved: number | null
  edgesNoticed: number | null
  tunnelsUp: number | null
  firstPing: number | null
  /** Longest gap between a reply before the fault and the first one after, over the edges, ms. */
  lossWindow: number | null
  recovered: boolean
}

/** The replica holding the public VIP now (exactly one expected). */
export async function activeReplica(topo: HaTopology): Promise<Replica> {
  const holders = await topo.vipHolders()
  if (holders.length !== 1) throw new Error(`expected exactly one VIP holder, got ${holders.join(', ') || 'none'}`)
  return topo.replica(holders[0]!)
}

/**
 * Injects the fault on the active replica and waits (bounded by boundMs) until every edge's pings reach the cloud
 * pod again. Pingers must be running. Returns the phases relative to the fault.
 */
export async function failover(topo: HaTopology, driver: DaemonDriver, kind: FaultKind, pingers: Pinger[], samplers: ReplicaSampler[], boundMs = 60_000): Promise<FailoverResult> {
  const active = await activeReplica(topo)
  const standby = topo.replicas.find((r) => r !== active)!
  const sampler = samplers.find((s) => s.replica === standby)!
  const t0 = Date.now()
  if (kind === 'crash') await topo.crash(active, driver)
  else await driver.stop(active.gateway)
  // Recovered: the standby holds the VIP, and every edge got a reply after that (through the new active replica:
  // replies still in flight through the old one arrive before the move).
  const vipMovedAt = (): number | undefined => sampler.samples.find((s) => s.at >= t0 && s.vip)?.at
  const recovered = await waitFor('the VIP to move and every edge to reach the cloud pod through it', boundMs, async () => {
    const v = vipMovedAt()
    return v !== undefined && pingers.every((p) => p.firstReplyAfter(v) !== undefined)
  }, 100).then(() => true, () => false)
  const rel = (t: number | undefined): number | null => (t === undefined ? null : t - t0)
  const vipAt = vipMovedAt()
  const noticed: number[] = []
  const up: number[] = []
  for (const e of topo.edges) {
    const ev = (await agentEvents(e)).filter((l) => l.time >= t0 && l.conn === topo.plan.clusters[0]!.connector.fullName)
    const down = ev.find((l) => l.op === 'ike-updown' && l.up === false)
    if (down) noticed.push(down.time)
    const childUp = ev.filter((l) => l.op === 'child-updown' && l.up === true && (!down || l.time >= down.time)).at(-1)
    if (childUp) up.push(childUp.time)
  }
  const firsts = pingers.map((p) => (vipAt === undefined ? undefined : p.firstReplyAfter(vipAt)))
  // The loss window: the longest silence of each edge's pings from just before the fault to its first reply
  // through the new replica.
  const gaps = pingers.map((p, i) => (firsts[i] === undefined ? undefined : p.longestGap(t0 - 1_000, firsts[i]!)))
  return {
    kind,
    from: active.name,
    to: standby.name,
    vipMoved: rel(vipAt),
    edgesNoticed: noticed.length === topo.edges.length ? Math.max(...noticed) - t0 : null,
    tunnelsUp: up.length === topo.edges.length ? Math.max(...up) - t0 : null,
    firstPing: firsts.every((f) => f !== undefined) ? Math.max(...(firsts as number[])) - t0 : null,
    lossWindow: gaps.every((g) => g !== undefined) ? Math.max(...(gaps as number[])) : null,
    recovered,
  }
}

/** FabEdge's computed figures for the same faults (docs/ha.md, research next-capabilities §1.1.4). */
export const FABEDGE_FIGURES = {
  crash: 'VIP ~3.5 s; lease 15-20 s; edges notice after DPD 10 s + 165 s of retransmits: up to ~3 min',
  switchover: 'lease never released (15-20 s) + keepalived script rise 9 s; edges as for a crash: up to ~3 min',
}

export function formatResult(r: FailoverResult): string {
  const s = (ms: number | null): string => (ms === null ? 'n/a' : `${(ms / 1000).toFixed(2)} s`)
  return `${r.kind} ${r.from} -> ${r.to}: VIP moved ${s(r.vipMoved)}, edges noticed ${s(r.edgesNoticed)}, tunnels up ${s(r.tunnelsUp)}, ` +
    `first ping ${s(r.firstPing)}, loss window ${s(r.lossWindow)}${r.recovered ? '' : ' (NOT recovered)'}`
}
