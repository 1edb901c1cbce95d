// End to end: the default two-cluster topology (plus a spare edge for runtime add/remove) with real charon and the
// agent (`fabtunnel run`, dist/cli.js) in every gateway namespace; the FabEdge-style connectivity matrix, the
// underlay capture, then chaos, each step followed by the full matrix and its convergence time.
import t, { type Test } from 'tap'
import { defaultDriver, saSnapshot, startAgents, waitFor, type DaemonDriver, type SaIds } from '../harness/agents.js'
import { defaultTopology } from '../harness/addressing.js'
import { captureUnderlay, captureVerdict, cellLabel, defaultChecks, describeCapture, pathsWithoutTunnels, renderMatrix, runMatrix, waitMatrix } from '../harness/matrix.js'
import { needsRoot } from '../harness/netns.js'
import { Topology, type Gateway } from '../harness/topology.js'

const CONVERGE_MS = 30_000
const SPARE = 'beijing.edge3'

const RESYNC = '5s'
const driver: DaemonDriver | null = needsRoot ? null : await defaultDriver({ resyncInterval: RESYNC })
const convergence: Array<[string, number]> = []

/** A no-flap comparison of nothing proves nothing: the snapshot must hold established SAs. */
function assertHasSas(t: Test, snap: SaIds, who: string): void {
  t.ok(Object.keys(snap.ike).length > 0 && Object.keys(snap.child).length > 0, `${who}: the snapshot compared holds IKE and CHILD SAs`)
}

async function converge(step: string, t: Test, topo: Topology, t0: number): Promise<void> {
  const { result } = await waitMatrix(topo, CONVERGE_MS)
  // Converged no later than the start of the first matrix round that passed completely.
  const ms = performance.now() - t0 - result.durationMs
  convergence.push([step, ms])
  t.ok(result.ok, `${step}: converged within ${(ms / 1000).toFixed(2)} s of the fault (full matrix, ${result.cells.length} cells, passed)`)
}

/** kill -9 a gateway's charon, start it again, and time until the full matrix passes. */
async function charonChaos(t: Test, topo: Topology, name: string, boundMs: number): Promise<void> {
  const g = topo.gateway(name)
  process.kill(g.charon.pid!, 'SIGKILL')
  await waitFor('charon to die', 5_000, async () => !g.charon.running, 20)
  const t0 = performance.now()
  await g.charon.restart()
  const { result } = await waitMatrix(topo, boundMs)
  const ms = performance.now() - t0 - result.durationMs
  convergence.push([`charon kill -9 + restart (${name})`, ms])
  t.ok(result.ok, `charon kill -9 + restart (${name}): converged within ${(ms / 1000).toFixed(2)} s of the fault (full matrix, ${result.cells.length} cells)`)
}

async function conns(g: Gateway): Promise<string[]> {
  return g.charon.vici((v) => v.getConns())
}

t.test('two clusters over real charon', { skip: needsRoot }, async (t) => {
  const spec = defaultTopology()
  spec.clusters[0]!.nodes.push({ name: 'edge3', role: 'edge' })
  const topo = await Topology.create({ spec, inactiveEdges: [SPARE] })
  t.teardown(async () => {
    await driver!.stopAll()
    await topo.destroy()
  })

  // Negative control: every cell of the matrix below must need a tunnel, or its passing would prove nothing.
  const open = await pathsWithoutTunnels(topo)
  t.same(open.map(cellLabel), [], `before any agent runs, none of the ${defaultChecks(topo).length} matrix paths works`)

  const upMs = await startAgents(topo, driver!, CONVERGE_MS)
  t.comment(`every agent ready ${(upMs / 1000).toFixed(2)} s after start`)

  await t.test('connectivity matrix (e2c, c2e, p2n, n2p, e2e, multi-cluster pod and service)', async (t) => {
    const { result, ms } = await waitMatrix(topo, CONVERGE_MS)
    t.comment(`matrix passed ${(ms / 1000).toFixed(2)} s after agents were ready\n${renderMatrix(result)}`)
    const tags = new Set(result.cells.map((c) => c.check.tag))
    for (const tag of ['e2c', 'c2e', 'p2n', 'n2p', 'e2e', 'mc-pod', 'mc-svc']) t.ok(tags.has(tag), `matrix covers ${tag}`)
    t.ok(result.cells.some((c) => c.check.proto === 'tcp'), 'matrix has TCP exchanges')
    for (const c of result.cells) t.ok(c.ok, cellLabel(c))
  })

  await t.test('the underlay carries only IKE and UDP-encapsulated ESP', async (t) => {
    let ok = false
    const report = await captureUnderlay(topo, async () => {
      ok = (await runMatrix(topo)).ok
    })
    t.ok(ok, 'matrix passed during the capture')
    t.ok(report.esp > 0, `ESP-in-UDP packets seen (${report.esp} of ${report.packets})`)
    t.same(report.plaintext, [], 'no plaintext pod, node or service packet on the underlay')
    t.same(captureVerdict(report).problems, [], `complete capture: ${describeCapture(report)}`)
  })

  await t.test('a stopped (SIGTERM) agent leaves the data plane up; starting it again flaps nothing', async (t) => {
    const g = topo.gateway('beijing.edge2')
    const before = await saSnapshot(g)
    assertHasSas(t, before, g.name)
    await driver!.stop(g)
    const r = await runMatrix(topo)
    t.ok(r.ok, 'matrix passes with the edge2 agent stopped')
    t.same(await saSnapshot(g), before, 'no SA of edge2 changed')
    const t0 = performance.now()
    await driver!.start(g)
    await driver!.waitReady(g, CONVERGE_MS)
    t.same(await saSnapshot(g), before, 'restarted agent kept every SA (no flap)')
    await converge('agent SIGTERM + start', t, topo, t0)
  })

  await t.test('kill -9 an agent and restart it: no SA flap', async (t) => {
    const g = topo.gateway('beijing.edge1')
    const others = topo.activeGateways()
    const before = await Promise.all(others.map(saSnapshot))
    others.forEach((o, i) => assertHasSas(t, before[i]!, o.name))
    await driver!.kill(g)
    const t0 = performance.now()
    await driver!.start(g)
    await driver!.waitReady(g, CONVERGE_MS)
    const after = await Promise.all(others.map(saSnapshot))
    others.forEach((o, i) => t.same(after[i], before[i], `${o.name}: IKE and CHILD SA unique ids unchanged`))
    await converge('agent kill -9 + restart', t, topo, t0)
  })

  // An edge's charon: its agent must notice, reload credentials and connections and initiate again.
  await t.test('kill -9 a charon and restart it', (t) => charonChaos(t, topo, 'beijing.edge1', CONVERGE_MS))

  // The connector only responds to edges and cannot re-initiate: the edges notice through DPD (dpd_delay 3 s, then
  // the sidecar's retransmission settings, ~5.4 s), and their agents re-initiate at once when the IKE_SA goes down.
  await t.test('kill -9 the connector\'s charon and restart it', (t) => charonChaos(t, topo, 'beijing.connector', 60_000))

  await t.test('add an edge node to the configuration at runtime', async (t) => {
    const t0 = performance.now()
    await topo.addEdge(SPARE)
    await driver!.start(topo.gateway(SPARE))
    t.ok(defaultChecks(topo).some((c) => c.from.label.startsWith(SPARE)), 'matrix now includes the new edge')
    await converge('edge added', t, topo, t0)
  })

  await t.test('remove an edge node from the configuration', async (t) => {
    const connector = topo.gateway('beijing.connector')
    const t0 = performance.now()
    await topo.removeEdge(SPARE)
    await driver!.stop(topo.gateway(SPARE))
    await waitFor(`${SPARE} unloaded on the connector`, CONVERGE_MS, async () => !(await conns(connector)).includes(SPARE))
    t.pass(`connector unloaded ${SPARE} within ${((performance.now() - t0) / 1000).toFixed(2)} s of the config swap`)
    await converge('edge removed', t, topo, t0)
  })

  await t.test('a broken config changes nothing, is reported, and fixing it converges', async (t) => {
    const g = topo.gateway('beijing.connector')
    const d = driver!
    const before = await saSnapshot(g)
    assertHasSas(t, before, g.name)
    await topo.writeConfig(g.name, 'id: C=CN, O=fabedge.io, CN=beijing.connector\npeers:\n    - name: [unclosed\n')
    // The rejection itself, not any "error" text: /status always holds an `errors` key.
    const rejected = await d.agent(g).waitFor('/status to report the config rejected', async () => ((await d.agent(g).status()) as { config: { rejected: { message: string } | null } }).config.rejected, CONVERGE_MS)
    t.match(rejected.message, /YAML syntax/, '/status reports the YAML error')
    t.ok((await runMatrix(topo)).ok, 'matrix still passes with the broken file')
    t.same(await saSnapshot(g), before, 'no SA changed')
    const t0 = performance.now()
    await topo.restoreConfig(g.name)
    await d.waitReady(g, CONVERGE_MS)
    await converge('broken config fixed', t, topo, t0)
  })

  await t.test('state deleted by hand (rule 220, ipset member, iptables jumps) comes back', async (t) => {
    const ns = topo.gateway('beijing.edge1').ns
    const member = topo.plan.clusters[0]!.serviceCidr
    const has = {
      rule: async () => /lookup 220/.test(await ns.run(['ip', 'rule', 'show', 'priority', '220'])),
      member: async () => (await ns.capture(['ipset', 'test', 'FABEDGE-REMOTE-CIDR', member])).code === 0,
      natJump: async () => (await ns.capture(['iptables', '-t', 'nat', '-C', 'POSTROUTING', '-j', 'FABEDGE-POSTROUTING'])).code === 0,
      fwdJump: async () => (await ns.capture(['iptables', '-t', 'filter', '-C', 'FORWARD', '-j', 'FABEDGE-FORWARD'])).code === 0,
    }
    for (const [what, probe] of Object.entries(has)) t.ok(await probe(), `before: ${what} present`)
    const t0 = performance.now()
    await ns.run(['ip', 'rule', 'del', 'priority', '220'])
    await ns.run(['ipset', 'del', 'FABEDGE-REMOTE-CIDR', member])
    await ns.run(['iptables', '-t', 'nat', '-D', 'POSTROUTING', '-j', 'FABEDGE-POSTROUTING'])
    await ns.run(['iptables', '-t', 'filter', '-D', 'FORWARD', '-j', 'FABEDGE-FORWARD'])
    // The rule comes back on its netlink event; set members and jumps raise no event and wait for the resync.
    for (const [what, probe] of Object.entries(has)) {
      await waitFor(`${what} restored`, CONVERGE_MS, probe)
      t.pass(`${what} restored ${((performance.now() - t0) / 1000).toFixed(2)} s after the deletion (resync every ${RESYNC})`)
    }
    await converge('hand-deleted state restored', t, topo, t0)
  })

  t.teardown(() => {
    if (convergence.length) t.comment(`convergence (fault to the start of the first fully passing matrix):\n${convergence.map(([s, ms]) => `  ${s.padEnd(40)} ${(ms / 1000).toFixed(2)} s`).join('\n')}`)
  })
})
