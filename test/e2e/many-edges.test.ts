// Scale, end to end (issue 13 "charon at scale"): 200 real tunnels to ONE connector. The connector runs real charon
// with the shipped scale settings and the real agent (`fabtunnel run`, dist/cli.js); one edge namespace's charon
// carries 200 edge identities, all dialling from one address (200 edges behind one NAT address, the case strongSwan's
// default per-IP thresholds would throttle). Asserted on the connector's charon: exactly the 200 edge ids with
// their IKE_SA and 3 CHILD_SAs each; data through sampled tunnels (and not from an address no tunnel covers); the
// agent ready and writing nothing on a no-op pass and on a deep (SIGHUP) pass. Figures: scripts/bench/tunnels.ts.
import t from 'tap'
import { readFile } from 'node:fs/promises'
import { defaultDriver, type AgentHandle, type DaemonDriver } from '../harness/agents.js'
import { ManyEdges } from '../harness/many-edges.js'
import { ping } from '../harness/matrix.js'
import { needsRoot } from '../harness/netns.js'

const EDGES = 200
const driver: DaemonDriver | null = needsRoot ? null : await defaultDriver()

/** Runs `kick` and resolves with the agent's next pass whose reasons match (from /status). */
async function nextPass(a: AgentHandle, reason: RegExp, kick: () => Promise<void> | void): Promise<any> {
  const before = (await a.status()).lastPass?.startedAt
  await kick()
  return a.waitFor(`a pass for ${reason}`, async () => {
    const p = (await a.status()).lastPass
    return p && p.startedAt !== before && p.reasons.some((r: string) => reason.test(r)) ? p : null
  }, 30_000)
}

t.test(`scale: ${EDGES} real tunnels from one edge address to one connector`, { skip: needsRoot }, async (t) => {
  const m = await ManyEdges.create({ edges: EDGES })
  t.teardown(async () => {
    await driver!.stopAll()
    await m.destroy()
  })
  const a = driver!.agent(m.connector)
  const samples = [0, EDGES / 2, EDGES - 1]

  t.notOk(await m.ping(0, 1_000), 'before any tunnel, edge 0 cannot reach the connector pod')

  await a.start()
  await driver!.waitReady(m.connector, 60_000)
  const ms = await m.bringUp(120_000)
  t.comment(`${EDGES} edges up ${(ms / 1000).toFixed(1)} s after the connector agent was ready (measured, not asserted)`)

  const sas = await m.connectorSas()
  t.equal(sas.ike, EDGES, `${EDGES} ESTABLISHED IKE_SAs on the connector`)
  t.equal(sas.children, EDGES * 3, `${EDGES * 3} INSTALLED CHILD_SAs (p2p, n2p, p2n per edge)`)
  t.same([...sas.fullyUp].sort(), m.edges.map((e) => e.id).sort(), `exactly the ${EDGES} edge ids, each with all 3 children`)

  for (const i of samples) t.ok(await m.ping(i, 5_000), `edge ${i} (${m.edges[i]!.podIp}) reaches the connector pod through its own tunnel`)
  // An address of the edge namespace that no tunnel's selectors cover: the route into ipsec0 exists, the policy not.
  await m.edgeNs.run(['ip', 'addr', 'add', '10.99.0.1/32', 'dev', 'podbr'])
  t.notOk(await ping(m.edgeNs, m.connectorPod.ip, 1_000, '10.99.0.1'), 'a source no tunnel covers gets no reply')

  await a.waitFor('a converged pass', async () => (await a.status()).lastPass?.converged === true, 60_000)
  const yaml = await readFile(m.connector.configPath, 'utf8')
  const noop = await nextPass(a, /^config/, () => m.connector.config.update({ 'tunnels.yaml': yaml }))
  t.same(noop.writes, {}, `no-op pass (an unchanged tunnels.yaml swapped in) writes nothing (${noop.durationMs.toFixed(1)} ms)`)
  t.equal(noop.converged, true)
  const deep = await nextPass(a, /^sighup$/, () => a.signal('SIGHUP'))
  t.same(deep.writes, {}, `deep pass (SIGHUP, everything observed again) writes nothing (${deep.durationMs.toFixed(1)} ms)`)
  t.equal(deep.converged, true)
  t.equal((await a.get('/readyz')).status, 200, 'the agent is ready')
  t.equal((await m.connectorSas()).fullyUp.size, EDGES, 'and all tunnels are still up')
})
