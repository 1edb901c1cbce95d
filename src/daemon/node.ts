// Assembles the agent for a real node: netlink sockets, the iptables runner, the VICI client, the four
// subsystems in their apply order, and the status document. Used by `fabtunnel run`, `plan` and `cleanup`.
import { ROUTE_TABLE, RTPROT_FABTUNNEL } from '../fabedge.js'
import { readCertPem } from '../cert.js'
import type { TunnelConfig } from '../config/schema.js'
import type { Datapath, Role } from '../desired/types.js'
import { IptablesRunner } from '../iptables/runner.js'
import { mssRules, tcpMssText, type TcpMss } from '../iptables/mss.js'
import type { Logger } from '../log.js'
import { openNetfilter, openRoute, type NetlinkSocket } from '../netlink/index.js'
import { IptablesSubsystem } from '../reconcile/iptables.js'
import { IpsetsSubsystem, netlinkIpsetsPort } from '../reconcile/ipsets.js'
import { netlinkRoutesPort, RoutesSubsystem } from '../reconcile/routes.js'
import { TunnelsSubsystem } from '../reconcile/tunnels-subsystem.js'
import { viciTunnelsPort } from '../reconcile/tunnels-port.js'
import { Vici } from '../vici/index.js'
import { VERSION } from '../version.js'
import { codeCacheState } from '../code-cache.js'
import { Agent, type PassRecord } from './agent.js'
import { CniConflist, realCniFs, type CniFs, type CniOptions } from './cni.js'
import { Metrics } from './metrics.js'
import { pidfileRestarter } from '../mediation/charon-restart.js'
import { MediationController } from '../mediation/controller.js'
import type { MediationPolicy } from '../mediation/recovery.js'

export interface NodeOptions {
  config: string
  vici: string
  cert: string
  key: string
  ca: string
  datapath: Datapath
  /** `dpd_delay` of the connections this node initiates (charon duration, e.g. `3s`); default EDGE_DPD_DELAY. */
  dpdDelay?: string
  /** undefined: connector or edge, from the config. cloud: no tunnels, no VICI; routes via `connectorAddresses`. */
  role?: Role
  connectorAddresses?: { 4?: string; 6?: string }
  /** TCP MSS clamping (`--tcp-mss`); absent: none. */
  tcpMss?: TcpMss
  resyncMs: number
  coalesceMs?: number
  log: Logger
  /** Load credentials into charon (the daemon does; `plan` only reports). */
  credentials?: boolean
  viciTimeoutMs?: number
  /** Whether this node leads (read at every pass); default always. */
  leader?: () => boolean
  /** The CNI conflist to keep written (the daemon with --cni-conf-path); absent or null: not managed. */
  cni?: CniOptions | null
  cniFs?: CniFs
  /** Called after every pass, after the metrics (the datapath probes refresh their targets). */
  afterPass?: () => void
  /** Called after every pass with its record, on every role (the memory release, src/daemon/memory.ts). */
  onPass?: (record: PassRecord) => void
  /** Called when a config is accepted, before a pass uses it. */
  onConfig?: (config: TunnelConfig) => void
  /** Mediated edge-to-edge recovery: its timings, and charon's pid file for the last-resort restart (null: none). */
  mediation?: { policy: MediationPolicy; charonPidfile: string | null }
}

export interface NodeParts {
  agent: Agent
  metrics: Metrics
  /** The role given (undefined: from the config) and the cloud role's next hops, for /status. */
  role: Role | undefined
  connectorAddresses: { 4?: string; 6?: string } | undefined
  /** The `--tcp-mss` setting, for /status; absent: none. */
  tcpMss?: TcpMss
  /** null on a cloud node, which runs no tunnels and never opens the VICI socket. */
  tunnels: TunnelsSubsystem | null
  routes: RoutesSubsystem
  ipsets: IpsetsSubsystem
  iptables: IptablesSubsystem
  vici: Vici | null
  iptablesRunner: IptablesRunner
  routeSock: NetlinkSocket
  nfSock: NetlinkSocket
  /** The CNI conflist this node keeps written, or null. */
  cni: CniConflist | null
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
  const cloud = o.role === 'cloud'
  // A cloud node has no charon: no VICI client is created, so nothing ever dials the socket.
  const vici = cloud ? null : new Vici({ uri: o.vici, ...(o.viciTimeoutMs ? { timeoutMs: o.viciTimeoutMs } : {}) })
  let agent: Agent | undefined
  const mediation = vici === null ? null : new MediationController({
    ...(o.mediation ? { policy: o.mediation.policy } : {}),
    restarter: o.mediation?.charonPidfile ? pidfileRestarter(o.mediation.charonPidfile) : null,
    log: o.log.child({ subsystem: 'mediation' }),
  })
  const tunnels = vici === null ? null : new TunnelsSubsystem(viciTunnelsPort(vici), {
    ...(mediation ? { mediation } : {}),
    credentials: o.credentials === false ? null : { cert: o.cert, key: o.key, ca: o.ca },
    log: o.log.child({ subsystem: 'tunnels' }),
    trigger: (r, conns) => agent?.trigger(r, conns),
    onReconnect: () => metrics.viciReconnects.inc(),
  })
  const routes = new RoutesSubsystem(netlinkRoutesPort(routeSock), o.log.child({ subsystem: 'routes' }))
  const ipsets = new IpsetsSubsystem(netlinkIpsetsPort(nfSock), o.log.child({ subsystem: 'ipsets' }))
  const iptables = new IptablesSubsystem(iptablesRunner)
  const cni = o.cni?.confDir ? new CniConflist(o.cni, o.cniFs ?? realCniFs) : null
  agent = new Agent({
    configPath: o.config,
    datapath: o.datapath,
    ...(o.dpdDelay !== undefined ? { dpdDelay: o.dpdDelay } : {}),
    ...(o.tcpMss ? { tcpMss: o.tcpMss } : {}),
    ...(o.role ? { role: o.role } : {}),
    ...(o.connectorAddresses ? { connectorAddresses: o.connectorAddresses } : {}),
    subsystems: tunnels ? [ipsets, iptables, routes, tunnels] : [ipsets, iptables, routes],
    ...(cloud ? {} : { certPem: () => readCertPem(o.cert) }),
    gateways: () => routes.gateways(),
    log: o.log,
    metrics,
    resyncMs: o.resyncMs,
    ...(o.leader ? { leader: o.leader } : {}),
    ...(o.coalesceMs !== undefined ? { coalesceMs: o.coalesceMs } : {}),
    onPass: (record) => {
      o.onPass?.(record)
      if (!tunnels) return
      o.afterPass?.()
    },
    ...(cni ? { duties: [cniDuty(cni, o.log.child({ duty: 'cni' }))] } : {}),
    ...(o.onConfig ? { onConfig: o.onConfig } : {}),
  })
  if (tunnels) {
    metrics.peerCounts = () => tunnels.peerCounts()
  }
  o.log.info(cloud
    ? { backend: iptablesRunner.backend, role: 'cloud', connectorAddresses: o.connectorAddresses }
    : { backend: iptablesRunner.backend, datapath: o.datapath, vici: o.vici, ...(o.role ? { role: o.role } : {}), codeCache: codeCacheState() }, `fabtunnel ${VERSION} starting`)
  return {
    agent, metrics, role: o.role, connectorAddresses: o.connectorAddresses, ...(o.tcpMss ? { tcpMss: o.tcpMss } : {}), tunnels, routes, ipsets, iptables, vici, iptablesRunner, routeSock, nfSock, cni,
    paths: { cert: o.cert, key: o.key, ca: o.ca },
    close: nodeCloser(agent, o.log, async () => {
      await vici?.close().catch(() => undefined)
      routeSock.close()
      nfSock.close()
    }),
  }
}

/**
 * The conflist as a pass duty: written once the tunnels subsystem has not failed in the pass (FabEdge writes it
 * right after `ensureConnections` succeeds; peers still backing off are not a failure there either), from the
 * local endpoint's subnets of the config in force.
 */
export function cniDuty(cni: CniConflist, log: Logger): { name: string; afterPass(record: PassRecord, config: TunnelConfig): Promise<void> } {
  return {
    name: 'cni',
    async afterPass(record, config) {
      if (record.errors.tunnels !== undefined && !record.unsettled.includes('tunnels')) return
      if (await cni.sync(config.local.subnets)) log.info({ op: 'cni', path: cni.status.path, subnets: config.local.subnets }, 'CNI conflist written')
    },
  }
}

/** NodeParts.close: stops the agent within the grace period, then closes the connections under it either way. */
export function nodeCloser(agent: Agent, log: Logger, closeConnections: () => Promise<void>): (graceMs?: number) => Promise<void> {
  return async (graceMs?: number) => {
    if (!(await agent.stop(graceMs))) log.warn({ op: 'stop', graceMs }, 'a pass is still in flight; closing the connections under it')
    await closeConnections()
  }
}

/** The role a node runs as: the one given, else the config's local endpoint type. */
export function roleOfNode(p: Pick<NodeParts, 'role' | 'agent'>): Role | null {
  const cfg = p.agent.configInForce
  return p.role ?? (cfg ? (cfg.local.type === 'Connector' ? 'connector' : 'edge') : null)
}

/**
 * The `--tcp-mss` setting and whether this node's role clamps with it (a cloud node clamps only to a fixed value,
 * iptables/mss.ts); `clamping` is false without a config in force.
 */
export function tcpMssStatus(p: Pick<NodeParts, 'role' | 'agent' | 'tcpMss'>): { setting: string; clamping: boolean } {
  const mss = p.tcpMss ?? { mode: 'off' }
  const role = roleOfNode(p)
  return { setting: tcpMssText(mss), clamping: role !== null && mssRules(role, 4, mss).length > 0 }
}

/** The /status document. A cloud node reports no peers or tunnels: it runs none. */
export function statusDocument(p: NodeParts, datapath: Datapath): Record<string, unknown> {
  const cfg = p.agent.configInForce
  const types = new Map(cfg?.peers.map((x) => [x.name, x.type]) ?? [])
  const cloud = p.role === 'cloud'
  return {
    version: VERSION,
    node: cfg ? { name: cfg.local.name, type: cfg.local.type, role: roleOfNode(p) } : null,
    ...(cloud ? { role: 'cloud', connectorAddress: p.connectorAddresses ?? {} } : {}),
    ready: p.agent.ready,
    /** Subsystems whose last plan or apply failed: not ready until each succeeds again. */
    failing: p.agent.dirtySubsystems,
    ...(cloud ? {} : { datapath }),
    config: p.agent.configState,
    /** Why the certificate file is not the one in the connections (the last good one stays), or null. */
    certificateError: p.agent.certError,
    /** Why no desired state could be derived from the config in force (e.g. `--role` contradicts it), or null. */
    desiredError: p.agent.desiredError,
    lastPass: p.agent.lastPass,
    peers: p.tunnels?.peers().map((x) => ({ ...x, type: x.name === 'mediator' ? 'Mediator' : types.get(x.name) ?? 'unknown' })) ?? [],
    routes: { table: ROUTE_TABLE, protocol: RTPROT_FABTUNNEL, ...p.routes.summary() },
    ipsets: p.ipsets.summary(),
    iptables: p.iptables.summary(),
    tcpMss: tcpMssStatus(p),
    ...(p.tunnels ? { tunnels: p.tunnels.summary() } : {}),
    counters: p.agent.counters,
    /** The CNI conflist (path, when written, last error), or null when --cni-conf-path is empty. */
    cni: p.cni?.status ?? null,
  }
}
