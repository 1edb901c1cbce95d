// `scripts/demo --mediated`: two edges each behind its own NAT (a namespace doing MASQUERADE), the connector as
// strongSwan's IKEv2 mediation server, real charon and fabtunnel everywhere (charon supervised: started again when
// the agent's mediation recovery stops it). Runs the orders of issue 17 and prints the time from each disruption
// to the first pod-to-pod ping both ways, the path each edge reports, and where the ESP flows (NAT boundary vs
// connector). The edge stays offline for --offline seconds (default 60, as in the e2e suite).
import { defaultDriver, fabtunnel, waitFor, type DaemonDriver } from './agents.js'
import { starTopology } from './addressing.js'
import { captureUdp, espBetween, espLines } from './capture.js'
import { ping } from './matrix.js'
import { Topology } from './topology.js'

const E1 = 'beijing.edge1'
const E2 = 'beijing.edge2'
const C = 'beijing.connector'

export interface MediatedDemoOptions {
  once: boolean
  offlineS: number
  isStopping: () => boolean
  onTopology: (topo: Topology, driver: DaemonDriver) => void
}

export async function runMediatedDemo(o: MediatedDemoOptions): Promise<number> {
  const takeover = new Map<string, string>()
  // No datapath probes: their ESP between each edge and the connector would be counted as ESP at the connector.
  const driver = await defaultDriver({
    extraArgs: (g) => g.plan.role !== 'edge' ? ['--probe-interval', '0'] : ['--probe-interval', '0', '--charon-pidfile', g.charon.pidPath, '--mediation-takeover', takeover.get(g.name) ?? '8s'],
  })
  const spec = starTopology(2)
  spec.edgeMesh = 'mediated'
  spec.edgeNat = 'each'
  console.log('building namespaces, NATs, certificates and charons ...')
  const topo = await Topology.create({ spec, charonRespawn: true })
  o.onTopology(topo, driver)
  const [c, e1, e2] = [topo.gateway(C), topo.gateway(E1), topo.gateway(E2)]
  const a = topo.podOf(E1)
  const b = topo.podOf(E2)
  const pods = async (): Promise<boolean> => (await ping(a.ns, b.ip, 700)) && (await ping(b.ns, a.ip, 700))
  const timings: Array<[string, number]> = []
  let ok = true
  const step = async (what: string, t0: number): Promise<void> => {
    try {
      await waitFor(what, 90_000, pods, 50)
      const ms = performance.now() - t0
      timings.push([what, ms])
      console.log(`  ${what}: edge-to-edge ping after ${(ms / 1000).toFixed(1)} s`)
    } catch (e) {
      ok = false
      console.log(`  ${what}: FAILED: ${(e as Error).message}`)
    }
  }
  console.log(`\nfabtunnel demo: edge-to-edge behind NAT through IKEv2 mediation (issue 17)`)
  for (const g of [c, e1, e2]) {
    const nat = g.plan.nat ? `behind ${g.plan.nat.name} (inside ${g.plan.ikeIp}, public ${g.plan.publicIp})` : `underlay ${g.plan.publicIp}`
    console.log(`  ${g.name.padEnd(18)} ${g.plan.role.padEnd(9)} pods ${g.plan.podCidr.padEnd(14)} ${nat}`)
  }
  console.log('\norders:')
  await driver.start(e1)
  await driver.start(e2)
  await new Promise((r) => setTimeout(r, 3_000))
  let t0 = performance.now()
  await driver.start(c)
  await step('edges up first, then the connector', t0)
  const sa = (await e1.charon.listSas()).find((s) => s.name === E2 && s.state === 'ESTABLISHED')
  console.log(`  edge1's tunnel to edge2: ${sa?.localHost} -> ${sa?.remoteHost} (edge2's NAT), not through ${c.plan.publicIp}`)
  const nat1 = topo.natOf(E1)
  const burst = async (): Promise<void> => { for (let i = 0; i < 5; i++) await ping(a.ns, b.ip, 2_000) }
  const boundary = await captureUdp(nat1.ns, burst, nat1.outIf)
  const atConnector = await captureUdp(c.ns, burst)
  const between = espBetween(boundary.lines, nat1.plan.publicIp, topo.natOf(E2).plan.publicIp).length
  console.log(`  5 pings edge1 pod -> edge2 pod: ${between} ESP packets on edge1's NAT boundary between the NATs, ${espLines(atConnector.lines).length} ESP packets at the connector`)
  if (between === 0) ok = false

  await driver.kill(e2)
  await e2.charon.stop()
  console.log(`  edge2 offline for ${o.offlineS} s ...`)
  await new Promise((r) => setTimeout(r, o.offlineS * 1000))
  t0 = performance.now()
  await e2.charon.restart()
  await driver.start(e2)
  await step(`edge2 offline ${o.offlineS} s, then back`, t0)

  t0 = performance.now()
  await c.charon.restart()
  await step("connector's charon restarted", t0)

  t0 = performance.now()
  await topo.flushNat(E1)
  await step("edge1's NAT conntrack flushed", t0)

  // An edge that vanishes without a goodbye (power or network loss): its NAT drops everything, so no DELETE
  // reaches the connector or edge1; the connector's DPD drops its registration at the mediation server.
  const nat2 = topo.natOf(E2).ns
  await nat2.run(['iptables', '-I', 'FORWARD', '1', '-j', 'DROP'])
  await driver.kill(e2)
  await e2.charon.stop()
  await nat2.run(['iptables', '-D', 'FORWARD', '1'])
  console.log('  edge2 cut off (no goodbye) for 15 s ...')
  await new Promise((r) => setTimeout(r, 15_000))
  t0 = performance.now()
  await e2.charon.restart()
  await driver.start(e2)
  await step('edge2 cut off 15 s without a goodbye, then back', t0)

  takeover.set(E2, '0')
  await driver.kill(e2)
  await e2.charon.stop()
  await waitFor('edge1 to ask the mediator for edge2', 30_000, async () => (await e1.charon.listSas()).some((s) => s.name === E2 && s.state !== 'ESTABLISHED'))
  await c.charon.restart()
  const respawns = e1.charon.respawns
  t0 = performance.now()
  await e2.charon.restart()
  await driver.start(e2)
  await step('stale mediation request on edge1 (connector restarted while edge2 was away; edge2 does not take over)', t0)
  console.log(`  edge1's agent restarted its charon ${e1.charon.respawns - respawns} time(s) to clear it`)
  takeover.delete(E2)

  for (;;) {
    console.log('\nstatus:')
    for (const g of [e1, e2]) console.log((await fabtunnel(g, ['status'])).stdout)
    console.log('times:', timings.map(([s, ms]) => `${s} ${(ms / 1000).toFixed(1)} s`).join('; '))
    if (o.once || o.isStopping()) return ok ? 0 : 1
    await new Promise((r) => setTimeout(r, 5_000))
    if (o.isStopping()) return ok ? 0 : 1
  }
}
