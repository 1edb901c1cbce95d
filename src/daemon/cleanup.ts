// `fabtunnel cleanup`: removes everything the agent owns and nothing else, in the order the kernel requires:
// connections and their SAs; our iptables jumps and chains (both families); then our ipsets (a set referenced by
// a rule cannot be destroyed); routes carrying our protocol in table 220; rules carrying our protocol.
import { isOwnConn, type ListedConn } from '../reconcile/tunnels.js'
import type { NodeParts } from './node.js'

export interface CleanupReport {
  conns: string[]
  sasTerminated: number
  iptables: { family: 4 | 6; chains: string[] }[]
  ipsets: string[]
  routes: string[]
  rules: number
  errors: string[]
}

export async function cleanupNode(p: NodeParts): Promise<CleanupReport> {
  const report: CleanupReport = { conns: [], sasTerminated: 0, iptables: [], ipsets: [], routes: [], rules: 0, errors: [] }
  const step = async (what: string, fn: () => Promise<void>): Promise<void> => {
    try {
      await fn()
    } catch (err) {
      report.errors.push(`${what}: ${(err as Error).message}`)
    }
  }
  await step('connections', async () => {
    const conns = await p.vici.listConns()
    const sas = await p.vici.listSas()
    for (const c of conns) {
      if (!isOwnConn(c.name, c.raw as ListedConn)) continue
      await p.vici.unloadConn(c.name)
      report.conns.push(c.name)
      for (const sa of sas.filter((s) => s.name === c.name)) {
        await p.vici.terminate({ ikeId: sa.uniqueid, force: true, timeoutMs: 5000 })
        report.sasTerminated++
      }
    }
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
