// `fabtunnel run`: the long-running agent. Starts the HTTP endpoints, the reconcile loop and every trigger
// (config/credential directory watch, VICI events, netlink route/rule monitor, SIGHUP, the resync timer).
// SIGTERM/SIGINT stop it cleanly and leave the data plane up: teardown is `fabtunnel cleanup`, never a side
// effect of stopping.
import type { Datapath, Role } from '../desired/types.js'
import type { Logger } from '../log.js'
import type { TcpMss } from '../iptables/mss.js'
import { addrList, Monitor } from '../netlink/index.js'
import type { Addr } from '../netlink/addr.js'
import { passContext } from '../reconcile/subsystem.js'
import { startHttp, type HttpHandlers, type ListenAddress } from './http.js'
import { SoleLeadership, VipLeadership, type Leadership } from './leader.js'
import type { LeaseElectionOptions } from './lease.js'
import { routeTrigger, ruleTrigger } from './netlink-triggers.js'
import { buildNode, statusDocument, type NodeOptions, type NodeParts } from './node.js'
import { OptimizingCompiler, preloadBuiltins, tuneHeap } from '../heap-tuning.js'
import { boundHeapGrowth, fullGc, mallocTrim, MemoryRelease, type MemoryReleaseOptions } from './memory.js'
import type { PassRecord } from '../reconcile/engine.js'
import type { CniFs, CniOptions } from './cni.js'
import { IP_FORWARD, realSysctlFs, sysctlEnsure, type SysctlFs } from './sysctl.js'
import { watchFiles } from './watch.js'
import { startProbes, type Probes } from '../probe/daemon.js'
import type { ProbePort } from '../probe/port.js'
import type { ProberOptions } from '../probe/prober.js'

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
  /** TCP MSS clamping (`--tcp-mss`, iptables/mss.ts); absent: none. */
  tcpMss?: TcpMss
  resyncMs: number
  log: Logger
  /** Set net.ipv4.ip_forward=1 at start (FabEdge's agent does; a failure stops the start with a SysctlError). */
  ipForward?: boolean
  /** Keep the CNI conflist written (see cni.ts); null or an empty confDir: not managed. */
  cni?: CniOptions | null
  /** Mediated edge-to-edge recovery (`--mediation-*`, `--charon-pidfile`); default policy, no charon restarts. */
  mediation?: NodeOptions['mediation']
  /** How long SIGTERM waits for a pass in flight before closing the connections under it (default 3 s). */
  stopGraceMs?: number
  /** Connector leader election (`--leader-election`); default none (always the leader). */
  election?: ElectionOptions
  /** Datapath probes (`--probe-*`, docs/probes.md); absent or null: off. Never on a cloud node (no tunnels). */
  probes?: Omit<ProberOptions, 'policy' | 'tickMs'> | null
}

/**
 * `--leader-election`: none; vip (`--vip`, canonical); lease (the Lease flags; `vip` optional there: when keepalived
 * moves a VIP after the lease, a stopping leader drains it like in vip mode).
 */
export type ElectionOptions =
  | { mode: 'none' }
  | { mode: 'vip'; vip: string }
  | { mode: 'lease'; lease: LeaseElectionOptions; vip?: string }

export interface Running {
  node: NodeParts
  httpAddress: { address: string; port: number }
  /** Re-reads config and credentials and re-observes everything (SIGHUP; the caller owns the signal handler). */
  sighup(): void
  stop(): Promise<void>
}

/** The route/rule monitor as the daemon uses it (the netlink Monitor, or a stand-in in unit tests). */
export type RouteMonitor = Pick<Monitor, 'on' | 'off' | 'close'>

/** What startDaemon builds on; unit tests replace them so no socket to the host's kernel or charon is opened. */
export interface DaemonDeps {
  buildNode(o: NodeOptions): Promise<NodeParts>
  openMonitor(): RouteMonitor
  /** The election of `o.election`; default: the real one (vip: netlink; lease: the Kubernetes API, in-cluster). */
  leadership?(election: ElectionOptions, ctx: { node: NodeParts; monitor: RouteMonitor; log: Logger }): Promise<Leadership>
  /** /proc/sys (default: the real one). */
  sysctl?: SysctlFs
  /** The filesystem under the CNI conf dir (default: the real one). */
  cniFs?: CniFs
  /** The probes' I/O (default: raw ICMP sockets through the addon, and this node's addresses over netlink). */
  probeIo?: { port(): ProbePort; addresses(): Promise<string[]> }
  /** Memory given back once quiet after a full pass (src/daemon/memory.ts); absent: none (unit tests). */
  releaseMemory?: () => Pick<MemoryReleaseOptions, 'gc' | 'trim'>
  /** V8's optimizing and baseline compilers set by the size of each config accepted (src/heap-tuning.ts); absent: left alone. */
  optimizingCompiler?: () => Pick<OptimizingCompiler, 'forPeers'>
}

const REAL_DEPS: DaemonDeps = {
  buildNode, openMonitor: () => Monitor.open({ ref: false }), sysctl: realSysctlFs,
  releaseMemory: () => {
    // The daemon's V8 settings, after the built-in modules it will use are loaded (heap-tuning.ts says why).
    preloadBuiltins()
    tuneHeap()
    boundHeapGrowth()
    return { gc: fullGc(), trim: mallocTrim }
  },
  optimizingCompiler: () => new OptimizingCompiler(),
}

/** The real election of each mode. The Kubernetes client is loaded only in lease mode (start-up CPU). */
export async function createLeadership(e: ElectionOptions, ctx: { node: NodeParts; monitor: RouteMonitor; log: Logger }): Promise<Leadership> {
  if (e.mode === 'none') return new SoleLeadership()
  if (e.mode === 'vip') {
    const { monitor, node, log } = ctx
    return new VipLeadership(e.vip, {
      dump: () => addrList(node.routeSock),
      subscribe: (fn: (action: 'new' | 'del', addr: Addr) => void) => {
        monitor.on('addr', fn)
        return () => { monitor.off('addr', fn) }
      },
      onResync: (fn: () => void) => {
        monitor.on('resync', fn)
        return () => { monitor.off('resync', fn) }
      },
    }, { onDumpError: (err) => log.error({ op: 'leadership', err: err.message }, 'cannot list addresses after a netlink overrun; leadership may be stale until the next address event') })
  }
  const { kubernetesLeaseApi, LeaseLeadership } = await import('./lease.js')
  return new LeaseLeadership(await kubernetesLeaseApi(e.lease.namespace, e.lease.name), e.lease, { log: ctx.log.child({ op: 'lease' }) })
}

/**
 * What the HTTP endpoints answer: health is the process (503 "draining" once SIGTERM arrived, so keepalived's check
 * fails at once and the VIP moves), readiness the last pass, leadership the election.
 */
export function daemonHandlers(node: Pick<NodeParts, 'agent' | 'metrics'> & Partial<NodeParts>, leadership: Pick<Leadership, 'isLeader'>, status: () => unknown, draining: () => boolean = () => false): HttpHandlers {
  return {
    healthy: () => !draining(),
    draining,
    ready: () => node.agent.ready,
    leader: () => leadership.isLeader(),
    status,
    registry: node.metrics.registry,
  }
}

export async function startDaemon(o: RunOptions, deps: DaemonDeps = REAL_DEPS): Promise<Running> {
  const { log } = o
  if (o.ipForward) {
    // Before anything else: a node that cannot forward must not start (and claim readiness) as a gateway.
    const before = await sysctlEnsure(IP_FORWARD, '1', deps.sysctl ?? realSysctlFs)
    if (before === null) log.info({ op: 'sysctl', key: 'net.ipv4.ip_forward', value: '1' }, 'net.ipv4.ip_forward already 1')
    else log.info({ op: 'sysctl', key: 'net.ipv4.ip_forward', from: before, to: '1' }, 'net.ipv4.ip_forward set to 1')
  }
  const election = o.election ?? { mode: 'none' }
  // Read at every pass; the election replaces it once started (before the first pass).
  let leadership: Leadership = new SoleLeadership()
  let probes: Probes | null = null
  const release = deps.releaseMemory
    ? new MemoryRelease({ ...deps.releaseMemory(), onRelease: (r) => log.debug({ op: 'memory', ms: Math.round(r.ms * 10) / 10, rssBefore: r.rssBefore, rssAfter: r.rssAfter }, 'memory released after a full pass') })
    : null
  const compiler = deps.optimizingCompiler?.() ?? null
  const onConfig = (config: { peers: readonly unknown[] }): void => {
    const change = compiler?.forPeers(config.peers.length)
    if (change) log.info({ op: 'v8', sparkplug: change === 'on', turbofan: change === 'on', peers: config.peers.length }, change === 'on' ? 'optimizing compiler on: the config is not small' : 'optimizing compiler off: the config is small')
  }
  const node = await deps.buildNode({
    ...o, credentials: true, onConfig, leader: () => leadership.isLeader(), ...(deps.cniFs ? { cniFs: deps.cniFs } : {}), afterPass: () => probes?.refresh(),
    ...(release ? { onPass: (record: PassRecord) => release.afterPass(record) } : {}),
  })
  const { agent, metrics } = node
  const monitor = deps.openMonitor()
  leadership = await (deps.leadership ?? createLeadership)(election, { node, monitor, log })
  let draining = false
  if (o.probes && node.tunnels && o.role !== 'cloud') {
    const tunnels = node.tunnels
    probes = startProbes(o.probes, {
      config: () => agent.configInForce,
      active: () => leadership.isLeader(),
      peers: () => tunnels.peers(),
      tunnelStates: () => tunnels.tunnelStates(),
      addresses: deps.probeIo?.addresses ?? (async () => (await addrList(node.routeSock)).map((a) => a.address)),
      repairs: { reestablish: (peer, scope, stillNeeded) => tunnels.reestablish(peer, scope, stillNeeded) },
      metrics,
      log,
    }, deps.probeIo?.port())
    monitor.on('addr', () => probes?.addressesChanged())
  }
  const status = (): unknown => ({ ...statusDocument(node, o.datapath), leadership: leadership.status(), probes: probes?.status() ?? { enabled: false } })
  const http = await startHttp(o.listen, daemonHandlers(node, leadership, status, () => draining))
  log.info({ listen: `${http.address.address}:${http.address.port}` }, 'HTTP endpoints up (/healthz /readyz /is-leader /metrics /status)')

  // Not awaited: a frozen charon would hold start-up (and a SIGTERM during it) for the VICI timeout. If charon is
  // not up yet, every pass tries again (with the retry backoff) until it can subscribe.
  node.tunnels?.subscribe().catch((err: unknown) => {
    log.warn({ err: (err as Error).message }, 'cannot reach charon yet; retrying with every pass')
  })

  /**
   * Demotion: the pass that the change triggered removes the leader-only state (routes first: no route may point
   * at an SA about to go); then our own IKE_SAs are terminated, connections kept loaded, so edges re-establish
   * with the new leader instead of waiting for DPD.
   */
  const demote = async (passed: Promise<void>, op: 'demote' | 'standby-start' = 'demote'): Promise<void> => {
    await passed
    if (leadership.isLeader() || draining) return
    const names = await ownConns()
    if (!names) return
    const n = await node.tunnels!.terminateOwnSas(names, (conn, err) => log.warn({ op, conn, err: err.message }, 'cannot terminate SA'))
    log.info({ op, terminated: n }, op === 'demote' ? 'demoted: own IKE_SAs terminated, connections stay loaded' : 'started as standby: own IKE_SAs left from an earlier time as leader terminated, connections stay loaded')
  }
  /** The connections of a connector's config in force (null on an edge or without config: nothing to gate). */
  const ownConns = async (): Promise<Set<string> | null> => {
    // A cloud node reads the connector's config but runs no tunnels.
    if (agent.configInForce?.local.type !== 'Connector' || !node.tunnels) return null
    const d = await agent.desired()
    return d ? new Set(Object.keys(d.conns)) : null
  }
  metrics.leader.set(leadership.isLeader() ? 1 : 0)
  leadership.onChange((leader) => {
    metrics.leader.set(leader ? 1 : 0)
    metrics.leaderTransitions.inc()
    log.info({ op: 'leadership', mode: leadership.mode, leader }, leader ? 'promoted: initiating tunnels and applying routes' : 'demoted: standby keeps credentials and responder connections loaded')
    // Registered before the trigger: the pass it starts is the one to wait for.
    const passed = agent.nextPass()
    agent.trigger(leader ? 'leader:promoted' : 'leader:demoted')
    if (!leader && !draining) demote(passed).catch((err: unknown) => log.error({ op: 'demote', err: (err as Error).message }, 'demotion: cannot terminate own SAs'))
  })
  await leadership.start()
  log.info({ op: 'leadership', mode: leadership.mode, leader: leadership.isLeader(), ...(election.mode !== 'none' && election.vip ? { vip: election.vip } : {}) }, 'leader election started')
  metrics.leader.set(leadership.isLeader() ? 1 : 0)

  monitor.on('route', (action, route) => {
    // Table 220 as the routes subsystem remembers it follows every notification, ours included.
    node.routes.observe(action, route)
    const reason = routeTrigger(action, route)
    // A table-220 route event concerns its destination alone (a scoped pass, PassScope); a gateway change all.
    if (reason) agent.trigger(reason, reason.startsWith('netlink:route-') ? [route.dst] : undefined)
  })
  monitor.on('rule', (action, rule) => {
    const reason = ruleTrigger(action, rule)
    if (reason) agent.trigger(reason)
  })
  monitor.on('resync', () => {
    // Notifications were lost: what the routes subsystem remembers of table 220 may be wrong.
    node.routes.observe('lost')
    agent.trigger('netlink:resync')
  })
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
  // A connector that starts as a standby may find IKE_SAs of its own from an earlier time as leader (a SIGTERM drain
  // that could not end them, or this agent killed while its charon lived on). They are bound to a VIP this node no
  // longer holds and nothing else would end them (a connector runs no DPD; under libipsec charon keeps their
  // table-220 routes). Once the first pass has settled the standby state, they go as on a demotion.
  if (election.mode !== 'none') {
    const firstPass = agent.nextPass(30_000)
    demote(firstPass, 'standby-start').catch((err: unknown) => log.error({ op: 'standby-start', err: (err as Error).message }, 'cannot terminate own SAs left from an earlier time as leader'))
  }
  agent.start()

  /**
   * SIGTERM on the leader. With a VIP still here: first drop new IKE_SA_INITs to it (iptables drainRules), then
   * terminate our IKE_SAs, so their DELETEs still leave from the VIP and the edges' immediate re-initiations are
   * not answered by this dying node; their retransmissions reach the next VIP holder. docs/deploy.md explains it.
   */
  const drainLeader = async (): Promise<void> => {
    const names = await ownConns()
    if (!names) return
    const vip = election.mode === 'none' ? undefined : election.vip
    if (vip) {
      const ctx = passContext(['drain'])
      const desired = await agent.desired(ctx, { drainVip: vip })
      if (desired) await node.iptables.apply(await node.iptables.plan(desired, ctx))
    }
    const n = await node.tunnels!.terminateOwnSas(names, (conn, err) => log.warn({ op: 'drain', conn, err: err.message }, 'cannot terminate SA'))
    log.info({ op: 'drain', terminated: n, ...(vip ? { vip } : {}) }, 'leader stopping: own IKE_SAs terminated, new IKE_SA_INITs to the VIP dropped')
  }

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
        // From now on /healthz answers 503 "draining": keepalived's check fails at once and the VIP moves.
        draining = true
        const stopStarted = Date.now()
        const leading = election.mode !== 'none' && leadership.isLeader()
        await bounded(leadership.release(), 1000).catch((err: unknown) => log.warn({ op: 'stop', err: (err as Error).message }, 'cannot release leadership'))
        await leadership.stop()
        await watch.close()
        monitor.close()
        probes?.close()
        release?.stop()
        if (leading) {
          // No pass may re-initiate or re-load behind the terminates below.
          await agent.stop(Math.min(o.stopGraceMs ?? 3000, 1500))
          // Whatever is left of a 4.5 s budget (the process must be gone within 5 s), at least 1.5 s: on a loaded node
          // the iptables write and the terminates can take seconds, and a drain cut short sends no DELETE at all.
          await bounded(drainLeader(), Math.max(1500, 4500 - (Date.now() - stopStarted))).catch((err: unknown) => log.warn({ op: 'stop', err: (err as Error).message }, 'draining: cannot terminate own SAs'))
        }
        await http.close()
        await node.close(o.stopGraceMs ?? 3000)
        log.info('stopped; the data plane stays up (use `fabtunnel cleanup` to remove it)')
      })()),
  }
}

/** `p`, or a rejection after `ms` (its work may go on; the caller must not depend on it). */
function bounded<T>(p: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<never>((_, reject) => { timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms`)), ms) })
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer))
}
