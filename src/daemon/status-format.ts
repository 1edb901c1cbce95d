// Renders the /status document as the table `fabtunnel status` prints: one row per peer.
import type { LeadershipStatus } from './leader.js'

export interface StatusDoc {
  version?: string
  node?: { name: string; type: string } | null
  /** Present on a cloud node only, with its next hops. */
  role?: string
  connectorAddress?: { 4?: string; 6?: string }
  routes?: { ownRoutes?: number }
  ready?: boolean
  datapath?: string
  config?: { path: string; generation: number; rejected: { message: string } | null }
  lastPass?: { startedAt: string; durationMs: number; writes: Record<string, number>; errors: Record<string, string>; converged: boolean } | null
  peers?: Array<{ name: string; type: string; state: string; since: string; childrenUp: number; childrenDesired: number; initiator: boolean; lastError: string | null; waiting: string | null; path?: string; mediation?: { detail: string | null } }>
  iptables?: { backend?: string }
  leadership?: LeadershipStatus
  probes?: { enabled: boolean; peers?: Array<{ name: string; datapath: string; rtt: { last: number } | null; lossRatio: number | null; repairs: number }> }
}

/** An RTT in seconds as people read it: 0.42ms, 12.3ms, 1.20s. */
export function formatRtt(seconds: number): string {
  const ms = seconds * 1000
  if (ms < 10) return `${ms.toFixed(2)}ms`
  if (ms < 1000) return `${ms.toFixed(1)}ms`
  return `${seconds.toFixed(2)}s`
}

function ago(iso: string, now: number): string {
  const s = Math.max(0, Math.round((now - Date.parse(iso)) / 1000))
  if (s < 120) return `${s}s`
  if (s < 7200) return `${Math.round(s / 60)}m`
  return `${Math.round(s / 3600)}h`
}

export function formatStatus(doc: StatusDoc, now = Date.now()): string {
  const lines: string[] = []
  const node = doc.node ? `${doc.node.name} (${doc.node.type})` : '(no config yet)'
  if (doc.role === 'cloud') {
    // A cloud node runs no tunnels: its state is its routes through the connector.
    const via = [doc.connectorAddress?.[4], doc.connectorAddress?.[6]].filter(Boolean).join(',') || '?'
    lines.push(`cloud node of ${node}  ready=${doc.ready ? 'yes' : 'no'}  via connector ${via}  routes=${doc.routes?.ownRoutes ?? '?'}  iptables=${doc.iptables?.backend ?? '?'}  fabtunnel ${doc.version ?? ''}`.trimEnd())
  } else {
    lines.push(`node ${node}  ready=${doc.ready ? 'yes' : 'no'}  datapath=${doc.datapath ?? '?'}  iptables=${doc.iptables?.backend ?? '?'}  fabtunnel ${doc.version ?? ''}`.trimEnd())
  }
  if (doc.config) {
    lines.push(`config ${doc.config.path} generation ${doc.config.generation}${doc.config.rejected ? `  REJECTED: ${doc.config.rejected.message.split('\n').slice(0, 3).join(' | ')}` : ''}`)
  }
  const l = doc.leadership
  if (l && l.mode !== 'none') {
    const what = l.vip ? `vip ${l.vip.address}` : l.lease ? `lease ${l.lease.namespace}/${l.lease.name} as ${l.lease.identity}, holder ${l.lease.holder ?? '(none)'}` : l.mode
    lines.push(`leadership ${what}: ${l.leader ? 'LEADER' : 'STANDBY'} since ${ago(l.since, now)} ago (${l.transitions} transition${l.transitions === 1 ? '' : 's'})`)
  }
  if (doc.lastPass) {
    const errs = Object.entries(doc.lastPass.errors)
    lines.push(`last pass ${ago(doc.lastPass.startedAt, now)} ago, ${doc.lastPass.durationMs.toFixed(1)} ms, writes ${JSON.stringify(doc.lastPass.writes)}${errs.length ? `, errors: ${errs.map(([k, v]) => `${k}: ${v}`).join('; ')}` : ''}`)
  }
  if (doc.role === 'cloud') return lines.join('\n')
  // Probes off (or an agent without them): no DATAPATH/RTT columns rather than columns of dashes.
  const probed = doc.probes?.enabled ? new Map((doc.probes.peers ?? []).map((x) => [x.name, x])) : null
  const rows = (doc.peers ?? []).map((p) => {
    const pr = probed?.get(p.name)
    const datapath = pr ? `${pr.datapath}${pr.repairs ? ` (${pr.repairs} repair${pr.repairs === 1 ? '' : 's'})` : ''}` : '-'
    const rtt = pr?.rtt && pr.datapath === 'up' ? formatRtt(pr.rtt.last) : '-'
    return [
      p.name, p.type, p.initiator ? 'initiator' : 'responder', p.state, ago(p.since, now),
      p.childrenDesired ? `${p.childrenUp}/${p.childrenDesired}` : '-', p.path ?? '-', ...(probed ? [datapath, rtt] : []), p.lastError ?? p.mediation?.detail ?? p.waiting ?? '',
    ]
  })
  const header = ['PEER', 'TYPE', 'ROLE', 'STATE', 'SINCE', 'CHILDREN', 'PATH', ...(probed ? ['DATAPATH', 'RTT'] : []), 'LAST ERROR']
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)))
  lines.push('')
  lines.push(header.map((h, i) => h.padEnd(widths[i]!)).join('  ').trimEnd())
  for (const r of rows) lines.push(r.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd())
  if (!rows.length) lines.push('(no peers)')
  return lines.join('\n')
}
