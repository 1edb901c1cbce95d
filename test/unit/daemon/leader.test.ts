// Leadership modes none and vip against a scripted address source (the real netlink one is proven in
// test/integration/daemon/leadership.test.ts): the VIP's presence is leadership, from one dump plus events, with no
// event lost while the dump is read, and listeners hear real changes only.
import t from 'tap'
import type { Addr } from '../../../src/netlink/addr.js'
import { canonicalVip, SoleLeadership, VipLeadership, type AddrSource } from '../../../src/daemon/leader.js'

const addr = (address: string, index = 2): Addr => ({ family: address.includes(':') ? 6 : 4, index, address, cidr: `${address}/32`, prefixLen: 32, scope: 0 })

class FakeSource implements AddrSource {
  addrs: Addr[] = []
  handlers = new Set<(action: 'new' | 'del', a: Addr) => void>()
  resync = new Set<() => void>()
  /** When set, dump() waits for it (events can arrive meanwhile). */
  gate: Promise<void> | null = null
  dumps = 0
  async dump(): Promise<Addr[]> {
    this.dumps++
    const snapshot = [...this.addrs]
    if (this.gate) await this.gate
    return snapshot
  }
  subscribe(fn: (action: 'new' | 'del', a: Addr) => void): () => void {
    this.handlers.add(fn)
    return () => this.handlers.delete(fn)
  }
  onResync(fn: () => void): () => void {
    this.resync.add(fn)
    return () => this.resync.delete(fn)
  }
  emit(action: 'new' | 'del', a: Addr): void {
    if (action === 'new') this.addrs.push(a)
    else this.addrs = this.addrs.filter((x) => !(x.address === a.address && x.index === a.index))
    for (const h of this.handlers) h(action, a)
  }
}

t.test('none: always the leader, no transitions', async (t) => {
  const l = new SoleLeadership()
  await l.start()
  t.equal(l.isLeader(), true)
  await l.release()
  t.equal(l.isLeader(), true, 'a single connector has nobody to hand over to')
  t.same({ ...l.status(), since: 'x' }, { mode: 'none', leader: true, since: 'x', transitions: 0 })
})

t.test('canonicalVip: IPv4 and IPv6 in the form netlink reports; anything else throws', async (t) => {
  t.equal(canonicalVip('10.0.0.100'), '10.0.0.100')
  t.equal(canonicalVip(' FD00:0:0::0064 '), 'fd00::64')
  for (const bad of ['10.0.0', '10.0.0.1/32', 'fe80::1%eth0', 'vip.example', '', '10.0.0.256']) t.throws(() => canonicalVip(bad), `${JSON.stringify(bad)} rejected`)
})

t.test('vip: leads exactly while the VIP is on an interface; events flip it, other addresses do not', async (t) => {
  const src = new FakeSource()
  src.addrs = [addr('192.168.0.5')]
  let clock = 1000
  const l = new VipLeadership('10.0.0.100', src, { now: () => clock })
  const changes: boolean[] = []
  l.onChange((x) => changes.push(x))
  await l.start()
  t.equal(l.isLeader(), false, 'no VIP at start: standby')
  src.emit('new', addr('10.0.0.101'))
  t.equal(l.isLeader(), false, 'another address is not the VIP')
  clock = 2000
  src.emit('new', addr('10.0.0.100'))
  t.equal(l.isLeader(), true, 'VIP added: leader')
  t.same(l.status().vip, { address: '10.0.0.100', present: true, interfaces: [2] })
  t.equal(l.status().since, new Date(2000).toISOString())
  src.emit('new', addr('10.0.0.100', 3))
  src.emit('del', addr('10.0.0.100', 2))
  t.equal(l.isLeader(), true, 'still held on another interface')
  src.emit('del', addr('10.0.0.100', 3))
  t.equal(l.isLeader(), false, 'gone from every interface: standby')
  t.same(changes, [true, false], 'listeners hear real changes only')
  t.equal(l.status().transitions, 2)
  await l.stop()
  src.emit('new', addr('10.0.0.100'))
  t.equal(l.isLeader(), false, 'stopped: no longer following events')
})

t.test('vip: present at start (IPv6), and events during the dump are replayed after it', async (t) => {
  const src = new FakeSource()
  src.addrs = [addr('fd00::64')]
  const l = new VipLeadership('fd00::64', src)
  await l.start()
  t.equal(l.isLeader(), true, 'the VIP in the initial dump: leader at once')
  let open!: () => void
  src.gate = new Promise((r) => { open = r })
  for (const fn of src.resync) fn()
  // The dump's snapshot still has the VIP; it goes away while the dump is in flight.
  src.emit('del', addr('fd00::64'))
  t.equal(l.isLeader(), true, 'buffered while the dump is read')
  open()
  await new Promise((r) => setImmediate(r))
  t.equal(src.dumps, 2, 'a netlink overrun re-reads the dump')
  t.equal(l.isLeader(), false, 'the removal seen during the dump is not lost')
})
