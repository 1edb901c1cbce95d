// `scripts/demo --ha`: the connector-HA shape (ha.ts: two replicas of beijing.connector with real keepalived, a
// cloud node behind the internal VIP, two edges dialing the public VIP). Shows who holds the VIPs and leads, the
// edges' reach to the cloud pod, then fails the active replica over twice (a node crash, then a planned switchover)
// and prints each phase. --once: one round, exit 1 when a failover did not recover; otherwise refreshes the status
// until Ctrl-C. Everything is torn down on exit, Ctrl-C or failure.
import { defaultDriver, waitFor, type DaemonDriver } from './agents.js'
import { failover, FABEDGE_FIGURES, formatResult, Pinger, ReplicaSampler } from './failover.js'
import { HaTopology } from './ha.js'
import { ping } from './matrix.js'

async function statusText(topo: HaTopology): Promise<string> {
  const holders = await topo.vipHolders()
  const lines = ['replicas of beijing.connector:']
  for (const r of topo.replicas) {
    const leader = await r.gateway.ns.capture(['curl', '-s', '-m', '1', `http://${r.gateway.listen}/is-leader`], { timeoutMs: 3_000 })
    const routes = await topo.tunnelRoutes(r)
    lines.push(`  ${r.name.padEnd(22)} underlay ${r.underlayIp.padEnd(12)} VIPs ${holders.includes(r.name) ? 'held    ' : '-       '} /is-leader ${(leader.stdout.trim() || 'down').padEnd(6)} table-220 routes ${routes.length}`)
  }
  lines.push('edges -> cloud pod:')
  for (const e of topo.edges) lines.push(`  ${e.name.padEnd(22)} ${(await ping(topo.podOf(e.name).ns, topo.cloudPod.ip, 1_000)) ? 'ok' : 'FAIL'}`)
  return lines.join('\n')
}

export async function runHaDemo(opts: { once: boolean; interval: number; isStopping: () => boolean; onTopology: (t: HaTopology, d: DaemonDriver) => void }): Promise<number> {
  console.log('building the HA shape: 2 connector replicas (charon + fabtunnel + keepalived each), a cloud node, 2 edges ...')
  const topo = await HaTopology.create()
  const election = await import('node:child_process').then(({ execFileSync }) =>
    execFileSync(process.execPath, [new URL('../../dist/cli.js', import.meta.url).pathname, 'run', '--help'], { encoding: 'utf8' }).includes('--leader-election'))
  const driver = await defaultDriver(election ? { extraArgs: (g) => topo.agentArgs(g) } : {})
  opts.onTopology(topo, driver)
  console.log(`public VIP ${topo.publicVip} (the edges' connector address), internal VIP ${topo.internalVip} (the cloud node's gateway); ` +
    `keepalived: unicast VRRPv3, advert_int ${topo.opts.advertInt} s, agent check every ${topo.opts.check.interval} s (fall ${topo.opts.check.fall})` +
    (election ? '; agents elect by the VIP (--leader-election vip)' : '; this build has no --leader-election: both agents lead'))
  for (const g of topo.gateways()) await driver.start(g)
  await waitFor('one VIP holder', 60_000, async () => (await topo.vipHolders()).length === 1)
  for (const e of topo.edges) await waitFor(`${e.name} -> cloud pod`, 60_000, () => ping(topo.podOf(e.name).ns, topo.cloudPod.ip, 1_000), 200)
  console.log(`\n${await statusText(topo)}\n`)
  const samplers = topo.replicas.map((r) => new ReplicaSampler(r, topo.publicVip))
  const pingers = topo.edges.map((e) => new Pinger(topo.podOf(e.name).ns, topo.cloudPod.ip))
  let ok = true
  try {
    for (const kind of ['crash', 'switchover'] as const) {
      if (opts.isStopping()) return 0
      console.log(kind === 'crash' ? 'node crash of the active replica (agent, charon, keepalived SIGKILLed, links down) ...' : 'planned switchover (SIGTERM to the active agent) ...')
      const r = await failover(topo, driver, kind, pingers, samplers, 60_000)
      ok &&= r.recovered
      console.log(`  ${formatResult(r)}\n  FabEdge, computed from its defaults: ${FABEDGE_FIGURES[kind]}`)
      const old = topo.replica(r.from)
      if (kind === 'crash') await topo.revive(old, driver)
      else await driver.start(old.gateway)
      await driver.waitReady(old.gateway, 60_000)
      console.log(`\n${await statusText(topo)}\n`)
    }
    if (opts.once) return ok ? 0 : 1
    while (!opts.isStopping()) {
      await new Promise((r) => setTimeout(r, opts.interval * 1000))
      if (opts.isStopping()) break
      console.log(`\x1b[2J\x1b[H${new Date().toISOString()} (refreshing every ${opts.interval} s, Ctrl-C tears everything down)\n${await statusText(topo)}`)
    }
    return 0
  } finally {
    for (const s of [...samplers, ...pingers]) s.stop()
  }
}
