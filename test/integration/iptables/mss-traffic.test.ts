// The MSS clamp on real TCP through the real kernel, IPv4 and IPv6, without charon (the e2e suite has charon but is
// IPv4 only): pod -> gateway -> remote, where the gateway's uplink (MTU 1400) is smaller than the pod's and the
// remote's links (1500), and the gateway drops the ICMP "fragmentation needed" / ICMPv6 "packet too big" it would send.
// The gateway runs the edge ruleset through the daemon's iptables subsystem: with --tcp-mss off a 1 MB transfer
// from the pod stalls; with pmtu it completes and the SYN reaches the remote with MSS 1400 - 40 (IPv4) or - 60 (IPv6).
import t from 'tap'
import { Netns, needsRoot, vethPair } from '../../harness/netns.js'
import { execCapture } from '../../harness/exec.js'
import { captureMss, tcpTransfer } from '../../harness/tcp-probe.js'
import { IptablesRunner } from '../../../src/iptables/runner.js'
import { iptablesPass } from '../../harness/iptables-pass.js'
import type { TcpMss } from '../../../src/iptables/mss.js'
import { IPSET, ipsetName, type Family } from '../../../src/fabedge.js'

const MB = 1 << 20
const UPLINK_MTU = 1400
const STALL_MS = 8_000
const COMPLETE_MS = 60_000

const ADDR = {
  4: { pod: '10.234.1.2', podNet: '10.234.1.0/24', podGw: '10.234.1.1', plen: 24, upGw: '172.31.0.1', upRemote: '172.31.0.2', peer: '10.240.0.1', peerNet: '10.240.0.0/16' },
  6: { pod: 'fd00:234:1::2', podNet: 'fd00:234:1::/64', podGw: 'fd00:234:1::1', plen: 64, upGw: 'fd00:31::1', upRemote: 'fd00:31::2', peer: 'fd00:240::1', peerNet: 'fd00:240::/48' },
} as const

for (const family of [4, 6] as Family[]) {
  t.test(`IPv${family}: a 1 MB transfer over a smaller hop with its ICMP dropped stalls without the clamp, completes with it`, { skip: needsRoot }, async (t) => {
    const a = ADDR[family]
    const pod = await Netns.create('pod')
    const gw = await Netns.create('gw')
    const remote = await Netns.create('rem')
    t.teardown(async () => {
      for (const ns of [pod, gw, remote]) await ns.destroy()
    })
    const ipf = family === 6 ? ['-6'] : ['-4']
    const addr = (ns: Netns, ip: string, prefix: number, dev: string): Promise<string> =>
      ns.run(['ip', ...ipf, 'addr', 'add', `${ip}/${prefix}`, 'dev', dev, ...(family === 6 ? ['nodad'] : [])])
    const [podIf, gwPodIf] = await vethPair(pod, gw)
    const [gwUpIf, remIf] = await vethPair(gw, remote)
    // Only the gateway's end is small: the remote announces MSS 1460/1440 from its own 1500 link, as a cloud pod does.
    await gw.run(['ip', 'link', 'set', gwUpIf, 'mtu', String(UPLINK_MTU)])
    await addr(pod, a.pod, a.plen, podIf)
    await addr(gw, a.podGw, a.plen, gwPodIf)
    await addr(gw, a.upGw, family === 6 ? 64 : 24, gwUpIf)
    await addr(remote, a.upRemote, family === 6 ? 64 : 24, remIf)
    await addr(remote, a.peer, family === 6 ? 128 : 32, 'lo')
    await pod.run(['ip', ...ipf, 'route', 'add', 'default', 'via', a.podGw])
    await gw.run(['ip', ...ipf, 'route', 'add', a.peerNet, 'via', a.upRemote])
    await remote.run(['ip', ...ipf, 'route', 'add', a.podNet, 'via', a.upGw])
    await gw.run(['sysctl', '-qw', family === 6 ? 'net.ipv6.conf.all.forwarding=1' : 'net.ipv4.ip_forward=1'])
    const ipt = family === 6 ? 'ip6tables' : 'iptables'
    await gw.run(family === 6
      ? [ipt, '-w', '-I', 'OUTPUT', '-p', 'ipv6-icmp', '--icmpv6-type', 'packet-too-big', '-j', 'DROP']
      : [ipt, '-w', '-I', 'OUTPUT', '-p', 'icmp', '--icmp-type', 'fragmentation-needed', '-j', 'DROP'])
    const set = ipsetName(IPSET.remoteCidr, family)
    await gw.run(['ipset', 'create', set, 'hash:net', 'family', family === 6 ? 'inet6' : 'inet', '-exist'])
    await gw.run(['ipset', 'add', set, a.peerNet])
    const runner = await IptablesRunner.create({ exec: (argv, o) => execCapture(['ip', 'netns', 'exec', gw.name, ...argv], o) })
    const pass = (mss: TcpMss) => iptablesPass(runner, { role: 'edge', family, localPodCidrs: [a.podNet], mss })

    // pcap's tcp[] does not reach into IPv6: the TCP flags byte there is ip6[40 + 13] (no extension headers here).
    const syn = (port: number): string => family === 6
      ? `tcp dst port ${port} and ip6[53] & 0x12 == 0x02`
      : `tcp dst port ${port} and tcp[tcpflags] & (tcp-syn|tcp-ack) == tcp-syn`
    let port = 47_300
    const transfer = async (bytes: number, boundMs: number) => {
      const p = port++
      const cap = await captureMss(remote, syn(p), boundMs + 20_000)
      try {
        const r = await tcpTransfer(pod, remote, a.peer, p, bytes, boundMs)
        return { r, mss: await cap.settle() }
      } finally {
        cap.stop()
      }
    }
    const header = family === 6 ? 60 : 40

    await pass({ mode: 'off' })
    t.notMatch(await gw.run([`${ipt}-save`, '-t', 'mangle']), /FABEDGE-MSS/, 'off: no clamp chain')
    const small = await transfer(1024, COMPLETE_MS)
    t.ok(small.r.ok, `a 1 KB transfer passes (${small.r.error ?? 'ok'})`)
    const stalled = await transfer(MB, STALL_MS)
    t.equal(stalled.mss, 1500 - header, `off: the SYN arrives with the pod's own MSS ${stalled.mss}`)
    t.ok(stalled.r.connected && stalled.r.error === 'timeout', `off: connected, then 1 MB does not complete within ${STALL_MS / 1000} s (${stalled.r.error}; ${stalled.r.received} bytes arrived)`)

    await pass({ mode: 'pmtu' })
    const clamped = await transfer(MB, COMPLETE_MS)
    t.equal(clamped.mss, UPLINK_MTU - header, `pmtu: the SYN arrives with MSS ${UPLINK_MTU} - ${header}`)
    t.ok(clamped.r.ok, `pmtu: 1 MB completes${clamped.r.ms !== null ? ` in ${clamped.r.ms.toFixed(0)} ms` : `: ${clamped.r.error}`}`)

    await pass({ mode: 'fixed', mss: 1300 })
    const fixed = await transfer(MB, COMPLETE_MS)
    t.equal(fixed.mss, 1300, 'fixed: the SYN arrives with MSS 1300')
    t.ok(fixed.r.ok, 'fixed: 1 MB completes')
  })
}
