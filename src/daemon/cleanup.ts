// `fabtunnel cleanup`: removes everything the agent owns and nothing else, in the order the kernel requires:
// connections and their SAs; our iptables jumps and chains (both families); then our ipsets (a set referenced by
// a rule cannot be destroyed); routes carrying our protocol in table 220; rules carrying our protocol.
import { ROUTE_TABLE, RTPROT_FABTUNNEL } from '../fabedge.js'
import { iptablesCleanup } from '../iptables/sync.js'
import { ipsetDestroy, routeApply, routeList, ruleDel, ruleList } from '../netlink/index.js'
import { OWN_SETS } from '../reconcile/kernel.js'
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
      const plan = await iptablesCleanup(p.iptables, family)
      report.iptables.push({ family, chains: plan.deleted.map((c) => `${c.table}/${c.chain}`) })
    })
  }
  await step('ipsets', async () => {
    for (const { name } of OWN_SETS) {
      const r = await ipsetDestroy(p.nfSock, name)
      if (r.ok) report.ipsets.push(name)
    }
  })
  await step('routes', async () => {
    const ours = (await routeList(p.routeSock, { table: ROUTE_TABLE })).filter((r) => r.protocol === RTPROT_FABTUNNEL)
    const results = await routeApply(p.routeSock, ours.map((r) => ({ op: 'del' as const, route: { dst: r.dst, table: r.table, protocol: r.protocol, ...(r.metric !== undefined ? { metric: r.metric } : {}) } })))
    ours.forEach((r, i) => {
      if (results[i]?.ok) report.routes.push(r.dst)
    })
  })
  await step('rules', async () => {
    for (const r of await ruleList(p.routeSock)) {
      if (r.protocol !== RTPROT_FABTUNNEL) continue
      const res = await ruleDel(p.routeSock, { family: r.family, priority: r.priority, table: r.table, protocol: RTPROT_FABTUNNEL })
      if (res.ok) report.rules++
    }
  })
  return report
}
