import t from 'tap'
import {
  bytesPerPeer, changeTargetMs, childCpuTicksFromStat, cpuTicksFromStat, heapFromMetrics, median, memFromStatus, metricByLabel, metricSum, passCounters,
  passDelta, percentile, rssTarget, scaleTable, type EdgeResult, type SizeResult,
} from '../../../scripts/bench/scale/report.js'

t.test('median and nearest-rank p90', async (t) => {
  t.equal(median([3, 1, 2]), 2)
  t.equal(median([4, 1, 3, 2]), 2.5)
  t.equal(percentile([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 90), 9)
  t.equal(percentile([5, 1], 90), 5)
  t.equal(percentile([7], 90), 7)
  t.throws(() => median([]), RangeError)
  t.throws(() => percentile([1], 0), RangeError)
})

t.test('/proc parsing: utime+stime past a command name with spaces and parens; VmRSS/VmHWM', async (t) => {
  const stat = '4242 (node (x) y) S 1 4242 4242 0 -1 4194560 100 0 0 0 37 5 2 3 20 0 11 0 1000 1234 5678'
  t.equal(cpuTicksFromStat(stat), 42)
  t.equal(childCpuTicksFromStat(stat), 5)
  t.throws(() => cpuTicksFromStat('garbage'))
  t.same(memFromStatus('Name:\tnode\nVmHWM:\t   90000 kB\nVmRSS:\t   80000 kB\n'), { rss: 80000 * 1024, hwm: 90000 * 1024 })
  t.throws(() => memFromStatus('Name:\tnode\n'))
  t.same(memFromStatus('VmHWM:\t   90000 kB\nVmRSS:\t   80000 kB\nRssAnon:\t   30000 kB\nRssFile:\t   50000 kB\n'), { rss: 80000 * 1024, hwm: 90000 * 1024, anon: 30000 * 1024 })
})

t.test('V8 heap and external memory from /metrics; absent metrics stay absent', async (t) => {
  const text = '# TYPE fabtunnel_nodejs_heap_size_total_bytes gauge\nfabtunnel_nodejs_heap_size_total_bytes 50000000\nfabtunnel_nodejs_heap_size_used_bytes 40000000\nfabtunnel_nodejs_external_memory_bytes 2000000\n'
  t.same(heapFromMetrics(text), { heapTotal: 50e6, heapUsed: 40e6, external: 2e6 })
  t.same(heapFromMetrics('fabtunnel_nodejs_heap_size_used_bytes 7\n'), { heapUsed: 7 })
  t.same(heapFromMetrics(METRICS), {})
})

const METRICS = `# HELP fabtunnel_pass_duration_seconds Duration of reconcile passes
# TYPE fabtunnel_pass_duration_seconds histogram
fabtunnel_pass_duration_seconds_bucket{le="0.001"} 0
fabtunnel_pass_duration_seconds_sum 1.5
fabtunnel_pass_duration_seconds_count 4
# TYPE fabtunnel_ops_applied_total counter
fabtunnel_ops_applied_total{subsystem="routes"} 10
fabtunnel_ops_applied_total{subsystem="tunnels"} 3
fabtunnel_ops_applied_total_created{subsystem="routes"} 1700000000
`

t.test('Prometheus text: sums by exact name and per label', async (t) => {
  t.equal(metricSum(METRICS, 'fabtunnel_pass_duration_seconds_count'), 4)
  t.equal(metricSum(METRICS, 'fabtunnel_ops_applied_total'), 13, 'a longer name with the same prefix is not counted')
  t.equal(metricSum(METRICS, 'absent'), 0)
  t.same(metricByLabel(METRICS, 'fabtunnel_ops_applied_total', 'subsystem'), { routes: 10, tunnels: 3 })
  const a = passCounters(METRICS)
  const b = passCounters(METRICS.replace('_count 4', '_count 6').replace('_sum 1.5', '_sum 1.75').replace('"routes"} 10', '"routes"} 12').replace('total{subsystem="tunnels"} 3', 'total{subsystem="tunnels"} 3\nfabtunnel_ops_applied_total{subsystem="ipsets"} 1'))
  const d = passDelta(a, b)
  t.equal(d.passes, 2)
  t.ok(Math.abs(d.ms - 250) < 1e-6)
  t.same(d.writes, { routes: 2, ipsets: 1 })
  t.equal(d.totalWrites, 3)
  t.same(passDelta(a, a), { passes: 0, ms: 0, writes: {}, totalWrites: 0 })
})

t.test('targets per size', async (t) => {
  t.equal(changeTargetMs(100), 50)
  t.equal(changeTargetMs(1000), 50)
  t.equal(changeTargetMs(5000), 100)
  t.equal(changeTargetMs(10000), 100)
  t.equal(changeTargetMs(20000), null)
  t.equal(rssTarget(1000), 80e6)
  t.equal(rssTarget(10000), 150e6)
})

const size = (peers: number, over: Partial<SizeResult> = {}): SizeResult => ({
  peers, load: '1.00 1.00 1.00',
  cold: { ms: 2000, readyMs: 1990, cpuS: 1.5, conns: peers, routes: peers, members: peers, writes: 10 },
  coldFloor: { ms: 1000, swanctlMs: 800, ipBatchMs: 150, ipsetMs: 50 },
  change: { add: { samples: [40, 45, 60], writes: [5, 5, 5] }, remove: { samples: [30, 31, 32], writes: [4, 4, 4] }, subnet: { samples: [55, 56, 57], writes: [6, 6, 6] } },
  parseFloorMs: 20,
  noop: { ms: [3, 4], writes: 0, passes: 2 },
  deep: { ms: [100, 120], writes: 2, passes: 2 },
  mem: { rss: 60e6 + peers * 5000, hwm: 70e6 + peers * 5000 },
  idleCpuPct: 0.5,
  restart: { ms: 900, writes: 0 },
  ...over,
})
const EDGE: EdgeResult = { load: '1 1 1', cpuS: 0.25, childCpuS: 0.05, readyMs: 400, polls: 16, pollCpuS: 0.01, mem: { rss: 45e6, hwm: 46e6 }, floor: { cpuS: 0.1, maxRss: 40e6 } }

t.test('bytes per peer: slope against the smallest size, the edge for the smallest itself', async (t) => {
  const b = bytesPerPeer([size(10_000), size(1000)], EDGE)
  t.equal(b.get(10_000)!.bytes, 5000)
  t.equal(b.get(10_000)!.ref, '1000 peers')
  t.equal(Math.round(b.get(1000)!.bytes), Math.round((60e6 + 5e6 - 45e6) / 999))
  t.equal(bytesPerPeer([size(1000)], null).size, 0, 'no reference, no figure')
})

t.test('the table: one column per size, ratios, and a verdict on every target', async (t) => {
  const text = scaleTable([size(10_000), size(1000, { cold: { ms: 2500, readyMs: 2500, cpuS: 1, conns: 1000, routes: 1000, members: 1000, writes: 1 } })], EDGE)
  const lines = text.split('\n')
  t.equal(lines[0], '| measure | target | 1,000 peers | 10,000 peers |', 'sizes in ascending order')
  const row = (prefix: string): string => lines.find((l) => l.startsWith(`| ${prefix}`))!
  t.match(row('cold start / floor'), /\| 2\.50x \*\*NOT met\*\* \| 2\.00x met \|$/)
  t.match(row('one-peer add'), /\| 45\.0 \/ 60\.0 met \| 45\.0 \/ 60\.0 met \|$/)
  t.match(row('one-peer subnet change'), /\| 56\.0 \/ 57\.0 \*\*NOT met\*\* \| 56\.0 \/ 57\.0 met \|$/, '50 ms up to 1,000, 100 ms to 10,000')
  t.match(row('one-peer add / parse floor'), /\| 2\.3x \| 2\.3x \|$/)
  t.match(row('no-op pass'), /3\.5, 0 writes met/)
  t.match(row('deep resync'), /110, 2 writes \*\*NOT met\*\*/, 'a deep resync that writes is a finding')
  t.match(row('agent RSS'), /\| 65\.0 \(75\.0\) met \| 110\.0 \(120\.0\) met \|$/)
  t.match(row('bytes per peer'), /5,000 \(vs 1000 peers\)/)
  t.match(row('agent restarted'), /\| 900, 0 writes met \| 900, 0 writes met \|$/)
  t.match(row('idle CPU'), /\| 0\.50 \| 0\.50 \|$/)
  t.match(text, /\| CPU to ready \(s\) \| 0\.25 .* \| 0\.10 \| <= 0\.3 s met \|/)
  t.match(text, /16 \/readyz polls ~0\.01 s of it; \+ 0\.05 s in the processes it ran\)/)
  t.match(text, /\| RSS after settle \(MB\), peak \| 45\.0 \(46\.0\) \| 40\.0 \(peak\) \| <= 50 MB met \|/)
  t.notMatch(scaleTable([size(1000)], null), /edge, 1 peer/, 'no edge table without --edge')
  t.match(scaleTable([], EDGE), /^\| edge, 1 peer \|/, 'the edge alone: no empty size table')
  t.notMatch(text, /after deep resync/, 'runs without RSS moments (old JSON) get no such row')
})

t.test('RSS at the moments of the run: a row when any size has them, "-" for a size without', async (t) => {
  const m = (rss: number, hwm = rss): { rss: number; hwm: number } => ({ rss, hwm })
  const withMoments = size(10_000, { memAt: { ready: m(100e6), deep: m(140e6), end: m(120e6, 160e6), restarted: m(110e6) } })
  const lines = scaleTable([withMoments, size(1000)], null).split('\n')
  const row = lines.find((l) => l.startsWith('| agent RSS (MB): ready'))!
  t.match(row, /\| - \| 100\.0 \/ 140\.0 \/ 120\.0 \/ 110\.0; 160\.0 \|$/)
})
