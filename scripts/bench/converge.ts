// Benchmark: convergence of the agent (issue 7) against a real charon, in one throwaway namespace.
// Run as root: node --import tsx scripts/bench/converge.ts [peers=1000] [idleSeconds=30]
// The script re-runs itself inside the namespace so the agent's netlink sockets, iptables and charon share it.
// Measured: cold start to converged with N edge peers (connector role: N connections loaded, sets, chains);
// one peer added -> converged, timed from the kubelet-style `..data` rename; no-op passes (event-triggered and
// full resync) with their write counts; idle CPU; RSS. Baseline in the same run: the same N connections loaded by
// `swanctl --load-conns` from a generated swanctl.conf; FabEdge's fixed delays are printed beside ours.
import { spawn, spawnSync } from 'node:child_process'
import { mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { Charon } from '../../test/harness/charon.js'
import { Netns, teardownOnSignals } from '../../test/harness/netns.js'
import { TestPki } from '../../test/harness/pki.js'
// The agent as users run it: compiled JavaScript from dist/ (run scripts/setup or npm run build first).
const { createLogger } = (await import(new URL('../../dist/log.js', import.meta.url).href)) as typeof import('../../src/log.js')
const { startDaemon } = (await import(new URL('../../dist/daemon/run.js', import.meta.url).href)) as typeof import('../../src/daemon/run.js')

const PEERS = Number(process.argv[2] ?? 1000)
const IDLE_S = Number(process.argv[3] ?? 30)
const INSIDE = process.env.FT_BENCH_INSIDE

function peerYaml(i: number): string {
  return [
    `    - id: C=CN, O=fabedge.io, CN=bench.e${i}`,
    `      name: bench.e${i}`,
    '      publicAddresses:', `        - 172.20.${i >> 8}.${i & 255}`,
    '      subnets:', `        - 10.${100 + (i >> 8)}.${i & 255}.0/24`,
    '      nodeSubnets:', `        - 172.20.${i >> 8}.${i & 255}`,
    '      type: EdgeNode',
  ].join('\n')
}

function configYaml(n: number): string {
  const head = ['id: C=CN, O=fabedge.io, CN=bench.connector', 'name: bench.connector', 'publicAddresses:', '    - 172.19.0.1',
    'subnets:', '    - 10.96.0.0/16', '    - 10.99.0.0/16', 'nodeSubnets:', '    - 172.19.0.1', 'type: Connector', 'peers:']
  return `${[...head, ...Array.from({ length: n }, (_, i) => peerYaml(i))].join('\n')}\n`
}

let version = 0
function writeConfig(dir: string, text: string): number {
  const v = `..bench_${version++}`
  mkdirSync(join(dir, v))
  writeFileSync(join(dir, v, 'tunnels.yaml'), text)
  symlinkSync(v, join(dir, '..data_tmp'))
  const t = performance.now()
  renameSync(join(dir, '..data_tmp'), join(dir, '..data'))
  try {
    symlinkSync('..data/tunnels.yaml', join(dir, 'tunnels.yaml'))
  } catch {
    // already there: kubelet leaves the file symlink alone and only swaps ..data
  }
  return t
}

async function until(what: string, cond: () => boolean, timeoutMs: number): Promise<number> {
  const deadline = performance.now() + timeoutMs
  while (!cond()) {
    if (performance.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setImmediate(r))
  }
  return performance.now()
}

function swanctlConf(n: number): string {
  const conns: string[] = []
  for (let i = 0; i < n; i++) {
    // swanctl.conf section names cannot contain dots (they separate sections): bench_eN here.
    const kids = ['p2p', 'n2p', 'p2n'].map((k) => `      bench_e${i}-${k} {\n        local_ts = 10.96.0.0/16\n        remote_ts = 10.${100 + (i >> 8)}.${i & 255}.0/24\n        start_action = none\n      }`).join('\n')
    conns.push(`  bench_e${i} {\n    version = 2\n    local {\n      auth = pubkey\n      id = "C=CN, O=fabedge.io, CN=bench.connector"\n    }\n    remote {\n      auth = pubkey\n      id = "C=CN, O=fabedge.io, CN=bench.e${i}"\n    }\n    children {\n${kids}\n    }\n  }`)
  }
  return `connections {\n${conns.join('\n')}\n}\n`
}

async function inside(nsName: string): Promise<void> {
  const ns = Netns.adopt(nsName)
  const dir = mkdtempSync(join(tmpdir(), 'ft-bench-converge-'))
  const pki = await TestPki.create()
  const charon = await Charon.start(ns)
  try {
    const cert = await pki.issue('bench', 'connector')
    const configDir = join(dir, 'config')
    mkdirSync(configDir)
    writeConfig(configDir, configYaml(PEERS))

    // Baseline: the same connections through swanctl (one process, one file).
    const conf = join(dir, 'swanctl.conf')
    writeFileSync(conf, swanctlConf(PEERS))
    const s0 = performance.now()
    const r = spawnSync('swanctl', ['--load-conns', '--file', conf, '--uri', charon.uri], { stdio: ['ignore', 'pipe', 'pipe'] })
    const swanctlMs = performance.now() - s0
    const loadedBySwanctl = /successfully loaded (\d+) connections/.exec(r.stdout.toString())?.[1]
    if (r.status !== 0 || Number(loadedBySwanctl) !== PEERS) throw new Error(`swanctl did not load ${PEERS} connections: ${r.stdout.toString().slice(-300)} ${r.stderr.toString()}`)
    spawnSync('swanctl', ['--load-conns', '--file', join(dir, 'empty.conf'), '--uri', charon.uri])
    writeFileSync(join(dir, 'empty.conf'), 'connections {}\n')
    spawnSync('swanctl', ['--load-conns', '--file', join(dir, 'empty.conf'), '--uri', charon.uri], { stdio: 'ignore' })

    const log = createLogger('warn')
    const cpu0 = process.cpuUsage()
    const t0 = performance.now()
    const d = await startDaemon({
      config: join(configDir, 'tunnels.yaml'), vici: charon.uri, cert: cert.certPath, key: cert.keyPath, ca: pki.caCertPath,
      listen: { host: '127.0.0.1', port: 0 }, datapath: 'libipsec', resyncMs: 0, log,
    })
    const agent = d.node.agent
    await until('cold start converged', () => agent.ready && agent.lastPass?.reasons.includes('verify') === true, 300_000)
    await agent.idle()
    const coldMs = performance.now() - t0
    const coldWrites = agent.counters.writes
    const loaded = (await d.node.vici!.getConns()).length

    // One peer added, timed from the ..data rename to the end of the pass that loaded it.
    const gen = agent.configState.generation
    const renamed = writeConfig(configDir, configYaml(PEERS + 1))
    const done = await until('one-peer change converged', () => agent.configState.generation === gen + 1 && agent.lastPass !== null && Date.parse(agent.lastPass.startedAt) >= Date.now() - 10_000 && agent.lastPass.writes.tunnels !== undefined && !agent.lastPass.reasons.includes('verify'), 30_000)
    const oneMs = done - renamed
    const oneWrites = agent.lastPass!.writes
    const oneTimings = { ...agent.lastPass!.timings, pass: Math.round(agent.lastPass!.durationMs * 10) / 10 }
    await agent.idle()

    // No-op passes: an SA event (what happens all day) and a full resync (timer/SIGHUP).
    const noop = async (reason: string): Promise<{ ms: number; writes: number }> => {
      const w = agent.counters.writes
      const p = agent.counters.passes
      agent.trigger(reason)
      await until(`pass ${reason}`, () => agent.counters.passes > p, 30_000)
      await agent.idle()
      return { ms: agent.lastPass!.durationMs, writes: agent.counters.writes - w }
    }
    const ev: number[] = []
    const full: number[] = []
    let evWrites = 0
    let fullWrites = 0
    for (let i = 0; i < 7; i++) {
      const a = await noop('vici:child-updown')
      ev.push(a.ms)
      evWrites += a.writes
      const b = await noop('resync')
      full.push(b.ms)
      fullWrites += b.writes
    }
    const median = (xs: number[]): number => [...xs].sort((x, y) => x - y)[xs.length >> 1]!
    const rss = process.memoryUsage().rss / 2 ** 20

    await new Promise((r) => setTimeout(r, 2000))
    const idle0 = process.cpuUsage()
    const w0 = performance.now()
    await new Promise((r) => setTimeout(r, IDLE_S * 1000))
    const idleCpu = process.cpuUsage(idle0)
    const idlePct = ((idleCpu.user + idleCpu.system) / 1000 / (performance.now() - w0)) * 100
    const startCpu = process.cpuUsage(cpu0)

    await d.stop()

    // The agent as its own process (compiled dist/, as deployed), restarted onto the converged node: time to
    // ready, writes (must be 0: adoption), and its RSS without this script's own modules.
    const port = 30000 + (process.pid % 20000)
    const r0 = performance.now()
    // FT_AGENT_NODE_FLAGS: extra node flags for the agent process (e.g. V8 heap sizing experiments).
    const nodeFlags = (process.env.FT_AGENT_NODE_FLAGS ?? '').split(' ').filter(Boolean)
    const child = spawn(process.execPath, [...nodeFlags, new URL('../../dist/cli.js', import.meta.url).pathname, 'run', '--config', join(configDir, 'tunnels.yaml'),
      '--vici', charon.uri, '--cert', cert.certPath, '--key', cert.keyPath, '--ca', pki.caCertPath, '--listen', `127.0.0.1:${port}`,
      '--datapath', 'libipsec', '--resync-interval', '0', '--log-level', 'warn'], { stdio: 'inherit' })
    let restart: { ms: number; writes: number; rssMiB: number } | null = null
    try {
      const deadline = performance.now() + 120_000
      while (performance.now() < deadline) {
        const st = await fetch(`http://127.0.0.1:${port}/status`).then((x) => x.json() as Promise<any>, () => null)
        if (st?.ready) {
          const rss = Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${child.pid}/status`, 'utf8'))![1]) / 1024
          restart = { ms: performance.now() - r0, writes: st.counters.writes, rssMiB: rss }
          break
        }
        await new Promise((r) => setTimeout(r, 20))
      }
    } finally {
      child.kill('SIGTERM')
      await new Promise((r) => child.once('exit', r))
    }
    const rows: Array<[string, string, string, string]> = [
      [`cold start, ${PEERS} peers -> converged`, `${coldMs.toFixed(0)} ms (${loaded} conns, ${coldWrites} writes)`, `swanctl --load-conns: ${swanctlMs.toFixed(0)} ms (conns only)`, `${(coldMs / swanctlMs).toFixed(2)}x`],
      ['one peer added -> converged (from ..data rename)', `${oneMs.toFixed(1)} ms (writes ${JSON.stringify(oneWrites)})`, 'FabEdge: 5 s debounce (+ resync 1-5 min)', `${(5000 / oneMs).toFixed(0)}x faster`],
      ['no-op pass on an SA event (median of 7)', `${median(ev).toFixed(1)} ms, ${evWrites} writes`, 'FabEdge: full rewrite every pass', ''],
      ['no-op full resync pass (median of 7)', `${median(full).toFixed(1)} ms, ${fullWrites} writes`, 'FabEdge: full rewrite every 1-5 min', ''],
      [`idle CPU over ${IDLE_S} s`, `${idlePct.toFixed(2)} %`, 'FabEdge: polls every 5 s', ''],
      [`agent process restarted onto the converged node -> ready`, restart ? `${restart.ms.toFixed(0)} ms, ${restart.writes} writes` : 'did not become ready', 'FabEdge: reloads every conn', ''],
      ['agent process RSS (dist/, ready)', restart ? `${restart.rssMiB.toFixed(0)} MiB` : '-', 'bare node: ~42 MiB', ''],
      ['this benchmark process RSS (tsx, harness, in-process agent)', `${rss.toFixed(0)} MiB`, '', ''],
      ['CPU during the whole run (user+sys)', `${((startCpu.user + startCpu.system) / 1e6).toFixed(1)} s`, '', ''],
    ]
    const w = [0, 1, 2].map((i) => Math.max(...rows.map((r) => r[i]!.length)))
    console.log(`fabtunnel converge benchmark: ${PEERS} peers, real charon (kernel-libipsec), one namespace`)
    for (const r of rows) console.log(`${r[0].padEnd(w[0]!)}  ${r[1].padEnd(w[1]!)}  ${r[2].padEnd(w[2]!)}  ${r[3]}`)
    console.log(`per subsystem (ms): one-peer pass ${JSON.stringify(oneTimings)}; last resync pass ${JSON.stringify(agent.lastPass?.timings)}`)
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
  const ns = await Netns.create('ftbc')
  try {
    const r = spawnSync('ip', ['netns', 'exec', ns.name, process.execPath, '--import', 'tsx', fileURLToPath(import.meta.url), String(PEERS), String(IDLE_S)], {
      stdio: 'inherit', env: { ...process.env, FT_BENCH_INSIDE: ns.name },
    })
    process.exitCode = r.status ?? 1
  } finally {
    await ns.destroy()
  }
}
