import { once } from 'node:events'
import t, { type Test } from 'tap'
import { ViciClient, ViciError, Vici, encodeFrame, type ViciMessage } from '../../../src/vici/index.js'
import { FakeVici, charonLike, type FakeConn } from '../../harness/vici-fake.js'

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms))

/** The promise's outcome, or a rejection after timeoutMs: a client that never settles fails instead of hanging. */
function within<T>(p: Promise<T>, what: string, timeoutMs = 5000): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: not within ${timeoutMs} ms`)), timeoutMs)
  })
  return Promise.race([p, late]).finally(() => clearTimeout(timer))
}

/** Waits until cond() holds, polling; bounded, so a broken client fails the test instead of hanging it. */
async function until(cond: () => boolean, what: string, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${timeoutMs} ms`)
    await sleep(5)
  }
}

async function fake(t: Test, ...args: Parameters<typeof charonLike>): Promise<FakeVici> {
  const f = await FakeVici.start(charonLike(...args))
  t.teardown(() => f.destroy())
  return f
}

function client(t: Test, f: FakeVici, opts: ConstructorParameters<typeof ViciClient>[0] = {}): ViciClient {
  const c = new ViciClient({ uri: f.uri, ...opts })
  t.teardown(() => c.close())
  return c
}

async function rejectsCode(t: Test, p: Promise<unknown>, code: string, what: string): Promise<ViciError | undefined> {
  try {
    await p
    t.fail(`${what}: resolved, expected ${code}`)
  } catch (e) {
    t.ok(e instanceof ViciError, `${what}: a ViciError`)
    t.equal((e as ViciError).code, code, `${what}: code ${code}`)
    return e as ViciError
  }
  return undefined
}

t.test('uri parsing: unix:// and plain paths, other schemes refused', async (t) => {
  t.equal(new ViciClient({ uri: 'unix:///var/run/charon.vici' }).socketPath, '/var/run/charon.vici')
  t.equal(new ViciClient({ uri: '/tmp/x.vici' }).socketPath, '/tmp/x.vici')
  t.throws(() => new ViciClient({ uri: 'tcp://127.0.0.1:4502' }), { code: 'invalid' })
})

t.test('one request in flight, answers paired in order', async (t) => {
  let inFlight = 0
  let maxInFlight = 0
  const f = await fake(t, {
    echo: (c, p) => {
      inFlight++
      maxInFlight = Math.max(maxInFlight, inFlight)
      // later requests answered faster: pairing must still follow request order
      setTimeout(() => {
        inFlight--
        c.send({ type: 'CMD_RESPONSE', message: { n: p.message.n! } })
      }, 30 - Number(p.message.n) * 5)
    },
  })
  const c = client(t, f)
  const answers = await Promise.all([0, 1, 2, 3, 4].map((n) => c.call('echo', { n: String(n) })))
  t.same(answers.map((a) => a.n), ['0', '1', '2', '3', '4'])
  t.equal(maxInFlight, 1, 'never two requests outstanding on one connection')
})

t.test('daemon refusals are typed apart from transport failures', async (t) => {
  const f = await fake(t, {
    'load-conn': (c) => c.send({ type: 'CMD_RESPONSE', message: { success: 'no', errmsg: 'invalid value for: certs' } }),
    ok: (c) => c.send({ type: 'CMD_RESPONSE', message: { success: 'yes' } }),
  })
  const c = client(t, f)
  const failed = await rejectsCode(t, c.call('load-conn', { x: {} }), 'failed', 'success = no')
  t.match(failed?.message, /invalid value for: certs/)
  t.equal(failed?.isDaemonRefusal, true)
  t.equal(failed?.isTransport, false)
  t.same(failed?.response, { success: 'no', errmsg: 'invalid value for: certs' })
  const unknown = await rejectsCode(t, c.call('nope'), 'CMD_UNKNOWN', 'unknown command')
  t.equal(unknown?.isDaemonRefusal, true)
  await rejectsCode(t, c.subscribe('no-such-event', () => undefined), 'EVENT_UNKNOWN', 'unknown event')
  t.same(await c.call('ok'), { success: 'yes' }, 'connection still usable after refusals')
})

t.test('connect failures carry the errno code', async (t) => {
  const f = await fake(t, {})
  const missing = new ViciClient({ uri: `${f.path}.missing` })
  const e = await rejectsCode(t, missing.call('version'), 'ENOENT', 'no socket file')
  t.equal(e?.isTransport, true)
  await f.stop()
  // a socket file nobody listens on
  const net = await import('node:net')
  const srv = net.createServer()
  await new Promise<void>((r) => srv.listen(f.path, () => r()))
  await new Promise<void>((r) => srv.close(() => r()))
  const refused = new ViciClient({ uri: f.uri })
  const { writeFile } = await import('node:fs/promises')
  await writeFile(f.path, '')
  await rejectsCode(t, refused.call('version'), 'ECONNREFUSED', 'nobody listening')
})

t.test('timeouts: in-flight and queued requests; a late answer is not given to the next request', async (t) => {
  let slowAnswered = false
  const f = await fake(t, {
    slow: (c) =>
      setTimeout(() => {
        slowAnswered = true
        c.send({ type: 'CMD_RESPONSE', message: { which: 'slow' } })
      }, 400),
    fast: (c) => c.send({ type: 'CMD_RESPONSE', message: { which: 'fast' } }),
  })
  const c = client(t, f)
  const slow = c.call('slow', {}, { timeoutMs: 50 })
  const queuedTimeout = c.call('fast', { tag: 'queued' }, { timeoutMs: 20 })
  queuedTimeout.catch(() => undefined) // awaited below, after it has already rejected
  const fast = c.call('fast', {}, { timeoutMs: 2000 })
  await rejectsCode(t, slow, 'timeout', 'in-flight request')
  t.notOk(slowAnswered, 'timeout fires before the late answer')
  await rejectsCode(t, queuedTimeout, 'timeout', 'queued request')
  t.same(await fast, { which: 'fast' }, 'next request gets its own answer, not the late one')
  t.notOk(
    f.received.some((r) => r.packet.type === 'CMD_REQUEST' && r.packet.message.tag === 'queued'),
    'a request that timed out in the queue is never sent',
  )
})

t.test('stream: events before the response are collected; registration wraps the command', async (t) => {
  const f = await fake(
    t,
    {
      'list-sas': (c) => {
        c.send({ type: 'EVENT', name: 'list-sa', message: { a: { uniqueid: '1' } } })
        c.send({ type: 'EVENT', name: 'other', message: { stray: 'yes' } })
        c.send({ type: 'EVENT', name: 'list-sa', message: { b: { uniqueid: '2' } } })
        c.send({ type: 'CMD_RESPONSE', message: {} })
      },
    },
    ['list-sa'],
  )
  const c = client(t, f)
  const r = await c.stream('list-sas', 'list-sa', { noblock: 'yes' })
  t.same(r.events, [{ a: { uniqueid: '1' } }, { b: { uniqueid: '2' } }])
  t.same(r.response, {})
  t.same(
    f.received.map((x) => x.packet.type),
    ['EVENT_REGISTER', 'CMD_REQUEST', 'EVENT_UNREGISTER'],
  )
})

t.test('stream with onEvent: each event handed over as decoded, none collected; a throwing consumer rejects the stream, the connection stays in step', async (t) => {
  const f = await fake(
    t,
    {
      'list-sas': (c) => {
        c.send({ type: 'EVENT', name: 'list-sa', message: { a: { uniqueid: '1' } } })
        c.send({ type: 'EVENT', name: 'other', message: { stray: 'yes' } })
        c.send({ type: 'EVENT', name: 'list-sa', message: { b: { uniqueid: '2' } } })
        c.send({ type: 'EVENT', name: 'list-sa', message: { c: { uniqueid: '3' } } })
        c.send({ type: 'CMD_RESPONSE', message: {} })
      },
      fast: (c) => c.send({ type: 'CMD_RESPONSE', message: { which: 'fast' } }),
    },
    ['list-sa'],
  )
  const c = client(t, f)
  const seen: ViciMessage[] = []
  const r = await c.stream('list-sas', 'list-sa', {}, { onEvent: (m) => seen.push(m) })
  t.same(seen, [{ a: { uniqueid: '1' } }, { b: { uniqueid: '2' } }, { c: { uniqueid: '3' } }], 'in order, only the streamed event')
  t.same(r.events, [], 'nothing collected')

  const handed: string[] = []
  const boom = new Error('consumer failed')
  const failing = c.stream('list-sas', 'list-sa', {}, {
    onEvent: (m) => {
      handed.push(Object.keys(m)[0]!)
      if (handed.length === 2) throw boom
    },
  })
  await t.rejects(failing, boom, 'the consumer\'s own error')
  t.same(handed, ['a', 'b'], 'events after the failure are skipped')
  t.same(await c.call('fast'), { which: 'fast' }, 'the next call gets its own answer')
  t.ok(c.connected)
})

t.test('events arrive on their own connection while a command is pending', async (t) => {
  let release: (() => void) | undefined
  let evtConn: FakeConn | undefined
  const f = await FakeVici.start(
    charonLike({ hold: (c) => (release = () => c.send({ type: 'CMD_RESPONSE', message: {} })) }, ['ike-updown']),
  )
  t.teardown(() => f.destroy())
  const script = f.script
  f.script = (conn, p) => {
    if (p.type === 'EVENT_REGISTER') evtConn = conn
    script(conn, p)
  }
  const c = client(t, f)
  const seen: ViciMessage[] = []
  await c.subscribe('ike-updown', (_, m) => seen.push(m))
  const pending = c.call('hold')
  await sleep(20)
  t.ok(evtConn, 'registration went to a connection')
  t.not(f.received.find((r) => r.packet.type === 'CMD_REQUEST')?.conn, evtConn!.id, 'commands use another connection')
  evtConn!.send({ type: 'EVENT', name: 'ike-updown', message: { up: 'yes' } })
  evtConn!.send({ type: 'EVENT', name: 'ike-updown', message: { up: 'no' } })
  await sleep(20)
  t.same(seen, [{ up: 'yes' }, { up: 'no' }], 'both events delivered while the command is still pending')
  release!()
  t.same(await pending, {})
  await c.unsubscribe('ike-updown')
  t.equal(f.received.at(-1)?.packet.type, 'EVENT_UNREGISTER', 'last handler gone: event unregistered')
})

t.test('server closes mid-frame: pending call fails fast with closed', async (t) => {
  const f = await fake(t, {
    half: (c) => {
      const frame = encodeFrame({ type: 'CMD_RESPONSE', message: { k: 'v'.repeat(100) } })
      c.sendRaw(frame.subarray(0, 50))
      setTimeout(() => c.destroy(), 10)
    },
  })
  const c = client(t, f, { reconnect: false })
  const disconnected = once(c, 'disconnected')
  const t0 = Date.now()
  const e = await rejectsCode(t, c.call('half', {}, { timeoutMs: 5000 }), 'closed', 'mid-frame close')
  t.match(e?.message, /unfinished frame/)
  t.ok(Date.now() - t0 < 1000, 'fails fast, not at the timeout')
  await disconnected
  t.equal(c.connected, false)
})

t.test('oversized and malformed frames from the server are transport errors', async (t) => {
  const f = await fake(t, {
    big: (c) => c.send({ type: 'CMD_RESPONSE', message: { k: 'v'.repeat(2000) } }),
    garbage: (c) => c.sendRaw(Buffer.from([0, 0, 0, 3, 1, 9, 9])),
    stray: (c) => {
      c.send({ type: 'CMD_RESPONSE', message: {} })
      setTimeout(() => c.send({ type: 'CMD_RESPONSE', message: {} }), 20)
    },
  })
  const c1 = client(t, f, { maxFrameBytes: 1000, reconnect: false })
  await rejectsCode(t, c1.call('big'), 'frame-too-large', 'frame over maxFrameBytes')
  const c2 = client(t, f, { reconnect: false })
  const e = await rejectsCode(t, c2.call('garbage'), 'malformed', 'unknown element type')
  t.equal(e?.isTransport, true)
  const c3 = client(t, f, { reconnect: false })
  const lost = once(c3, 'disconnected')
  t.same(await c3.call('stray'), {})
  const [err] = (await lost) as [ViciError]
  t.equal(err.code, 'protocol', 'a response nobody asked for kills the connection')
})

t.test('reconnect: pending calls fail fast, subscriptions re-registered, reconnected emitted', async (t) => {
  const f = await fake(t, { hold: () => undefined, version: (c) => c.send({ type: 'CMD_RESPONSE', message: { v: '1' } }) }, ['child-updown'])
  const c = client(t, f, { reconnect: { initialDelayMs: 20, maxDelayMs: 100 } })
  const seen: string[] = []
  await c.subscribe('child-updown', (_, m) => seen.push(String(m.up)))
  const pending = c.call('hold', {}, { timeoutMs: 10_000 })
  pending.catch(() => undefined) // rejects during f.stop(), checked below
  await sleep(20)
  const disconnected = once(c, 'disconnected')
  const t0 = Date.now()
  await f.stop()
  await rejectsCode(t, pending, 'closed', 'pending call when charon goes away')
  t.ok(Date.now() - t0 < 1000, 'pending call failed fast')
  await disconnected
  await rejectsCode(t, c.call('version'), 'closed', 'call while reconnecting fails fast')
  await sleep(150) // a few failed attempts with backoff
  const reconnected = once(c, 'reconnected')
  const registeredBefore = f.received.filter((r) => r.packet.type === 'EVENT_REGISTER').length
  await f.listen()
  await reconnected
  t.equal(c.connected, true)
  const registrations = f.received.filter((r) => r.packet.type === 'EVENT_REGISTER')
  t.equal(registrations.length, registeredBefore + 1, 'subscription re-registered on the new connection')
  t.same(await c.call('version'), { v: '1' }, 'calls work again')
  t.equal(f.connections, 2, 'one command and one event connection')
})

t.test('reconnect gives up after maxAttempts; the next call connects again', async (t) => {
  const f = await fake(t, { version: (c) => c.send({ type: 'CMD_RESPONSE', message: { v: '1' } }) })
  const c = client(t, f, { reconnect: { initialDelayMs: 5, maxDelayMs: 10, maxAttempts: 3 } })
  await c.connect()
  const failed = once(c, 'reconnect-failed')
  await f.stop()
  const [err] = (await failed) as [ViciError]
  t.equal(err.code, 'ENOENT', 'last attempt error reported')
  await f.listen()
  t.same(await c.call('version'), { v: '1' })
})

t.test('connect() while reconnecting waits for the outcome; close() settles it', async (t) => {
  const f = await fake(t, { version: (c) => c.send({ type: 'CMD_RESPONSE', message: { v: '1' } }) })
  const c = client(t, f, { reconnect: { initialDelayMs: 10, maxDelayMs: 20 } })
  await c.connect()
  const lost = once(c, 'disconnected')
  await f.stop()
  await lost
  const waiting = c.connect()
  await sleep(30)
  await f.listen()
  await waiting
  t.equal(c.connected, true, 'resolved once reconnected')
  const lost2 = once(c, 'disconnected')
  await f.stop()
  await lost2
  const abandoned = c.connect()
  await c.close()
  await rejectsCode(t, abandoned, 'closed', 'close() while reconnecting')
})

t.test('events delivered after reconnect', async (t) => {
  const conns: FakeConn[] = []
  const f = await FakeVici.start(charonLike({}, ['ike-updown']))
  t.teardown(() => f.destroy())
  const base = f.script
  f.script = (conn, p) => {
    if (p.type === 'EVENT_REGISTER') conns.push(conn)
    base(conn, p)
  }
  const c = client(t, f, { reconnect: { initialDelayMs: 10 } })
  const seen: string[] = []
  await c.subscribe('ike-updown', (_, m) => seen.push(String(m.n)))
  conns.at(-1)!.send({ type: 'EVENT', name: 'ike-updown', message: { n: 'before' } })
  await sleep(20)
  const reconnected = once(c, 'reconnected')
  conns.at(-1)!.destroy() // charon drops only the event connection: the client resets both
  await reconnected
  t.equal(conns.length, 2, 're-registered')
  conns.at(-1)!.send({ type: 'EVENT', name: 'ike-updown', message: { n: 'after' } })
  await sleep(20)
  t.same(seen, ['before', 'after'])
})

t.test('close rejects pending calls and refuses new ones', async (t) => {
  const f = await fake(t, { hold: () => undefined })
  const c = new ViciClient({ uri: f.uri })
  const pending = c.call('hold')
  await sleep(10)
  await c.close()
  await rejectsCode(t, pending, 'closed', 'pending call on close')
  await rejectsCode(t, c.call('hold'), 'closed', 'call after close')
  await sleep(20)
  t.equal(f.connections, 0, 'socket closed')
})

t.test('Vici: blocking initiates are bounded and never block the main connection', async (t) => {
  let active = 0
  let maxActive = 0
  const f = await fake(t, {
    initiate: (c, p) => {
      if (p.message.timeout === '-1') return c.send({ type: 'CMD_RESPONSE', message: { success: 'yes' } })
      active++
      maxActive = Math.max(maxActive, active)
      setTimeout(() => {
        active--
        c.send({ type: 'CMD_RESPONSE', message: { success: 'yes' } })
      }, 100)
    },
    version: (c) => c.send({ type: 'CMD_RESPONSE', message: { daemon: 'charon', version: '5.9.8', active: String(active) } }),
  })
  const v = new Vici({ uri: f.uri, maxBlocking: 3 })
  t.teardown(() => v.close())
  const blocking = Array.from({ length: 10 }, (_, i) => v.initiate({ child: `c${i}`, timeoutMs: 5000 }))
  await sleep(20)
  t.equal((await v.client.call('version')).active, '3', 'main connection answers while blocking initiates run')
  await Promise.all(blocking)
  t.equal(maxActive, 3, 'at most maxBlocking blocking initiates in charon at once')
  await v.initiate({ child: 'async' })
  const last = f.received.at(-1)!.packet
  t.same(last.type === 'CMD_REQUEST' && last.message, { child: 'async', timeout: '-1' }, 'default is async (timeout -1)')
})

t.test('Vici: watchUpdown resolves on the matching child-updown, times out otherwise', async (t) => {
  const regs: FakeConn[] = []
  const f = await FakeVici.start(
    charonLike({ initiate: (c) => c.send({ type: 'CMD_RESPONSE', message: { success: 'yes' } }) }, ['child-updown', 'ike-updown']),
  )
  t.teardown(() => f.destroy())
  const base = f.script
  f.script = (conn, p) => {
    if (p.type === 'EVENT_REGISTER') regs.push(conn)
    base(conn, p)
  }
  const v = new Vici({ uri: f.uri })
  t.teardown(() => v.close())
  const w = await v.watchUpdown({ child: 'p2p' })
  const ev = (child: string, up: string): ViciMessage => ({
    up,
    'gw-a': { uniqueid: '3', state: 'ESTABLISHED', 'child-sas': { [`${child}-7`]: { name: child, uniqueid: '7', state: 'INSTALLED', 'local-ts': ['10.1.0.0/24'], 'remote-ts': ['10.2.0.0/24'] } } },
  })
  regs[0]!.send({ type: 'EVENT', name: 'child-updown', message: ev('other', 'yes') })
  regs[0]!.send({ type: 'EVENT', name: 'child-updown', message: ev('p2p', 'no') })
  regs[0]!.send({ type: 'EVENT', name: 'child-updown', message: ev('p2p', 'yes') })
  const sa = await w.wait(1000)
  t.equal(sa.name, 'gw-a')
  t.same(sa.children.map((c) => [c.name, c.uniqueid, c.state, c.localTs, c.remoteTs]), [['p2p', '7', 'INSTALLED', ['10.1.0.0/24'], ['10.2.0.0/24']]])
  await rejectsCode(t, v.initiateAndWait({ child: 'never' }, 50), 'timeout', 'no event')
})

t.test("a request over charon's 512 KiB frame limit is refused locally; the connection stays usable", async (t) => {
  const f = await fake(t, { version: (c) => c.send({ type: 'CMD_RESPONSE', message: { v: '1' } }) })
  const c = client(t, f)
  t.same(await c.call('version'), { v: '1' })
  let lost = 0
  c.on('disconnected', () => lost++)
  // 9 values of 65535 bytes: about 590 KB, over 524288
  const big = Object.fromEntries(Array.from({ length: 9 }, (_, i) => [`k${i}`, 'v'.repeat(0xffff)]))
  const e = await rejectsCode(t, c.call('load-conn', { gw: big }), 'frame-too-large', 'oversized request')
  t.equal(e?.command, 'load-conn')
  t.match(e?.message, /exceeds the 524288-byte VICI limit/)
  t.same(await c.call('version'), { v: '1' }, 'next call on the same connection answered')
  t.equal(lost, 0, 'no disconnect')
  t.equal(f.connections, 1, 'still the one connection')
  t.notOk(f.received.some((r) => r.packet.type === 'CMD_REQUEST' && r.packet.name === 'load-conn'), 'never sent')

  // Without the local check the server side decides: the fake, like charon (vici_socket.c do_read), drops the
  // connection on a length header over its limit. Proven against real charon in test/integration/vici.
  const raised = client(t, f, { maxFrameBytes: 1024 * 1024, reconnect: false })
  await rejectsCode(t, within(raised.call('load-conn', { gw: big }), 'answer'), 'closed', 'limit raised past the server\'s')
})

t.test('an incoming frame header over the limit resets the connection at once, nothing buffered', async (t) => {
  let corrupt = true
  const f = await fake(t, {
    version: (c) => {
      // a length header announcing 512 KiB + 1 and no body: a corrupt stream (charon never sends such a frame)
      if (corrupt) c.sendRaw(Buffer.from([0, 8, 0, 1]))
      else c.send({ type: 'CMD_RESPONSE', message: { v: '1' } })
    },
  })
  const c = client(t, f, { reconnect: { initialDelayMs: 5 } })
  const disconnected = once(c, 'disconnected')
  const reconnected = once(c, 'reconnected')
  const queued = c.call('version', {}, { timeoutMs: 10_000 })
  queued.catch(() => undefined) // checked below
  const e = await rejectsCode(t, within(c.call('version', {}, { timeoutMs: 10_000 }), 'answer'), 'frame-too-large', 'in-flight call')
  t.match(e?.message, /incoming frame header announces 524289 bytes, over the 524288-byte limit/)
  await rejectsCode(t, queued, 'frame-too-large', 'the call queued behind it, rejected without waiting for its timeout')
  const [err] = (await within(disconnected, 'disconnected')) as [ViciError]
  t.equal(err.code, 'frame-too-large', 'disconnected carries the cause')
  await within(reconnected, 'reconnected')
  corrupt = false
  t.same(await c.call('version'), { v: '1' }, 'a fresh connection works')
})

t.test('answers of the wrong kind and client-side packets from the server are protocol errors', async (t) => {
  const f = await fake(t, {
    // answers a command with an event confirmation
    confirm: (c) => c.send({ type: 'EVENT_CONFIRM' }),
    // sends a packet only clients send
    request: (c) => c.send({ type: 'CMD_REQUEST', name: 'version' }),
    version: (c) => c.send({ type: 'CMD_RESPONSE', message: { v: '1' } }),
  })
  f.script = ((base) => (conn: FakeConn, p: Parameters<typeof base>[1]) => {
    // answers a registration with a command response
    if (p.type === 'EVENT_REGISTER') conn.send({ type: 'CMD_RESPONSE', message: {} })
    else base(conn, p)
  })(f.script)
  for (const [what, run] of [
    ['EVENT_CONFIRM for a command', (c: ViciClient) => c.call('confirm')],
    ['CMD_REQUEST from the server', (c: ViciClient) => c.call('request')],
    ['CMD_RESPONSE for a registration', (c: ViciClient) => c.subscribe('ike-updown', () => undefined)],
    ['CMD_RESPONSE for a stream registration', (c: ViciClient) => c.stream('list-sas', 'list-sa')],
  ] as const) {
    const c = client(t, f, { reconnect: false })
    const lost = once(c, 'disconnected')
    const e = await rejectsCode(t, run(c), 'protocol', what)
    t.equal(e?.isTransport, true)
    t.equal(((await within(lost, 'disconnected')) as [ViciError])[0].code, 'protocol', `${what}: the connection is dropped`)
    t.same(await c.call('version'), { v: '1' }, `${what}: the next call connects again`)
  }
})

t.test('events nobody asked for are dropped; a throwing handler does not stop the others', async (t) => {
  let evtConn: FakeConn | undefined
  const f = await fake(
    t,
    {
      // an event on the command connection with no stream in flight, then the answer
      version: (c) => {
        c.send({ type: 'EVENT', name: 'list-sa', message: { stray: 'yes' } })
        c.send({ type: 'CMD_RESPONSE', message: { v: '1' } })
      },
    },
    ['ike-updown', 'child-updown'],
  )
  const base = f.script
  f.script = (conn, p) => {
    if (p.type === 'EVENT_REGISTER') evtConn = conn
    base(conn, p)
  }
  const c = client(t, f)
  let lost = 0
  c.on('disconnected', () => lost++)
  const seen: string[] = []
  await c.subscribe('ike-updown', () => {
    throw new Error('handler bug')
  })
  await c.subscribe('ike-updown', (name, m) => seen.push(`${name} ${String(m.n)}`))
  evtConn!.send({ type: 'EVENT', name: 'child-updown', message: { n: 'unsubscribed' } })
  evtConn!.send({ type: 'EVENT', name: 'ike-updown', message: { n: '1' } })
  t.same(await c.call('version'), { v: '1' }, 'a stray event before the answer does not disturb pairing')
  await until(() => seen.length > 0, 'ike-updown delivered')
  await c.unsubscribe('ike-updown')
  const markers: string[] = []
  await c.subscribe('child-updown', (_, m) => markers.push(String(m.n)))
  // same socket, so once the marker is delivered the event before it has been dispatched too
  evtConn!.send({ type: 'EVENT', name: 'ike-updown', message: { n: 'after-unsubscribe' } })
  evtConn!.send({ type: 'EVENT', name: 'child-updown', message: { n: 'marker' } })
  await until(() => markers.length > 0, 'marker delivered')
  t.same(seen, ['ike-updown 1'], 'only the subscribed event, delivered past the throwing handler')
  t.same(markers, ['marker'], 'the event sent before the subscription was not delivered to it')
  t.same(await c.call('version'), { v: '1' })
  t.equal(lost, 0, 'no connection dropped')
})

t.test('a stream aborted by timeout still unregisters: later streams get each event once', async (t) => {
  // Registrations as charon keeps them (vici_dispatcher.c): one entry per EVENT_REGISTER, no dedup, and a
  // streamed event sent once per entry of the asking connection.
  const regs = new Map<number, number>()
  let slow = true
  const f = await fake(t, {
    'list-sas': (c) => {
      const answer = (): void => {
        for (let i = regs.get(c.id) ?? 0; i > 0; i--) c.send({ type: 'EVENT', name: 'list-sa', message: { gw: { uniqueid: '1' } } })
        c.send({ type: 'CMD_RESPONSE', message: {} })
      }
      if (slow) setTimeout(answer, 100)
      else answer()
    },
  })
  const base = f.script
  f.script = (conn, p) => {
    if (p.type === 'EVENT_REGISTER' && p.name === 'list-sa') {
      regs.set(conn.id, (regs.get(conn.id) ?? 0) + 1)
      return conn.send({ type: 'EVENT_CONFIRM' })
    }
    if (p.type === 'EVENT_UNREGISTER' && p.name === 'list-sa') {
      const n = regs.get(conn.id) ?? 0
      if (n > 0) regs.set(conn.id, n - 1)
      return conn.send({ type: n > 0 ? 'EVENT_CONFIRM' : 'EVENT_UNKNOWN' })
    }
    base(conn, p)
  }
  const c = client(t, f)
  await rejectsCode(t, c.stream('list-sas', 'list-sa', {}, { timeoutMs: 30 }), 'timeout', 'stream with a slow answer')
  slow = false
  // the late answer is consumed, then the next request goes out: an unregister if the stream kept it
  t.same(await c.call('list-sas'), {}, 'the connection pairs answers again')
  t.same(
    f.received.map((r) => r.packet.type),
    ['EVENT_REGISTER', 'CMD_REQUEST', 'EVENT_UNREGISTER', 'CMD_REQUEST'],
    'the unregister was sent after the late answer',
  )
  t.same([...regs.values()], [0], 'no registration left behind on the command connection')
  const { events } = await c.stream('list-sas', 'list-sa')
  t.equal(events.length, 1, 'the next stream sees the SA once, not once per leftover registration')
})

t.test('re-registration refused after a restart: reconnect retries, then reports it', async (t) => {
  let known = ['ike-updown']
  const conns: FakeConn[] = []
  const f = await FakeVici.start((conn, p) => {
    conns.push(conn)
    charonLike({}, known)(conn, p)
  })
  t.teardown(() => f.destroy())
  const c = client(t, f, { reconnect: { initialDelayMs: 5, maxDelayMs: 10, maxAttempts: 3 } })
  await c.subscribe('ike-updown', () => undefined)
  const failed = once(c, 'reconnect-failed')
  // charon "restarts" without that event source (another plugin set); the socket stays reachable throughout,
  // so every reconnect attempt gets as far as the registration
  known = []
  for (const conn of conns) conn.destroy()
  const [err] = (await within(failed, 'reconnect-failed')) as [ViciError]
  t.equal(err.code, 'EVENT_UNKNOWN', 'the refusal is what gave up')
  t.equal(f.received.filter((r) => r.packet.type === 'EVENT_REGISTER').length, 4, 'first registration + 3 attempts')
  t.equal(c.connected, false)
  await sleep(20)
  t.equal(f.connections, 0, 'no connection left open by the failed attempts')
})

t.test('close() while the socket is still connecting', async (t) => {
  const f = await fake(t, {})
  const c = new ViciClient({ uri: f.uri })
  const connecting = c.connect()
  await c.close()
  await rejectsCode(t, connecting, 'closed', 'connect')
  await sleep(20)
  t.equal(f.connections, 0, 'the socket opened meanwhile is closed')
})

t.test('an answer that never comes resets the connection instead of blocking every later call', async (t) => {
  // e.g. charon discards a reply over its 512 KiB limit (vici_socket.c send) and the request stays unanswered
  const f = await fake(t, { never: () => undefined, version: (c) => c.send({ type: 'CMD_RESPONSE', message: { v: '1' } }) })
  // the client's timeout (also the wait for a late answer) is short; the queued call's own is long
  const c = client(t, f, { timeoutMs: 50, reconnect: { initialDelayMs: 5 } })
  await c.connect()
  const disconnected = once(c, 'disconnected')
  const reconnected = once(c, 'reconnected')
  const never = c.call('never', {}, { timeoutMs: 20 })
  const queued = c.call('version', {}, { timeoutMs: 60_000 })
  queued.catch(() => undefined) // checked below
  await rejectsCode(t, never, 'timeout', 'the unanswered call')
  const e = await rejectsCode(t, within(queued, 'the queued call'), 'timeout', 'the call queued behind it')
  t.match(e?.message, /never: still no answer 50 ms after its timeout; connection reset/)
  t.equal(((await within(disconnected, 'disconnected')) as [ViciError])[0].code, 'timeout')
  await within(reconnected, 'reconnected')
  t.same(await c.call('version'), { v: '1' }, 'the new connection works')
})

t.test('lateAnswerMs: Infinity keeps waiting for the late answer; the blocking pool relies on it', async (t) => {
  t.throws(() => new ViciClient({ uri: '/x', lateAnswerMs: -1 }), { code: 'invalid' })
  let active = 0
  let maxActive = 0
  const conns = new Set<number>()
  const f = await fake(t, {
    initiate: (c, p) => {
      conns.add(c.id)
      active++
      maxActive = Math.max(maxActive, active)
      // the first blocking initiate answers long after its caller's timeout (and after 2x of it)
      setTimeout(() => {
        active--
        c.send({ type: 'CMD_RESPONSE', message: { success: 'yes' } })
      }, p.message.child === 'slow' ? 100 : 0)
    },
  })
  const v = new Vici({ uri: f.uri, timeoutMs: 20, maxBlocking: 1 })
  t.teardown(() => v.close())
  // timeoutMs 0: no limit in charon, so the call is bounded by the client's 20 ms only
  await rejectsCode(t, v.initiate({ child: 'slow', timeoutMs: 0 }), 'timeout', 'blocking initiate past its timeout')
  await v.initiate({ child: 'next', timeoutMs: 5 })
  t.equal(maxActive, 1, 'never two blocking initiates parked in charon with maxBlocking 1')
  t.equal(conns.size, 1, 'the second waited on the same connection for the late answer, no reset')
})
