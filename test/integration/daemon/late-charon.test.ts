// charon not running when the agent starts (a sidecar still starting, a crashed daemon): the agent reports the
// error, is not ready, keeps retrying, and once charon is up it subscribes to SA events and converges; a tunnel
// torn down by the peer is then re-initiated from the event, not from the resync timer.
import t from 'tap'
import { Vici } from '../../../src/vici/index.js'
import { defaultDriver } from '../../harness/agents.js'
import { starTopology } from '../../harness/addressing.js'
import { needsRoot } from '../../harness/netns.js'
import { Topology } from '../../harness/topology.js'

/** The edge's one peer (the connector) up. An empty peer list is not "up" (/status before the config is read). */
const up = (s: any): boolean => s.peers.length === 1 && s.peers.every((p: { state: string }) => p.state === 'up')

t.test('agent started before charon', { skip: needsRoot, timeout: 120_000 }, async (t) => {
  const topo = await Topology.create({ spec: starTopology(1) })
  const driver = await defaultDriver({ logLevel: 'debug' })
  t.teardown(async () => {
    await driver.stopAll()
    await topo.destroy()
  })
  const conn = topo.gateway('beijing.connector')
  const e1 = topo.gateway('beijing.edge1')
  const agent = driver.agent(e1)
  await e1.charon.stop()
  await driver.agent(conn).start()
  await agent.start()
  const down = await agent.waitFor('the error reported', async () => {
    const s = await agent.status()
    return s.lastPass?.errors?.tunnels && s
  }, 20_000)
  t.match(down.lastPass.errors.tunnels, /ECONNREFUSED|ENOENT/, 'a typed transport error in /status')
  t.equal(down.ready, false, 'not ready without charon')
  t.equal((await agent.get('/healthz')).status, 200, 'still serving')
  t.equal((await agent.get('/readyz')).status, 503)
  // Leadership is not convergence (FabEdge: keepalived moves the VIP on it): a sole agent leads while it runs.
  t.same(await agent.get('/is-leader'), { status: 200, body: 'true' }, '/is-leader `true` while not ready')

  const t0 = Date.now()
  await e1.charon.restart()
  await agent.waitFor('tunnel up once charon runs', async () => up(await agent.status()), 30_000)
  t.pass(`tunnel up ${Date.now() - t0} ms after charon started (resync interval is 60 s: this was the retry backoff)`)

  const before = (await agent.status()).tunnels.counters.initiates
  t.ok(before >= 1, 'the tunnel was initiated by the agent')
  const v = new Vici({ uri: conn.charon.uri, reconnect: false })
  const sas = await v.listSas()
  t.ok(sas.length > 0, 'the connector has an IKE_SA to end')
  await v.terminate({ ikeId: sas[0]!.uniqueid, force: true, timeoutMs: 5000 })
  await v.close()
  const t1 = Date.now()
  await agent.waitFor('re-initiated after the peer tore it down', async () => {
    const s = await agent.status()
    return s.tunnels.counters.initiates > before && up(s)
  }, 20_000)
  t.pass(`re-initiated and up ${Date.now() - t1} ms after the connector terminated it (SA events reach the agent)`)
})
