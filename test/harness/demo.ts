// `scripts/demo`: brings up the default two-cluster topology in network namespaces (real charon per gateway,
// fabtunnel per gateway), then prints what the product does: a tunnel table per node and the connectivity matrix
// with latencies, plus the underlay capture verdict (a pass needs ESP seen and no plaintext: a capture that saw
// nothing is a failure). Refreshes until Ctrl-C, or exits after one round with
// --once. Everything is torn down on exit, Ctrl-C or failure.
import { parseArgs } from 'node:util'
import { defaultDriver, startAgents, type AgentDriver, type DaemonDriver } from './agents.js'
import { runHaDemo } from './demo-ha.js'
import { runMediatedDemo } from './demo-mediated.js'
import type { HaTopology } from './ha.js'
import { captureUnderlay, captureVerdict, cellLabel, defaultChecks, describeCapture, pathsWithoutTunnels, renderMatrix, runMatrix, waitMatrix, type MatrixResult } from './matrix.js'
import { destroyAll, isRoot } from './netns.js'
import { Topology } from './topology.js'

const USAGE = `usage: scripts/demo [--once] [--interval SECONDS] [--ha] [--mediated [--offline SECONDS]]

Builds two FabEdge-style clusters out of network namespaces on this machine (beijing: connector, cloud node,
two edge nodes; shanghai: connector; the connectors joined by a community), runs one strongSwan charon and one
fabtunnel agent per gateway, and shows the tunnels and the pod-to-pod connectivity they carry.
  --once             print one round and tear down
  --interval SECONDS refresh period (default 5)
  --ha               the connector-HA shape instead: two connector replicas with real keepalived moving a public
                     and an internal VIP, a cloud node, two edges; fails the active replica over (node crash, then
                     planned switchover) and prints each phase (docs/ha.md)
  --mediated         edges behind NAT with the connector as IKEv2 mediation server: runs every order of issue 17
                     (edges before the connector, an edge offline, connector restart, NAT flush, an edge cut off
                     without a goodbye, a stale request)
                     and prints the recovery times and where the ESP flows (docs/mediation.md)
  --offline SECONDS  how long the edge stays offline in --mediated (default 60)`

function header(topo: Topology): string {
  const lines = [
    'fabtunnel demo: IPsec tunnels between edge nodes and cloud clusters, FabEdge-compatible',
    '',
    'topology (every box is a network namespace on this machine; gateways run charon + fabtunnel):',
  ]
  for (const c of topo.plan.clusters) {
    lines.push(`  cluster ${c.name}   service CIDR ${c.serviceCidr}`)
    for (const n of c.nodes) {
      const where = n.publicIp ? `underlay ${n.publicIp}` : `behind the connector (LAN ${n.nodeIp})`
      lines.push(`    ${n.fullName.padEnd(20)} ${n.role.padEnd(9)} pods ${n.podCidr.padEnd(14)} ${where}`)
    }
  }
  const comm = [...topo.plan.communityOf.entries()].map(([a, b]) => `${a} <-> ${[...b].join(', ')}`)
  if (comm.length) lines.push(`  community: ${comm.slice(0, 1).join('; ')} (connector-to-connector tunnel)`)
  lines.push(`  edge-to-edge: ${topo.plan.edgeMesh === 'mediated' ? 'direct tunnels brokered by the connector (IKE mediation)' : topo.plan.edgeMesh}`)
  lines.push('  agent: fabtunnel run (dist/cli.js), one process per gateway')
  return lines.join('\n')
}

async function round(topo: Topology, driver: AgentDriver): Promise<{ text: string; ok: boolean }> {
  const out: string[] = []
  out.push('tunnels (per gateway, as `fabtunnel status` prints them):')
  for (const g of topo.activeGateways()) out.push(await driver.statusText(g))
  let matrix: MatrixResult | undefined
  const capture = await captureUnderlay(topo, async () => {
    matrix = await runMatrix(topo)
  })
  const m = matrix!
  out.push('', `connectivity: ${m.cells.filter((c) => c.ok).length}/${m.cells.length} paths ok (real ping / TCP connect+echo between namespaces)`)
  out.push('  e2c/c2e edge pod <-> cloud pod   p2n/n2p pod <-> node   e2e edge <-> edge   mc-* across clusters (pod, ClusterIP)')
  out.push(renderMatrix(m))
  out.push('', `underlay capture: ${describeCapture(capture)}`)
  for (const l of capture.plaintext.slice(0, 5)) out.push(`  LEAKED: ${l}`)
  return { text: out.join('\n'), ok: m.ok && captureVerdict(capture).ok }
}

async function main(): Promise<number> {
  const { values } = parseArgs({ options: { once: { type: 'boolean' }, interval: { type: 'string' }, ha: { type: 'boolean' }, mediated: { type: 'boolean' }, offline: { type: 'string' }, help: { type: 'boolean', short: 'h' } } })
  if (values.help) {
    console.log(USAGE)
    return 0
  }
  const interval = Number(values.interval ?? '5')
  if (!(interval > 0)) {
    console.error(USAGE)
    return 2
  }
  if (!isRoot) {
    console.error('scripts/demo needs root: it creates network namespaces and runs strongSwan in them')
    return 1
  }
  if (values.ha) return haDemo(Boolean(values.once), interval)
  if (values.mediated) {
    const offlineS = Number(values.offline ?? '60')
    if (!(offlineS >= 0)) {
      console.error(USAGE)
      return 2
    }
    return mediatedDemo(Boolean(values.once), offlineS)
  }
  const driver = await defaultDriver()
  const t0 = performance.now()
  let topo: Topology | null = null
  const { teardown, stopping: isStopping } = teardownOnSignals(() => {
    const t = topo
    return t ? driver.stopAll().finally(() => t.destroy()) : destroyAll()
  })
  console.log('building namespaces, certificates and charons ...')
  topo = await Topology.create()
  try {
    const built = performance.now() - t0
    const head = header(topo)
    console.log(head)
    // The matrix proves the tunnels only if none of its paths works without them.
    const c0 = performance.now()
    const open = await pathsWithoutTunnels(topo)
    const control = performance.now() - c0
    if (open.length) throw new Error(`paths that work before any agent runs (they prove nothing):\n  ${open.map(cellLabel).join('\n  ')}`)
    console.log(`\nbefore the agents: 0/${defaultChecks(topo).length} paths work (every one needs a tunnel)`)
    const agentsMs = await startAgents(topo, driver, 60_000)
    const { ms } = await waitMatrix(topo, 30_000)
    const upLine = `up in ${((performance.now() - t0) / 1000).toFixed(1)} s: namespaces + charons ${(built / 1000).toFixed(1)} s, no-tunnel control ${(control / 1000).toFixed(1)} s, tunnels ${(agentsMs / 1000).toFixed(1)} s, first full matrix ${(ms / 1000).toFixed(1)} s`
    console.log(`\n${upLine}\n`)
    for (;;) {
      const { text, ok } = await round(topo, driver)
      if (isStopping()) break
      if (!values.once) console.log(`\x1b[2J\x1b[H${head}\n\n${upLine}; ${new Date().toISOString()}, refreshing every ${interval} s (Ctrl-C tears everything down)\n`)
      console.log(text)
      // --once is also a smoke test: a failed path, a plaintext leak or a capture without ESP is a failure.
      if (values.once) return ok ? 0 : 1
      await new Promise((r) => setTimeout(r, interval * 1000))
      if (isStopping()) break
    }
    return 0
  } finally {
    await teardown()
  }
}

/**
 * One teardown, whoever asks first (SIGINT/SIGTERM or the end of the demo); process.exit only after it finished.
 * `destroy` runs once; before the topology exists it removes whatever namespaces netns.ts's registry holds.
 */
function teardownOnSignals(destroy: () => Promise<void>): { teardown: () => Promise<void>; stopping: () => boolean } {
  let stopping = false
  let done: Promise<void> | null = null
  const teardown = (): Promise<void> => (done ??= destroy())
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.once(sig, () => {
      stopping = true
      console.log('\ntearing down ...')
      void teardown().finally(() => process.exit(130))
    })
  }
  return { teardown, stopping: () => stopping }
}

async function haDemo(once: boolean, interval: number): Promise<number> {
  let parts: { topo: HaTopology; driver: DaemonDriver } | null = null
  const { teardown, stopping } = teardownOnSignals(() => {
    const p = parts
    return p ? p.driver.stopAll().finally(() => p.topo.destroy()) : destroyAll()
  })
  try {
    return await runHaDemo({ once, interval, isStopping: stopping, onTopology: (topo, driver) => (parts = { topo, driver }) })
  } finally {
    await teardown()
  }
}

async function mediatedDemo(once: boolean, offlineS: number): Promise<number> {
  let parts: { topo: Topology; driver: DaemonDriver } | null = null
  const { teardown, stopping } = teardownOnSignals(() => {
    const p = parts
    return p ? p.driver.stopAll().finally(() => p.topo.destroy()) : destroyAll()
  })
  try {
    return await runMediatedDemo({ once, offlineS, isStopping: stopping, onTopology: (topo, driver) => (parts = { topo, driver }) })
  } finally {
    await teardown()
  }
}

main().then(
  (code) => process.exit(code),
  (e: unknown) => {
    console.error(e instanceof Error ? e.stack ?? e.message : e)
    process.exit(1)
  },
)
