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
