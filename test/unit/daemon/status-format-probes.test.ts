// `fabtunnel status` with datapath probes: DATAPATH and RTT columns when probes are on, none when off.
import t from 'tap'
import { formatRtt, formatStatus, type StatusDoc } from '../../../src/daemon/status-format.js'

const now = Date.parse('2026-12-02T08:00:00Z')
const peer = (name: string) => ({ name, type: 'EdgeNode', state: 'up', since: '2026-12-02T07:59:00Z', childrenUp: 3, childrenDesired: 3, initiator: false, lastError: null, waiting: null })
const doc = (probes: StatusDoc['probes']): StatusDoc => ({ node: { name: 'c', type: 'Connector' }, ready: true, datapath: 'libipsec', peers: [peer('e1'), peer('e2'), peer('e3')], ...(probes ? { probes } : {}) })

t.test('probes on: DATAPATH with repairs, RTT only while up', async (t) => {
  const out = formatStatus(doc({
    enabled: true,
    peers: [
      { name: 'e1', datapath: 'up', rtt: { last: 0.00142 }, lossRatio: 0, repairs: 0 },
      { name: 'e2', datapath: 'down', rtt: { last: 0.002 }, lossRatio: 1, repairs: 2 },
    ],
  }), now)
  const lines = out.split('\n')
  t.match(lines.find((l) => l.startsWith('PEER')), /CHILDREN\s+PATH\s+DATAPATH\s+RTT\s+LAST ERROR/)
  t.match(lines.find((l) => l.startsWith('e1')), /3\/3\s+-\s+up\s+1\.42ms/)
  t.match(lines.find((l) => l.startsWith('e2')), /3\/3\s+-\s+down \(2 repairs\)\s+-/)
  t.match(lines.find((l) => l.startsWith('e3')), /3\/3\s+-\s+-\s+-/, 'a peer not probed (no PATH either: the doc has none)')
})

t.test('probes off or an older agent: no DATAPATH/RTT columns', async (t) => {
  t.notMatch(formatStatus(doc({ enabled: false }), now), /DATAPATH/)
  t.notMatch(formatStatus(doc(undefined), now), /DATAPATH/)
})

t.test('formatRtt', async (t) => {
  t.equal(formatRtt(0.00042), '0.42ms')
  t.equal(formatRtt(0.0123), '12.3ms')
  t.equal(formatRtt(1.2), '1.20s')
})
