// Connector failover on the HA harness (test/harness/ha.ts: two connector replicas with real keepalived, charon and
// `fabtunnel run`, a cloud node, edges): runs a node crash of the active replica (agent, charon and keepalived
// SIGKILLed, links down; the replica is revived as standby afterwards) and a planned switchover (SIGTERM to the active
// agent, started again as standby afterwards) N times each, alternating which replica is active, and prints per run
// and as medians: VIP moved, edges noticed (their ike-updown down), tunnels up (child-updown up on every edge),
// first successful ping from every edge, and the loss window; next to FabEdge's figure computed from its defaults
// (there is no published FabEdge measurement; docs/ha.md derives it). dist/ must be built.
//
//   node --import tsx scripts/bench/failover.ts [--runs N] [--advert-int S] [--check-interval S] [--fall N] [--dpd-delay D]
import { parseArgs } from 'node:util'
import { defaultDriver, waitFor } from '../../test/harness/agents.js'
import { failover, FABEDGE_FIGURES, formatResult, Pinger, ReplicaSampler, type FailoverResult, type FaultKind } from '../../test/harness/failover.js'
import { HaTopology } from '../../test/harness/ha.js'
import { ping } from '../../test/harness/matrix.js'
import { isRoot, teardownOnSignals } from '../../test/harness/netns.js'

const { values } = parseArgs({
  options: {
    runs: { type: 'string', default: '3' },
    'advert-int': { type: 'string', default: '0.5' },
    'check-interval': { type: 'string', default: '0.5' },
    fall: { type: 'string', default: '2' },
    'dpd-delay': { type: 'string', default: '3s' },
  },
})

function median(xs: Array<number | null>): string {
  const v = xs.filter((x): x is number => x !== null).sort((a, b) => a - b)
  if (v.length === 0) return 'n/a'
  const m = v.length % 2 ? v[(v.length - 1) / 2]! : (v[v.length / 2 - 1]! + v[v.length / 2]!) / 2
  return `${(m / 1000).toFixed(2)} s`
}

async function main(): Promise<number> {
  if (!isRoot) {
    console.error('scripts/bench/failover.ts needs root (network namespaces)')
    return 1
  }
  teardownOnSignals()
  const runs = Number(values.runs)
  const dpd = String(values['dpd-delay'])
  if (!/^\d+s$/.test(dpd)) throw new Error('--dpd-delay must be whole seconds, e.g. 3s')
  const topo = await HaTopology.create({
    advertInt: Number(values['advert-int']),
    check: { interval: Number(values['check-interval']), fall: Number(values.fall), rise: 1 },
  })
  const driver = await defaultDriver({ extraArgs: (g) => [...topo.agentArgs(g), '--dpd-delay', dpd] })
  const samplers: ReplicaSampler[] = []
  const pingers: Pinger[] = []
  try {
    for (const g of topo.gateways()) await driver.start(g)
    await waitFor('one VIP holder', 60_000, async () => (await topo.vipHolders()).length === 1)
    for (const e of topo.edges) await waitFor(`${e.name} -> cloud pod`, 60_000, () => ping(topo.podOf(e.name).ns, topo.cloudPod.ip, 1_000), 200)
    for (const r of topo.replicas) samplers.push(new ReplicaSampler(r, topo.publicVip))
    for (const e of topo.edges) pingers.push(new Pinger(topo.podOf(e.name).ns, topo.cloudPod.ip))
    console.log(`HA harness up: 2 connector replicas, ${topo.edges.length} edges, keepalived advert_int ${values['advert-int']} s, ` +
      `check every ${values['check-interval']} s (fall ${values.fall}), edge --dpd-delay ${dpd}`)
    const results: FailoverResult[] = []
    for (let i = 0; i < runs; i++) {
      for (const kind of ['crash', 'switchover'] as FaultKind[]) {
        const r = await failover(topo, driver, kind, pingers, samplers, 90_000)
        results.push(r)
        console.log(`run ${i + 1}: ${formatResult(r)}`)
        const old = topo.replica(r.from)
        if (kind === 'crash') await topo.revive(old, driver)
        else await driver.start(old.gateway)
        await driver.waitReady(old.gateway, 60_000)
        // Let the revived standby settle (keepalived BACKUP, agent ready) before the next fault.
        await new Promise((res) => setTimeout(res, 3_000))
      }
    }
    console.log('\nmedians over', runs, 'run(s) each:')
    for (const kind of ['crash', 'switchover'] as FaultKind[]) {
      const rs = results.filter((r) => r.kind === kind)
      console.log(`  ${kind.padEnd(10)} VIP moved ${median(rs.map((r) => r.vipMoved))}, edges noticed ${median(rs.map((r) => r.edgesNoticed))}, ` +
        `tunnels up ${median(rs.map((r) => r.tunnelsUp))}, first ping ${median(rs.map((r) => r.firstPing))}, loss window ${median(rs.map((r) => r.lossWindow))}` +
        `  (${rs.filter((r) => r.recovered).length}/${rs.length} recovered)`)
      console.log(`  ${''.padEnd(10)} FabEdge (computed from its defaults): ${FABEDGE_FIGURES[kind]}`)
    }
    return results.every((r) => r.recovered) ? 0 : 1
  } finally {
    for (const s of [...samplers, ...pingers]) s.stop()
    await driver.stopAll()
    await topo.destroy()
  }
}

main().then(
  (code) => process.exit(code),
  (e: unknown) => {
    console.error(e instanceof Error ? e.stack ?? e.message : e)
    process.exit(1)
  },
)
