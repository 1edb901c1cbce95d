import { readFileSync } from 'node:fs'
import t from 'tap'
import { FrameReader, Vici, decodePacket, encodeFrame, parseIkeSas } from '../../../src/vici/index.js'
import { FakeVici, charonLike } from '../../harness/vici-fake.js'

// A list-sa event captured from charon 5.9.8 (PSK IKE_SA bench7 with one installed CHILD_SA child7 that had
// carried one ping each way), stored as the frame charon sent.
const LIST_SA = readFileSync(new URL('../../fixtures/vici/list-sa.bin', import.meta.url))

t.test('captured list-sa event maps into typed SAs, raw kept', async (t) => {
  const [frame] = new FrameReader().push(LIST_SA)
  const p = decodePacket(frame!)
  if (p.type !== 'EVENT') throw new Error('fixture is not an event')
  t.equal(p.name, 'list-sa')
  t.same(encodeFrame(p), LIST_SA, 'decode then encode reproduces the captured bytes')
  const [sa, ...rest] = parseIkeSas(p.message)
  t.equal(rest.length, 0)
  t.match(sa, { name: 'bench7', uniqueid: '1', state: 'ESTABLISHED', localHost: '192.168.72.1', remoteHost: '192.168.72.2', localId: 'a-7@bench', remoteId: 'b-7@bench' })
  t.equal(sa!.children.length, 1)
  // charon keys the child section "child7-1"; the typed name is the config name
  t.match(sa!.children[0], { name: 'child7', uniqueid: '1', reqid: '1', state: 'INSTALLED', localTs: ['10.60.7.0/24'], remoteTs: ['10.61.7.0/24'] })
  t.equal(sa!.children[0]!.raw['packets-out'], '1', 'raw values still there')
  t.equal(sa!.raw['dh-group'], 'CURVE_25519')
})

t.test('command messages: names and keys charon actually reads', async (t) => {
  const f = await FakeVici.start(
    charonLike({
      terminate: (c) => c.send({ type: 'CMD_RESPONSE', message: { success: 'yes' } }),
      'list-sas': (c) => c.send({ type: 'CMD_RESPONSE', message: {} }),
      'load-conn': (c) => c.send({ type: 'CMD_RESPONSE', message: { success: 'yes' } }),
      'load-key': (c) => c.send({ type: 'CMD_RESPONSE', message: { success: 'yes', id: 'abc' } }),
      'get-conns': (c) => c.send({ type: 'CMD_RESPONSE', message: { conns: ['x', 'y'] } }),
    }, ['list-sa']),
  )
  t.teardown(() => f.destroy())
  const v = new Vici({ uri: f.uri })
  t.teardown(() => v.close())
  const sent = (): unknown => {
    const p = f.received.filter((r) => r.packet.type === 'CMD_REQUEST').at(-1)!.packet
    return p.type === 'CMD_REQUEST' ? [p.name, p.message] : undefined
  }
  await v.terminate({ ikeId: 3 })
  t.same(sent(), ['terminate', { 'ike-id': '3', timeout: '-1' }], 'terminate: ike-id (not ike_id), async by default')
  await v.listSas({ ike: 'gw', noblock: true })
  t.same(sent(), ['list-sas', { ike: 'gw', noblock: 'yes' }])
  await v.loadConn('gw', { version: '2', children: { p2p: { local_ts: ['10.0.0.0/24'] } } })
  t.same(sent(), ['load-conn', { gw: { version: '2', children: { p2p: { local_ts: ['10.0.0.0/24'] } } } }])
  t.equal(await v.loadKey({ data: 'PEM' }), 'abc', 'load-key returns the key id')
  t.same(await v.getConns(), ['x', 'y'])
  await t.rejects(v.initiate({}), { code: 'invalid' }, 'initiate needs a target')
  await t.rejects(v.initiate({ child: 'x', timeoutMs: -5 }), { code: 'invalid' })
})

t.test('every typed command: the request charon reads and the reply mapped', async (t) => {
  const der = Buffer.from([0x30, 0x82, 0x00, 0xff, 0x80]) // not UTF-8: must come back byte for byte
  const ok = { success: 'yes' }
  const f = await FakeVici.start(
    charonLike(
      {
        version: (c) => c.send({ type: 'CMD_RESPONSE', message: { daemon: 'charon', version: '5.9.8', sysname: 'Linux', release: '6.1', machine: Buffer.from('x86_64') } }),
        stats: (c) => c.send({ type: 'CMD_RESPONSE', message: { uptime: { running: '1 minute' } } }),
        'unload-conn': (c) => c.send({ type: 'CMD_RESPONSE', message: ok }),
        'load-cert': (c) => c.send({ type: 'CMD_RESPONSE', message: ok }),
        'load-shared': (c) => c.send({ type: 'CMD_RESPONSE', message: ok }),
        'load-authority': (c) => c.send({ type: 'CMD_RESPONSE', message: ok }),
        'unload-authority': (c) => c.send({ type: 'CMD_RESPONSE', message: ok }),
        'unload-key': (c) => c.send({ type: 'CMD_RESPONSE', message: ok }),
        'unload-shared': (c) => c.send({ type: 'CMD_RESPONSE', message: ok }),
        'get-keys': (c) => c.send({ type: 'CMD_RESPONSE', message: { keys: ['k1'] } }),
        'get-shared': (c) => c.send({ type: 'CMD_RESPONSE', message: { keys: ['s1', 's2'] } }),
        'get-authorities': (c) => c.send({ type: 'CMD_RESPONSE', message: { authorities: ['fabedge-ca'] } }),
        'list-conns': (c) => {
          c.send({ type: 'EVENT', name: 'list-conn', message: { gw: { local_addrs: ['192.168.1.1'] }, ignored: 'not a section' } })
          c.send({ type: 'CMD_RESPONSE', message: {} })
        },
        'list-authorities': (c) => {
          c.send({ type: 'EVENT', name: 'list-authority', message: { 'fabedge-ca': { cacert: 'CN=ca' } } })
          c.send({ type: 'CMD_RESPONSE', message: {} })
        },
        'list-certs': (c) => {
          c.send({ type: 'EVENT', name: 'list-cert', message: { type: 'X509', flag: 'CA', has_privkey: 'no', data: der, subject: 'CN=ca', 'not-before': 'a', 'not-after': 'b' } })
          c.send({ type: 'EVENT', name: 'list-cert', message: { type: 'X509', flag: 'NONE', has_privkey: 'yes' } })
          c.send({ type: 'CMD_RESPONSE', message: {} })
        },
        initiate: (c) => c.send({ type: 'CMD_RESPONSE', message: { success: 'no', errmsg: 'no config named x' } }),
      },
      ['list-conn', 'list-authority', 'list-cert', 'child-updown'],
    ),
  )
  t.teardown(() => f.destroy())
  const v = new Vici({ uri: f.uri })
  t.teardown(() => v.close())
  await v.connect()
  const sent = (): unknown => {
    const p = f.received.filter((r) => r.packet.type === 'CMD_REQUEST').at(-1)!.packet
    return p.type === 'CMD_REQUEST' ? [p.name, p.message] : undefined
  }

  t.same(await v.version(), { daemon: 'charon', version: '5.9.8', sysname: 'Linux', release: '6.1', machine: 'x86_64' })
  t.same(await v.stats(), { uptime: { running: '1 minute' } }, 'stats: raw')
  await v.unloadConn('gw')
  t.same(sent(), ['unload-conn', { name: 'gw' }])
  await v.loadCert({ data: 'PEM' })
  t.same(sent(), ['load-cert', { type: 'X509', flag: 'NONE', data: 'PEM' }], 'load-cert defaults')
  await v.loadCert({ data: 'PEM', flag: 'CA' })
  t.same(sent(), ['load-cert', { type: 'X509', flag: 'CA', data: 'PEM' }])
  await v.loadShared({ id: 'psk-1', data: 'secret', owners: ['a@x', 'b@x'] })
  t.same(sent(), ['load-shared', { id: 'psk-1', type: 'IKE', data: 'secret', owners: ['a@x', 'b@x'] }])
  await v.loadAuthority('fabedge-ca', { cacert: 'PEM' })
  t.same(sent(), ['load-authority', { 'fabedge-ca': { cacert: 'PEM' } }])
  await v.unloadAuthority('fabedge-ca')
  t.same(sent(), ['unload-authority', { name: 'fabedge-ca' }])
  await v.unloadKey('abc')
  t.same(sent(), ['unload-key', { id: 'abc' }])
  await v.unloadShared('psk-1')
  t.same(sent(), ['unload-shared', { id: 'psk-1' }])
  t.same(await v.getKeys(), ['k1'])
  t.same(await v.getShared(), ['s1', 's2'])
  t.same(await v.getAuthorities(), ['fabedge-ca'])

  const conns = await v.listConns({ ike: 'gw' })
  t.same(sent(), ['list-conns', { ike: 'gw' }])
  t.same(conns, [{ name: 'gw', raw: { local_addrs: ['192.168.1.1'] } }], 'sections by name; non-sections skipped')
  t.same(await v.listAuthorities(), [{ name: 'fabedge-ca', raw: { cacert: 'CN=ca' } }])
  const certs = await v.listCerts({ flag: 'CA' })
  t.same(sent(), ['list-certs', { flag: 'CA' }])
  t.same(certs[0], { type: 'X509', flag: 'CA', hasPrivkey: false, data: der, subject: 'CN=ca', notBefore: 'a', notAfter: 'b' }, 'DER data kept as bytes')
  t.same(certs[1], { type: 'X509', flag: 'NONE', hasPrivkey: true, data: Buffer.alloc(0), subject: undefined, notBefore: undefined, notAfter: undefined })

  await t.rejects(v.terminate({}), { code: 'invalid' }, 'terminate needs a target')
  // initiateAndWait: a refused initiate rejects with charon's answer and drops the child-updown subscription
  await t.rejects(v.initiateAndWait({ child: 'x' }, 1000), { code: 'failed', message: /no config named x/ })
  t.equal(f.received.at(-1)?.packet.type, 'EVENT_UNREGISTER', 'the watch was cancelled')
})
