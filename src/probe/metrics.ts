// The prober's metrics on the agent's registry (names in src/daemon/metrics.ts, docs/probes.md): the histogram and
// the repair counter are pushed as things happen; the per-peer gauges are read from the prober when scraped.
import type { Metrics } from '../daemon/metrics.js'
import type { ProbeGaugeRow, ProbeMetricsSink } from './prober.js'

export function probeMetricsSink(m: Pick<Metrics, 'peerRttHistogram' | 'datapathRepairs' | 'probeSnapshot'>, rows: () => ProbeGaugeRow[]): ProbeMetricsSink {
  m.probeSnapshot = rows
  return {
    rtt: (seconds) => m.peerRttHistogram.observe(seconds),
    repaired: (peer) => m.datapathRepairs.inc({ peer }),
  }
}
