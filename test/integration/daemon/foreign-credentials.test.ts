// Defect 5 on real charon: another VPN's credentials (certificate, private key, CA, PSK) loaded with
// `swanctl --load-creds` into the charon the agent uses survive the agent's start, a certificate rotation and
// `fabtunnel cleanup`, and so does its connection using the node's own identity; ours are gone after cleanup (key and CA authority; the certificate stays, inert without its
// key: VICI cannot unload one certificate alone). After the rotation the new certificate is the one used: the old
// key is unloaded, and a fresh IKE_SA authenticates with the new one.
import t from 'tap'
import { copyFile, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { keyIdOf, pemToDer } from '../../../src/reconcile/credentials.js'
import { Vici } from '../../../src/vici/index.js'
import { starTopology } from '../../harness/addressing.js'
import { CLI, DaemonDriver, startAgents, tunnelsUp, waitFor } from '../../harness/agents.js'
import { exec } from '../../harness/exec.js'
import { needsRoot, teardownOnSignals } from '../../harness/netns.js'
import { Topology } from '../../harness/topology.js'

const PKI = new URL('../../fixtures/pki/', import.meta.url).pathname

interface CredsView {
  keys: string[]
  shared: string[]
  authorities: string[]
  certs: Array<{ flag: string; hasPrivkey: boolean; data: Buffer }>
  conns: string[]
}

async function view(uri: string): Promise<CredsView> {
  const v = new Vici({ uri, reconnect: false, timeoutMs: 5_000 })
  try {
    return {
      keys: await v.getKeys(),
      shared: await v.getShared(),
      authorities: await v.getAuthorities(),
      certs: await v.listCerts({ type: 'X509' }),
      conns: (await v.listConns()).map((c) => c.name),
    }
  } finally {
    await v.close()
  }
}

t.test('foreign VICI credentials survive start, rotation and cleanup; ours are removed by cleanup', { skip: needsRoot, timeout: 180_000 }, async (t) => {
  teardownOnSignals()
  const topo = await Topology.create({ spec: starTopology(1) })
  t.teardown(() => topo.destroy())
  const driver = new DaemonDriver()
  t.teardown(() => driver.stopAll())
  const edge = topo.gateway('beijing.edge1')

  // The other VPN's swanctl directory: certificate, key, CA and a PSK, loaded before the agent starts.
  const dir = await mkdtemp(join(tmpdir(), 'ft-swanctl-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  for (const d of ['x509', 'x509ca', 'private']) await mkdir(join(dir, d))
  await copyFile(join(PKI, 'foreign.crt'), join(dir, 'x509', 'office.crt'))
  await copyFile(join(PKI, 'foreign.key'), join(dir, 'private', 'office.key'))
  await copyFile(join(PKI, 'ca.crt'), join(dir, 'x509ca', 'office-ca.crt'))
  await writeFile(join(dir, 'swanctl.conf'), 'secrets {\n  ike-office {\n    id = office-peer\n    secret = 0sb2ZmaWNlLXNlY3JldA==\n  }\n}\n')
  await exec(['swanctl', '--load-creds', '--noprompt', '--uri', edge.charon.uri, '--file', join(dir, 'swanctl.conf')], { timeoutMs: 10_000 })
  const foreign = await view(edge.charon.uri)
  const foreignKey = keyIdOf(pemToDer(await import('node:fs/promises').then((fs) => fs.readFile(join(PKI, 'foreign.crt'), 'utf8'))))
  t.same(foreign.keys, [foreignKey], 'the foreign key is loaded')
  t.same(foreign.shared, ['ike-office'], 'the foreign PSK is loaded')
  const foreignCerts = foreign.certs.map((c) => c.data)
  t.equal(foreignCerts.length, 2, 'the foreign certificate and CA are loaded')

  // The other VPN's connection uses the node's own identity (the node certificate), with a child of its own
  // name: our identity alone never makes it ours.
  const fv = new Vici({ uri: edge.charon.uri, reconnect: false, timeoutMs: 5_000 })
  await fv.loadConn('office', {
    version: '2', remote_addrs: ['192.0.2.77'], local: { auth: 'pubkey', id: edge.plan.id }, remote: { auth: 'pubkey', id: 'C=DE, O=office, CN=office-peer' },
    children: { office: { local_ts: ['10.250.1.0/24'], remote_ts: ['10.250.2.0/24'] } },
  })
  await fv.close()

  const hasAll = (v: CredsView): boolean =>
    v.keys.includes(foreignKey) && v.shared.includes('ike-office') && foreignCerts.every((d) => v.certs.some((c) => c.data.equals(d))) && v.conns.includes('office')

  await startAgents(topo, driver, 40_000)
  await waitFor('tunnels up', 30_000, () => tunnelsUp(topo))
  const oldKey = keyIdOf(pemToDer(edge.cert.certPem))
  const started = await view(edge.charon.uri)
  t.ok(hasAll(started), 'foreign credentials and the foreign connection survive the agent start')
  t.same(started.keys.sort(), [foreignKey, oldKey].sort(), 'our key next to theirs (charon computes the same key id we do)')
  t.ok(started.authorities.includes('fabtunnel-ca'), 'our CA as a named authority')

  // Rotation: a new key and certificate for the same identity, over the files the agent reads.
  const fresh = await topo.pki.issue('beijing', 'edge1')
  t.equal(fresh.certPath, edge.cert.certPath, 'the same files')
  const newKey = keyIdOf(pemToDer(fresh.certPem))
  t.not(newKey, oldKey)
  await waitFor('the rotated key in charon and the old one gone', 30_000, async () => {
    const v = await view(edge.charon.uri)
    return v.keys.includes(newKey) && !v.keys.includes(oldKey)
  })
  const rotated = await view(edge.charon.uri)
  t.ok(hasAll(rotated), 'foreign credentials survive the rotation')
  t.ok(rotated.certs.some((c) => c.hasPrivkey && c.data.equals(pemToDer(fresh.certPem))), 'charon holds the new certificate with its key')
  t.notOk(rotated.certs.some((c) => c.hasPrivkey && c.data.equals(pemToDer(edge.cert.certPem))), 'the old certificate has no key any more')

  // A fresh IKE_SA (ended from the connector side) can only authenticate with the new certificate's key.
  const connector = topo.gateway('beijing.connector')
  const cv = new Vici({ uri: connector.charon.uri, reconnect: false, timeoutMs: 5_000 })
  const before = (await cv.listSas()).map((s) => s.uniqueid)
  for (const id of before) await cv.terminate({ ikeId: id, force: true, timeoutMs: 5_000 })
  await cv.close()
  await waitFor('a new IKE_SA with the rotated credentials', 30_000, async () => {
    const v = new Vici({ uri: connector.charon.uri, reconnect: false, timeoutMs: 5_000 })
    try {
      const sas = await v.listSas()
      return sas.some((s) => s.state === 'ESTABLISHED' && !before.includes(s.uniqueid) && s.remoteId === edge.plan.id) && (await tunnelsUp(topo))
    } finally {
      await v.close()
    }
  })
  t.pass('the tunnel is back on a new IKE_SA authenticated with the rotated certificate')

  // cleanup (agent stopped first, as an operator would): ours gone, theirs kept. Two ownership cases no child name
  // reveals (defect 8): a connection of ours without children (a peer whose selectors were all empty), and an
  // orphan IKE_SA of ours whose connection is no longer loaded (charon keeps SAs of an unloaded connection).
  await driver.stop(edge)
  const ev = new Vici({ uri: edge.charon.uri, reconnect: false, timeoutMs: 5_000 })
  await ev.unloadConn('beijing.connector')
  await ev.loadConn('beijing.edge9', { version: '2', local: { auth: 'pubkey', id: edge.plan.id }, remote: { auth: 'pubkey', id: 'C=CN, O=fabedge.io, CN=beijing.edge9' } })
  const orphans = (await ev.listSas()).filter((s) => s.name === 'beijing.connector')
  await ev.close()
  t.equal(orphans.length, 1, 'an orphan IKE_SA of ours, its connection unloaded')
  const out = await edge.ns.run([process.execPath, CLI, 'cleanup', '--json', '--config', edge.configPath, '--vici', edge.charon.uri,
    '--cert', edge.cert.certPath, '--key', edge.cert.keyPath, '--ca', edge.caPath], { timeoutMs: 30_000 })
  const report = JSON.parse(out) as { keys: string[]; authorities: string[]; conns: string[]; sasTerminated: number; errors: string[] }
  t.same(report.errors, [])
  t.same(report.keys, [newKey], 'our key unloaded')
  t.same(report.authorities, ['fabtunnel-ca'])
  t.same(report.conns, ['beijing.edge9'], 'the childless connection of ours, recognised by our identity')
  t.equal(report.sasTerminated, 1, 'the orphan IKE_SA ended')
  const after = await view(edge.charon.uri)
  t.ok(hasAll(after), 'foreign credentials survive cleanup')
  t.same(after.keys, [foreignKey], 'only the foreign key is left')
  t.same(after.authorities, [], 'no authority of ours left')
  t.same(after.conns, ['office'], 'no connection of ours left; the foreign one with our identity stays')
  const left = new Vici({ uri: edge.charon.uri, reconnect: false, timeoutMs: 5_000 })
  t.same((await left.listSas().finally(() => left.close())).map((s) => s.name), [], 'no SA of ours left')
})
