// The prober inside `fabtunnel run`: real ICMP port, repairs through the tunnels subsystem, metrics on the agent's
// registry. Targets are recomputed after every pass from the config in force, this node's addresses (re-read when
// the config changed or an address came or went) and the tunnels subsystem's per-peer state.
import type { TunnelConfig } from '../config/schema.js'
import type { Logger } from '../log.js'
import type { Metrics } from '../daemon/metrics.js'
import type { PeerStatus } from '../reconcile/tunnels-status.js'
import { IcmpProbePort } from './icmp.js'
import { probeMetricsSink } from './metrics.js'
import { monotonicMs, type ProbePort } from './port.js'
import { Prober, type PeerTunnel, type ProberOptions, type ProberStatus, type RepairPort } from './prober.js'
import { probeTargets } from './targets.js'

export interface ProbesHost {
  config(): TunnelConfig | null
  /** Whether this node runs its tunnels now (a standby connector does not: it probes nothing). Default: always. */
  active?(): boolean
  /** The tunnels subsystem's peers (its last observation). */
  peers(): PeerStatus[]
  /**
   * The same reduced to what the prober reads, per peer; cheaper than peers() (no per-peer entries with their SA
   * lists and timestamps), which it replaces when given.
   */
  tunnelStates?(): Map<string, PeerTunnel>
  /** This node's addresses (bare). */
  addresses(): Promise<string[]>
  repairs: RepairPort
  metrics: Metrics
  log: Logger
}

export interface Probes {
  /** After every pass. */
  refresh(): void
  /** An address came or went: re-read them on the next refresh. */
  addressesChanged(): void
  status(): ProberStatus
  close(): void
}

const ESTABLISHED = new Set(['ESTABLISHED'])

export function peerTunnel(p: PeerStatus): PeerTunnel {
  return { initiator: p.initiator, ike: p.state === 'up' ? 'up' : p.ike.some((s) => ESTABLISHED.has(s.state)) ? 'established' : 'down' }
}

export function startProbes(o: Omit<ProberOptions, 'policy' | 'tickMs'>, host: ProbesHost, port: ProbePort = new IcmpProbePort()): Probes {
  const log = host.log.child({ subsystem: 'probes' })
  // The sink reads the prober's rows lazily (at scrape time), after the prober exists.
  let prober: Prober | null = null
  const metrics = probeMetricsSink(host.metrics, () => prober?.gaugeRows() ?? [])
  prober = new Prober(o, { port, repairs: host.repairs, log, metrics, now: monotonicMs })
  let addrs: string[] | null = null
  let lastConfig: TunnelConfig | null = null
  let refreshing: Promise<void> | null = null
  let again = false
  const refreshNow = async (): Promise<void> => {
    const config = host.config()
    if (!config) return
    if (host.active && !host.active()) {
      // A standby holds no SAs: every peer would read down. Its status lists no probed peers instead.
      prober!.update(new Map(), new Map())
      return
    }
    if (addrs === null || config !== lastConfig) {
      addrs = await host.addresses()
      targets = null
    }
    lastConfig = config
    // The targets follow the config and the addresses only (O(peers) to compute): kept until either changes.
    targets ??= probeTargets(config, addrs)
    const tunnels = host.tunnelStates?.() ?? new Map(host.peers().map((p) => [p.name, peerTunnel(p)]))
    prober!.update(targets, tunnels)
    lastRefresh = monotonicMs()
  }
  let targets: ReturnType<typeof probeTargets> | null = null
  let lastRefresh = Number.NEGATIVE_INFINITY
  let delayed: NodeJS.Timeout | null = null
  // A pass asks for a refresh; it runs at most once per probe interval (every peer's status is walked: O(peers)),
  // at once when the config changed (new or removed peers are probed, or no longer, without waiting).
  const refresh = (): void => {
    const config = host.config()
    const wait = lastRefresh + Math.max(o.intervalMs, 1000) - monotonicMs()
    if (config === lastConfig && addrs !== null && wait > 0) {
      if (!delayed) {
        delayed = setTimeout(() => {
          delayed = null
          refresh()
        }, wait)
        delayed.unref()
      }
      return
    }
    if (refreshing) {
      again = true
      return
    }
    refreshing = refreshNow().catch((err: unknown) => {
      addrs = null
      log.warn({ op: 'probe', err: (err as Error).message }, 'cannot refresh probe targets; retrying after the next pass')
    }).finally(() => {
      refreshing = null
      if (again) {
        again = false
        refresh()
      }
    })
  }
  prober.start()
  log.info({ op: 'probe', intervalMs: o.intervalMs, downAfter: o.downAfter, maxRate: o.maxRate, repair: o.repair }, 'datapath probes on')
  return {
    refresh,
    addressesChanged: () => { addrs = null },
    status: () => prober!.status(),
    close: () => {
      if (delayed) clearTimeout(delayed)
      prober!.close()
      host.metrics.probeSnapshot = null
    },
  }
}
