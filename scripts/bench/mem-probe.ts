// Diagnosis, not a benchmark: where the agent's memory goes around deep passes. Inside a fresh namespace (run it
// through `ip netns exec NS`, as root, after `npm run build`), with a fresh charon and N connector peers, it starts
// `dist/cli.js run` (FT_PROBE_CLI for another build, FT_PROBE_NODE_FLAGS for node flags such as --trace-gc),
// waits for ready, then sends SIGHUP `--deep` times and prints RSS, RssAnon, V8 heap and external memory after each
// settle and every other second of a final idle period.
//   ip netns add ftmp1 && ip netns exec ftmp1 node --import tsx scripts/bench/mem-probe.ts --ns ftmp1 --peers 10000 --deep 3
//   ip netns del ftmp1
// Where the bytes come from (preloads in scripts/bench/mem-probe/, output in FT_SAMPLER_OUT, default /tmp):
//   FT_PROBE_NODE_FLAGS="--import $PWD/scripts/bench/mem-probe/sampler.mjs" FT_PROBE_USR2=1 (or =idle): V8's
//     sampling heap profiler over the first deep pass (or the idle period), collected objects included; read it with
//     mem-probe/alloc-summary.mjs.
//   FT_PROBE_NODE_FLAGS="--import $PWD/scripts/bench/mem-probe/snapshot.mjs" FT_PROBE_SNAPSHOT=1: a heap snapshot at
//     the end; read it with scripts/bench/heap-summary.ts.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { closeSync, mkdirSync, mkdtempSync, openSync, readFileSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { Charon } from '../../test/harness/charon.js'
import { Netns } from '../../test/harness/netns.js'
import { TestPki } from '../../test/harness/pki.js'
import { connectorYaml, firstPeers } from './scale/gen.js'
import { heapFromMetrics, memFromStatus, metricSum } from './scale/report.js'

const { values } = parseArgs({ options: { peers: { type: 'string', default: '1000' }, deep: { type: 'string', default: '3' }, idle: { type: 'string', default: '10' }, ns: { type: 'string' }, keep: { type: 'boolean', default: false } } })
const N = Number(values.peers)
const CLI = process.env.FT_PROBE_CLI ?? fileURLToPath(new URL('../../dist/cli.js', import.meta.url))
const LISTEN = '127.0.0.1:30306'
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms))
const mb = (b: number | undefined): string => ((b ?? 0) / 1e6).toFixed(1)

function run(argv: string[]): void {
  const r = spawnSync(argv[0]!, argv.slice(1), { stdio: 'ignore' })
  if (r.status !== 0) throw new Error(`${argv.join(' ')} exited ${r.status}`)
}

async function metrics(): Promise<string> {
  const r = await fetch(`http://${LISTEN}/metrics`, { signal: AbortSignal.timeout(60_000) })
  return r.text()
}

async function readyz(): Promise<boolean> {
  try {
    return (await fetch(`http://${LISTEN}/readyz`, { signal: AbortSignal.timeout(60_000) })).status === 200
  } catch {
    return false
  }
}

async function sample(pid: number, what: string): Promise<void> {
  const text = await metrics()
  const h = heapFromMetrics(text)
  const m = memFromStatus(readFileSync(`/proc/${pid}/status`, 'utf8'))
  console.log(`${what.padEnd(22)} rss ${mb(m.rss)}  anon ${mb(m.anon)}  heap used/total ${mb(h.heapUsed)}/${mb(h.heapTotal)}  external ${mb(h.external)}  hwm ${mb(m.hwm)}`)
}

async function passes(): Promise<number> {
  return metricSum(await metrics(), 'fabtunnel_pass_duration_seconds_count')
}

async function settle(base: number, min: number): Promise<void> {
  let last = await passes()
  let since = performance.now()
  for (const deadline = performance.now() + 600_000; performance.now() < deadline;) {
    await sleep(200)
    const now = await passes()
    if (now !== last) {
      last = now
      since = performance.now()
    } else if (now - base >= min && performance.now() - since > 500 && (await readyz())) return
  }
  throw new Error('no settle')
}

const ns = Netns.adopt(values.ns ?? 'ftmp')
const dir = mkdtempSync(join(tmpdir(), 'ft-mem-probe-'))
const pki = await TestPki.create()
let agent: ChildProcess | null = null
try {
  run(['ip', 'link', 'set', 'lo', 'up'])
  run(['ip', 'link', 'add', 'ftmp0', 'type', 'veth', 'peer', 'name', 'ftmp1'])
  run(['ip', 'addr', 'add', '172.19.0.1/24', 'dev', 'ftmp0'])
  run(['ip', 'link', 'set', 'ftmp0', 'up'])
  run(['ip', 'link', 'set', 'ftmp1', 'up'])
  run(['ip', 'route', 'add', 'default', 'via', '172.19.0.254'])
  const cert = await pki.issue('bench', 'connector')
  const charon = await Charon.start(ns)
  const cfg = join(dir, 'config')
  mkdirSync(join(cfg, '..v1'), { recursive: true })
  writeFileSync(join(cfg, '..v1', 'tunnels.yaml'), connectorYaml(firstPeers(N)))
  symlinkSync('..v1', join(cfg, '..data_tmp'))
  renameSync(join(cfg, '..data_tmp'), join(cfg, '..data'))
  symlinkSync('..data/tunnels.yaml', join(cfg, 'tunnels.yaml'))
  const env = { ...process.env }
  delete env.NODE_OPTIONS
  const fd = openSync(join(dir, 'agent.log'), 'a')
  const flags = (process.env.FT_PROBE_NODE_FLAGS ?? '').split(' ').filter(Boolean)
  agent = spawn(process.execPath, [...flags, CLI, 'run', '--config', join(cfg, 'tunnels.yaml'), '--vici', charon.uri, '--cert', cert.certPath, '--key', cert.keyPath,
    '--ca', pki.caCertPath, '--datapath', 'xfrm', '--resync-interval', '0', '--listen', LISTEN], { env, stdio: ['ignore', fd, fd] })
  closeSync(fd)
  const pid = agent.pid!
  const t0 = performance.now()
  while (!(await readyz())) {
    if (performance.now() - t0 > 900_000) throw new Error('not ready')
    await sleep(100)
  }
  await settle(0, 1)
  await sample(pid, `ready (${Math.round(performance.now() - t0)} ms)`)
  for (let k = 1; k <= Number(values.deep); k++) {
    const base = await passes()
    // FT_PROBE_USR2=1: SIGUSR2 around the first deep pass (a preloaded sampler, FT_PROBE_NODE_FLAGS=--import ...)
    if (k === 1 && process.env.FT_PROBE_USR2 === '1') process.kill(pid, 'SIGUSR2')
    process.kill(pid, 'SIGHUP')
    await settle(base, 1)
    if (k === 1 && process.env.FT_PROBE_USR2 === '1') {
      process.kill(pid, 'SIGUSR2')
      await sleep(2000)
    }
    await sample(pid, `deep ${k}`)
  }
  // FT_PROBE_USR2=idle: SIGUSR2 around the idle period instead, which then reads /proc only (no /metrics requests).
  const idleSampling = process.env.FT_PROBE_USR2 === 'idle'
  if (idleSampling) process.kill(pid, 'SIGUSR2')
  for (let s = 1; s <= Number(values.idle); s++) {
    await sleep(1000)
    if (idleSampling) {
      const m = memFromStatus(readFileSync(`/proc/${pid}/status`, 'utf8'))
      if (s % 2 === 0) console.log(`idle ${s} s`.padEnd(22), `rss ${mb(m.rss)}  anon ${mb(m.anon)}`)
    } else if (s % 2 === 0 || s === 1) await sample(pid, `idle ${s} s`)
  }
  if (idleSampling) {
    process.kill(pid, 'SIGUSR2')
    await sleep(3000)
    await sample(pid, 'after idle')
  }
  // FT_PROBE_SNAPSHOT=1: SIGUSR2 at the end, for a preloaded heap-snapshot writer (FT_PROBE_NODE_FLAGS=--import ...).
  if (process.env.FT_PROBE_SNAPSHOT) {
    process.kill(pid, 'SIGUSR2')
    // writeHeapSnapshot blocks the agent: it answers again once the file is complete.
    await sleep(2000)
    for (let k = 0; k < 300 && !(await readyz()); k++) await sleep(500)
  }
} finally {
  if (agent && agent.exitCode === null) {
    agent.kill('SIGTERM')
    await Promise.race([new Promise((r) => agent!.once('exit', r)), sleep(10_000)])
    agent.kill('SIGKILL')
  }
  await ns.destroy()
  await pki.destroy()
  if (values.keep) console.log(`kept ${dir}`)
  else rmSync(dir, { recursive: true, force: true })
}
