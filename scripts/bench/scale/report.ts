// The scaling benchmark's arithmetic and its table: order statistics, /proc and Prometheus text parsing, the issue-13
// targets with a verdict per cell, and the markdown table the README carries. Pure, unit tested
// (test/unit/bench/scale-report.test.ts).

/** Median (mean of the middle two for an even count). */
export function median(xs: readonly number[]): number {
  if (xs.length === 0) throw new RangeError('median of no samples')
  const s = [...xs].sort((a, b) => a - b)
  const m = s.length >> 1
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2
}

/** Nearest-rank percentile (p in 0..100]: the smallest sample with at least p% of the samples at or below it. */
export function percentile(xs: readonly number[], p: number): number {
  if (xs.length === 0) throw new RangeError('percentile of no samples')
  if (!(p > 0 && p <= 100)) throw new RangeError(`percentile ${p} outside (0, 100]`)
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.ceil((p / 100) * s.length) - 1]!
}

/** utime + stime in clock ticks from the text of /proc/<pid>/stat (the command name may hold spaces and parens). */
export function cpuTicksFromStat(stat: string): number {
  const close = stat.lastIndexOf(')')
  if (close < 0) throw new Error('not a /proc/<pid>/stat line')
  // Fields after "(comm)": state is field 3; utime and stime are fields 14 and 15.
  const f = stat.slice(close + 2).trim().split(/\s+/)
  const utime = Number(f[11])
  const stime = Number(f[12])
  if (!Number.isFinite(utime) || !Number.isFinite(stime)) throw new Error('no utime/stime in /proc/<pid>/stat')
  return utime + stime
}

/** cutime + cstime (reaped children) in clock ticks from /proc/<pid>/stat. */
export function childCpuTicksFromStat(stat: string): number {
  const close = stat.lastIndexOf(')')
  if (close < 0) throw new Error('not a /proc/<pid>/stat line')
  const f = stat.slice(close + 2).trim().split(/\s+/)
  const cutime = Number(f[13])
  const cstime = Number(f[14])
  if (!Number.isFinite(cutime) || !Number.isFinite(cstime)) throw new Error('no cutime/cstime in /proc/<pid>/stat')
  return cutime + cstime
}

/**
 * A memory reading of the agent: VmRSS and VmHWM (peak so far), RssAnon (V8 heap, malloc), and V8's heap (committed
 * and used) and external memory from the agent's /metrics (these four absent in old runs).
 */
export interface MemSample {
  rss: number
  hwm: number
  anon?: number
  heapTotal?: number
  heapUsed?: number
  external?: number
}

/** V8's heap total and used, and external memory, from the agent's /metrics (prom-client's default metrics). */
export function heapFromMetrics(text: string, prefix = 'fabtunnel_'): Pick<MemSample, 'heapTotal' | 'heapUsed' | 'external'> {
  const get = (name: string): number | undefined => (new RegExp(`^${prefix}${name}(\\{[^}]*\\})?\\s`, 'm').test(text) ? metricSum(text, `${prefix}${name}`) : undefined)
  const out: Pick<MemSample, 'heapTotal' | 'heapUsed' | 'external'> = {}
  const total = get('nodejs_heap_size_total_bytes')
  const used = get('nodejs_heap_size_used_bytes')
  const external = get('nodejs_external_memory_bytes')
  if (total !== undefined) out.heapTotal = total
  if (used !== undefined) out.heapUsed = used
  if (external !== undefined) out.external = external
  return out
}

/** VmRSS, VmHWM and RssAnon (when the kernel reports it) in bytes from the text of /proc/<pid>/status. */
export function memFromStatus(status: string): MemSample {
  const kib = (key: string): number | undefined => {
    const m = new RegExp(`^${key}:\\s+(\\d+) kB$`, 'm').exec(status)
    return m ? Number(m[1]) * 1024 : undefined
  }
  const need = (key: string): number => {
    const v = kib(key)
    if (v === undefined) throw new Error(`no ${key} in /proc/<pid>/status`)
    return v
  }
  const anon = kib('RssAnon')
  return { rss: need('VmRSS'), hwm: need('VmHWM'), ...(anon === undefined ? {} : { anon }) }
}

/**
 * Sum of every sample of a metric in Prometheus text format whose name is `name` exactly (all label sets), or 0
 * when it is absent (a counter with no increments yet has no labelled sample).
 */
export function metricSum(text: string, name: string): number {
  let sum = 0
  for (const line of text.split('\n')) {
    if (line.startsWith('#')) continue
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)/.exec(line)
    if (m && m[1] === name) sum += Number(m[3])
  }
  return sum
}

/** Per label value of `label` (e.g. writes per subsystem), summed over other labels. */
export function metricByLabel(text: string, name: string, label: string): Record<string, number> {
  const out: Record<string, number> = {}
  for (const line of text.split('\n')) {
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^}]*)\}\s+(\S+)/.exec(line)
    if (!m || m[1] !== name) continue
    const v = new RegExp(`(?:^|,)${label}="([^"]*)"`).exec(m[2]!)
    if (v) out[v[1]!] = (out[v[1]!] ?? 0) + Number(m[3])
  }
  return out
}

/** What the agent's /metrics says about passes and writes at one moment; differences of two give one interval. */
export interface PassCounters {
  passes: number
  passSeconds: number
  writes: Record<string, number>
}

export function passCounters(metricsText: string): PassCounters {
  return {
    passes: metricSum(metricsText, 'fabtunnel_pass_duration_seconds_count'),
    passSeconds: metricSum(metricsText, 'fabtunnel_pass_duration_seconds_sum'),
    writes: metricByLabel(metricsText, 'fabtunnel_ops_applied_total', 'subsystem'),
  }
}

/** What happened between two readings: passes, their total time (ms), writes per subsystem that wrote. */
export function passDelta(a: PassCounters, b: PassCounters): { passes: number; ms: number; writes: Record<string, number>; totalWrites: number } {
  const writes: Record<string, number> = {}
  for (const k of new Set([...Object.keys(a.writes), ...Object.keys(b.writes)])) {
    const d = (b.writes[k] ?? 0) - (a.writes[k] ?? 0)
    if (d !== 0) writes[k] = d
  }
  return { passes: b.passes - a.passes, ms: (b.passSeconds - a.passSeconds) * 1000, writes, totalWrites: Object.values(writes).reduce((x, y) => x + y, 0) }
}

/** One size's measurements (times in ms, memory in bytes, CPU in seconds). */
export interface SizeResult {
  peers: number
  load: string
  cold: { ms: number; readyMs: number; cpuS: number; conns: number; routes: number; members: number; writes: number }
  coldFloor: { ms: number; swanctlMs: number; ipBatchMs: number; ipsetMs: number }
  change: Record<ChangeOp, { samples: number[]; writes: number[] }>
  parseFloorMs: number
  /** A one-peer add written straight to charon and the kernel, no agent (absent in older runs). */
  changeFloorMs?: number[]
  noop: { ms: number[]; writes: number; passes: number }
  deep: { ms: number[]; writes: number; passes: number }
  /** 2 s after the last deep resync settled: the figure the RSS verdict and bytes per peer use. */
  mem: MemSample
  /**
   * The agent's memory at the moments of the run (absent in old runs): once the cold pass settled, right after
   * the deep resyncs settled, at the end (after the idle sample, before the restart; its VmHWM is the run's
   * peak), and the restarted agent once it settled.
   */
  memAt?: { ready: MemSample; deep: MemSample; end: MemSample; restarted: MemSample }
  /** CPU of the idle agent (no triggers) in % of one core. */
  idleCpuPct: number
  /** The agent stopped and started again onto the converged node: time to ready, writes (must be 0). */
  restart: { ms: number; writes: number }
}

export type ChangeOp = 'add' | 'remove' | 'subnet'
export const CHANGE_OPS: readonly ChangeOp[] = ['add', 'remove', 'subnet']

export interface EdgeResult {
  load: string
  /** utime+stime of the agent's process tree at ready (issue 13's figure). */
  cpuS: number
  /** cutime+cstime at ready: the processes it ran and reaped before (iptables-restore, ...); absent in old runs. */
  childCpuS?: number
  readyMs: number
  /** /readyz requests until ready, and their estimated CPU cost to the agent (included in cpuS). */
  polls: number
  pollCpuS: number
  mem: MemSample
  floor: { cpuS: number; maxRss: number }
}

/** issue 13's one-peer change bound for a size: 50 ms up to 1,000 peers, 100 ms up to 10,000, none above. */
export function changeTargetMs(peers: number): number | null {
  if (peers <= 1_000) return 50
  if (peers <= 10_000) return 100
  return null
}

/** issue 13's RSS bound (bytes, MB = 10^6 B): 80 MB up to 1,000 peers, 150 MB up to 10,000, none above. */
export function rssTarget(peers: number): number | null {
  if (peers <= 1_000) return 80e6
  if (peers <= 10_000) return 150e6
  return null
}

export const COLD_RATIO_TARGET = 2
export const EDGE_CPU_TARGET_S = 0.3
export const EDGE_RSS_TARGET = 50e6

/**
 * Bytes per peer between two sizes (slope of RSS over peers): (RSS_N - RSS_ref) / (N - n_ref). The reference is the
 * smallest size of the run, or the edge (1 peer) for the smallest size itself.
 */
export function bytesPerPeer(results: readonly SizeResult[], edge: EdgeResult | null): Map<number, { bytes: number; ref: string }> {
  const out = new Map<number, { bytes: number; ref: string }>()
  const sorted = [...results].sort((a, b) => a.peers - b.peers)
  const smallest = sorted[0]
  for (const r of sorted) {
    if (smallest && r !== smallest) out.set(r.peers, { bytes: (r.mem.rss - smallest.mem.rss) / (r.peers - smallest.peers), ref: `${smallest.peers} peers` })
    else if (edge && r.peers >= 100) out.set(r.peers, { bytes: (r.mem.rss - edge.mem.rss) / (r.peers - 1), ref: 'edge, 1 peer' })
  }
  return out
}

const int = (x: number): string => Math.round(x).toLocaleString('en-US')
const ms1 = (x: number): string => (x < 100 ? x.toFixed(1) : int(x))
const mb = (bytes: number): string => (bytes / 1e6).toFixed(1)
const verdict = (ok: boolean): string => (ok ? 'met' : '**NOT met**')

/** The scaling table (markdown): one row per measure, one column per size, verdicts in the cells. */
export function scaleTable(results: readonly SizeResult[], edge: EdgeResult | null): string {
  const sizes = [...results].sort((a, b) => a.peers - b.peers)
  const bpp = bytesPerPeer(sizes, edge)
  const rows: string[][] = []
  const row = (measure: string, target: string, cell: (r: SizeResult) => string): void => {
    rows.push([measure, target, ...sizes.map(cell)])
  }
  row('cold start: agent start -> ready, all conns/routes/members in place (ms)', '', (r) => int(r.cold.ms))
  row('floor: swanctl --load-conns + ip -batch + ipset restore (ms)', '', (r) => `${int(r.coldFloor.ms)} (${int(r.coldFloor.swanctlMs)} + ${int(r.coldFloor.ipBatchMs)} + ${int(r.coldFloor.ipsetMs)})`)
  row('cold start / floor', `<= ${COLD_RATIO_TARGET}x (stated at 10,000)`, (r) => {
    const x = r.cold.ms / r.coldFloor.ms
    return `${x.toFixed(2)}x ${verdict(x <= COLD_RATIO_TARGET)}`
  })
  row('cold start CPU of the agent to ready (s)', '', (r) => r.cold.cpuS.toFixed(2))
  for (const op of CHANGE_OPS) {
    const label = { add: 'add', remove: 'remove', subnet: 'subnet change' }[op]
    row(`one-peer ${label}: ..data swap -> conn in charon + route + member (ms, median / p90)`, '<= 50 ms to 1,000; <= 100 ms to 10,000', (r) => {
      const s = r.change[op].samples
      if (s.length === 0) return '-'
      const med = median(s)
      const target = changeTargetMs(r.peers)
      return `${ms1(med)} / ${ms1(percentile(s, 90))}${target === null ? '' : ` ${verdict(med <= target)}`}`
    })
  }
  row('floor: parse of the N-peer file alone, parseConfig (ms, median)', '', (r) => ms1(r.parseFloorMs))
  row('one-peer add / parse floor', '', (r) => (r.change.add.samples.length ? `${(median(r.change.add.samples) / r.parseFloorMs).toFixed(1)}x` : '-'))
  row('floor: one-peer add written straight: VICI load-conn + route + 2 set members, no agent (ms, median)', '', (r) => (r.changeFloorMs?.length ? ms1(median(r.changeFloorMs)) : '-'))
  row('one-peer add / written-straight floor', '', (r) => (r.change.add.samples.length && r.changeFloorMs?.length ? `${(median(r.change.add.samples) / median(r.changeFloorMs)).toFixed(1)}x` : '-'))
  row('no-op pass (same file re-swapped): pass time (ms, median), writes', '0 writes', (r) => (r.noop.ms.length ? `${ms1(median(r.noop.ms))}, ${r.noop.writes} writes ${verdict(r.noop.writes === 0)}` : `no pass ran, ${r.noop.writes} writes`))
  row('deep resync (SIGHUP): pass time (ms, median), writes', '0 writes', (r) => (r.deep.ms.length ? `${ms1(median(r.deep.ms))}, ${r.deep.writes} writes ${verdict(r.deep.writes === 0)}` : 'no pass ran'))
  row('agent RSS after settle (MB), peak (VmHWM)', '<= 80 MB to 1,000; <= 150 MB to 10,000', (r) => {
    const target = rssTarget(r.peers)
    return `${mb(r.mem.rss)} (${mb(r.mem.hwm)})${target === null ? '' : ` ${verdict(r.mem.rss <= target)}`}`
  })
  if (sizes.some((r) => r.memAt)) {
    row('agent RSS (MB): ready / after deep resync / end of run / restarted; peak (VmHWM at end)', '', (r) =>
      r.memAt ? `${mb(r.memAt.ready.rss)} / ${mb(r.memAt.deep.rss)} / ${mb(r.memAt.end.rss)} / ${mb(r.memAt.restarted.rss)}; ${mb(r.memAt.end.hwm)}` : '-')
  }
  row('bytes per peer (RSS slope)', '', (r) => {
    const b = bpp.get(r.peers)
    return b ? `${int(b.bytes)} (vs ${b.ref})` : '-'
  })
  row('idle CPU after settle (% of one core, 10 s)', '', (r) => r.idleCpuPct.toFixed(2))
  row('agent restarted onto the converged node: time to ready (ms), writes', '0 writes', (r) => `${int(r.restart.ms)}, ${r.restart.writes} writes ${verdict(r.restart.writes === 0)}`)
  row('load average at the run (1/5/15 min)', '', (r) => r.load)
  const header = ['measure', 'target', ...sizes.map((r) => `${r.peers.toLocaleString('en-US')} peers`)]
  const lines = sizes.length ? [header, header.map(() => '---'), ...rows].map((cells) => `| ${cells.join(' | ')} |`) : []
  if (edge) {
    if (lines.length) lines.push('')
    lines.push('| edge, 1 peer | agent | floor: `node -e 0` | target |', '|---|---|---|---|',
      `| CPU to ready (s) | ${edge.cpuS.toFixed(2)} (ready after ${int(edge.readyMs)} ms; ${edge.polls} /readyz polls ~${edge.pollCpuS.toFixed(2)} s of it${edge.childCpuS === undefined ? '' : `; + ${edge.childCpuS.toFixed(2)} s in the processes it ran`}) | ${edge.floor.cpuS.toFixed(2)} | <= ${EDGE_CPU_TARGET_S} s ${verdict(edge.cpuS <= EDGE_CPU_TARGET_S)} |`,
      `| RSS after settle (MB), peak | ${mb(edge.mem.rss)} (${mb(edge.mem.hwm)}) | ${mb(edge.floor.maxRss)} (peak) | <= 50 MB ${verdict(edge.mem.rss <= EDGE_RSS_TARGET)} |`,
      `| load average | ${edge.load} | | |`)
  }
  return `${lines.join('\n')}\n`
}
