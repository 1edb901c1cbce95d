// The ICMP port over a fake addon: what reaches the socket, which replies are ours, and every addon fault as a
// typed ProbeError (the real addon is proven in test/integration/probe/icmp.test.ts).
import t from 'tap'
import { IcmpProbePort, type IcmpAddon } from '../../../src/probe/icmp.js'
import { ProbeError } from '../../../src/probe/codec.js'
import type { ProbeReply } from '../../../src/probe/port.js'

type Rx = ReturnType<IcmpAddon['icmpRecv']>

function fakeAddon() {
  const calls: string[] = []
  const queues = new Map<number, Rx>()
  let openErr: Error | null = null
  let sendErr: Error | null = null
  let recvErr: Error | null = null
  const addon: IcmpAddon = {
    icmpOpen: (family, ns) => { calls.push(`open ${family} ${ns ?? ''}`); if (openErr) throw openErr; return { family } as never },
    icmpSend: (h, dst, src, packet) => { calls.push(`send ${(h as unknown as { family: number }).family} ${dst.toString('hex')} ${src?.toString('hex') ?? '-'} ${packet.subarray(0, 1).toString('hex')}`); if (sendErr) throw sendErr; return 42.5 },
    icmpRecv: (h) => {
      if (recvErr) throw recvErr
      const fam = (h as unknown as { family: number }).family
      const q = queues.get(fam) ?? []
      queues.set(fam, [])
      return q
    },
    icmpClose: (h) => { calls.push(`close ${(h as unknown as { family: number }).family}`) },
  }
  return { addon, calls, queues, setOpenErr: (e: Error) => { openErr = e }, setSendErr: (e: Error) => { sendErr = e }, setRecvErr: (e: Error | null) => { recvErr = e } }
}

const reply = (port: IcmpProbePort, type: number, ident = port.ident, token?: Buffer) => {
  const b = Buffer.alloc(16)
  b[0] = type
  b.writeUInt16BE(ident, 4)
  b.writeUInt16BE(9, 6)
  ;(token ?? (port as unknown as { token: Buffer }).token).copy(b, 8)
  return b
}

t.test('sockets open per family on first use; sends carry validated addresses', async (t) => {
  const f = fakeAddon()
  const port = new IcmpProbePort({ addon: f.addon, netnsPath: '/run/netns/x' })
  t.equal(port.send({ family: 4, src: '10.81.2.1', dst: '10.81.1.1' }, 1), 42.5)
  port.send({ family: 4, src: null, dst: '10.81.1.1' }, 2)
  port.send({ family: 6, src: null, dst: 'fd00::1' }, 3)
  t.same(f.calls, [
    'open 4 /run/netns/x', 'send 4 0a510101 0a510201 08', 'send 4 0a510101 - 08',
    'open 6 /run/netns/x', 'send 6 fd000000000000000000000000000001 - 80',
  ])
  t.throws(() => port.send({ family: 4, src: 'bad', dst: '10.81.1.1' }, 1), ProbeError)
  port.close()
  t.ok(f.calls.includes('close 4') && f.calls.includes('close 6'))
  t.throws(() => port.send({ family: 4, src: null, dst: '10.81.1.1' }, 1), /closed/)
})

t.test('only our replies (identifier and token) reach the handler; receive errors reach onError', async (t) => {
  const f = fakeAddon()
  const port = new IcmpProbePort({ addon: f.addon })
  const got: ProbeReply[] = []
  const errs: Error[] = []
  port.onReply((r) => got.push(r))
  port.onError((e) => errs.push(e))
  port.send({ family: 4, src: null, dst: '10.81.1.1' }, 9)
  const from = Buffer.from('0a510101', 'hex')
  port.poll()
  t.same(got, [], 'nothing queued: nothing delivered')
  f.queues.set(4, [
    { from, data: reply(port, 0), at: 50 },
    { from, data: reply(port, 0, (port.ident + 1) & 0xffff), at: 51 },
    { from, data: reply(port, 0, port.ident, Buffer.alloc(8)), at: 52 },
    { from, data: reply(port, 8), at: 53 },
  ])
  port.poll()
  t.same(got, [{ family: 4, from: '10.81.1.1', seq: 9, at: 50 }])
  f.setRecvErr(Object.assign(new Error('recvmsg EBADF'), { code: 'EHOSTUNREACH' }))
  port.poll()
  t.equal(errs.length, 1)
  t.ok(errs[0] instanceof ProbeError)
  t.equal((errs[0] as ProbeError).code, 'EHOSTUNREACH')
})

t.test('addon faults are ProbeErrors with the errno code', async (t) => {
  const f = fakeAddon()
  f.setOpenErr(Object.assign(new Error('socket EPERM: Operation not permitted'), { code: 'EPERM' }))
  const port = new IcmpProbePort({ addon: f.addon })
  const e = t.throws(() => port.send({ family: 4, src: null, dst: '10.81.1.1' }, 1)) as ProbeError
  t.equal(e.code, 'EPERM')
  t.match(e.message, /CAP_NET_RAW/)
  const g = fakeAddon()
  g.setSendErr(Object.assign(new Error('sendmsg ENETUNREACH: Network is unreachable'), { code: 'ENETUNREACH' }))
  const p2 = new IcmpProbePort({ addon: g.addon })
  const e2 = t.throws(() => p2.send({ family: 4, src: '10.81.2.1', dst: '10.81.1.1' }, 1)) as ProbeError
  t.equal(e2.code, 'ENETUNREACH')
  t.match(e2.message, /to 10\.81\.1\.1 from 10\.81\.2\.1/)
})
