import t from 'tap'
import { decodeMsgs, encodeError, encodeMsg, NLM_F_MULTI, NLMSG_DONE, type NlMsg } from '../../../src/netlink/codec.js'
import { NetlinkError } from '../../../src/netlink/errors.js'
import { NetlinkSocket, type Transport } from '../../../src/netlink/socket.js'
import { Monitor } from '../../../src/netlink/monitor.js'
import { fixture } from './fixtures.js'

/** A scripted kernel: `answer` maps each request to reply datagrams, delivered on a later tick like a real socket. */
class FakeKernel implements Transport {
  sends: Buffer[] = []
  refs: boolean[] = []
  closed = false
  private cb?: (err: NetlinkError | null, d: Buffer[]) => void
  constructor(private readonly answer: (m: NlMsg) => Buffer[] = (m) => [encodeError(0, m)]) {}
  send(data: Buffer): void {
    this.sends.push(data)
    const replies = decodeMsgs(data).flatMap((m) => this.answer(m))
    setImmediate(() => this.cb?.(null, replies))
  }
  start(cb: (err: NetlinkError | null, d: Buffer[]) => void): void {
    this.cb = cb
  }
  push(err: NetlinkError | null, d: Buffer[]): void {
    this.cb?.(err, d)
  }
  ref(on: boolean): void {
    this.refs.push(on)
  }
  close(): void {
    this.closed = true
  }
}

t.test('replies are matched by seq, refusals become outcomes with the ext-ack text', async (t) => {
  const k = new FakeKernel((m) => [encodeError(m.type === 2 ? 17 : 0, m, m.type === 2 ? 'File exists' : undefined)])
  const s = new NetlinkSocket(k, { firstSeq: 100 })
  const out = await s.requestAll([{ type: 1, payload: Buffer.alloc(4) }, { type: 2, payload: Buffer.alloc(4) }], 'test')
  t.equal(k.sends.length, 1, 'both requests in one send')
  t.same(decodeMsgs(k.sends[0]!).map((m) => [m.seq, m.flags]), [[101, 5], [102, 5]], 'seq increments, REQUEST|ACK')
  t.equal(out[0]!.ok, true)
  t.match(out[1], { ok: false, error: { kind: 'kernel', code: 'EEXIST', extAck: 'File exists' } })
  await t.rejects(s.request({ type: 2, payload: Buffer.alloc(0) }, 'add'), { code: 'EEXIST', message: /add: EEXIST: File exists/ })
  t.equal(k.refs.at(-1), false, 'idle socket does not keep the process alive')
  t.ok(k.refs.includes(true), 'pending requests do')
})

t.test('batches are split by size and pipelined within a window', async (t) => {
  const k = new FakeKernel()
  const s = new NetlinkSocket(k)
  const reqs = Array.from({ length: 5000 }, () => ({ type: 24, payload: Buffer.alloc(60) }))
  const out = await s.requestAll(reqs, 'many')
  t.equal(out.length, 5000)
  t.ok(out.every((o) => o.ok))
  t.ok(k.sends.length > 1 && k.sends.length < 20, `${k.sends.length} sends for 5000 requests`)
  t.ok(k.sends.every((b) => b.length <= 64 * 1024), 'no send above 64 KiB')
})

t.test('dump collects multi-part replies until NLMSG_DONE', async (t) => {
  const k = new FakeKernel((m) => [
    Buffer.concat([encodeMsg(24, NLM_F_MULTI, m.seq, Buffer.from('a')), encodeMsg(24, NLM_F_MULTI, m.seq, Buffer.from('b'))]),
    encodeMsg(NLMSG_DONE, NLM_F_MULTI, m.seq, Buffer.alloc(4)),
  ])
  const s = new NetlinkSocket(k)
  const msgs = await s.dump({ type: 26, payload: Buffer.alloc(12) }, 'dump')
  t.same(msgs.map((m) => m.payload.toString()), ['a', 'b'])
  t.equal(decodeMsgs(k.sends[0]!)[0]!.flags & 0x300, 0x300, 'NLM_F_DUMP set')
})

t.test('dumps sharing a socket run one at a time: the kernel refuses a second one while the first runs (EBUSY)', async (t) => {
  // Like the kernel: a dump request that arrives while another dump is still replying is refused with EBUSY.
  let running = 0
  const order: string[] = []
  const k = new FakeKernel((m) => {
    const tag = m.payload.toString()
    if (running > 0) {
      order.push(`${tag} refused`)
      return [encodeError(16, m)]
    }
    running++
    order.push(`${tag} start`)
    setTimeout(() => {
      running--
      order.push(`${tag} done`)
      k.push(null, [encodeMsg(24, NLM_F_MULTI, m.seq, Buffer.from(tag)), encodeMsg(NLMSG_DONE, NLM_F_MULTI, m.seq, Buffer.alloc(4))])
    }, 5)
    return []
  })
  const s = new NetlinkSocket(k)
  const out = await Promise.all(['a', 'b', 'c'].map((tag) => s.dump({ type: 26, payload: Buffer.from(tag) }, `dump ${tag}`)))
  t.same(out.map((msgs) => msgs.map((m) => m.payload.toString())), [['a'], ['b'], ['c']], 'every dump got its own reply')
  t.same(order, ['a start', 'a done', 'b start', 'b done', 'c start', 'c done'], 'each started after the one before it ended; none refused')
  // The positive case of the fake: two dumps sent at once without the queue are refused.
  const raw = await Promise.all(['x', 'y'].map((tag) => s.requestAll([{ type: 26, flags: 0x300, payload: Buffer.from(tag) }], tag)))
  t.match(raw[1]![0], { ok: false, error: { code: 'EBUSY' } }, 'the fake kernel refuses a concurrent dump, as Linux does')
  await new Promise((r) => setTimeout(r, 20))
})

t.test('a dump refused with EBUSY is retried; one refused every time fails with EBUSY', async (t) => {
  let refusals = 1
  const answer = (m: NlMsg): Buffer[] => (refusals-- > 0 ? [encodeError(16, m)] : [encodeMsg(24, NLM_F_MULTI, m.seq, Buffer.from('ok')), encodeMsg(NLMSG_DONE, NLM_F_MULTI, m.seq, Buffer.alloc(4))])
  const s = new NetlinkSocket(new FakeKernel(answer))
  t.same((await s.dump({ type: 26, payload: Buffer.alloc(4) }, 'dump')).map((m) => m.payload.toString()), ['ok'], 'answered on the retry')
  refusals = 100
  await t.rejects(s.dump({ type: 26, payload: Buffer.alloc(4) }, 'dump'), { code: 'EBUSY' })
  refusals = 0
  t.same((await s.dump({ type: 26, payload: Buffer.alloc(4) }, 'dump')).length, 1, 'a failed dump does not block the next one')
})

t.test('a request without reply times out; a late reply is ignored', async (t) => {
  let held: NlMsg | undefined
  const k = new FakeKernel((m) => {
    held = m
    return []
  })
  const s = new NetlinkSocket(k, { timeoutMs: 30 })
  const t0 = Date.now()
  await t.rejects(s.request({ type: 1, payload: Buffer.alloc(0) }, 'slow'), { kind: 'transport', code: 'ETIMEDOUT' })
  t.ok(Date.now() - t0 < 1000)
  k.push(null, [encodeError(0, held!)])
})

t.test('ENOBUFS and garbage fail pending requests as transport/decode errors; close rejects the rest', async (t) => {
  const k = new FakeKernel(() => [])
  const s = new NetlinkSocket(k)
  const p1 = s.request({ type: 1, payload: Buffer.alloc(0) }, 'a')
  k.push(new NetlinkError('transport', 'ENOBUFS', 'overrun'), [])
  await t.rejects(p1, { code: 'ENOBUFS' })
  const p2 = s.request({ type: 1, payload: Buffer.alloc(0) }, 'b')
  k.push(null, [Buffer.from('ffffffff', 'hex')])
  await t.rejects(p2, { name: 'NetlinkError', kind: 'decode' })
  const p3 = s.request({ type: 1, payload: Buffer.alloc(0) }, 'c')
  s.close()
  s.close()
  await t.rejects(p3, { code: 'ECLOSED' })
  await t.rejects(s.request({ type: 1, payload: Buffer.alloc(0) }, 'd'), { code: 'ECLOSED' })
  t.ok(k.closed)
})

t.test('monitor decodes a captured notification and turns ENOBUFS into resync', async (t) => {
  const k = new FakeKernel(() => [])
  const m = new Monitor(k, false)
  const seen: unknown[] = []
  m.on('route', (action, route) => seen.push([action, route.dst, route.protocol]))
  m.on('resync', (e) => seen.push(['resync', e.code]))
  k.push(null, fixture('monitor-route-del.hex'))
  k.push(new NetlinkError('transport', 'ENOBUFS', 'overrun'), [])
  k.push(null, [Buffer.from('0100', 'hex')])
  t.same(seen, [['del', '10.20.0.0/16', 220], ['resync', 'ENOBUFS']], 'garbage without an error listener is dropped, not thrown')
  m.close()
  t.ok(k.closed)
})
