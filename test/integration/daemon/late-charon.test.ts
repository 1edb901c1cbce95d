// charon not running when the agent starts (a sidecar still starting, a crashed daemon): the agent reports the
// error, is not ready, keeps retrying, and once charon is up it subscribes to SA events and converges; a tunnel
// torn down by the peer is then re-initiated from the event, not from the resync timer.
import t from 'tap'
import { Vici } from '../../../src/vici/index.js'
import { needsRoot } from '../../harness/netns.js'
import { Cluster, type ClusterNode } from '../../harness/cluster.js'

t.test('agent started before charon', { skip: needsRoot, timeout: 120_000 }, async (t) => {
  const c = await Cluster.create(1)
  t.teardown(() => c.destroy())
  const [conn, e1] = c.nodes as [ClusterNode, ClusterNode]
  await e1.charon.stop()
  for (const n of c.nodes) {
    await c.writeConfig(n, c.tunnelsYaml(n))
    n.agent.start()
  }
  const down = await e1.agent.waitFor('the error reported', async () => {
    const s = await e1.agent.status()
    return s.lastPass?.errors?.tunnels && s
  }, 20_000)
  t.match(down.lastPass.errors.tunnels, /ECONNREFUSED|ENOENT/, 'a typed transport error in /status')
  t.equal(down.ready, false, 'not ready without charon')
  t.equal((await e1.agent.get('/healthz')).status, 200, 'still serving')
  t.equal((await e1.agent.get('/readyz')).status, 503)

  const t0 = Date.now()
  await e1.charon.restart()
  await e1.agent.waitFor('tunnel up once charon runs', async () => (await e1.agent.status()).peers.every((p: { state: string }) => p.state === 'up'), 30_000)
  t.pass(`tunnel up ${Date.now() - t0} ms after charon started (resync interval is 60 s: this was the retry backoff)`)

  const before = (await e1.agent.status()).tunnels.counters.initiates
  const v = new Vici({ uri: conn.charon.uri, reconnect: false })
  const sas = await v.listSas()
  await v.terminate({ ikeId: sas[0]!.uniqueid, force: true, timeoutMs: 5000 })
  await v.close()
  const t1 = Date.now()
  await e1.agent.waitFor('re-initiated after the peer tore it down', async () => {
    const s = await e1.agent.status()
    return s.tunnels.counters.initiates > before && s.peers.every((p: { state: string }) => p.state === 'up')
  }, 20_000)
  t.pass(`re-initiated and up ${Date.now() - t1} ms after the connector terminated it (SA events reach the agent)`)
})
