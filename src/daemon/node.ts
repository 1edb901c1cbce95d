// Assembles the agent for a real node: netlink sockets, the iptables runner, the VICI client, the four
// subsystems in their apply order, and the status document. Used by `fabtunnel run`, `plan` and `cleanup`.
import { ROUTE_TABLE, RTPROT_FABTUNNEL } from '../fabedge.js'
import { readCertPem } from '../cert.js'
import type { Datapath } from '../desired/types.js'
import { IptablesRunner } from '../iptables/runner.js'
import type { Logger } from '../log.js'
import { openNetfilter, openRoute, type NetlinkSocket } from '../netlink/index.js'
import { IptablesSubsystem } from '../reconcile/iptables.js'
import { IpsetsSubsystem, netlinkIpsetsPort } from '../reconcile/ipsets.js'
import { netlinkRoutesPort, RoutesSubsystem } from '../reconcile/routes.js'
import { TunnelsSubsystem } from '../reconcile/tunnels-subsystem.js'
import { viciTunnelsPort } from '../reconcile/tunnels-port.js'
import { Vici } from '../vici/index.js'
import { VERSION } from '../version.js'
import { Agent } from './agent.js'
import { Metrics } from './metrics.js'

export interface NodeOptions {
  config: string
  vici: string
  cert: string
  key: string
  ca: string
  datapath: Datapath
  /** `dpd_delay` of the connections this node initiates (charon duration, e.g. `3s`); default EDGE_DPD_DELAY. */
  dpdDelay?: string
  resyncMs: number
  coalesceMs?: number
  log: Logger
  /** Load credentials into charon (the daemon does; `plan` only reports). */
  credentials?: boolean
  viciTimeoutMs?: number
}

export interface NodeParts {
  agent: Agent
  metrics: Metrics
  tunnels: TunnelsSubsystem
  routes: RoutesSubsystem
  ipsets: IpsetsSubsystem
  iptables: IptablesSubsystem
  vici: Vici
  iptablesRunner: IptablesRunner
  routeSock: NetlinkSocket
  nfSock: NetlinkSocket
  /** The credential files the node was built with (cleanup finds our key in charon through the certificate). */
  paths: { cert: string; key: string; ca: string }
  /**
   * Stops the agent, waiting up to `graceMs` for a pass in flight, then closes charon's and the kernel's sockets
   * (a pass still stuck on them fails at once instead of holding the process).
   */
  close(graceMs?: number): Promise<void>
}

export async function buildNode(o: NodeOptions): Promise<NodeParts> {
  const metrics = new Metrics()
  const iptablesRunner = await IptablesRunner.create()
  const routeSock = openRoute()
  const nfSock = openNetfilter()
  const vici = new Vici({ uri: o.vici, ...(o.viciTimeoutMs ? { timeoutMs: o.viciTimeoutMs } : {}) })
  let agent: Agent | undefined
  const tunnels = new TunnelsSubsystem(viciTunnelsPort(vici), {
    credentials: o.credentials === false ? null : { cert: o.cert, key: o.key, ca: o.ca },
    log: o.log.child({ subsystem: 'tunnels' }),
    trigger: (r) => agent?.trigger(r),
    onReconnect: () => metrics.viciReconnects.inc(),
  })
  const routes = new RoutesSubsystem(netlinkRoutesPort(routeSock), o.log.child({ subsystem: 'routes' }))
  const ipsets = new IpsetsSubsystem(netlinkIpsetsPort(nfSock), o.log.child({ subsystem: 'ipsets' }))
  const iptables = new IptablesSubsystem(iptablesRunner)
  agent = new Agent({
    configPath: o.config,
    datapath: o.datapath,
    ...(o.dpdDelay !== undefined ? { dpdDelay: o.dpdDelay } : {}),
    subsystems: [ipsets, iptables, routes, tunnels],
    certPem: () => readCertPem(o.cert),
    gateways: () => routes.gateways(),
    log: o.log,
    metrics,
    resyncMs: o.resyncMs,
    ...(o.coalesceMs !== undefined ? { coalesceMs: o.coalesceMs } : {}),
    onPass: () => {
      const peers = tunnels.peers().filter((p) => p.name !== 'mediator')
      metrics.peers.set({ state: 'desired' }, peers.length)
      metrics.peers.set({ state: 'loaded' }, peers.filter((p) => p.loaded).length)
      metrics.peers.set({ state: 'up' }, peers.filter((p) => p.state === 'up').length)
      metrics.childSasUp.set(peers.reduce((n, p) => n + p.childrenUp, 0))
    },
  })
  o.log.info({ backend: iptablesRunner.backend, datapath: o.datapath, vici: o.vici }, `fabtunnel ${VERSION} starting`)
  return {
    agent, metrics, tunnels, routes, ipsets, iptables, vici, iptablesRunner, routeSock, nfSock,
    paths: { cert: o.cert, key: o.key, ca: o.ca },
    close: nodeCloser(agent, o.log, async () => {
      await vici.close().catch(() => undefined)
      routeSock.close()
      nfSock.close()
    }),
  }
}

/** NodeParts.close: stops the agent within the grace period, then closes the connections under it either way. */
export function nodeCloser(agent: Agent, log: Logger, closeConnections: () => Promise<void>): (graceMs?: number) => Promise<void> {
  return async (graceMs?: number) => {
    if (!(await agent.stop(graceMs))) log.warn({ op: 'stop', graceMs }, 'a pass is still in flight; closing the connections under it')
    await closeConnections()
  }
}

/** The /status document. */
export function statusDocument(p: NodeParts, datapath: Datapath): Record<string, unknown> {
  const cfg = p.agent.configInForce
  const types = new Map(cfg?.peers.map((x) => [x.name, x.type]) ?? [])
  return {
    version: VERSION,
    node: cfg ? { name: cfg.local.name, type: cfg.local.type, role: cfg.local.type === 'Connector' ? 'connector' : 'edge' } : null,
    ready: p.agent.ready,
    /** Subsystems whose last plan or apply failed: not ready until each succeeds again. */
    failing: p.agent.dirtySubsystems,
    datapath,
    config: p.agent.configState,
    /** Why the certificate file is not the one in the connections (the last good one stays), or null. */
    certificateError: p.agent.certError,
    lastPass: p.agent.lastPass,
    peers: p.tunnels.peers().map((x) => ({ ...x, type: x.name === 'mediator' ? 'Mediator' : types.get(x.name) ?? 'unknown' })),
    routes: { table: ROUTE_TABLE, protocol: RTPROT_FABTUNNEL, ...p.routes.summary() },
    ipsets: p.ipsets.summary(),
    iptables: p.iptables.summary(),
    tunnels: p.tunnels.summary(),
    counters: p.agent.counters,
  }
}
