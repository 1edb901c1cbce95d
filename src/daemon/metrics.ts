// Prometheus metrics of the agent (prom-client, own registry so library users never see globals).
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client'
import { logWriteFailures } from '../log.js'
import { daemonFlags } from '../v8-flags.js'

/**
 * A registry that registers Node's process metrics (prom-client's collectDefaultMetrics: CPU, memory, file
 * descriptors, event-loop lag, GC, heap spaces) on its first scrape instead of at start: they load perf_hooks and
 * v8's heap statistics and start observers, a start-up cost (issue 13) for an agent nobody may scrape. Every one of
 * them is read when collected, except the GC histogram, which counts collections from the first scrape on.
 */
class AgentRegistry extends Registry {
  /** Runs once, before the first scrape's collection. */
  firstScrape: (() => void) | null = null

  private ensure(): void {
    const f = this.firstScrape
    this.firstScrape = null
    f?.()
  }

  override metrics(): Promise<string> {
    this.ensure()
    return super.metrics()
  }

  override getMetricsAsJSON(): ReturnType<Registry['getMetricsAsJSON']> {
    this.ensure()
    return super.getMetricsAsJSON()
  }
}

export class Metrics {
  readonly registry: Registry = new AgentRegistry()
  readonly passes = new Counter({ name: 'fabtunnel_passes_total', help: 'Reconcile passes by result (converged: wrote nothing; applied: wrote; error: a subsystem failed)', labelNames: ['result'], registers: [this.registry] })
  readonly passDuration = new Histogram({ name: 'fabtunnel_pass_duration_seconds', help: 'Duration of reconcile passes', buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10], registers: [this.registry] })
  readonly opsApplied = new Counter({ name: 'fabtunnel_ops_applied_total', help: 'Write operations applied, per subsystem', labelNames: ['subsystem'], registers: [this.registry] })
  readonly subsystemErrors = new Counter({ name: 'fabtunnel_subsystem_errors_total', help: 'Failed plan or apply steps, per subsystem (and failed node duties: cni)', labelNames: ['subsystem'], registers: [this.registry] })
  /**
   * Peer counts for `fabtunnel_peers` and `fabtunnel_child_sas_up`, read when scraped (a walk over every peer's
   * status is O(peers): per scrape, not per pass). null: the gauges keep what was set.
   */
  peerCounts: (() => { desired: number; loaded: number; up: number; childSasUp: number }) | null = null
  readonly peers: Gauge<'state'> = new Gauge({
    name: 'fabtunnel_peers', help: 'Peers by state: desired (in config), loaded (connection in charon), up (every child SA installed)', labelNames: ['state'], registers: [this.registry],
    collect: (): void => {
      const c = this.peerCounts?.()
      if (c) for (const state of ['desired', 'loaded', 'up'] as const) this.peers.set({ state }, c[state])
    },
  })
  readonly childSasUp: Gauge = new Gauge({
    name: 'fabtunnel_child_sas_up', help: 'CHILD_SAs installed for desired connections', registers: [this.registry],
    collect: (): void => {
      const c = this.peerCounts?.()
      if (c) this.childSasUp.set(c.childSasUp)
    },
  })
  readonly configReloadErrors = new Counter({ name: 'fabtunnel_config_reload_errors_total', help: 'Config reads rejected (the last good config stays in force)', registers: [this.registry] })
  readonly configGeneration = new Gauge({ name: 'fabtunnel_config_generation', help: 'Generation of the config in force (increments on each accepted change)', registers: [this.registry] })
  readonly configValid = new Gauge({ name: 'fabtunnel_config_valid', help: '1 when the config file on disk is valid, 0 when it is rejected', registers: [this.registry] })
  readonly lastSuccess = new Gauge({ name: 'fabtunnel_last_successful_pass_timestamp_seconds', help: 'Unix time of the last pass that ended without error', registers: [this.registry] })
  readonly ready = new Gauge({ name: 'fabtunnel_ready', help: '1 when the last pass converged without error', registers: [this.registry] })
  readonly leader = new Gauge({ name: 'fabtunnel_leader', help: '1 while this agent is the active connector (always 1 with --leader-election none)', registers: [this.registry] })
  readonly leaderTransitions = new Counter({ name: 'fabtunnel_leader_transitions_total', help: 'Leadership changes (promotions and demotions) since start', registers: [this.registry] })
  readonly viciReconnects = new Counter({ name: 'fabtunnel_vici_reconnects_total', help: 'Reconnections to charon (each is followed by a full reload)', registers: [this.registry] })
  // Counted by src/log.ts's writer (process-wide): a lost log line cannot be reported in the log.
  readonly logLinesDropped: Counter = new Counter({
    name: 'fabtunnel_log_lines_dropped_total', help: 'Log lines not written: the reader of stderr gone, or its pipe full for over 100 ms', registers: [this.registry],
    collect: (): void => {
      this.logLinesDropped.reset()
      this.logLinesDropped.inc(logWriteFailures.lines)
    },
  })

  // Datapath probes (src/probe, docs/probes.md). The per-peer gauges are filled from the prober's state when scraped
  // (`probeSnapshot`), not on every reply: 1,000 label-hashed sets per second cost more than one pass per scrape.
  // The histogram has no peer label (10,000 peers x buckets would be too many series).
  probeSnapshot: (() => ReadonlyArray<{ name: string; datapath: string; rttLast: number | null; lossRatio: number | null }>) | null = null
  readonly peerDatapathUp: Gauge<'peer'> = new Gauge({ name: 'fabtunnel_peer_datapath_up', help: 'Datapath probe state per peer: 1 up, 0 down (absent while unknown)', labelNames: ['peer'], registers: [this.registry], collect: (): void => this.fillProbeGauge(this.peerDatapathUp, (p) => (p.datapath === 'unknown' ? null : p.datapath === 'up' ? 1 : 0)) })
  readonly peerRtt: Gauge<'peer'> = new Gauge({ name: 'fabtunnel_peer_rtt_seconds', help: 'Round-trip time of the last answered probe through the tunnel, per peer', labelNames: ['peer'], registers: [this.registry], collect: (): void => this.fillProbeGauge(this.peerRtt, (p) => p.rttLast) })
  readonly peerRttHistogram = new Histogram({ name: 'fabtunnel_peer_rtt_histogram_seconds', help: 'Round-trip times of answered probes, all peers', buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1], registers: [this.registry] })
  readonly peerProbeLossRatio: Gauge<'peer'> = new Gauge({ name: 'fabtunnel_peer_probe_loss_ratio', help: 'Share of the last 60 probes lost, per peer', labelNames: ['peer'], registers: [this.registry], collect: (): void => this.fillProbeGauge(this.peerProbeLossRatio, (p) => p.lossRatio) })
  readonly datapathRepairs = new Counter({ name: 'fabtunnel_datapath_repairs_total', help: 'SAs re-established because the datapath was down while IKE said up, per peer', labelNames: ['peer'], registers: [this.registry] })

  /** Refills one per-peer probe gauge from the prober's state (null: no series for that peer). */
  private fillProbeGauge(g: Gauge<'peer'>, value: (p: { datapath: string; rttLast: number | null; lossRatio: number | null }) => number | null): void {
    g.reset()
    for (const p of this.probeSnapshot?.() ?? []) {
      const v = value(p)
      if (v !== null) g.set({ peer: p.name }, v)
    }
  }

  constructor(opts: { processMetrics?: boolean } = {}) {
    if (opts.processMetrics ?? true) (this.registry as AgentRegistry).firstScrape = () => registerProcessMetrics(this.registry)
  }
}

/** prom-client's default metrics with our prefix, on the first scrape (AgentRegistry). */
function registerProcessMetrics(registry: Registry): void {
  const before = process.cpuUsage()
  // Event-loop lag sampled once a second: the default 10 ms timer alone costs ~0.3 % CPU on an idle agent. In the
  // executable's bundle prom-client's default metrics are loaded by this call (scripts/bundle.mjs), and with them the
  // built-in modules they use (perf_hooks, process): under V8's default flags, so from Node's code cache.
  daemonFlags.withV8Defaults(() => collectDefaultMetrics({ register: registry, prefix: 'fabtunnel_', eventLoopMonitoringPrecision: 1000 }))
  // prom-client counts process CPU from its registration on; the counters say CPU since the process started, so
  // they get what was used before the first scrape once.
  const add: Array<[string, number]> = [['user', before.user], ['system', before.system], ['', before.user + before.system]]
  for (const [kind, micros] of add) {
    const c = registry.getSingleMetric(`fabtunnel_process_cpu_${kind ? `${kind}_` : ''}seconds_total`) as Counter | undefined
    c?.inc(micros / 1e6)
  }
}
