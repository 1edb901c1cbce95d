// An edge re-initiates at once when its IKE_SA to the connector goes down (ike-updown down), with real charon and
// the real agents (starTopology(1)): the connector's charon is killed with SIGKILL and started again empty, the
// edge's DPD (--dpd-delay 3s, the shipped retransmission schedule) declares the old IKE_SA dead, and the edge's
// agent initiates again in the pass that event triggers, not on a resync (60 s) nor on a trap acquire (no traffic
// flows during the test). The gap between the down event and the initiate is measured and reported.
import t from 'tap'
import { readFile } from 'node:fs/promises'
import { agentLog, defaultDriver, type AgentHandle } from '../../harness/agents.js'
import { starTopology } from '../../harness/addressing.js'
import { ping } from '../../harness/matrix.js'
import { needsRoot } from '../../harness/netns.js'
import { Topology, type Gateway } from '../../harness/topology.js'

const CONN = 'beijing.connector'
const EDGE = 'beijing.edge1'

interface LogLine { time: number; op?: string; conn?: string; up?: boolean; msg?: string }

async function logLines(g: Gateway): Promise<LogLine[]> {
  const text = await readFile(agentLog(g), 'utf8').catch(() => '')
  // pino writes ISO times; the comparisons below need milliseconds.
  return text.split('\n').filter((l) => l.startsWith('{')).map((l) => {
    const o = JSON.parse(l) as Omit<LogLine, 'time'> & { time: string }
    return { ...o, time: Date.parse(o.time) }
  })
}

const peerUp = async (a: AgentHandle): Promise<boolean> => {
  const s = await a.status()
  return s.peers.length === 1 && s.peers[0].name === CONN && s.peers[0].state === 'up' && s.peers[0].childrenUp === 3
}

t.test('ike-updown down: the edge re-initiates in the pass the event triggers', { skip: needsRoot, timeout: 120_000 }, async (t) => {
  const topo = await Topology.create({ spec: starTopology(1) })
  // No probe repairs: the frozen connector's datapath is down seconds before DPD declares its IKE_SA down, and a
  // repair would initiate first (test/e2e/probes.test.ts covers that path); this test is about the down event.
  const driver = await defaultDriver({ logLevel: 'debug', extraArgs: () => ['--probe-repair', 'off'] })
  t.teardown(async () => {
    await driver.stopAll()
    await topo.destroy()
  })
  const conn = topo.gateway(CONN)
  const edge = topo.gateway(EDGE)
  const [ca, ea] = [driver.agent(conn), driver.agent(edge)] as [AgentHandle, AgentHandle]
  await ca.start()
  await ea.start()
  await ea.waitFor('the connector tunnel up', () => peerUp(ea), 30_000)
  t.ok(await ping(topo.podOf(EDGE).ns, topo.podOf(CONN).ip, 3_000), 'edge pod reaches the connector pod through the tunnel')

  const before = (await logLines(edge)).length
  process.kill(conn.charon.pid!, 'SIGKILL')
  await ca.waitFor('charon to die', async () => !conn.charon.running, 5_000)
  const killedAt = Date.now()
  await conn.charon.restart()
  // No traffic from here on: a trap acquire cannot be what brings the tunnel back.
  const down = await ea.waitFor('the edge\'s ike-updown down event', async () =>
    (await logLines(edge)).slice(before).find((l) => l.op === 'ike-updown' && l.conn === CONN && l.up === false), 40_000)
  await ea.waitFor('the connector tunnel up again', () => peerUp(ea), 30_000)
  const after = (await logLines(edge)).slice(before)
  const initiate = after.find((l) => l.time >= down.time && l.op?.startsWith('initiate') && l.conn === CONN)
  t.ok(initiate, 'the agent initiated the connection after the down event')
  const up = after.find((l) => l.time >= down.time && l.op === 'ike-updown' && l.conn === CONN && l.up === true)
  t.ok(up, 'and the IKE_SA came up again')
  t.notOk(after.some((l) => l.op?.startsWith('initiate') && l.conn === CONN && l.time < down.time), 'nothing was initiated before the down event')
  t.comment(`down event ${((down.time - killedAt) / 1000).toFixed(2)} s after the kill (dpd 3 s + retransmits ~4.3-5.4 s); ` +
    `initiate ${initiate!.time - down.time} ms after the down event; IKE_SA up ${up!.time - down.time} ms after it (measured, not asserted)`)
  t.ok(await ping(topo.podOf(EDGE).ns, topo.podOf(CONN).ip, 3_000), 'traffic flows again')
})
