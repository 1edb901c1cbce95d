// Peak resident memory of the agent's config path (`fabtunnel plan --offline`: load, validate and derive the whole
// desired state) on generated connector configs of growing size, against a bare `node` process measured in the
// same run. These size the DaemonSet's memory request/limit until the daemon itself can be measured; see
// deploy/kubernetes/*/daemonset.yaml. Run: `npm run build && node --import tsx scripts/bench/agent-rss.ts`.
import { spawnSync } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

const ROOT = new URL('../../', import.meta.url).pathname
const CLI = join(ROOT, 'dist', 'cli.js')
const SIZES = [10, 1_000, 5_000]
const RUNS = 3

// Reports the child's own peak RSS (getrusage ru_maxrss, KiB) at exit, so no external `time` binary is needed.
const HOOK =
  'data:text/javascript,import{writeFileSync}from"node:fs";' +
  'process.on("exit",()=>writeFileSync(process.env.FT_MAXRSS_OUT,String(process.resourceUsage().maxRSS)))'

/** A FabEdge connector tunnels.yaml with `peers` edge nodes, each with one /24 pod subnet and one node IP. */
function connectorConfig(peers: number): string {
  const lines = [
    'id: C=CN, O=fabedge.io, CN=bench.connector',
    'name: bench.connector',
    'publicAddresses:',
    '    - 10.40.10.180',
    'subnets:',
    '    - 10.96.0.0/12',
    '    - 10.112.0.0/16',
    'nodeSubnets:',
    '    - 192.168.1.5',
    'type: Connector',
    'peers:',
  ]
  for (let i = 0; i < peers; i++) {
    const a = 128 + Math.floor(i / 256)
    const b = i % 256
    lines.push(
      `    - id: C=CN, O=fabedge.io, CN=bench.edge${i}`,
      `      name: bench.edge${i}`,
      '      publicAddresses:',
      `        - 172.${16 + Math.floor(i / 65_536)}.${Math.floor(i / 256) % 256}.${b}`,
      '      subnets:',
      `        - 10.${a}.${b}.0/24`,
      '      nodeSubnets:',
      `        - 172.${16 + Math.floor(i / 65_536)}.${Math.floor(i / 256) % 256}.${b}`,
      '      type: EdgeNode',
    )
  }
  return lines.join('\n') + '\n'
}

function peakRssKiB(args: string[], dir: string): number {
  const out = join(dir, 'maxrss')
  let best = Infinity
  for (let i = 0; i < RUNS; i++) {
    const r = spawnSync(process.execPath, ['--import', HOOK, ...args], {
      env: { ...process.env, FT_MAXRSS_OUT: out, FABTUNNEL_LOG_LEVEL: 'silent' },
      stdio: ['ignore', 'ignore', 'pipe'],
      maxBuffer: 64 * 1024 * 1024,
    })
    if (r.status !== 0) throw new Error(`${args.join(' ')} exited ${r.status}: ${r.stderr.toString()}`)
    best = Math.min(best, Number(readFileSync(out, 'utf8')))
  }
  return best
}

const dir = mkdtempSync(join(tmpdir(), 'ft-bench-rss-'))
try {
  const mib = (kib: number) => (kib / 1024).toFixed(1)
  const baseline = peakRssKiB(['-e', ''], dir)
  console.log(`baseline: bare node ${process.version} (node -e ''): ${mib(baseline)} MiB peak RSS (min of ${RUNS})`)
  for (const n of SIZES) {
    const file = join(dir, `connector-${n}.yaml`)
    writeFileSync(file, connectorConfig(n))
    const ours = peakRssKiB([CLI, 'plan', '--offline', '--json', '--config', file], dir)
    console.log(
      `fabtunnel plan --offline, ${n} edge peers: ${mib(ours)} MiB peak RSS; baseline ${mib(baseline)} MiB; ` +
        `ratio ${(ours / baseline).toFixed(2)}x`,
    )
  }
} finally {
  rmSync(dir, { recursive: true, force: true })
}
