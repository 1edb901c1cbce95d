import { once } from 'node:events'
import t from 'tap'
import { Vici, type ViciInput } from '../../../src/vici/index.js'
import { Charon } from '../../harness/charon.js'
import { Netns, needsRoot, vethPair } from '../../harness/netns.js'
import { TestPki, type NodeCert } from '../../harness/pki.js'

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
