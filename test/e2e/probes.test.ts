// End to end: datapath probes over real charon (libipsec) and the real agent in a star of one connector and two
// edges. edge1 runs with repair on (the default), edge2 with --probe-repair off, as the control that the fault
// used for the repair does not heal by itself. Times are measured and printed, never asserted (docs/probes.md
// has the figures); every wait is bounded.
//   1. healthy: every peer's datapath is up on both sides, with plausible RTTs in /status, /metrics and the table;
//   2. edge1's charon frozen (SIGSTOP): the connector reports edge1's datapath down while its IKE_SA is still
//      ESTABLISHED in charon, edge2 stays up; the connector (responder) only reports;
//   3. charon's tunnel routes gone on both edges (the libipsec datapath's "policy gone from the kernel"): IKE stays
//      up, the datapath is down; edge1's repair re-establishes its CHILD_SAs under the same IKE_SA and traffic is
//      back; edge2 (repair off) stays down.
import t from 'tap'
import { defaultDriver, fabtunnel, startAgents, waitFor, type AgentHandle, type DaemonDriver } from '../harness/agents.js'
import { starTopology } from '../harness/addressing.js'
import { ping } from '../harness/matrix.js'
import { needsRoot } from '../harness/netns.js'
import { Topology, type Gateway } from '../harness/topology.js'
import { Vici } from '../../src/vici/index.js'

const C = 'beijing.connector'
const E1 = 'beijing.edge1'
const E2 = 'beijing.edge2'
const WAIT_MS = 30_000

const driver: DaemonDriver | null = needsRoot ? null : await defaultDriver({ extraArgs: (g) => (g.name === E2 ? ['--probe-repair', 'off'] : []) })

interface PeerProbe {
  name: string
  datapath: string
  probe: { src: string; dst: string } | null
  rtt: { last: number; min: number; avg: number; max: number; stddev: number; samples: number } | null
  consecutiveLosses: number
  repairs: number
  repairWaiting: string | null
}

async function probeOf(a: AgentHandle, peer: string): Promise<PeerProbe | undefined> {
  const s = await a.status()
  return (s.probes?.peers as PeerProbe[] | undefined)?.find((p) => p.name === peer)
}

async function metric(a: AgentHandle, name: string, peer?: string): Promise<number | null> {
  const r = await a.get('/metrics')
  const prefix = peer === undefined ? `${name} ` : `${name}{peer="${peer}"} `
  const line = r.body.split('\n').find((l) => l.startsWith(prefix))
  return line === undefined ? null : Number(line.slice(prefix.length))
}

async function ikeStates(g: Gateway, conn: string): Promise<Array<{ uniqueid: string; state: string }>> {
  const v = new Vici({ uri: g.charon.uri, reconnect: false, timeoutMs: 5_000 })
  try {
    await v.connect()
    return (await v.listSas()).filter((s) => s.name === conn).map((s) => ({ uniqueid: s.uniqueid, state: s.state }))
  } finally {
    await v.close()
  }
}

t.test('datapath probes: report, and repair on the initiator', { skip: needsRoot }, async (t) => {
  const topo = await Topology.create({ spec: starTopology(2) })
  t.teardown(async () => {
    await driver!.stopAll()
    await topo.destroy()
  })
  await startAgents(topo, driver!)
  const cg = topo.gateway(C)
  const g1 = topo.gateway(E1)
  const g2 = topo.gateway(E2)
  const c = driver!.agent(cg)
  const e1 = driver!.agent(g1)
  const e2 = driver!.agent(g2)

  await t.test('healthy: every datapath up, RTTs plausible', async (t) => {
    for (const [a, peer] of [[c, E1], [c, E2], [e1, C], [e2, C]] as const) {
      await a.waitFor(`datapath to ${peer} up`, async () => (await probeOf(a, peer))?.datapath === 'up', WAIT_MS, 200)
    }
    const p1 = (await probeOf(c, E1))!
    t.same(p1.probe, { family: 4, src: '10.81.1.1', dst: '10.81.2.1' }, 'connector probes edge1 from its pod gateway to edge1\'s pod gateway')
    t.ok(p1.rtt && p1.rtt.samples > 0 && p1.rtt.last > 0 && p1.rtt.max < 1, `RTT to edge1 measured: ${JSON.stringify(p1.rtt)}`)
    const toC = (await probeOf(e1, C))!
    t.equal(toC.probe?.dst, '10.81.1.1', 'edge1 probes the connector\'s own pod gateway (its most specific pod subnet)')
    for (const peer of [E1, E2]) {
      const rtt = await metric(c, 'fabtunnel_peer_rtt_seconds', peer)
      t.ok(rtt !== null && rtt > 0 && rtt < 1, `fabtunnel_peer_rtt_seconds{peer="${peer}"} = ${rtt}`)
      t.equal(await metric(c, 'fabtunnel_peer_datapath_up', peer), 1)
    }
    t.ok(((await metric(c, 'fabtunnel_peer_rtt_histogram_seconds_count')) ?? 0) > 0, 'RTT histogram has samples')
    const table = await fabtunnel(cg, ['status', '--listen', cg.listen])
    t.equal(table.code, 0, table.stderr)
    t.match(table.stdout, /DATAPATH\s+RTT/, 'the table has DATAPATH and RTT columns')
    t.match(table.stdout, new RegExp(`${E1.replace('.', '\\.')}.*\\bup\\b.*\\d+(\\.\\d+)?ms`), 'edge1 row: up with an RTT')
  })

  await t.test('edge1 charon frozen: the connector reports edge1 down while IKE says ESTABLISHED; edge2 stays up', async (t) => {
    const pid = g1.charon.pid!
    const t0 = performance.now()
    process.kill(pid, 'SIGSTOP')
    t.teardown(() => { try { process.kill(pid, 'SIGCONT') } catch { /* gone */ } })
    await c.waitFor('edge1 datapath down', async () => (await probeOf(c, E1))?.datapath === 'down', WAIT_MS, 100)
    const ms = performance.now() - t0
    t.comment(`connector reported edge1 down ${(ms / 1000).toFixed(2)} s after SIGSTOP (probe every 1 s, down after 5 lost)`)
    const ike = await ikeStates(cg, E1)
    t.ok(ike.length > 0 && ike.every((s) => s.state === 'ESTABLISHED'), `connector's charon still says ${JSON.stringify(ike)}`)
    const p1 = (await probeOf(c, E1))!
    t.ok(p1.consecutiveLosses >= 5, `${p1.consecutiveLosses} probes lost in a row`)
    t.match(p1.repairWaiting, /responder/, 'the connector (responder) only reports')
    t.equal((await probeOf(c, E2))?.datapath, 'up', 'edge2 stays up')
    t.equal(await metric(c, 'fabtunnel_peer_datapath_up', E1), 0)
    t.equal(await metric(c, 'fabtunnel_peer_datapath_up', E2), 1)
    process.kill(pid, 'SIGCONT')
    await c.waitFor('edge1 datapath up again', async () => (await probeOf(c, E1))?.datapath === 'up', WAIT_MS, 200)
    await e1.waitFor('connector datapath up again', async () => (await probeOf(e1, C))?.datapath === 'up', WAIT_MS, 200)
  })

  await t.test('tunnel routes gone: edge1 re-establishes its CHILD_SAs and traffic is back; edge2 (repair off) stays down', async (t) => {
    const pod1 = topo.podOf(E1)
    const pod2 = topo.podOf(E2)
    const target = topo.podOf(C).ip
    t.ok(await ping(pod1.ns, target) && await ping(pod2.ns, target), 'both edges reach the connector pod before the fault')
    const ikeBefore = await ikeStates(g1, C)
    const repairsBefore = (await metric(e1, 'fabtunnel_datapath_repairs_total', C)) ?? 0
    const t0 = performance.now()
    await g1.ns.run(['ip', 'route', 'flush', 'table', '220'])
    await g2.ns.run(['ip', 'route', 'flush', 'table', '220'])
    await e2.waitFor('edge2 sees the connector down', async () => (await probeOf(e2, C))?.datapath === 'down', WAIT_MS, 200)
    t.ok((await ikeStates(g2, C)).some((s) => s.state === 'ESTABLISHED'), 'edge2: IKE still ESTABLISHED while the datapath is down')
    await e1.waitFor('edge1 repaired', async () => ((await metric(e1, 'fabtunnel_datapath_repairs_total', C)) ?? 0) > repairsBefore, WAIT_MS, 200)
    await waitFor('edge1 pod reaches the connector pod', WAIT_MS, () => ping(pod1.ns, target, 1_000), 0)
    t.comment(`edge1: traffic back ${((performance.now() - t0) / 1000).toFixed(2)} s after the routes went`)
    const log = await e1.logTail(400)
    const evidence = log.split('\n').find((l) => l.includes('"op":"probe-repair"') && l.includes('"terminated"'))
    t.ok(evidence, 'the repair is logged')
    const rec = JSON.parse(evidence!)
    t.equal(rec.scope, 'children')
    t.ok(rec.consecutiveLosses >= 5 && rec.ike === 'up' && rec.dst === target.replace(/\.\d+$/, '.1'), `with its evidence: ${evidence}`)
    const ikeAfter = await ikeStates(g1, C)
    t.same(ikeAfter.map((s) => s.uniqueid), ikeBefore.map((s) => s.uniqueid), 'the same IKE_SA: only the CHILD_SAs were re-established')
    await e1.waitFor('edge1 datapath up', async () => (await probeOf(e1, C))?.datapath === 'up', WAIT_MS, 200)
    // The control: the same fault, without repair, is still there after edge1 recovered.
    t.notOk(await ping(pod2.ns, target, 1_000), 'edge2 (repair off) still cannot reach the connector pod')
    const e2p = (await probeOf(e2, C))!
    t.equal(e2p.datapath, 'down')
    t.equal(e2p.repairs, 0)
    t.match(e2p.repairWaiting, /repair disabled/)
    t.equal((await g2.ns.run(['ip', 'route', 'show', 'table', '220'])).trim(), '', 'edge2: charon did not put its routes back by itself')
  })
})
