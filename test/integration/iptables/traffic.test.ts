// Traffic through an edge gateway namespace with our rules: a pod's packets to a peer subnet (in
// FABEDGE-REMOTE-CIDR) keep their source address, packets to anywhere else are MASQUERADEd; FORWARD passes only
// thanks to FABEDGE-FORWARD. Checked with the gateway's conntrack table, which records the NAT it applied.
import t from 'tap'
import { Netns, needsRoot, vethPair } from '../../harness/netns.js'
import { execCapture } from '../../harness/exec.js'
import { IptablesRunner } from '../../../src/iptables/runner.js'
import { iptablesCleanup } from '../../../src/iptables/sync.js'
import { iptablesPass } from '../../harness/iptables-pass.js'
import { IPSET, ipsetName, type Family } from '../../../src/fabedge.js'

interface Plan {
  pod: string
  podNet: string
  podGw: string
  podPrefix: number
  uplinkGw: string
  uplinkRemote: string
  uplinkPrefix: number
  peer: string
  peerNet: string
  other: string
  otherNet: string
}
const ADDR: Record<Family, Plan> = {
  4: {
    pod: '10.234.1.2', podNet: '10.234.1.0/24', podGw: '10.234.1.1', podPrefix: 24,
    uplinkGw: '172.31.0.1', uplinkRemote: '172.31.0.2', uplinkPrefix: 24,
    peer: '10.240.0.1', peerNet: '10.240.0.0/16', other: '198.18.0.1', otherNet: '198.18.0.0/15',
  },
  6: {
    pod: 'fd00:234:1::2', podNet: 'fd00:234:1::/64', podGw: 'fd00:234:1::1', podPrefix: 64,
    uplinkGw: 'fd00:31::1', uplinkRemote: 'fd00:31::2', uplinkPrefix: 64,
    peer: 'fd00:240::1', peerNet: 'fd00:240::/48', other: 'fd00:198::1', otherNet: 'fd00:198::/48',
  },
}

/** The gateway's conntrack entry for a flow to dst: the reply direction's destination shows any NAT. */
async function replyDst(gw: Netns, family: Family, dst: string): Promise<string | null> {
  const out = await gw.run(['conntrack', '-L', '-f', family === 6 ? 'ipv6' : 'ipv4'], { timeoutMs: 5000 })
  for (const line of out.split('\n')) {
    const dsts = [...line.matchAll(/dst=(\S+)/g)].map((m) => m[1]!)
    if (dsts[0] === dst) return dsts[1] ?? null
  }
  return null
}

for (const family of [4, 6] as Family[]) {
  t.test(`IPv${family}: pod -> peer subnet keeps its source, pod -> elsewhere is masqueraded`, { skip: needsRoot }, async (t) => {
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
    await addr(pod, a.pod, a.podPrefix, podIf)
    await addr(gw, a.podGw, a.podPrefix, gwPodIf)
    await addr(gw, a.uplinkGw, a.uplinkPrefix, gwUpIf)
    await addr(remote, a.uplinkRemote, a.uplinkPrefix, remIf)
    await addr(remote, a.peer, family === 6 ? 128 : 32, 'lo')
    await addr(remote, a.other, family === 6 ? 128 : 32, 'lo')
    await pod.run(['ip', ...ipf, 'route', 'add', 'default', 'via', a.podGw])
    await gw.run(['ip', ...ipf, 'route', 'add', a.peerNet, 'via', a.uplinkRemote])
    await gw.run(['ip', ...ipf, 'route', 'add', a.otherNet, 'via', a.uplinkRemote])
    // Only un-NATed replies need a way back to the pod subnet.
    await remote.run(['ip', ...ipf, 'route', 'add', a.podNet, 'via', a.uplinkGw])
    await gw.run(['sysctl', '-qw', family === 6 ? 'net.ipv6.conf.all.forwarding=1' : 'net.ipv4.ip_forward=1'])

    const ipt = family === 6 ? 'ip6tables' : 'iptables'
    await gw.run([ipt, '-w', '-P', 'FORWARD', 'DROP'])
    const set = ipsetName(IPSET.remoteCidr, family)
    await gw.run(['ipset', 'create', set, 'hash:net', 'family', family === 6 ? 'inet6' : 'inet', '-exist'])
    await gw.run(['ipset', 'add', set, a.peerNet])

    // Expecting a reply: resend every 200 ms until one comes (the first forwarded packet waits for neighbour
    // discovery), up to 3 s. Expecting a drop: one probe, 1 s.
    const reaches = async (dst: string): Promise<boolean> =>
      (await pod.capture(['ping', ...ipf, '-c', '1', '-i', '0.2', '-w', '3', dst], { timeoutMs: 6000 })).code === 0
    const dropped = async (dst: string): Promise<boolean> =>
      (await pod.capture(['ping', ...ipf, '-c', '1', '-W', '1', dst], { timeoutMs: 5000 })).code !== 0
    t.ok(await dropped(a.other), 'before our rules FORWARD drops the pod')

    const runner = await IptablesRunner.create({ exec: (argv, o) => execCapture(['ip', 'netns', 'exec', gw.name, ...argv], o) })
    await iptablesPass(runner, { role: 'edge', family, localPodCidrs: [a.podNet] })

    t.ok(await reaches(a.peer), 'pod reaches the peer subnet')
    t.equal(await replyDst(gw, family, a.peer), a.pod, 'to the peer subnet: replies go to the pod itself (no NAT)')
    t.ok(await reaches(a.other), 'pod reaches the other destination')
    t.equal(await replyDst(gw, family, a.other), a.uplinkGw, 'elsewhere: replies go to the gateway (MASQUERADE)')

    await iptablesCleanup(runner, family)
    await gw.run(['conntrack', '-F', '-f', family === 6 ? 'ipv6' : 'ipv4'])
    t.ok(await dropped(a.peer), 'after cleanup FORWARD drops the pod again')
  })
}
