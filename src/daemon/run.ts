// `fabtunnel run`: the long-running agent. Starts the HTTP endpoints, the reconcile loop and every trigger
// (config/credential directory watch, VICI events, netlink route/rule monitor, SIGHUP, the resync timer).
// SIGTERM/SIGINT stop it cleanly and leave the data plane up: teardown is `fabtunnel cleanup`, never a side
// effect of stopping.
import type { Datapath } from '../desired/types.js'
import type { Logger } from '../log.js'
import { Monitor } from '../netlink/index.js'
import { startHttp, type ListenAddress } from './http.js'
import { routeTrigger, ruleTrigger } from './netlink-triggers.js'
import { buildNode, statusDocument, type NodeParts } from './node.js'
import { watchFiles } from './watch.js'

export interface RunOptions {
  config: string
  vici: string
  cert: string
  key: string
  ca: string
  listen: ListenAddress
  datapath: Datapath
  resyncMs: number
  log: Logger
}

export interface Running {
  node: NodeParts
  httpAddress: { address: string; port: number }
  stop(): Promise<void>
}

export async function startDaemon(o: RunOptions): Promise<Running> {
  const { log } = o
  const node = await buildNode({ ...o, credentials: true })
  const { agent } = node
  const http = await startHttp(o.listen, {
    healthy: () => true,
    ready: () => agent.ready,
    // keepalived moves the VIP to the connector whose agent answers `true`: only one that has converged.
    leader: () => agent.ready,
    status: () => statusDocument(node, o.datapath),
    registry: node.metrics.registry,
  })
  log.info({ listen: `${http.address.address}:${http.address.port}` }, 'HTTP endpoints up (/healthz /readyz /is-leader /metrics /status)')

  await node.tunnels.subscribe().catch((err: unknown) => {
    // charon not up yet: every pass tries again (with the retry backoff) until it can subscribe.
    log.warn({ err: (err as Error).message }, 'cannot reach charon yet; retrying with every pass')
  })

  const monitor = Monitor.open({ ref: false })
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
    [
      { path: o.config, kind: 'config' },
      { path: o.cert, kind: 'credentials' },
      { path: o.key, kind: 'credentials' },
      { path: o.ca, kind: 'credentials' },
    ],
    (kind) => agent.trigger(kind),
    (err) => log.warn({ err: (err as Error).message }, 'file watch error; the resync timer still covers changes'),
  )

  const onHup = (): void => {
    log.info({ op: 'sighup' }, 'SIGHUP: re-reading config and credentials')
    agent.trigger('sighup')
  }
  process.on('SIGHUP', onHup)
  agent.start()

  let stopping: Promise<void> | null = null
  return {
    node,
    httpAddress: { address: http.address.address, port: http.address.port },
    stop: () =>
      (stopping ??= (async () => {
        process.off('SIGHUP', onHup)
        await watch.close()
        monitor.close()
        await http.close()
        await node.close()
        log.info('stopped; the data plane stays up (use `fabtunnel cleanup` to remove it)')
      })()),
  }
}
