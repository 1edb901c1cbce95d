// Benchmark: the footprint of the plain `fabtunnel run` (issue 13): CPU from start to ready on a one-peer edge, and
// resident memory on an edge and on connectors with many peers, each against a real charon in one throwaway
// namespace. Baseline in the same run: `node -e 0` (its CPU and peak RSS).
// Run as root after `npm run build`:
//   node --import tsx scripts/bench/footprint.ts [runs=7] [connectorSizes=1000,10000]
// The agent is started the way users start it: the package's bin (dist/cli.cjs) executed directly (its shebang, as
// the bin link, the image's entrypoint and the systemd unit do), with no NODE_OPTIONS. FT_FOOTPRINT_VIA_NODE=1 runs
// `node <bin>` instead (with FT_FOOTPRINT_NODE_FLAGS: node flags for experiments and CPU profiles). The script re-runs itself inside the namespace so
// the agent's netlink sockets, iptables and charon share it.
//
// Measured per run: CPU (utime+stime of every thread, /proc/<pid>/stat, 10 ms ticks) when the agent logs its first
// error-free "pass done", then confirmed by GET /status saying ready; VmRSS and VmHWM at that moment; VmRSS again
// after SETTLE_MS idle. charon is restarted between runs so every run is a cold start (nothing to adopt).
// FT_FOOTPRINT_SCRAPE=1: one /metrics scrape right after ready (an edge Prometheus scrapes). FT_FOOTPRINT_SMAPS=1:
// resident memory by kind of mapping after the settle; FT_FOOTPRINT_PAGES=1: the node binary's
// resident pages by section and symbol, over an idle `node` (scripts/bench/binary-pages.ts).
// FT_FOOTPRINT_HEAPSNAPSHOT=DIR: after the settle, the first run of each size also writes a heap snapshot there
// (NODE_OPTIONS --heapsnapshot-signal, only in this mode) and prints what it holds (scripts/bench/heap-summary.ts).
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import { Charon } from '../../test/harness/charon.js'
import { Netns, teardownOnSignals } from '../../test/harness/netns.js'
import { TestPki } from '../../test/harness/pki.js'
import { binaryPages, formatDiff } from './binary-pages.js'
import { summarise } from './heap-summary.js'

// The package's bin (dist/cli.cjs). FT_FOOTPRINT_CLI: another build's executable (e.g. an older commit's
// dist/cli.js, for before/after figures).
const ROOT = fileURLToPath(new URL('../../', import.meta.url))
const BIN = (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { bin: { fabtunnel: string } }).bin.fabtunnel
const CLI = process.env.FT_FOOTPRINT_CLI ?? join(ROOT, BIN)
const RUNS = Number(process.argv[2] ?? 7)
const SIZES = (process.argv[3] ?? '1000,10000').split(',').filter(Boolean).map(Number)
const INSIDE = process.env.FT_BENCH_INSIDE
const VIA_NODE = process.env.FT_FOOTPRINT_VIA_NODE === '1'
const SETTLE_MS = Number(process.env.FT_FOOTPRINT_SETTLE_MS ?? 3000)
const HEAP_DIR = process.env.FT_FOOTPRINT_HEAPSNAPSHOT
const SMAPS = process.env.FT_FOOTPRINT_SMAPS === '1'
const PAGES = process.env.FT_FOOTPRINT_PAGES === '1'
const SCRAPE = process.env.FT_FOOTPRINT_SCRAPE === '1'

const edgeYaml = [
  'id: C=CN, O=fabedge.io, CN=bench.edge1', 'name: bench.edge1', 'publicAddresses:', '    - 172.21.0.2',
  'subnets:', '    - 10.234.1.0/24', 'nodeSubnets:', '    - 172.21.0.2', 'type: EdgeNode', 'peers:',
  '    - id: C=CN, O=fabedge.io, CN=bench.connector', '      name: bench.connector', '      publicAddresses:',
  '        - 172.21.0.1', '      subnets:', '        - 10.233.0.0/18', '      nodeSubnets:', '        - 172.21.0.1',
  '      type: Connector', '',
].join('\n')

function connectorYaml(n: number): string {
  const out = ['id: C=CN, O=fabedge.io, CN=bench.connector', 'name: bench.connector', 'publicAddresses:', '    - 172.19.0.1',
    'subnets:', '    - 10.96.0.0/16', 'nodeSubnets:', '    - 172.19.0.1', 'type: Connector', 'peers:']
  for (let i = 0; i < n; i++) {
    const a = `172.20.${i >> 8}.${i & 255}`
    out.push(`    - id: C=CN, O=fabedge.io, CN=bench.e${i}`, `      name: bench.e${i}`, '      publicAddresses:', `        - ${a}`,
      '      subnets:', `        - 10.${100 + (i >> 8)}.${i & 255}.0/24`, '      nodeSubnets:', `        - ${a}`, '      type: EdgeNode')
  }
  return `${out.join('\n')}\n`
}

interface Sample { cpuS: number; rssMiB: number; hwmMiB: number; settledRssMiB: number; wallMs: number }

const kib = (status: string, field: string): number => Number(new RegExp(`${field}:\\s+(\\d+)`).exec(status)?.[1] ?? NaN)
function procCpuS(pid: number): number {
  // Nanoseconds on a CPU of every thread alive (/proc/<pid>/task/*/schedstat, first field): finer than the 10 ms
  // ticks of /proc/<pid>/stat. Node's threads (V8's workers, libuv's pool) live as long as the process.
  let ns = 0
  for (const task of readdirSync(`/proc/${pid}/task`)) {
    try {
      ns += Number(readFileSync(`/proc/${pid}/task/${task}/schedstat`, 'utf8').split(' ')[0])
    } catch {
      // The thread ended between the listing and the read.
    }
  }
  return ns / 1e9
}

async function status(port: number): Promise<{ ready?: boolean } | null> {
  return fetch(`http://127.0.0.1:${port}/status`).then((r) => r.json() as Promise<{ ready?: boolean }>, () => null)
}

async function stop(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return
  const exited = new Promise((r) => child.once('exit', r))
  child.kill('SIGTERM')
  const t = setTimeout(() => child.kill('SIGKILL'), 10_000)
  await exited
  clearTimeout(t)
}

/** One cold start of the agent: CPU and memory at its first error-free pass, confirmed ready. */
async function runOnce(args: string[], port: number, timeoutMs: number, heapLabel?: string): Promise<Sample> {
  const cmd = VIA_NODE ? process.execPath : CLI
  // FT_FOOTPRINT_NODE_FLAGS (with FT_FOOTPRINT_VIA_NODE=1): node flags for the agent, e.g. --cpu-prof.
  const argv = VIA_NODE ? [...(process.env.FT_FOOTPRINT_NODE_FLAGS ?? '').split(' ').filter(Boolean), CLI, ...args] : args
  const env = { ...process.env }
  delete env.NODE_OPTIONS
  if (HEAP_DIR && heapLabel) env.NODE_OPTIONS = `--heapsnapshot-signal=SIGUSR2 --diagnostic-dir=${HEAP_DIR}`
  const t0 = performance.now()
  const child = spawn(cmd, [...argv, '--listen', `127.0.0.1:${port}`], { stdio: ['ignore', 'ignore', 'pipe'], env })
  try {
    const pid = child.pid!
    let tail = ''
    const first = await new Promise<Omit<Sample, 'settledRssMiB'>>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no error-free pass within ${timeoutMs} ms; stderr: ${tail.slice(-1500)}`)), timeoutMs)
      child.once('exit', (code, sig) => { clearTimeout(timer); reject(new Error(`agent exited ${code ?? sig}: ${tail.slice(-1500)}`)) })
      createInterface({ input: child.stderr! }).on('line', (line) => {
        tail = (tail + line + '\n').slice(-4000)
        let rec: { msg?: string; errors?: Record<string, unknown>; duties?: unknown }
        try { rec = JSON.parse(line) } catch { return }
        if (rec.msg !== 'pass done' || Object.keys(rec.errors ?? {}).length > 0) return
        const cpuS = procCpuS(pid)
        const st = readFileSync(`/proc/${pid}/status`, 'utf8')
        clearTimeout(timer)
        resolve({ cpuS, rssMiB: kib(st, 'VmRSS') / 1024, hwmMiB: kib(st, 'VmHWM') / 1024, wallMs: performance.now() - t0 })
      })
    })
    // The pass that logged must also be what /status reports: ready.
    const deadline = performance.now() + 10_000
    let st = await status(port)
    while (!st?.ready && performance.now() < deadline) {
      await new Promise((r) => setTimeout(r, 50))
      st = await status(port)
    }
    if (!st?.ready) throw new Error(`"pass done" without errors, but /status is not ready: ${JSON.stringify(st)}`)
    // FT_FOOTPRINT_SCRAPE=1: an edge Prometheus scrapes (one /metrics right after ready; its first scrape loads
    // the process metrics and the built-in modules they use, src/daemon/metrics.ts).
    if (SCRAPE) {
      const m = await fetch(`http://127.0.0.1:${port}/metrics`).then(async (r) => ({ status: r.status, text: await r.text() }))
      if (m.status !== 200 || !/^fabtunnel_process_cpu_seconds_total /m.test(m.text)) throw new Error(`/metrics scrape failed: ${m.status} ${m.text.slice(0, 200)}`)
    }
    await new Promise((r) => setTimeout(r, SETTLE_MS))
    const settledRssMiB = kib(readFileSync(`/proc/${pid}/status`, 'utf8'), 'VmRSS') / 1024
    if (SMAPS) console.log(`smaps after ${SETTLE_MS / 1000} s (${heapLabel ?? 'run'}): ${smapsSummary(pid)}`)
    if (PAGES) console.log(await binaryPagesVsIdleNode(pid))
    if (HEAP_DIR && heapLabel) await heapSnapshot(pid, HEAP_DIR, heapLabel)
    return { ...first, settledRssMiB }
  } finally {
    await stop(child)
  }
}

/** FT_FOOTPRINT_PAGES=1: the node binary's resident pages in the agent, by section and symbol, over an idle `node`. */
async function binaryPagesVsIdleNode(pid: number): Promise<string> {
  const idle = spawn(process.execPath, ['-e', 'setTimeout(() => {}, 60000)'], { stdio: 'ignore', env: {} })
  try {
    await new Promise((r) => setTimeout(r, 1000))
    return formatDiff(binaryPages(pid), binaryPages(idle.pid!))
  } finally {
    idle.kill('SIGKILL')
  }
}

/** Resident memory by kind of mapping (FT_FOOTPRINT_SMAPS=1): the node binary, other files, anonymous, malloc heap, in MiB; private dirty in total. */
function smapsSummary(pid: number): string {
  const rss = new Map<string, number>()
  let privateDirty = 0
  let kind = ''
  for (const line of readFileSync(`/proc/${pid}/smaps`, 'utf8').split('\n')) {
    const head = /^[0-9a-f]+-[0-9a-f]+ \S+ \S+ \S+ \S+\s*(.*)$/.exec(line)
    if (head) {
      const name = head[1]!
      kind = name === process.execPath || name.endsWith('/node') ? 'node binary' : name === '[heap]' ? 'malloc heap' : name === '' ? 'anonymous' : name.startsWith('[') ? name : 'other files'
      continue
    }
    const m = /^(Rss|Private_Dirty):\s+(\d+) kB/.exec(line)
    if (m?.[1] === 'Rss') rss.set(kind, (rss.get(kind) ?? 0) + Number(m[2]))
    else if (m) privateDirty += Number(m[2])
  }
  const parts = [...rss].sort((a, b) => b[1] - a[1]).map(([k, v]) => `${k} ${f1(v / 1024)}`)
  return `${parts.join(', ')}; private dirty ${f1(privateDirty / 1024)} MiB`
}

/** Signals the agent to write a heap snapshot, waits (bounded) until the file stops growing, names it by label. */
async function heapSnapshot(pid: number, dir: string, label: string): Promise<void> {
  const before = new Set(readdirSync(dir))
  process.kill(pid, 'SIGUSR2')
  const deadline = performance.now() + 180_000
  let last = -1
  while (performance.now() < deadline) {
    await new Promise((r) => setTimeout(r, 1000))
    const f = readdirSync(dir).find((x) => x.endsWith('.heapsnapshot') && !before.has(x))
    if (!f) continue
    const size = statSync(join(dir, f)).size
    if (size > 0 && size === last) {
      const to = join(dir, `${label}.heapsnapshot`)
      renameSync(join(dir, f), to)
      const peers = Number(/(\d+)/.exec(label)?.[1] ?? 0)
      const { groups, total } = summarise(JSON.parse(readFileSync(to, 'utf8')))
      console.log(`heap ${label}: ${(total / 2 ** 20).toFixed(1)} MiB shallow (${to}); top groups${peers ? ', bytes per peer' : ''}:`)
      for (const g of groups.slice(0, 15)) console.log(`  ${(g.bytes / 2 ** 20).toFixed(2).padStart(7)} MiB ${String(g.count).padStart(8)}x${peers ? ` ${(g.bytes / peers).toFixed(0).padStart(6)} B/peer` : ''}  ${g.key}`)
      return
    }
    last = size
  }
  throw new Error(`no heap snapshot from ${pid} in ${dir}`)
}

function baseline(): { cpuS: number; hwmMiB: number } {
  // The same accounting as procCpuS, read by node -e 0 itself as its last act.
  const script = 'const fs=require("fs");let ns=0;for(const t of fs.readdirSync("/proc/self/task"))ns+=Number(fs.readFileSync("/proc/self/task/"+t+"/schedstat","utf8").split(" ")[0]);' +
    'console.log(ns/1e9, /VmHWM:\\s+(\\d+)/.exec(fs.readFileSync("/proc/self/status","utf8"))[1])'
  const r = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8' })
  const [cpuS, hwm] = r.stdout.trim().split(' ').map(Number)
  return { cpuS: cpuS!, hwmMiB: hwm! / 1024 }
}

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[xs.length >> 1]!
const f2 = (x: number): string => x.toFixed(2)
const f3 = (x: number): string => x.toFixed(3)
const f1 = (x: number): string => x.toFixed(1)

async function inside(nsName: string): Promise<void> {
  const ns = Netns.adopt(nsName)
  const dir = mkdtempSync(join(tmpdir(), 'ft-bench-footprint-'))
  const pki = await TestPki.create()
  const charon = await Charon.start(ns)
  try {
    spawnSync('ip', ['link', 'set', 'lo', 'up'])
    const port = 30000 + (process.pid % 20000)
    const common = (cfg: string, cert: { certPath: string; keyPath: string }): string[] => ['run', '--config', cfg, '--vici', charon.uri,
      '--cert', cert.certPath, '--key', cert.keyPath, '--ca', pki.caCertPath, '--datapath', 'libipsec', '--resync-interval', '0']

    const edgeCert = await pki.issue('bench', 'edge1')
    const edgeCfg = join(dir, 'edge.yaml')
    writeFileSync(edgeCfg, edgeYaml)
    const base: Array<{ cpuS: number; hwmMiB: number }> = []
    const edge: Sample[] = []
    for (let i = 0; i < RUNS; i++) {
      base.push(baseline())
      await charon.restart()
      edge.push(await runOnce(common(edgeCfg, edgeCert), port, 60_000, i === 0 ? 'edge-1' : undefined))
    }
    const bCpu = median(base.map((b) => b.cpuS))
    const bHwm = median(base.map((b) => b.hwmMiB))
    const how = `${VIA_NODE ? 'node ' : ''}${process.env.FT_FOOTPRINT_CLI ?? BIN} run${VIA_NODE ? '' : ' (shebang)'}`
    console.log(`fabtunnel footprint: ${how}, real charon (kernel-libipsec), medians of ${RUNS} cold starts; node ${process.version}`)
    console.log(`baseline node -e 0: CPU ${f3(bCpu)} s, peak RSS ${f1(bHwm)} MiB`)
    const eCpu = median(edge.map((s) => s.cpuS))
    console.log(`edge, 1 peer: CPU to ready ${f3(eCpu)} s (${f2(eCpu / bCpu)}x node -e 0; min ${f3(Math.min(...edge.map((s) => s.cpuS)))}, max ${f3(Math.max(...edge.map((s) => s.cpuS)))}), ` +
      `wall ${median(edge.map((s) => s.wallMs)).toFixed(0)} ms, RSS at ready ${f1(median(edge.map((s) => s.rssMiB)))} MiB, ` +
      `peak ${f1(median(edge.map((s) => s.hwmMiB)))} MiB, after ${SETTLE_MS / 1000} s ${f1(median(edge.map((s) => s.settledRssMiB)))} MiB`)

    const connCert = await pki.issue('bench', 'connector')
    let small: { n: number; rss: number } | null = null
    for (const n of SIZES) {
      const cfg = join(dir, `connector-${n}.yaml`)
      writeFileSync(cfg, connectorYaml(n))
      const runs = Math.max(1, Math.min(RUNS, n >= 5000 ? 1 : 3))
      const xs: Sample[] = []
      for (let i = 0; i < runs; i++) {
        await charon.restart()
        xs.push(await runOnce(common(cfg, connCert), port, 600_000, i === 0 ? `connector-${n}` : undefined))
      }
      const settled = median(xs.map((s) => s.settledRssMiB))
      const perPeer = small ? ` (${((settled - small.rss) * 1024 * 1024 / (n - small.n) / 1024).toFixed(1)} KiB per peer from ${small.n} peers)` : ''
      console.log(`connector, ${n} peers: RSS at ready ${f1(median(xs.map((s) => s.rssMiB)))} MiB, peak ${f1(median(xs.map((s) => s.hwmMiB)))} MiB, ` +
        `after ${SETTLE_MS / 1000} s ${f1(settled)} MiB${perPeer}; CPU to ready ${f2(median(xs.map((s) => s.cpuS)))} s, wall ${median(xs.map((s) => s.wallMs)).toFixed(0)} ms (median of ${runs})`)
      small ??= { n, rss: settled }
    }
  } finally {
    await charon.stop()
    await pki.destroy()
    rmSync(dir, { recursive: true, force: true })
  }
}

if (INSIDE) {
  await inside(INSIDE)
  process.exit(0)
} else {
  teardownOnSignals()
  const ns = await Netns.create('ftfp')
  try {
    const r = spawnSync('ip', ['netns', 'exec', ns.name, process.execPath, '--import', 'tsx', fileURLToPath(import.meta.url), ...process.argv.slice(2)], {
      stdio: 'inherit', env: { ...process.env, FT_BENCH_INSIDE: ns.name },
    })
    process.exitCode = r.status ?? 1
  } finally {
    await ns.destroy()
  }
}
