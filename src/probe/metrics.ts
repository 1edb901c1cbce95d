// The prober's metrics on the agent's registry (names in src/daemon/metrics.ts, docs/probes.md).
import type { Metrics } from '../daemon/metrics.js'
import type { ProbeMetricsSink } from './prober.js'

export function probeMetricsSink(m: Pick<Metrics, 'peerDatapathUp' | 'peerRtt' | 'peerRttHistogram' | 'peerProbeLossRatio' | 'datapathRepairs'>): ProbeMetricsSink {
  return {
    datapathUp: (peer, up) => {
      if (up === null) m.peerDatapathUp.remove({ peer })
      else m.peerDatapathUp.set({ peer }, up ? 1 : 0)
    },
    rtt: (peer, seconds) => {
      m.peerRtt.set({ peer }, seconds)
      m.peerRttHistogram.observe(seconds)
    },
    lossRatio: (peer, ratio) => m.peerProbeLossRatio.set({ peer }, ratio),
    repaired: (peer) => m.datapathRepairs.inc({ peer }),
    forget: (peer) => {
      m.peerDatapathUp.remove({ peer })
      m.peerRtt.remove({ peer })
      m.peerProbeLossRatio.remove({ peer })
      // The repair counter stays: a counter that vanishes and comes back would read as a reset.
    },
  }
}
