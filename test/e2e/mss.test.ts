// End to end: TCP MSS clamping (--tcp-mss, docs/mtu.md) with real charon, the agent in every gateway and real TCP.
// A connector with a pod (the "cloud pod") and an edge with a pod, both pods on MTU 1500 veths; the tunnel hop is
// smaller (libipsec's ipsec0, MTU 1400), and the gateways drop the ICMP "fragmentation needed" they would send
// back (filter OUTPUT), as a path that filters ICMP does. Without the clamp a 1 MB transfer from the edge pod to the
// cloud pod stalls after the handshake; with it the transfer completes, and the SYN arriving at the cloud pod (and
// the SYN-ACK arriving at the edge pod) carries the clamped MSS: the tunnel MTU minus 40. (A fixed --tcp-mss on real
// SYNs: test/integration/iptables/mss-traffic.test.ts, which needs no charon.)
import t from 'tap'
import { defaultDriver, tunnelsUp, waitFor, type DaemonDriver } from '../harness/agents.js'
import { starTopology } from '../harness/addressing.js'
import { needsRoot, type Netns } from '../harness/netns.js'
import { Topology, type Gateway } from '../harness/topology.js'
import { captureMss, tcpTransfer, type TransferResult } from '../harness/tcp-probe.js'

const MB = 1 << 20
/** Long enough for 1 MB through userspace ESP on a loaded 2-core machine many times over (it takes well under 1 s). */
const STALL_MS = 10_000
const COMPLETE_MS = 60_000
const READY_MS = 120_000

let mssArgs = ['--tcp-mss', 'off']
const driver: DaemonDriver | null = needsRoot ? null : await defaultDriver({ extraArgs: () => mssArgs })

async function linkMtu(ns: Netns, dev: string): Promise<number> {
  const m = /\bmtu (\d+)/.exec(await ns.run(['ip', '-o', 'link', 'show', 'dev', dev]))
  if (!m) throw new Error(`no mtu for ${dev} in ${ns.name}`)
  return Number(m[1])
}

const mangle = (g: Gateway): Promise<string> => g.ns.run(['iptables-save', '-t', 'mangle'])

t.test('MSS clamp: a 1 MB transfer through a tunnel smaller than the pods\' MTU, with ICMP frag-needed dropped', { skip: needsRoot }, async (t) => {
  const topo = await Topology.create({ spec: starTopology(1) })
  t.teardown(async () => {
    await driver!.stopAll()
    await topo.destroy()
  })
  const connector = topo.gateway('beijing.connector')
  const edge = topo.gateway('beijing.edge1')
  const cloudPod = topo.podOf(connector.name)
  const edgePod = topo.podOf(edge.name)
  const DROP_FRAG_NEEDED = ['OUTPUT', '-p', 'icmp', '--icmp-type', 'fragmentation-needed', '-j', 'DROP']
  for (const g of [connector, edge]) await g.ns.run(['iptables', '-w', '-I', ...DROP_FRAG_NEEDED])
  const podMtu = await linkMtu(edgePod.ns, (await edgePod.ns.run(['ip', '-o', 'route', 'get', cloudPod.ip])).match(/ dev (\S+)/)![1]!)
  t.equal(podMtu, 1500, 'the edge pod sends with MTU 1500')

  let port = 47_100
  const gateways = [connector, edge]
  const startAll = async (): Promise<void> => {
    await driver!.start(connector)
    await driver!.start(edge)
    for (const g of gateways) await driver!.waitReady(g, READY_MS)
    await waitFor('tunnels up', READY_MS, () => tunnelsUp(topo), 200)
    // The tunnel carries small segments (and the transfer below has a working path) before anything is measured.
    await waitFor('a 1 KB transfer edge pod -> cloud pod', READY_MS, async () => (await tcpTransfer(edgePod.ns, cloudPod.ns, cloudPod.ip, port++, 1024, 5_000)).ok, 200)
  }
  /** The 1 MB transfer, with the MSS of the SYN at the cloud pod and of the SYN-ACK at the edge pod. */
  const measured = async (boundMs: number): Promise<{ r: TransferResult; syn: number | null; synAck: number | null }> => {
    const p = port++
    const syn = await captureMss(cloudPod.ns, `tcp dst port ${p} and tcp[tcpflags] & (tcp-syn|tcp-ack) == tcp-syn`, boundMs + 20_000)
    const synAck = await captureMss(edgePod.ns, `tcp src port ${p} and tcp[tcpflags] & (tcp-syn|tcp-ack) == (tcp-syn|tcp-ack)`, boundMs + 20_000)
    try {
      const r = await tcpTransfer(edgePod.ns, cloudPod.ns, cloudPod.ip, p, MB, boundMs)
      const [s1, s2] = await Promise.all([syn.settle(), synAck.settle()])
      return { r, syn: s1, synAck: s2 }
    } finally {
      syn.stop()
      synAck.stop()
    }
  }

  await startAll()
  const tunnelMtu = Math.min(await linkMtu(edge.ns, 'ipsec0'), await linkMtu(connector.ns, 'ipsec0'))
  t.ok(tunnelMtu < podMtu, `the tunnel hop (ipsec0, MTU ${tunnelMtu}) is smaller than the pods' MTU`)
  const clamped = tunnelMtu - 40

  await t.test('--tcp-mss off: the handshake passes, the bulk transfer stalls', async (t) => {
    for (const g of gateways) t.notMatch(await mangle(g), /FABEDGE-MSS/, `${g.name}: no clamp chain`)
    const { r, syn, synAck } = await measured(STALL_MS)
    t.equal(syn, podMtu - 40, `the SYN reaches the cloud pod unclamped (MSS ${syn})`)
    t.equal(synAck, podMtu - 40, `the SYN-ACK reaches the edge pod unclamped (MSS ${synAck})`)
    t.ok(r.connected && r.error === 'timeout', `connected, then 1 MB did not complete within ${STALL_MS / 1000} s (${r.error}; the cloud pod received ${r.received} of ${MB} bytes)`)
    t.ok(r.received < MB, 'the cloud pod did not get it all')

    // Control: the stall is the filtered ICMP. Let it through and path MTU discovery alone completes the transfer.
    for (const g of gateways) await g.ns.run(['iptables', '-w', '-D', ...DROP_FRAG_NEEDED])
    const pmtud = await tcpTransfer(edgePod.ns, cloudPod.ns, cloudPod.ip, port++, MB, COMPLETE_MS)
    t.ok(pmtud.ok, `with ICMP frag-needed let through, 1 MB completes (${pmtud.ok ? `${pmtud.ms!.toFixed(0)} ms` : pmtud.error})`)
    t.match(await edgePod.ns.run(['ip', '-o', 'route', 'get', cloudPod.ip]), new RegExp(`mtu ${tunnelMtu}`), 'the edge pod learnt the tunnel MTU from the ICMP')
    // Forget what it learnt, or the transfers below would fit without any clamp.
    for (const g of gateways) await g.ns.run(['iptables', '-w', '-I', ...DROP_FRAG_NEEDED])
    await edgePod.ns.run(['ip', 'route', 'flush', 'cache'])
    t.notMatch(await edgePod.ns.run(['ip', '-o', 'route', 'get', cloudPod.ip]), /mtu/, 'the edge pod\'s learnt path MTU is flushed')
  })

  await t.test('--tcp-mss pmtu (the default): the transfer completes, the handshake carries the clamped MSS', async (t) => {
    mssArgs = []
    for (const g of gateways) await driver!.stop(g)
    await startAll()
    for (const g of gateways) {
      const m = await mangle(g)
      t.match(m, /-A POSTROUTING -j FABEDGE-MSS\n/, `${g.name}: jump in mangle POSTROUTING`)
      t.match(m, /-A FABEDGE-MSS .* -j TCPMSS --clamp-mss-to-pmtu\n/, `${g.name}: clamp rules`)
      const status = await driver!.statusJson(g) as { tcpMss?: unknown }
      t.same(status.tcpMss, { setting: 'pmtu', clamping: true }, `${g.name}: /status shows the clamp`)
    }
    const { r, syn, synAck } = await measured(COMPLETE_MS)
    t.ok(r.ok, `1 MB completed${r.ms !== null ? ` in ${r.ms.toFixed(0)} ms` : `: ${r.error}, ${r.received} bytes received`}`)
    t.equal(syn, clamped, `the SYN at the cloud pod carries MSS ${clamped} (tunnel MTU ${tunnelMtu} - 40)`)
    t.equal(synAck, clamped, `the SYN-ACK at the edge pod carries MSS ${clamped}`)
  })
})
