// Benchmark: routes and ipset members written the way the daemon writes them (RoutesSubsystem and IpsetsSubsystem,
// plan + apply through their real netlink ports) against the CLI tools, in one run and one throwaway namespace.
// Run as root: node --import tsx scripts/bench/netlink.ts
// The script re-runs itself inside the namespace (`ip netns exec`) so that ours and the tools pay the same costs:
// no setns wrapper around the tools, the same kernel state before every measurement.
import { spawnSync } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { Netns, teardownOnSignals } from '../../test/harness/netns.js'
import { exec } from '../../test/harness/exec.js'
import type { DesiredRoute } from '../../src/desired/types.js'
import { IPSET } from '../../src/fabedge.js'
import { createLogger } from '../../src/log.js'
import { ipsetList, openNetfilter, openRoute } from '../../src/netlink/index.js'
import { IpsetsSubsystem, netlinkIpsetsPort } from '../../src/reconcile/ipsets.js'
import { netlinkRoutesPort, RoutesSubsystem } from '../../src/reconcile/routes.js'
import { passContext } from '../../src/reconcile/subsystem.js'

const N = 10_000
const PER_PROCESS_SAMPLE = 500
const RUNS = 3
const SET = IPSET.remoteCidr
const CTX = passContext(['resync'])
const log = createLogger('silent')

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.floor(s.length / 2)]!
}

function run(argv: string[], input?: string): void {
  const r = spawnSync(argv[0]!, argv.slice(1), { input, stdio: ['pipe', 'ignore', 'pipe'] })
  if (r.status !== 0) throw new Error(`${argv.join(' ')} failed: ${r.stderr.toString()}`)
}

function timeSync(fn: () => void): number {
  const t0 = performance.now()
  fn()
  return performance.now() - t0
}

async function timeAsync(fn: () => Promise<unknown>): Promise<number> {
  const t0 = performance.now()
  await fn()
  return performance.now() - t0
}

/** One warm-up, then the median of RUNS, each after `reset`. */
async function measure(reset: () => void, fn: () => Promise<unknown> | void): Promise<number> {
  const times: number[] = []
  for (let i = 0; i <= RUNS; i++) {
    reset()
    const t = await timeAsync(async () => {
      await fn()
    })
    if (i > 0) times.push(t)
  }
  return median(times)
}

async function inside(): Promise<void> {
  run(['ip', 'link', 'set', 'lo', 'up'])
  run(['ip', 'link', 'add', 'bn0', 'type', 'veth', 'peer', 'name', 'bn1'])
  run(['ip', 'link', 'set', 'bn0', 'up'])
  run(['ip', 'link', 'set', 'bn1', 'up'])
  run(['ip', 'addr', 'add', '10.255.0.1/24', 'dev', 'bn0'])

  const dsts = Array.from({ length: N }, (_, i) => `10.${i >> 8}.${i & 255}.0/24`)
  const rows: Array<[string, string, number, string, number]> = []

  // ---- routes: the routes subsystem of the xfrm datapath, plan (dump + diff) and apply (one batch) ----
  const rt = openRoute()
  const routes = new RoutesSubsystem(netlinkRoutesPort(rt), log)
  // Before the first route the table does not exist and `ip route flush` says so: nothing to flush then.
  const flushRoutes = (): void => void spawnSync('ip', ['route', 'flush', 'table', '220'], { stdio: 'ignore' })
  const desiredRoutes = { routes: dsts.map((dst): DesiredRoute => ({ dst, family: 4, table: 220, protocol: 220, via: '10.255.0.2' })), rules: [] }
  const routesPass = async (): Promise<number> => {
    const plan = await routes.plan(desiredRoutes, CTX)
    return plan.writes === 0 ? 0 : routes.apply(plan)
  }
  const ours = await measure(flushRoutes, async () => {
    const done = await routesPass()
    if (done !== N) throw new Error(`the routes subsystem wrote ${done} routes, expected ${N}`)
  })
  const dir = mkdtempSync(join(tmpdir(), 'ft-bench-'))
  const batchFile = join(dir, 'routes.batch')
  writeFileSync(batchFile, dsts.map((d) => `route replace ${d} via 10.255.0.2 table 220 proto 220\n`).join(''))
  const ipBatch = await measure(flushRoutes, () => run(['ip', '-batch', batchFile]))
  flushRoutes()
  const perProc = timeSync(() => {
    for (const d of dsts.slice(0, PER_PROCESS_SAMPLE)) run(['ip', 'route', 'replace', d, 'via', '10.255.0.2', 'table', '220', 'proto', '220'])
  }) * (N / PER_PROCESS_SAMPLE)
  rows.push([`${N} route replaces`, 'ip -batch', ours, '', ipBatch])
  rows.push([`${N} route replaces`, `ip route replace per route (x${N / PER_PROCESS_SAMPLE} of ${PER_PROCESS_SAMPLE})`, ours, '', perProc])

  // ---- converged pass: dump, decode and diff N routes, nothing to write ----
  flushRoutes()
  await routesPass()
  const dump = await measure(() => undefined, async () => {
    const plan = await routes.plan(desiredRoutes, CTX)
    if (plan.writes !== 0) throw new Error(`converged pass planned ${plan.writes} writes`)
  })
  if ((routes.summary() as { ownRoutes: number }).ownRoutes !== N) throw new Error(`the pass saw ${JSON.stringify(routes.summary())}, expected ${N} routes`)
  const ipShow = await measure(() => undefined, () => run(['ip', 'route', 'show', 'table', '220', 'proto', '220']))
  rows.push([`converged pass, ${N} routes`, 'ip route show table 220 proto 220', dump, '', ipShow])
  rt.close()

  // ---- ipset ----
  const nf = openNetfilter()
  const ipsets = new IpsetsSubsystem(netlinkIpsetsPort(nf), log)
  const desiredSets = { ipsets: { [SET]: { family: 4 as const, members: dsts } } }
  await ipsets.apply(await ipsets.plan(desiredSets, CTX))
  const flushSet = (): void => run(['ipset', 'flush', SET])
  const oursSet = await measure(flushSet, async () => {
    const done = await ipsets.apply(await ipsets.plan(desiredSets, CTX))
    if (done !== N) throw new Error(`the ipsets subsystem wrote ${done} members, expected ${N}`)
  })
  const members = (await ipsetList(nf, SET))!.members.length
  if (members !== N) throw new Error(`set holds ${members} members, expected ${N}`)
  const restoreInput = dsts.map((d) => `add ${SET} ${d}\n`).join('')
  const restore = await measure(flushSet, () => run(['ipset', 'restore'], restoreInput))
  flushSet()
  const perAdd = timeSync(() => {
    for (const d of dsts.slice(0, PER_PROCESS_SAMPLE)) run(['ipset', 'add', SET, d])
  }) * (N / PER_PROCESS_SAMPLE)
  rows.push([`${N} ipset adds`, 'ipset restore', oursSet, '', restore])
  rows.push([`${N} ipset adds`, `ipset add per entry (x${N / PER_PROCESS_SAMPLE} of ${PER_PROCESS_SAMPLE})`, oursSet, '', perAdd])
  nf.close()
  rmSync(dir, { recursive: true, force: true })

  const w = [30, 40, 10, 12, 10]
  const line = (cells: string[]): string => cells.map((c, i) => (i >= 2 ? c.padStart(w[i]!) : c.padEnd(w[i]!))).join('  ')
  console.log(`fabtunnel/netlink benchmark: median of ${RUNS} runs after one warm-up, same namespace, times in ms`)
  console.log(line(['operation', 'baseline', 'ours', 'baseline', 'ours/base']))
  for (const [op, base, o, , b] of rows) console.log(line([op, base, o.toFixed(1), b.toFixed(1), `${(o / b).toPrecision(2)}x`]))
  console.log(`targets: route replaces and ipset adds within 1.25x of ip -batch / ipset restore; ${N}-route converged pass ` +
    `(dump + plan) < 50 ms (measured ${dump.toFixed(1)} ms: ${dump < 50 ? 'met' : 'MISSED'})`)
}

async function outside(): Promise<void> {
  teardownOnSignals()
  const ns = await Netns.create('bn')
  try {
    const self = fileURLToPath(import.meta.url)
    const out = await exec(['ip', 'netns', 'exec', ns.name, process.execPath, '--import', 'tsx', self], {
      env: { ...process.env, FT_BENCH_INSIDE: '1' },
      timeoutMs: 300_000,
    })
    process.stdout.write(out)
  } finally {
    await ns.destroy()
  }
}

if (process.env.FT_BENCH_INSIDE === '1') await inside()
else await outside()
