// Certificate rotation without restarting anything, and bad key material reported clearly: the agent watches the
// credential files, reloads them into charon over VICI, and checks that charon pairs the key with the certificate.
import t from 'tap'
import { copyFile, rename } from 'node:fs/promises'
import { Vici } from '../../../src/vici/index.js'
import { pemToDer } from '../../../src/reconcile/credentials.js'
import { defaultDriver, startAgents } from '../../harness/agents.js'
import { starTopology } from '../../harness/addressing.js'
import { ping } from '../../harness/matrix.js'
import { needsRoot } from '../../harness/netns.js'
import { Topology } from '../../harness/topology.js'

/** The edge's one peer (the connector) up: never true of an empty peer list. */
const up = (s: any) => s.peers.length === 1 && s.peers.every((p: { state: string }) => p.state === 'up')

t.test('credential rotation and a mismatched key', { skip: needsRoot, timeout: 120_000 }, async (t) => {
  const topo = await Topology.create({ spec: starTopology(1) })
  const driver = await defaultDriver({ logLevel: 'debug' })
  t.teardown(async () => {
    await driver.stopAll()
    await topo.destroy()
  })
  const conn = topo.gateway('beijing.connector')
  const e1 = topo.gateway('beijing.edge1')
  const agent = driver.agent(e1)
  await startAgents(topo, driver)
  await agent.waitFor('tunnel up', async () => up(await agent.status()), 30_000)
  const log = await agent.logTail(400)
  t.ok(log.length > 0, 'the agent log has content to check')
  t.notMatch(log, /PRIVATE KEY/, 'no key material in the log')

  // Rotate: a new key and certificate for the same identity, written over the files the agent reads (key first,
  // then certificate: for a moment the pair does not match, which the agent must ride out).
  const fresh = await topo.pki.issue('beijing', 'edge1')
  t.equal(fresh.certPath, e1.cert.certPath, 'the same files')
  t.not(fresh.certPem, e1.cert.certPem, 'a new certificate')
  const freshPem = fresh.certPem
  const rotated = await agent.waitFor('new credentials in charon', async () => {
    const v = new Vici({ uri: e1.charon.uri, reconnect: false })
    try {
      const certs = await v.listCerts({ type: 'X509' })
      return certs.some((x) => x.hasPrivkey && x.data.equals(pemToDer(freshPem)))
    } finally {
      await v.close()
    }
  }, 20_000)
  t.ok(rotated, 'charon holds the new certificate with its key, without any restart')
  const s = await agent.status()
  t.ok(s.tunnels.counters.credentialLoads >= 2, 'loaded again over VICI')
  t.equal(s.tunnels.counters.reconnects, 0, 'charon was never restarted')

  // The new credentials are used for the next IKE_SA: end the current one from the connector side.
  const v = new Vici({ uri: conn.charon.uri, reconnect: false })
  const sas = await v.listSas()
  t.ok(sas.length > 0, 'the connector has an IKE_SA to end')
  await v.terminate({ ikeId: sas[0]!.uniqueid, force: true, timeoutMs: 5000 })
  await v.close()
  await agent.waitFor('tunnel back with the rotated certificate', async () => up(await agent.status()), 30_000)
  t.ok(await ping(topo.podOf(e1.name).ns, topo.podOf(conn.name).ip), 'traffic flows over the re-established tunnel')

  // A key that does not belong to the certificate: a clear error, reported, tunnels untouched.
  const other = await topo.pki.issue('beijing', 'stranger')
  await copyFile(other.keyPath, `${e1.cert.keyPath}.bad`)
  await rename(`${e1.cert.keyPath}.bad`, e1.cert.keyPath)
  const bad = await agent.waitFor('mismatch reported', async () => {
    const st = await agent.status()
    return /does not belong to the certificate/.test(st.lastPass?.errors?.tunnels ?? '') && st
  }, 20_000)
  t.equal(bad.ready, false, 'not ready while the key is wrong')
  t.ok(up(bad), 'the established tunnel stays up')
  t.notMatch(await agent.logTail(400), /PRIVATE KEY/, 'still no key material in the log')
})
