// Defect 3 on real charon: a child re-initiated on an ESTABLISHED IKE_SA is negotiating while verification and
// event passes race it (charon lists the child only once its exchange is done). The responder is held with
// SIGSTOP, so the negotiation stays in flight for as long as the test wants, deterministically. The agent must send
// exactly one initiate for that child, and each child must end up with exactly one INSTALLED CHILD_SA.
// Edge: the tunnels subsystem in process over the real VICI port; connector: the real daemon (responder).
import t from 'tap'
import { createLogger } from '../../../src/log.js'
import { passContext } from '../../../src/reconcile/subsystem.js'
import { viciTunnelsPort, type TunnelsPort } from '../../../src/reconcile/tunnels-port.js'
import { TunnelsSubsystem } from '../../../src/reconcile/tunnels-subsystem.js'
import { Vici, type IkeSa } from '../../../src/vici/index.js'
import { starTopology } from '../../harness/addressing.js'
import { DaemonDriver, desiredOf, waitFor } from '../../harness/agents.js'
import { needsRoot, teardownOnSignals } from '../../harness/netns.js'
import { Topology } from '../../harness/topology.js'

/** INSTALLED CHILD_SAs per child name. */
function installed(sas: IkeSa[]): Map<string, number> {
  const out = new Map<string, number>()
  for (const sa of sas) for (const c of sa.children) if (c.state === 'INSTALLED') out.set(c.name, (out.get(c.name) ?? 0) + 1)
  return out
}

t.test('no second initiate for a child in flight on an ESTABLISHED IKE_SA (real charon)', { skip: needsRoot, timeout: 120_000 }, async (t) => {
  teardownOnSignals()
  const topo = await Topology.create({ spec: starTopology(1) })
  t.teardown(() => topo.destroy())
  const driver = new DaemonDriver()
  t.teardown(() => driver.stopAll())
  const connector = topo.gateway('beijing.connector')
  const edge = topo.gateway('beijing.edge1')
  await driver.start(connector)
  await driver.waitReady(connector, 20_000)

  const vici = new Vici({ uri: edge.charon.uri, timeoutMs: 10_000 })
  t.teardown(() => vici.close())
  const real = viciTunnelsPort(vici)
  const initiates = new Map<string, number>()
  const port: TunnelsPort = {
    ...real,
    initiate: async (target) => {
      initiates.set(target.child ?? '', (initiates.get(target.child ?? '') ?? 0) + 1)
      await real.initiate(target)
    },
  }
  const triggers: string[] = []
  const sub = new TunnelsSubsystem(port, {
    credentials: { cert: edge.cert.certPath, key: edge.cert.keyPath, ca: edge.caPath },
    log: createLogger('silent'),
    trigger: (r) => triggers.push(r),
  })
  const desired = await desiredOf(edge)
  const pass = async (...reasons: string[]): Promise<void> => {
    const ctx = passContext(reasons)
    await sub.prepare(desired, ctx)
    const plan = await sub.plan(desired, ctx)
    if (plan.writes > 0) await sub.apply(plan)
  }
  const children = desired.initiateChildren['beijing.connector']!
  t.equal(children.length, 3, 'p2p, n2p and p2n')
  await pass('start')
  await waitFor('all children up', 20_000, async () => {
    await pass('verify')
    const now = installed(await vici.listSas())
    return children.every((c) => now.get(c) === 1)
  })
  const p2n = children.find((c) => c.endsWith('-p2n'))!
  const before = initiates.get(p2n) ?? 0

  // Hold the responder: the next CREATE_CHILD_SA stays in flight on the ESTABLISHED IKE_SA.
  const pid = connector.charon.pid!
  process.kill(pid, 'SIGSTOP')
  t.teardown(() => {
    try {
      process.kill(pid, 'SIGCONT')
    } catch {
      // already gone
    }
  })
  const child = (await vici.listSas()).flatMap((s) => s.children).find((c) => c.name === p2n)!
  await vici.terminate({ childId: child.uniqueid, force: true })
  await waitFor('p2n gone from the listing', 5_000, async () => !installed(await vici.listSas()).has(p2n))
  await pass('vici:child-updown')
  t.equal((initiates.get(p2n) ?? 0) - before, 1, 'the child that went down is initiated at once')
  const ike = (await vici.listSas()).find((s) => s.name === 'beijing.connector')!
  t.equal(ike.state, 'ESTABLISHED', 'on the ESTABLISHED IKE_SA')
  // Verification and event passes race the negotiation for a while.
  for (let i = 0; i < 10; i++) {
    await pass(i % 2 ? 'verify' : 'vici:child-updown')
    await new Promise((r) => setTimeout(r, 100))
  }
  t.notOk(installed(await vici.listSas()).has(p2n), 'still negotiating: charon does not list the child yet')
  t.equal((initiates.get(p2n) ?? 0) - before, 1, 'no second initiate while the first is in flight')
  t.match(sub.peers().find((p) => p.name === 'beijing.connector'), { waiting: 'initiate in flight' })

  process.kill(pid, 'SIGCONT')
  await waitFor('p2n up again', 30_000, async () => installed(await vici.listSas()).get(p2n) === 1)
  for (let i = 0; i < 5; i++) {
    await pass('verify')
    await new Promise((r) => setTimeout(r, 100))
  }
  const edgeCount = installed(await vici.listSas())
  const cv = new Vici({ uri: connector.charon.uri, reconnect: false, timeoutMs: 5_000 })
  const connectorCount = installed(await cv.listSas().finally(() => cv.close()))
  for (const c of children) t.equal(edgeCount.get(c), 1, `edge: exactly one INSTALLED ${c}`)
  // The connector names the same children after its peer (beijing.edge1-*), n2p and p2n swapped.
  t.same([...connectorCount.entries()].sort(), [['beijing.edge1-n2p', 1], ['beijing.edge1-p2n', 1], ['beijing.edge1-p2p', 1]], 'connector: exactly one INSTALLED CHILD_SA per child')
  t.equal((initiates.get(p2n) ?? 0) - before, 1, 'one initiate for p2n in total')
})
