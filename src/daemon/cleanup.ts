// `fabtunnel cleanup`: removes everything the agent owns and nothing else, in the order the kernel requires:
// connections and their SAs (also SAs of our connections that are no longer loaded); our credentials in charon
// (our private key and our CA authorities: other VPNs sharing the charon keep theirs; our certificate stays, inert
// without its key, as VICI cannot unload one certificate alone); our iptables jumps and chains (both families);
// then our ipsets (a set referenced by a rule cannot be destroyed); routes carrying our protocol in table 220;
// rules carrying our protocol. On a cloud node (no tunnels subsystem) only the kernel objects.
import { readFile } from 'node:fs/promises'
import { certificateBlocks } from '../cert.js'
import { certSubject, isOwnAuthority, ownKeyIds, pemToDer } from '../reconcile/credentials.js'
import type { TunnelsPort } from '../reconcile/tunnels-port.js'
import { isOwnConn, isOwnSa, normalizeId, type Ownership } from '../reconcile/tunnels.js'
import type { NodeParts } from './node.js'

export interface CleanupReport {
  conns: string[]
  sasTerminated: number
  /** Ids of our private keys unloaded from charon. */
  keys: string[]
  /** Our CA authorities unloaded from charon. */
  authorities: string[]
  iptables: { family: 4 | 6; chains: string[] }[]
  ipsets: string[]
  routes: string[]
  rules: number
  errors: string[]
}

export async function cleanupNode(p: NodeParts): Promise<CleanupReport> {
  const report: CleanupReport = { conns: [], sasTerminated: 0, keys: [], authorities: [], iptables: [], ipsets: [], routes: [], rules: 0, errors: [] }
  const step = async (what: string, fn: () => Promise<void>): Promise<void> => {
    try {
      await fn()
    } catch (err) {
      report.errors.push(`${what}: ${(err as Error).message}`)
    }
  }
  // A cloud node has no charon: nothing of ours can be in one, and there is no socket to dial.
  const port = p.tunnels?.port
  const subject = await readFile(p.paths.cert, 'utf8').then((t) => certificateBlocks(t)[0], () => undefined)
  const certSubjectLines = subject ? certSubject(pemToDer(subject)) : ''
  if (port) await step('connections', async () => {
    await p.agent.reloadConfig().catch(() => undefined)
    const ids = new Set<string>()
    const configId = p.agent.configInForce?.local.id
    if (configId) ids.add(normalizeId(configId))
    if (certSubjectLines) ids.add(certSubjectLines.split('\n').join(','))
    const r = await cleanupConnections(port, { ids, loaded: new Set() })
    report.conns.push(...r.conns)
    report.sasTerminated += r.sasTerminated
  })
  if (port) await step('credentials', async () => {
    const r = await cleanupCredentials(port, certSubjectLines)
    report.keys.push(...r.keys)
    report.authorities.push(...r.authorities)
  })
  for (const family of [4, 6] as const) {
    await step(`iptables (IPv${family})`, async () => {
      report.iptables.push({ family, chains: await p.iptables.cleanup(family) })
    })
  }
  await step('ipsets', async () => {
    report.ipsets.push(...(await p.ipsets.cleanup()))
  })
  await step('routes', async () => {
    report.routes.push(...(await p.routes.cleanupRoutes()))
  })
  await step('rules', async () => {
    report.rules += await p.routes.cleanupRules()
  })
  return report
}

/**
 * Unloads our connections and ends their SAs, and ends the SAs of our connections that are no longer loaded
 * (orphans of an earlier failed terminate or of a restart). Foreign connections and SAs are never touched.
 */
export async function cleanupConnections(port: Pick<TunnelsPort, 'listConns' | 'listSas' | 'unloadConn' | 'terminate'>, hints: Ownership): Promise<{ conns: string[]; sasTerminated: number }> {
  const out = { conns: [] as string[], sasTerminated: 0 }
  const conns = await port.listConns()
  const sas = await port.listSas()
  const own = [...conns].filter(([name, listed]) => isOwnConn(name, listed, hints)).map(([name]) => name)
  for (const name of own) {
    await port.unloadConn(name)
    out.conns.push(name)
  }
  for (const sa of sas) {
    const ours = own.includes(sa.name) || (!conns.has(sa.name) && isOwnSa(sa, hints))
    if (!ours) continue
    await port.terminate({ ikeId: sa.uniqueid }, 5000)
    out.sasTerminated++
  }
  return out
}

/** Unloads our private keys (found through certificates with our subject) and our CA authorities. */
export async function cleanupCredentials(port: Pick<TunnelsPort, 'listCerts' | 'getKeys' | 'unloadKey' | 'getAuthorities' | 'unloadAuthority'>, subject: string): Promise<{ keys: string[]; authorities: string[] }> {
  const out = { keys: [] as string[], authorities: [] as string[] }
  const [certs, keys, authorities] = await Promise.all([port.listCerts(), port.getKeys(), port.getAuthorities()])
  for (const id of ownKeyIds(subject, certs, keys)) {
    await port.unloadKey(id)
    out.keys.push(id)
  }
  for (const name of authorities.filter(isOwnAuthority)) {
    await port.unloadAuthority(name)
    out.authorities.push(name)
  }
  return out
}
