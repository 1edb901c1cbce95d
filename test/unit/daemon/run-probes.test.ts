// `fabtunnel run` with datapath probes on a node built from fakes: the prober follows the passes (targets from the
// config in force and the node's addresses), reports in /status and /metrics, re-reads addresses on an address
// event, and closes its socket on stop. Without the option, /status says probes are off.
import t, { type Test } from 'tap'
import { EventEmitter } from 'node:events'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { join } from 'node:path'
import { tmpdir } from 'node:os'
import { startDaemon, type RouteMonitor, type Running } from '../../../src/daemon/run.js'
import { LeadershipBase } from '../../../src/daemon/leader.js'
import type { ProbePort, ProbeReply, ProbeSend } from '../../../src/probe/port.js'
import { monotonicMs } from '../../../src/probe/port.js'
import { ConfigMapDir } from '../../harness/configmap.js'
import { fakeNode, memoryLogger, until } from '../../harness/fake-node.js'

const EDGE = readFileSync(new URL('../../fixtures/config/edge.yaml', import.meta.url), 'utf8')

class AnsweringPort implements ProbePort {
  sent: ProbeSend[] = []
  closed = false
  private fns: Array<(r: ProbeReply) => void> = []
  send(p: ProbeSend, seq: number): number {
    this.sent.push(p)
    const at = monotonicMs()
    setImmediate(() => { for (const fn of this.fns) fn({ family: p.family, from: p.dst, seq, at: at + 3 }) })
    return at
  }
  onReply(fn: (r: ProbeReply) => void): void { this.fns.push(fn) }
  onError(): void {}
  close(): void { this.closed = true }
}

class ManualLeadership extends LeadershipBase {
  readonly mode = 'vip' as const
  set(leader: boolean): void {
    this.setLeader(leader)
  }
  async start(): Promise<void> {}
  async release(): Promise<void> {}
  async stop(): Promise<void> {}
}

async function rig(t: Test, probes: boolean, leadership?: ManualLeadership): Promise<{ running: Running; port: AnsweringPort; monitor: EventEmitter; addrReads: { n: number }; url(p: string): string }> {
  const dir = mkdtempSync(join(tmpdir(), 'ftprobe-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const config = await ConfigMapDir.create(join(dir, 'config'), { 'tunnels.yaml': EDGE })
  const { log } = await memoryLogger()
  const monitor = Object.assign(new EventEmitter(), { close() {} })
  const port = new AnsweringPort()
  const addrReads = { n: 0 }
  const running = await startDaemon({
    config: config.path('tunnels.yaml'), vici: 'unix:///nonexistent/charon.vici', cert: join(dir, 'c'), key: join(dir, 'k'), ca: join(dir, 'ca'),
    listen: { host: '127.0.0.1', port: 0 }, datapath: 'libipsec', resyncMs: 0, log,
    ...(probes ? { probes: { intervalMs: 100, downAfter: 5, maxRate: 500, repair: true } } : {}),
    ...(leadership ? { election: { mode: 'vip' as const, vip: '10.40.10.200' } } : {}),
  }, {
    ...(leadership ? { leadership: async () => leadership } : {}),
    buildNode: async (o) => fakeNode({ config: o.config, cert: o.cert, key: o.key, ca: o.ca, log: o.log, ...(o.afterPass ? { afterPass: o.afterPass } : {}) }).parts,
    openMonitor: () => monitor as unknown as RouteMonitor,
    probeIo: { port: () => port, addresses: async () => { addrReads.n++; return ['127.0.0.1', '10.234.1.1', '10.22.53.116'] } },
  })
  t.teardown(() => running.stop())
  return { running, port, monitor, addrReads, url: (p) => `http://${running.httpAddress.address}:${running.httpAddress.port}${p}` }
}

t.test('probes follow the config in force and report in /status and /metrics', async (t) => {
  const r = await rig(t, true)
  const peerUp = async (): Promise<boolean> => {
    const s = (await (await fetch(r.url('/status'))).json()) as any
    return s.probes.peers.some((p: any) => p.name === 'beijing.connector' && p.datapath === 'up')
  }
  let up = false
  for (let i = 0; i < 100 && !up; i++) {
    up = await peerUp()
    if (!up) await new Promise((res) => setTimeout(res, 50))
  }
  t.ok(up, 'the connector peer is up from answered probes')
  const s = (await (await fetch(r.url('/status'))).json()) as any
  t.match(s.probes, { enabled: true, intervalMs: 100, downAfter: 5, repair: true })
  const c = s.probes.peers.find((p: any) => p.name === 'beijing.connector')
  t.same(c.probe, { family: 4, src: '10.234.1.1', dst: '10.233.64.1' }, 'from our pod gateway to the connector\'s most specific pod subnet')
  t.ok(r.port.sent.some((p) => p.dst === '10.234.2.1'), 'edge2 probed too')
  const metrics = await (await fetch(r.url('/metrics'))).text()
  t.match(metrics, /fabtunnel_peer_datapath_up\{peer="beijing.connector"\} 1/)
  t.match(metrics, /fabtunnel_peer_rtt_seconds\{peer="beijing.connector"\} 0\.003/)
  const reads = r.addrReads.n
  t.equal(reads, 1, 'addresses read once for the config')
  r.monitor.emit('addr', 'new', { address: '10.234.1.9' })
  await r.running.node.agent.trigger('test')
  t.ok(await until(() => r.addrReads.n > reads), 'an address event makes the next refresh re-read them')
  await r.running.stop()
  t.ok(r.port.closed, 'stop closes the probe socket')
})

t.test('without probes: /status says off, nothing is sent', async (t) => {
  const r = await rig(t, false)
  const s = (await (await fetch(r.url('/status'))).json()) as any
  t.same(s.probes, { enabled: false })
  t.same(r.port.sent, [])
})

t.test('a standby probes nothing; once promoted it probes its peers', async (t) => {
  const lead = new ManualLeadership(false)
  const r = await rig(t, true, lead)
  await new Promise((res) => setTimeout(res, 500))
  let s = (await (await fetch(r.url('/status'))).json()) as any
  t.same(s.probes.peers, [], 'standby: no probed peers')
  t.same(r.port.sent, [], 'nothing sent')
  lead.set(true)
  t.ok(await until(() => r.port.sent.length > 0), 'probing once leader')
  s = (await (await fetch(r.url('/status'))).json()) as any
  t.ok(s.probes.peers.length > 0)
})
