// The ICMP probe port (native/src/icmp.c + src/probe/icmp.ts) against the real kernel, in two throwaway namespaces
// joined by a veth: a live target answers with a plausible RTT, a silent one (its echo replies dropped by iptables)
// does not, the source address given per packet is the one the peer sees, and IPv6 works too.
import t, { type Test } from 'tap'
import { Netns, needsRoot, vethPair } from '../../harness/netns.js'
import { netnsPath } from '../../../src/netlink/socket.js'
import { IcmpProbePort } from '../../../src/probe/icmp.js'
import { ProbeError } from '../../../src/probe/codec.js'
import type { ProbeReply } from '../../../src/probe/port.js'

async function pair(t: Test): Promise<{ a: Netns; b: Netns }> {
  const a = await Netns.create('pra')
  t.teardown(() => a.destroy())
  const b = await Netns.create('prb')
  t.teardown(() => b.destroy())
  const [ia, ib] = await vethPair(a, b, 'vpr')
  await a.run(['ip', 'addr', 'add', '192.0.2.1/24', 'dev', ia])
  await a.run(['ip', 'addr', 'add', '192.0.2.11/24', 'dev', ia])
  await b.run(['ip', 'addr', 'add', '192.0.2.2/24', 'dev', ib])
  await a.run(['ip', '-6', 'addr', 'add', 'fd00:77::1/64', 'dev', ia, 'nodad'])
  await b.run(['ip', '-6', 'addr', 'add', 'fd00:77::2/64', 'dev', ib, 'nodad'])
  return { a, b }
}

/** The replies read after `ms` (bounded wait; the port is drained, as the prober's timer does). */
function collect(port: IcmpProbePort, ms: number): Promise<ProbeReply[]> {
  const got: ProbeReply[] = []
  const fn = (r: ProbeReply): void => { got.push(r) }
  port.onReply(fn)
  return new Promise((resolve) => setTimeout(() => {
    port.poll()
    port.offReply(fn)
    resolve(got)
  }, ms))
}

t.test('echo requests to a live target are answered, with RTT from the kernel\'s receive time', { skip: needsRoot }, async (t) => {
  const { a } = await pair(t)
  const port = new IcmpProbePort({ netnsPath: netnsPath(a.name) })
  t.teardown(() => port.close())
  const replies = collect(port, 1000)
  const sent = new Map<number, number>()
  for (let seq = 1; seq <= 5; seq++) sent.set(seq, port.send({ family: 4, src: null, dst: '192.0.2.2' }, seq))
  sent.set(100, port.send({ family: 6, src: null, dst: 'fd00:77::2' }, 100))
  const got = await replies
  t.same(got.map((r) => r.seq).sort((x, y) => x - y), [1, 2, 3, 4, 5, 100], 'every request answered once, v4 and v6')
  t.ok(got.filter((r) => r.family === 4).every((r) => r.from === '192.0.2.2'))
  t.ok(got.filter((r) => r.family === 6).every((r) => r.from === 'fd00:77::2'))
  for (const r of got) {
    const rtt = r.at - sent.get(r.seq)!
    // The kernel's receive time, not when poll() read it (1 s later): far below the wait.
    t.ok(rtt > 0 && rtt < 200, `seq ${r.seq}: rtt ${rtt.toFixed(3)} ms is positive, the kernel's arrival time`)
  }
})

t.test('a silent target gets no reply (the same target answers once the drop is gone)', { skip: needsRoot }, async (t) => {
  const { a, b } = await pair(t)
  await b.run(['iptables', '-A', 'OUTPUT', '-p', 'icmp', '--icmp-type', 'echo-reply', '-j', 'DROP'])
  const port = new IcmpProbePort({ netnsPath: netnsPath(a.name) })
  t.teardown(() => port.close())
  let replies = collect(port, 600)
  port.send({ family: 4, src: null, dst: '192.0.2.2' }, 1)
  t.same(await replies, [], 'no reply while the target drops them')
  await b.run(['iptables', '-D', 'OUTPUT', '-p', 'icmp', '--icmp-type', 'echo-reply', '-j', 'DROP'])
  replies = collect(port, 600)
  port.send({ family: 4, src: null, dst: '192.0.2.2' }, 2)
  t.same((await replies).map((r) => r.seq), [2], 'answered without the drop: the silence was the drop')
})

t.test('the source address is chosen per packet', { skip: needsRoot }, async (t) => {
  const { a, b } = await pair(t)
  // Only requests from .11 are answered: a reply proves the packet left with that source.
  await b.run(['iptables', '-A', 'INPUT', '-p', 'icmp', '!', '-s', '192.0.2.11', '-j', 'DROP'])
  const port = new IcmpProbePort({ netnsPath: netnsPath(a.name) })
  t.teardown(() => port.close())
  const replies = collect(port, 600)
  port.send({ family: 4, src: '192.0.2.1', dst: '192.0.2.2' }, 1)
  port.send({ family: 4, src: '192.0.2.11', dst: '192.0.2.2' }, 2)
  t.same((await replies).map((r) => r.seq), [2])
})

t.test('bad addresses are refused before they reach the socket; a send error is a ProbeError', { skip: needsRoot }, async (t) => {
  const { a } = await pair(t)
  const port = new IcmpProbePort({ netnsPath: netnsPath(a.name) })
  t.teardown(() => port.close())
  t.throws(() => port.send({ family: 4, src: null, dst: 'not-an-ip' }, 1), ProbeError)
  t.throws(() => port.send({ family: 4, src: null, dst: 'fd00::1' }, 1), ProbeError)
  t.throws(() => port.send({ family: 4, src: null, dst: '224.0.0.1' }, 1), ProbeError)
  t.throws(() => port.send({ family: 4, src: null, dst: '192.0.2.2' }, 70000), ProbeError)
  // No route to 203.0.113.9 in the namespace: the kernel refuses the send.
  const err = t.throws(() => port.send({ family: 4, src: null, dst: '203.0.113.9' }, 1)) as ProbeError
  t.equal(err.name, 'ProbeError')
  t.equal(err.code, 'ENETUNREACH')
})
