// The real TunnelsPort adapter over a VICI session, against a scripted VICI server: the exact commands and keys
// it sends (what charon 5.9.8 reads), the typed answers it returns, SA events and connection-state notifications.
import { readFileSync } from 'node:fs'
import t from 'tap'
import { observedSa, viciTunnelsPort } from '../../../src/reconcile/tunnels-port.js'
import { compactListed, type ListedConn } from '../../../src/reconcile/tunnels.js'
import { FrameReader, Vici, decodePacket } from '../../../src/vici/index.js'
import { FakeVici, charonLike, type FakeConn } from '../../harness/vici-fake.js'

const ok = (c: FakeConn, extra: Record<string, unknown> = {}): void => c.send({ type: 'CMD_RESPONSE', message: { success: 'yes', ...extra } as never })

t.test('viciTunnelsPort: commands, keys and answers', async (t) => {
  const events: FakeConn[] = []
  const f = await FakeVici.start(
    charonLike({
      'list-conns': (c) => {
        c.send({ type: 'EVENT', name: 'list-conn', message: { 'beijing.connector': { 'local-1': { id: 'C=CN, CN=me' }, children: {} } } })
        ok(c)
      },
      'list-sas': (c) => {
        c.send({ type: 'EVENT', name: 'list-sa', message: { 'beijing.connector': { uniqueid: '4', state: 'ESTABLISHED', 'local-id': 'C=CN, CN=me', 'child-sas': { 'beijing.connector-p2p-7': { name: 'beijing.connector-p2p', uniqueid: '7', state: 'INSTALLED' } } } } })
        ok(c)
      },
      'list-certs': (c) => {
        c.send({ type: 'EVENT', name: 'list-cert', message: { type: 'X509', flag: 'NONE', has_privkey: 'yes', data: Buffer.from([1, 2, 3]) } })
        ok(c)
      },
      'load-conn': (c) => ok(c),
      'unload-conn': (c) => ok(c),
      initiate: (c) => ok(c),
      terminate: (c) => ok(c),
      'get-keys': (c) => c.send({ type: 'CMD_RESPONSE', message: { keys: ['aa', 'bb'] } }),
      'load-cert': (c) => ok(c),
      'load-key': (c) => ok(c, { id: 'cc' }),
      'unload-key': (c) => ok(c),
      'get-authorities': (c) => c.send({ type: 'CMD_RESPONSE', message: { authorities: ['fabtunnel-ca'] } }),
      'load-authority': (c) => ok(c),
      'unload-authority': (c) => ok(c),
    }, ['list-conn', 'list-sa', 'list-cert', 'ike-updown', 'child-updown']),
  )
  t.teardown(() => f.destroy())
  const vici = new Vici({ uri: f.uri, reconnect: { initialDelayMs: 10, maxDelayMs: 20 } })
  t.teardown(() => vici.close())
  const port = viciTunnelsPort(vici)
  const sent = (): unknown => {
    const p = f.received.filter((r) => r.packet.type === 'CMD_REQUEST').at(-1)!.packet
    return p.type === 'CMD_REQUEST' ? [p.name, p.message] : undefined
  }
  t.same([...(await port.listConns()).keys()], ['beijing.connector'])
  t.same(await port.listSas(), [{ name: 'beijing.connector', uniqueid: '4', state: 'ESTABLISHED', localId: 'C=CN, CN=me', children: [{ name: 'beijing.connector-p2p', uniqueid: '7', state: 'INSTALLED' }] }])
  t.same(sent(), ['list-sas', {}], 'blocking list-sas: no noblock')
  await port.loadConn('x', { version: '2' })
  t.same(sent(), ['load-conn', { x: { version: '2' } }])
  await port.unloadConn('x')
  t.same(sent(), ['unload-conn', { name: 'x' }])
  await port.initiate({ ike: 'x', child: 'x-p2p' })
  t.same(sent(), ['initiate', { child: 'x-p2p', ike: 'x', timeout: '-1' }], 'asynchronous, child named within its connection')
  await port.initiate({ ike: 'mediator' })
  t.same(sent(), ['initiate', { ike: 'mediator', timeout: '-1' }])
  await port.terminate({ childId: '7' })
  t.same(sent(), ['terminate', { 'child-id': '7', force: 'yes', timeout: '-1' }])
  await port.terminate({ ikeId: '4' }, 5000)
  t.same(f.received.filter((r) => r.packet.type === 'CMD_REQUEST').map((r) => (r.packet as { name: string }).name).at(-1), 'terminate', 'blocking terminate runs on a pool connection')
  t.same(await port.listCerts(), [{ flag: 'NONE', hasPrivkey: true, data: Buffer.from([1, 2, 3]) }])
  t.same(await port.getKeys(), ['aa', 'bb'])
  await port.loadCert('CERT')
  t.same(sent(), ['load-cert', { type: 'X509', flag: 'NONE', data: 'CERT' }])
  t.equal(await port.loadKey('KEY'), 'cc')
  await port.unloadKey('cc')
  t.same(sent(), ['unload-key', { id: 'cc' }])
  t.same(await port.getAuthorities(), ['fabtunnel-ca'])
  await port.loadAuthority('fabtunnel-ca', 'CA')
  t.same(sent(), ['load-authority', { 'fabtunnel-ca': { cacert: 'CA' } }])
  await port.unloadAuthority('fabtunnel-ca')
  t.same(sent(), ['unload-authority', { name: 'fabtunnel-ca' }])

  // SA events arrive typed; the event connection is the one that registered.
  const seen: unknown[] = []
  f.script = ((orig) => (conn, p) => {
    if (p.type === 'EVENT_REGISTER') events.push(conn)
    orig(conn, p)
  })(f.script)
  await port.subscribe((event, up, sas) => seen.push([event, up, sas.map((s) => s.name)]))
  events[0]!.send({ type: 'EVENT', name: 'child-updown', message: { up: 'yes', 'beijing.connector': { uniqueid: '4', state: 'ESTABLISHED', 'child-sas': {} } } })
  events[0]!.send({ type: 'EVENT', name: 'ike-updown', message: { 'beijing.connector': { uniqueid: '4', state: 'DELETING' } } })
  await new Promise((r) => setTimeout(r, 50))
  t.same(seen, [['child-updown', true, ['beijing.connector']], ['ike-updown', false, ['beijing.connector']]])

  // Connection state: a charon restart is a disconnect followed by a reconnect.
  const states: string[] = []
  port.onConnection({ reconnected: () => states.push('reconnected'), disconnected: () => states.push('disconnected') })
  await f.stop()
  await f.listen()
  for (let i = 0; i < 100 && !states.includes('reconnected'); i++) await new Promise((r) => setTimeout(r, 20))
  t.same(states, ['disconnected', 'reconnected'])
})

// The port reduces each connection (compactListed) and maps each IKE_SA as charon streams it, instead of collecting
// the whole listing first: the result must be exactly what collecting and then reducing gave (the path before),
// for charon 5.9.8's captured listings (connector and edge, every connection one event, as charon sends them), a
// foreign connection with other fields, and a captured list-sa event plus SAs with several children.
t.test('streamed reduction gives exactly what collecting, then reducing gave', async (t) => {
  const captured = (f: string): Record<string, Record<string, unknown>> =>
    (JSON.parse(readFileSync(new URL(`../../fixtures/vici/list-conns-${f}.json`, import.meta.url), 'utf8')) as { conns: Record<string, Record<string, unknown>> }).conns
  const conns: Array<[string, Record<string, unknown>]> = [
    ...Object.entries(captured('connector')),
    ...Object.entries(captured('edge')).map(([n, c]) => [`edge.${n}`, c] as [string, Record<string, unknown>]),
    ['office-vpn', { remote_addrs: ['192.0.2.1'], 'local-1': { id: 'me@office', class: 'pre-shared key' }, 'local-2': { id: 'second' }, 'remote-1': {}, children: { net: { 'local-ts': ['10.0.0.0/8'], mode: 'TUNNEL' } } }],
  ]
  t.ok(conns.length >= 6, `${conns.length} connections`)
  const [frame] = new FrameReader().push(readFileSync(new URL('../../fixtures/vici/list-sa.bin', import.meta.url)))
  const listSa = decodePacket(frame!)
  if (listSa.type !== 'EVENT') throw new Error('fixture is not an event')
  const saEvents = [
    listSa.message,
    { 'a.b': { uniqueid: '9', state: 'ESTABLISHED', 'local-id': 'C=CN, CN=me', 'child-sas': { 'a.b-p2p-3': { name: 'a.b-p2p', uniqueid: '3', state: 'INSTALLED' }, 'a.b-n2p-4': { name: 'a.b-n2p', uniqueid: '4', state: 'REKEYED' } } } },
    { 'c.d': { uniqueid: '10', state: 'CONNECTING' }, 'e.f': { uniqueid: '11', state: 'ESTABLISHED', 'child-sas': {} } },
  ]
  const f = await FakeVici.start(
    charonLike({
      'list-conns': (c) => {
        for (const [name, conn] of conns) c.send({ type: 'EVENT', name: 'list-conn', message: { [name]: conn } as never })
        ok(c)
      },
      'list-sas': (c) => {
        for (const m of saEvents) c.send({ type: 'EVENT', name: 'list-sa', message: m as never })
        ok(c)
      },
    }, ['list-conn', 'list-sa']),
  )
  t.teardown(() => f.destroy())
  const vici = new Vici({ uri: f.uri })
  t.teardown(() => vici.close())
  const port = viciTunnelsPort(vici)

  // Before: the whole listing collected, then reduced in the subsystem.
  const before = new Map((await vici.listConns()).map((c) => [c.name, c.raw as ListedConn]))
  const expected = [...new Map([...before].map(([name, l]) => [name, compactListed(l)]))]
  const streamed = [...(await port.listConns())]
  t.strictSame(streamed, expected, 'same names, order and reduced entries')
  t.equal(streamed.length, conns.length)
  // Equal lists of one listing are kept once: the connector's children list the same local selectors.
  const localTs = streamed.flatMap(([, l]) => Object.values(l.children as Record<string, Record<string, unknown>>).map((c) => c['local-ts']))
  const distinct = new Set(localTs.map((x) => JSON.stringify(x)))
  t.ok(localTs.length > distinct.size, `${localTs.length} local-ts lists, ${distinct.size} distinct`)
  t.equal(new Set(localTs).size, distinct.size, 'one kept list per distinct content')
  t.strictSame(await port.listSas(), (await vici.listSas()).map(observedSa))
  t.equal((await port.listSas()).length, 4)
})
