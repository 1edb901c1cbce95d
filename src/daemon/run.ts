// `fabtunnel run`: the long-running agent. Starts the HTTP endpoints, the reconcile loop and every trigger
// (config/credential directory watch, VICI events, netlink route/rule monitor, SIGHUP, the resync timer).
// SIGTERM/SIGINT stop it cleanly and leave the data plane up: teardown is `fabtunnel cleanup`, never a side
// effect of stopping.
import type { Datapath, Role } from '../desired/types.js'
import type { Logger } from '../log.js'
import { Monitor } from '../netlink/index.js'
import { startHttp, type HttpHandlers, type ListenAddress } from './http.js'
import { SOLE_LEADER, type Leadership } from './leader.js'
import { routeTrigger, ruleTrigger } from './netlink-triggers.js'
import { buildNode, statusDocument, type NodeOptions, type NodeParts } from './node.js'
import { watchFiles } from './watch.js'

export interface RunOptions {
  config: string
  vici: string
  cert: string
  key: string
  ca: string
  listen: ListenAddress
  datapath: Datapath
  /** `dpd_delay` of the connections this node initiates (charon duration, e.g. `3s`); default EDGE_DPD_DELAY. */
  dpdDelay?: string
  /** undefined: from the config (connector or edge); cloud: no tunnels, routes via `connectorAddresses`. */
  role?: Role
  connectorAddresses?: { 4?: string; 6?: string }
  resyncMs: number
  log: Logger
  /** How long SIGTERM waits for a pass in flight before closing the connections under it (default 3 s). */
  stopGraceMs?: number
}

export interface Running {
  node: NodeParts
  httpAddress: { address: string; port: number }
  /** Re-reads config and credentials and re-observes everything (SIGHUP; the caller owns the signal handler). */
  sighup(): void
  stop(): Promise<void>
}

/** The route/rule monitor as the daemon uses it (the netlink Monitor, or a stand-in in unit tests). */
export type RouteMonitor = Pick<Monitor, 'on' | 'close'>

/** What startDaemon builds on; unit tests replace both so no socket to the host's kernel or charon is opened. */
export interface DaemonDeps {
  buildNode(o: NodeOptions): Promise<NodeParts>
  openMonitor(): RouteMonitor
}

const REAL_DEPS: DaemonDeps = { buildNode, openMonitor: () => Monitor.open({ ref: false }) }

/** What the HTTP endpoints answer: health is the process, readiness the last pass, leadership the election. */
export function daemonHandlers(node: Pick<NodeParts, 'agent' | 'metrics'> & Partial<NodeParts>, leadership: Leadership, status: () => unknown): HttpHandlers {
  return {
    healthy: () => true,
    ready: () => node.agent.ready,
    leader: () => leadership.isLeader(),
    status,
    registry: node.metrics.registry,
  }
}

export async function startDaemon(o: RunOptions, deps: DaemonDeps = REAL_DEPS): Promise<Running> {
  const { log } = o
  const node = await deps.buildNode({ ...o, credentials: true })
  const { agent } = node
  const http = await startHttp(o.listen, daemonHandlers(node, SOLE_LEADER, () => statusDocument(node, o.datapath)))
  log.info({ listen: `${http.address.address}:${http.address.port}` }, 'HTTP endpoints up (/healthz /readyz /is-leader /metrics /status)')

  // Not awaited: a frozen charon would hold start-up (and a SIGTERM during it) for the VICI timeout. If charon is
  // not up yet, every pass tries again (with the retry backoff) until it can subscribe.
  node.tunnels?.subscribe().catch((err: unknown) => {
    log.warn({ err: (err as Error).message }, 'cannot reach charon yet; retrying with every pass')
  })

  const monitor = deps.openMonitor()
  monitor.on('route', (action, route) => {
    const reason = routeTrigger(action, route)
    if (reason) agent.trigger(reason)
  })
  monitor.on('rule', (action, rule) => {
    const reason = ruleTrigger(action, rule)
    if (reason) agent.trigger(reason)
  })
  monitor.on('resync', () => agent.trigger('netlink:resync'))
  monitor.on('error', (err) => log.warn({ err: err.message }, 'netlink monitor error'))

  const watch = watchFiles(
    // A cloud node has no credentials: only its config is watched.
    o.role === 'cloud'
      ? [{ path: o.config, kind: 'config' }]
      : [
        { path: o.config, kind: 'config' },
        { path: o.cert, kind: 'credentials' },
        { path: o.key, kind: 'credentials' },
        { path: o.ca, kind: 'credentials' },
      ],
    (kind) => agent.trigger(kind),
    (err) => log.warn({ err: (err as Error).message }, 'file watch error; the resync timer still covers changes'),
  )

  // A change between start-up and the watch being armed would otherwise wait for the resync timer. Bounded: a
  // directory that cannot be scanned is reported by the watch itself and must not hold start-up.
  await Promise.race([watch.ready, new Promise((r) => setTimeout(r, 2000).unref())])
  agent.start()

  let stopping: Promise<void> | null = null
  return {
    node,
    httpAddress: { address: http.address.address, port: http.address.port },
    sighup: () => {
      log.info({ op: 'sighup' }, 'SIGHUP: re-reading config and credentials')
      agent.trigger('sighup')
    },
    stop: () =>
      (stopping ??= (async () => {
        await watch.close()
        monitor.close()
        await http.close()
        await node.close(o.stopGraceMs ?? 3000)
        log.info('stopped; the data plane stays up (use `fabtunnel cleanup` to remove it)')
      })()),
  }
}
