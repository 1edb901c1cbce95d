// Cold start of whole topologies: time from "namespaces and charons exist, nothing loaded" until every tunnel is
// up and the full connectivity matrix passes, for (1) the default two-cluster topology and (2) a connector with
// 20 edges. Ours: `fabtunnel run` in every gateway (dist/ must be built), and the in-process VICI driver that loads the
// same desired state from one process (separating protocol work from per-process start cost). Baseline, in the same run on the same namespaces after restarting every charon
// (a clean slate): per node `swanctl --load-all` of a generated swanctl.conf, then one blocking
// `swanctl --initiate --child` per child, node after node, repeated for what is still down (FabEdge's serial
// approach). Prints both times and the ratio, and agent RSS/CPU when the agents are processes.
//
//   node --import tsx scripts/bench/topology.ts [--edges N] [--only default|star]
import { mkdir, readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { defaultDriver, desiredOf, missingChildren, ViciDriver, waitFor, type AgentDriver } from '../../test/harness/agents.js'
import { defaultTopology, starTopology, type TopologySpec } from '../../test/harness/addressing.js'
import { execCapture } from '../../test/harness/exec.js'
import { waitMatrix } from '../../test/harness/matrix.js'
import { isRoot, teardownOnSignals } from '../../test/harness/netns.js'
import { Topology, type Gateway } from '../../test/harness/topology.js'
import type { ViciSection } from '../../src/desired/types.js'
import { Vici } from '../../src/vici/index.js'

const TIMEOUT_MS = 120_000

interface Run {
  upMs: number
  matrixMs: number
  totalMs: number
}

function swanName(name: string): string {
  // strongSwan's settings parser treats '.' as a key separator: section names in swanctl.conf cannot hold dots.
  // Connection names are local only (the wire carries the DNs), so the baseline renames them.
  return name.replace(/\./g, '_')
}

function quote(v: string): string {
  return /^[A-Za-z0-9_./:%-]+$/.test(v) ? v : `"${v.replace(/"/g, '\\"')}"`
}

function renderSection(s: ViciSection, indent: string, certFile: string): string[] {
  const out: string[] = []
  for (const [key, v] of Object.entries(s)) {
    if (key === 'certs') {
      out.push(`${indent}certs = ${certFile}`)
    } else if (typeof v === 'string') {
      out.push(`${indent}${key} = ${quote(v)}`)
    } else if (Array.isArray(v)) {
      out.push(`${indent}${key} = ${v.map(quote).join(', ')}`)
    } else {
      const name = key.includes('.') ? swanName(key) : key
      out.push(`${indent}${name} {`, ...renderSection(v, indent + '  ', certFile), `${indent}}`)
    }
  }
  return out
}

/** A swanctl.conf (plus x509/, x509ca/, private/) holding exactly the desired connections of the gateway. */
async function writeSwanctl(g: Gateway): Promise<{ file: string; initiate: Array<[string, string]> }> {
  const desired = await desiredOf(g)
  const dir = join(g.dir, 'swanctl')
  for (const sub of ['x509', 'x509ca', 'private']) await mkdir(join(dir, sub), { recursive: true })
  await writeFile(join(dir, 'x509', 'node.crt'), g.cert.certPem)
  await writeFile(join(dir, 'x509ca', 'ca.crt'), await readFile(g.caPath))
  await writeFile(join(dir, 'private', 'node.key'), g.cert.keyPem, { mode: 0o600 })
  const conns: ViciSection = {}
  for (const [name, c] of Object.entries(desired.conns)) conns[swanName(name)] = c
  const file = join(dir, 'swanctl.conf')
  await writeFile(file, ['connections {', ...renderSection(conns, '  ', 'node.crt'), '}', ''].join('\n'))
  const initiate = desired.initiate.flatMap((c) => (desired.initiateChildren[c] ?? []).map((k): [string, string] => [swanName(c), swanName(k)]))
  return { file, initiate }
}

async function swanctl(g: Gateway, args: string[]): Promise<boolean> {
  const r = await execCapture(['swanctl', ...args, '--uri', g.charon.uri], { timeoutMs: 20_000 })
  return r.code === 0
}

async function allUpVia(topo: Topology, rename: (n: string) => string): Promise<boolean> {
  let expected = 0
  const ok = await Promise.all(
    topo.activeGateways().map(async (g) => {
      const d = await desiredOf(g)
      const renamed = {
        ...d,
        initiate: d.initiate.map(rename),
        initiateChildren: Object.fromEntries(Object.entries(d.initiateChildren).map(([c, ks]) => [rename(c), ks.map(rename)])),
      }
      const v = new Vici({ uri: g.charon.uri, reconnect: false, timeoutMs: 5_000 })
      try {
        await v.connect()
        expected += d.initiate.reduce((n, conn) => n + (d.initiateChildren[conn]?.length ?? 0), 0)
        return missingChildren(renamed, await v.listSas()).length === 0
      } finally {
        await v.close()
      }
    }),
  )
  // Without a single initiated child, "all up" would hold with no tunnel at all.
  return expected > 0 && ok.every(Boolean)
}

async function baseline(topo: Topology): Promise<Run> {
  const gws = topo.activeGateways().sort((a, b) => Number(b.plan.role === 'connector') - Number(a.plan.role === 'connector'))
  const plans = new Map(await Promise.all(gws.map(async (g) => [g.name, await writeSwanctl(g)] as const)))
  const t0 = performance.now()
  for (const g of gws) {
    const p = plans.get(g.name)!
    if (!(await swanctl(g, ['--load-all', '--noprompt', '--file', p.file]))) throw new Error(`swanctl --load-all failed on ${g.name}`)
    for (const [ike, child] of p.initiate) await swanctl(g, ['--initiate', '--ike', ike, '--child', child, '--timeout', '10'])
  }
  // Whatever failed because its peer was not loaded yet is initiated again, node after node, until all are up.
  await waitFor('baseline tunnels', TIMEOUT_MS, async () => {
    if (await allUpVia(topo, swanName)) return true
    for (const g of gws) {
      const v = new Vici({ uri: g.charon.uri, reconnect: false })
      await v.connect()
      const sas = await v.listSas()
      await v.close()
      const p = plans.get(g.name)!
      const have = new Set(sas.filter((s) => s.state === 'ESTABLISHED').flatMap((s) => s.children.filter((c) => c.state === 'INSTALLED').map((c) => `${s.name}/${c.name}`)))
      for (const [ike, child] of p.initiate) if (!have.has(`${ike}/${child}`)) await swanctl(g, ['--initiate', '--ike', ike, '--child', child, '--timeout', '10'])
    }
    return false
  }, 50)
  const upMs = performance.now() - t0
  const { ms } = await waitMatrix(topo, TIMEOUT_MS)
  return { upMs, matrixMs: ms, totalMs: performance.now() - t0 }
}

async function ours(topo: Topology, driver: AgentDriver): Promise<Run> {
  const gws = topo.activeGateways()
  const t0 = performance.now()
  await Promise.all(gws.filter((g) => g.plan.role === 'connector').map((g) => driver.start(g)))
  await Promise.all(gws.filter((g) => g.plan.role !== 'connector').map((g) => driver.start(g)))
  // Same criterion and probe as the baseline (charon's SAs over VICI, no process per probe), not /readyz: a curl
  // per gateway per poll would compete with the agents for the two cores.
  await waitFor('our tunnels', TIMEOUT_MS, () => allUpVia(topo, (n) => n), 50)
  const upMs = performance.now() - t0
  const { ms } = await waitMatrix(topo, TIMEOUT_MS)
  return { upMs, matrixMs: ms, totalMs: performance.now() - t0 }
}

/** Sum of RSS (kB) and CPU seconds of the agent processes, when the driver runs them as processes. */
async function agentUsage(topo: Topology, driver: AgentDriver): Promise<{ rssKb: number; cpuS: number; n: number } | null> {
  const pids = topo.activeGateways().map((g) => driver.pid(g)).filter((p): p is number => p !== undefined)
  if (pids.length === 0) return null
  let rssKb = 0
  let ticks = 0
  for (const pid of pids) {
    const status = await readFile(`/proc/${pid}/status`, 'utf8').catch(() => '')
    rssKb += Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0)
    const stat = (await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '')).split(') ')[1]?.split(' ') ?? []
    ticks += Number(stat[11] ?? 0) + Number(stat[12] ?? 0)
  }
  return { rssKb, cpuS: ticks / 100, n: pids.length }
}

function driverName(d: AgentDriver): string {
  return d.kind === 'daemon' ? 'fabtunnel run (one process per node)' : 'in-process VICI driver (same desired state)'
}

/** Every charon forgets everything loaded over VICI when restarted: a clean slate between runs. */
async function resetCharons(topo: Topology): Promise<void> {
  await Promise.all(topo.activeGateways().map((g) => g.charon.restart()))
  await waitFor('every SA gone', 10_000, async () => !(await allUpVia(topo, (n) => n)))
}

async function bench(label: string, spec: TopologySpec, drivers: AgentDriver[]): Promise<void> {
  const tb = performance.now()
  const topo = await Topology.create({ spec })
  try {
    const gws = topo.activeGateways()
    console.log(`\n== ${label}: ${gws.length} gateways, ${topo.pods.size} pods (built in ${((performance.now() - tb) / 1000).toFixed(1)} s)`)
    const f = (r: Run): string => `tunnels up ${r.upMs.toFixed(0).padStart(6)} ms, matrix +${r.matrixMs.toFixed(0).padStart(5)} ms, total ${r.totalMs.toFixed(0).padStart(6)} ms`
    const results: Array<[AgentDriver, Run, string]> = []
    for (const driver of drivers) {
      const cpu0 = process.cpuUsage()
      const run = await ours(topo, driver)
      const cpu = process.cpuUsage(cpu0)
      const usage = await agentUsage(topo, driver)
      const note = usage
        ? `${usage.n} agent processes, RSS ${(usage.rssKb / 1024).toFixed(1)} MB total (${(usage.rssKb / 1024 / usage.n).toFixed(1)} MB each), CPU ${usage.cpuS.toFixed(2)} s total`
        : `in the bench process, CPU ${((cpu.user + cpu.system) / 1e6).toFixed(2)} s (matrix included)`
      results.push([driver, run, note])
      await driver.stopAll()
      await resetCharons(topo)
    }
    const b = await baseline(topo)
    for (const [driver, run, note] of results) {
      console.log(`  ${driverName(driver).padEnd(44)} ${f(run)}`)
      console.log(`  ${''.padEnd(44)} ${note}`)
    }
    console.log(`  ${'baseline: sequential swanctl'.padEnd(44)} ${f(b)}`)
    for (const [driver, run] of results) {
      console.log(`  ratio baseline / ${driverName(driver)}: tunnels ${(b.upMs / run.upMs).toFixed(2)}x, total ${(b.totalMs / run.totalMs).toFixed(2)}x`)
    }
  } finally {
    for (const d of drivers) await d.stopAll()
    await topo.destroy()
  }
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { edges: { type: 'string', default: '20' }, only: { type: 'string' } } })
  if (!isRoot) throw new Error('needs root (network namespaces, charon)')
  teardownOnSignals()
  const edges = Number(values.edges)
  if (!Number.isInteger(edges) || edges < 1 || edges > 200) throw new Error('--edges must be 1..200')
  const main = await defaultDriver()
  // The in-process driver separates what the protocol work costs from what starting one process per node costs.
  const drivers: AgentDriver[] = [main, new ViciDriver()]
  console.log('cold start: from "namespaces and charons exist, nothing loaded" to "every tunnel up and the full matrix passes"')
  if (values.only !== 'star') await bench('default topology (beijing + shanghai)', defaultTopology(), drivers)
  if (values.only !== 'default') await bench(`connector + ${edges} edges`, starTopology(edges), drivers)
}

main().then(
  () => process.exit(0),
  (e: unknown) => {
    console.error(e instanceof Error ? e.stack ?? e.message : e)
    process.exit(1)
  },
)
