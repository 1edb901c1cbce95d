import { once } from 'node:events'
import net from 'node:net'
import t, { type Test } from 'tap'
import { FrameReader, Vici, ViciClient, ViciError, decodePacket, type ViciInput, type ViciPacket } from '../../../src/vici/index.js'
import { Charon } from '../../harness/charon.js'
import { Netns, needsRoot, vethPair } from '../../harness/netns.js'
import { TestPki, type NodeCert } from '../../harness/pki.js'
import { frameWith, requestOfSize } from '../../harness/vici-frames.js'

// Two gateways joined by a veth (IKE addresses), each with a port-less bridge holding its pod subnet's .1 and a
// node IP distinct from the IKE address (strongswan-netns.md, "Datapath requirements under libipsec").
const SIDES = {
  a: { ike: '192.168.71.1', pod: '10.71.1.1', podNet: '10.71.1.0/24', node: '10.70.0.1', name: 'edge1' },
  b: { ike: '192.168.71.2', pod: '10.71.2.1', podNet: '10.71.2.0/24', node: '10.70.0.2', name: 'edge2' },
} as const
type Side = (typeof SIDES)[keyof typeof SIDES]

async function gateway(ns: Netns, ifname: string, s: Side): Promise<void> {
  await ns.run(['ip', 'addr', 'add', `${s.ike}/24`, 'dev', ifname])
  await ns.run(['ip', 'link', 'add', 'podbr', 'type', 'bridge'])
  await ns.run(['ip', 'addr', 'add', `${s.pod}/24`, 'dev', 'podbr'])
  await ns.run(['ip', 'addr', 'add', `${s.node}/32`, 'dev', 'podbr'])
  await ns.run(['ip', 'link', 'set', 'podbr', 'up'])
  await ns.run(['sysctl', '-qw', 'net.ipv4.ip_forward=1'])
}

function conn(local: Side, remote: Side, me: NodeCert, peer: NodeCert): ViciInput {
  return {
    version: '2',
    local_addrs: [local.ike],
    remote_addrs: [remote.ike],
    local: { auth: 'pubkey', id: me.id, certs: [me.certPem] },
    remote: { auth: 'pubkey', id: peer.id },
    children: {
      p2p: { local_ts: [local.podNet], remote_ts: [remote.podNet], start_action: 'none' },
    },
  }
}

async function loadCreds(v: Vici, pki: TestPki, me: NodeCert): Promise<void> {
  await v.loadCert({ data: me.certPem })
  await v.loadKey({ data: me.keyPem })
  await v.loadAuthority('fabedge-ca', { cacert: pki.caCertPem })
}

t.test('two real charons: creds, load-conn, async initiate, traffic, terminate, restart + reconnect', { skip: needsRoot }, async (t) => {
  const pki = await TestPki.create()
  t.teardown(() => pki.destroy())
  const nsA = await Netns.create('vi')
  t.teardown(() => nsA.destroy())
  const nsB = await Netns.create('vi')
  t.teardown(() => nsB.destroy())
  const [ifA, ifB] = await vethPair(nsA, nsB)
  await gateway(nsA, ifA, SIDES.a)
  await gateway(nsB, ifB, SIDES.b)
  const [certA, certB] = await Promise.all([pki.issue('beijing', SIDES.a.name), pki.issue('beijing', SIDES.b.name)])
  const [charonA, charonB] = await Promise.all([Charon.start(nsA), Charon.start(nsB)])

  const a = new Vici({ uri: charonA.uri, timeoutMs: 5000 })
  const b = new Vici({ uri: charonB.uri, timeoutMs: 5000, reconnect: { initialDelayMs: 20, maxDelayMs: 200 } })
  t.teardown(() => Promise.all([a.close(), b.close()]))

  t.match(await a.version(), { daemon: 'charon', version: /^5\./ })
  await loadCreds(a, pki, certA)
  await loadCreds(b, pki, certB)
  t.same(await a.getAuthorities(), ['fabedge-ca'])
  t.equal((await a.getKeys()).length, 1, 'key loaded')
  const certs = await a.listCerts()
  t.same(certs.map((c) => c.flag).sort(), ['CA', 'NONE'], 'node and CA certificate listed')
  t.ok(certs.find((c) => c.flag === 'NONE')?.hasPrivkey, 'node certificate has its private key')

  await a.loadConn('edge1-edge2', conn(SIDES.a, SIDES.b, certA, certB))
  await b.loadConn('edge2-edge1', conn(SIDES.b, SIDES.a, certB, certA))
  t.same(await a.getConns(), ['edge1-edge2'])
  const listed = await a.listConns()
  t.same(listed.map((c) => c.name), ['edge1-edge2'])

  const upB = await b.watchUpdown({ child: 'p2p' })
  const t0 = performance.now()
  const saA = await a.initiateAndWait({ ike: 'edge1-edge2', child: 'p2p' }, 5000)
  t.comment(`child up on the initiator in ${Math.round(performance.now() - t0)} ms`)
  t.equal(saA.children[0]?.name, 'p2p', 'child-updown up=yes for p2p on the initiator')
  t.equal((await upB.wait(5000)).name, 'edge2-edge1', 'and on the responder')

  const sas = await a.listSas()
  t.equal(sas.length, 1)
  t.equal(sas[0]?.state, 'ESTABLISHED')
  t.equal(sas[0]?.children[0]?.state, 'INSTALLED')
  t.same(sas[0]?.children[0]?.localTs, [SIDES.a.podNet])
  t.same(sas[0]?.children[0]?.remoteTs, [SIDES.b.podNet])

  const ping = await nsA.capture(['ping', '-c', '2', '-i', '0.2', '-W', '2', '-I', SIDES.a.pod, SIDES.b.pod], { timeoutMs: 10_000 })
  t.equal(ping.code, 0, `ping ${SIDES.a.pod} -> ${SIDES.b.pod} passes: ${ping.stdout.split('\n').at(-3) ?? ''}`)
  const child = (await a.listSas())[0]?.children[0]
  t.ok(Number(child?.raw['packets-out']) >= 2 && Number(child?.raw['packets-in']) >= 2, 'the pings went through the CHILD_SA (ipsec0)')

  const downA = await a.watchUpdown({ child: 'p2p', up: false })
  await a.terminate({ ike: 'edge1-edge2' })
  await downA.wait(5000)
  t.same(await a.listSas(), [], 'terminated')
  await a.unloadConn('edge1-edge2')
  t.same(await a.getConns(), [], 'unloaded')

  // charon B restarts while b is subscribed: b reconnects, re-registers, and sees events again
  const seen: string[] = []
  await b.client.subscribe('child-updown', (_, m) => seen.push(String(m.up)))
  const reconnected = once(b.client, 'reconnected')
  await charonB.restart()
  await Promise.race([reconnected, new Promise((_, rej) => setTimeout(() => rej(new Error('no reconnected within 5 s')), 5000))])
  t.pass('reconnected emitted')
  t.same(await b.getConns(), [], 'restarted charon forgot its connections')
  await loadCreds(b, pki, certB)
  await b.loadConn('edge2-edge1', conn(SIDES.b, SIDES.a, certB, certA))
  await a.loadConn('edge1-edge2', conn(SIDES.a, SIDES.b, certA, certB))
  await a.initiateAndWait({ ike: 'edge1-edge2', child: 'p2p' }, 5000)
  const deadline = Date.now() + 3000
  while (!seen.includes('yes') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20))
  t.same(seen, ['yes'], 'child-updown seen through the re-registered subscription')
  const again = await nsA.capture(['ping', '-c', '1', '-W', '2', '-I', SIDES.a.pod, SIDES.b.pod], { timeoutMs: 5000 })
  t.equal(again.code, 0, 'traffic passes after the restart')
})

/** Writes raw frames on a fresh connection and returns the first `count` packets charon answers (bounded). */
async function rawExchange(socketPath: string, frames: Buffer[], count: number, timeoutMs = 5000): Promise<ViciPacket[]> {
  const sock = net.createConnection({ path: socketPath })
  try {
    await Promise.race([once(sock, 'connect'), once(sock, 'error').then(([e]) => Promise.reject(e))])
    const reader = new FrameReader()
    const got: ViciPacket[] = []
    const done = new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`${got.length} of ${count} answers within ${timeoutMs} ms`)), timeoutMs)
      sock.on('data', (chunk: Buffer) => {
        for (const f of reader.push(chunk)) got.push(decodePacket(f))
        if (got.length >= count) {
          clearTimeout(timer)
          resolve()
        }
      })
      const fail = (why: string): void => {
        clearTimeout(timer)
        reject(new Error(`${why} after ${got.length} of ${count} answers`))
      }
      sock.on('error', (e) => fail(`socket error ${e.message}`))
      sock.on('close', () => fail('charon closed the connection'))
    })
    for (const f of frames) sock.write(f)
    await done
    return got
  } finally {
    sock.destroy()
  }
}

async function rejectsCode(t: Test, p: Promise<unknown>, code: string, what: string): Promise<void> {
  try {
    await p
    t.fail(`${what}: resolved, expected ${code}`)
  } catch (e) {
    t.ok(e instanceof ViciError, `${what}: a ViciError`)
    t.equal((e as ViciError).code, code, `${what}: code ${code}`)
  }
}

t.test("frame limit and names as real charon enforces them, refused locally first", { skip: needsRoot }, async (t) => {
  const ns = await Netns.create('vf')
  t.teardown(() => ns.destroy())
  const charon = await Charon.start(ns)
  const c = new ViciClient({ uri: charon.uri, timeoutMs: 5000, reconnect: false })
  t.teardown(() => c.close())
  let lost = 0
  c.on('disconnected', () => lost++)

  // Exactly VICI_MESSAGE_SIZE_MAX (524288 bytes after the length prefix): charon reads it and answers.
  t.match(await c.call('version', requestOfSize('version', 512 * 1024).message), { daemon: 'charon' }, '512 KiB request answered')
  // One byte more: refused here, nothing sent, the same connection keeps working.
  await rejectsCode(t, c.call('version', requestOfSize('version', 512 * 1024 + 1).message), 'frame-too-large', '512 KiB + 1')
  t.match(await c.call('version'), { daemon: 'charon' }, 'the next call is answered')
  t.equal(lost, 0, 'the connection was never dropped')
  t.notMatch(await charon.log(), /exceeds 524288 bytes limit/, 'charon never saw the oversized frame')

  // Without the local check (limit raised past charon's): charon drops the connection at the length header
  // (vici_socket.c do_read), so the call and anything queued behind it fail with `closed`; charon itself lives.
  const unchecked = new ViciClient({ uri: charon.uri, timeoutMs: 5000, reconnect: false, maxFrameBytes: 1024 * 1024 })
  t.teardown(() => unchecked.close())
  const dropped = once(unchecked, 'disconnected')
  const oversized = unchecked.call('version', requestOfSize('version', 512 * 1024 + 1).message)
  const queued = unchecked.call('version')
  queued.catch(() => undefined) // checked below
  await rejectsCode(t, oversized, 'closed', 'unchecked 512 KiB + 1')
  await rejectsCode(t, queued, 'closed', 'a call queued behind it')
  await dropped
  t.match(await charon.log(), /vici message length 524289 exceeds 524288 bytes limit, ignored/, 'charon logged why')
  t.match(await c.call('version'), { daemon: 'charon' }, 'charon still serves other connections')

  // Names: charon's parser (vici_stringify) takes printable ASCII only. Frames our encoder would not write, sent
  // raw, show what charon does with them; the client refuses the same names with `invalid` before sending.
  const conn = (child: string): ViciInput => ({
    gw: { version: '2', local_addrs: ['192.168.79.1'], remote_addrs: ['192.168.79.2'], children: { [child]: { local_ts: ['10.79.1.0/24'] } } },
  })
  const bad: Array<[string, Buffer]> = [
    ['control byte', Buffer.from('p\x01d', 'latin1')],
    ['DEL', Buffer.from('p\x7fd', 'latin1')],
    ['UTF-8', Buffer.from('pöd', 'utf8')],
  ]
  const answers = await rawExchange(charon.socketPath, bad.map(([, b]) => frameWith('load-conn', conn('X'.repeat(b.length)), 'X'.repeat(b.length), b)), bad.length)
  for (const [i, [what, b]] of bad.entries()) {
    t.same(answers[i], { type: 'CMD_RESPONSE', message: { success: 'no', errmsg: 'parsing request failed' } }, `charon refuses a ${what} in a key`)
    await rejectsCode(t, c.call('load-conn', conn(b.toString(what === 'UTF-8' ? 'utf8' : 'latin1'))), 'invalid', `client refuses a ${what} in a key`)
  }
  await c.call('load-conn', conn('pod'))
  t.same((await c.call('get-conns')).conns, ['gw'], 'the same message with a printable key loads')

  // A command name charon cannot parse gets no answer at all ("invalid vici request message"): the first answer
  // on the connection is the next request's.
  const [first] = await rawExchange(
    charon.socketPath,
    [frameWith('vers!on', {}, '!', Buffer.from([1])), frameWith('get-conns', {}, 'get-conns', Buffer.from('get-conns'))],
    1,
  )
  t.same(first, { type: 'CMD_RESPONSE', message: { conns: ['gw'] } }, 'charon dropped the request without answering')
  await rejectsCode(t, c.call('vers\x01on'), 'invalid', 'client refuses that command name')
  t.equal(lost, 0, 'local refusals never cost the connection')
})
