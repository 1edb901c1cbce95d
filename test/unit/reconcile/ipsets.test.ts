// IpsetsSubsystem against a fake port: plan, apply, ownership and every fault path (a netlink error mid-batch, a
// set of the wrong type, a destroy refused while a rule still uses the set), plus cleanup.
import t from 'tap'
import type { Desired } from '../../../src/desired/types.js'
import { IPSET, type Family } from '../../../src/fabedge.js'
import { createLogger } from '../../../src/log.js'
import { NetlinkError, type IpsetInfo, type IpsetResult } from '../../../src/netlink/index.js'
import { IpsetsSubsystem, OWN_SETS, type IpsetsPort } from '../../../src/reconcile/ipsets.js'
import { passContext } from '../../../src/reconcile/subsystem.js'

const CTX = passContext(['verify'])
const log = createLogger('silent')

/** Sets in memory, as the kernel holds them; faults scripted per set. */
class FakeIpsets implements IpsetsPort {
  sets = new Map<string, IpsetInfo>()
  /** Set names a rule still uses: destroy refuses them. */
  inUse = new Set<string>()
  /** Adds to these sets fail after the first half of the members went in (an error mid-batch). */
  failAdd = new Set<string>()
  calls: string[] = []

  async list(name: string): Promise<IpsetInfo | undefined> {
    const s = this.sets.get(name)
    return s && { ...s, members: [...s.members] }
  }

  async create(name: string, family: Family): Promise<void> {
    this.calls.push(`create ${name}`)
    this.sets.set(name, { name, type: 'hash:net', family, revision: 7, members: [] })
  }

  async addMany(name: string, members: readonly string[]): Promise<void> {
    this.calls.push(`add ${name} ${members.length}`)
    const s = this.sets.get(name)!
    const take = this.failAdd.has(name) ? members.slice(0, Math.floor(members.length / 2)) : members
    s.members = [...new Set([...s.members, ...take])].sort()
    if (this.failAdd.has(name)) throw NetlinkError.kernel(4096 + 8, `ipset restore add ${name}`)
  }

  async delMany(name: string, members: readonly string[]): Promise<void> {
    this.calls.push(`del ${name} ${members.length}`)
    const s = this.sets.get(name)!
    s.members = s.members.filter((m) => !members.includes(m))
  }

  async destroy(name: string): Promise<IpsetResult> {
    this.calls.push(`destroy ${name}`)
    if (this.inUse.has(name)) throw NetlinkError.kernel(4096 + 4, `ipset destroy ${name}`)
    return this.sets.delete(name) ? { ok: true } : { ok: false, reason: 'missing' }
  }
}

const desired = (sets: Record<string, string[]>): Pick<Desired, 'ipsets'> => ({
  ipsets: Object.fromEntries(Object.entries(sets).map(([name, members]) => [name, { family: name.endsWith('6') ? 6 : 4, members }])),
})
const EDGE = desired({ [IPSET.remoteCidr]: ['10.1.0.0/16', '10.2.0.0/16'], [`${IPSET.remoteCidr}6`]: ['2001:db8:1::/48'] })

t.test('creates the sets with their members, then a pass plans nothing; members follow the desired state', async (t) => {
  const port = new FakeIpsets()
  const s = new IpsetsSubsystem(port, log)
  const plan = await s.plan(EDGE, CTX)
  t.equal(plan.writes, 2 + 3)
  t.same(plan.describe(), ['ipset create FABEDGE-REMOTE-CIDR hash:net family inet (+2 members)', 'ipset create FABEDGE-REMOTE-CIDR6 hash:net family inet6 (+1 members)'])
  t.equal(await s.apply(plan), 5)
  t.same(port.sets.get(IPSET.remoteCidr)?.members, ['10.1.0.0/16', '10.2.0.0/16'])
  t.equal((await s.plan(EDGE, CTX)).writes, 0)
  t.same(s.summary(), { members: { [IPSET.remoteCidr]: 2, [`${IPSET.remoteCidr}6`]: 1 } })

  port.sets.get(IPSET.remoteCidr)!.members.push('172.16.0.0/12') // a foreign edit
  const next = await s.plan(desired({ [IPSET.remoteCidr]: ['10.1.0.0/16', '10.3.0.0/16'], [`${IPSET.remoteCidr}6`]: ['2001:db8:1::/48'] }), CTX)
  t.same(next.describe(), ['ipset add FABEDGE-REMOTE-CIDR 10.3.0.0/16', 'ipset del FABEDGE-REMOTE-CIDR 10.2.0.0/16', 'ipset del FABEDGE-REMOTE-CIDR 172.16.0.0/12'])
  t.equal(await s.apply(next), 3)
  t.same(port.sets.get(IPSET.remoteCidr)?.members, ['10.1.0.0/16', '10.3.0.0/16'])
})

t.test('only FabEdge sets are ever touched', async (t) => {
  const port = new FakeIpsets()
  port.sets.set('KUBE-CLUSTER-IP', { name: 'KUBE-CLUSTER-IP', type: 'hash:ip,port', family: 4, revision: 1, members: ['10.96.0.1'] })
  const s = new IpsetsSubsystem(port, log)
  await s.apply(await s.plan(desired({}), CTX))
  t.ok(port.sets.has('KUBE-CLUSTER-IP'))
  t.equal(OWN_SETS.length, 10, 'five FabEdge sets, two families')
})

t.test('a netlink error mid-batch: the other sets are still written, the error is thrown, the next pass finishes it', async (t) => {
  const port = new FakeIpsets()
  const s = new IpsetsSubsystem(port, log)
  port.failAdd.add(IPSET.remoteCidr)
  const members = Array.from({ length: 10 }, (_, i) => `10.${i}.0.0/16`)
  const d = desired({ [IPSET.remoteCidr]: members, [`${IPSET.remoteCidr}6`]: ['2001:db8:1::/48'] })
  await t.rejects(s.apply(await s.plan(d, CTX)), { name: 'NetlinkError', kind: 'kernel', message: /ipset restore add FABEDGE-REMOTE-CIDR/ })
  t.same(port.sets.get(`${IPSET.remoteCidr}6`)?.members, ['2001:db8:1::/48'], 'the IPv6 set was written after the IPv4 one failed')
  t.equal(port.sets.get(IPSET.remoteCidr)?.members.length, 5, 'half of the batch went in')
  port.failAdd.clear()
  const next = await s.plan(d, CTX)
  t.equal(next.writes, 5, 'the next pass plans exactly the members still missing')
  t.equal(await s.apply(next), 5)
})

t.test('a set of ours with the wrong type or family is left alone and reported; the others converge', async (t) => {
  const port = new FakeIpsets()
  port.sets.set(IPSET.remoteCidr, { name: IPSET.remoteCidr, type: 'hash:ip', family: 4, revision: 1, members: ['10.9.9.9/32'] })
  const s = new IpsetsSubsystem(port, log)
  const plan = await s.plan(EDGE, CTX)
  t.ok(plan.describe().includes('cannot use FABEDGE-REMOTE-CIDR: it exists as hash:ip IPv4'))
  await t.rejects(s.apply(plan), { code: 'EWRONGSET', message: /set FABEDGE-REMOTE-CIDR exists as hash:ip IPv4; FabEdge needs hash:net IPv4 \(destroy it by hand/ })
  t.same(port.sets.get(IPSET.remoteCidr)?.members, ['10.9.9.9/32'], 'not touched')
  t.same(port.sets.get(`${IPSET.remoteCidr}6`)?.members, ['2001:db8:1::/48'], 'the IPv6 set converged anyway')
  const again = await s.plan(EDGE, CTX)
  t.equal(again.writes, 1, 'still not converged')
  await t.rejects(s.apply(again), { code: 'EWRONGSET' })
})

t.test('a stale set still used by a rule: the first refusal is expected (the rules go later in the pass), a second is an error', async (t) => {
  const port = new FakeIpsets()
  const s = new IpsetsSubsystem(port, log)
  await s.apply(await s.plan(desired({ [IPSET.localPodCidr]: ['10.1.0.0/24'] }), CTX))
  port.inUse.add(IPSET.localPodCidr)
  const switched = desired({ [IPSET.remoteCidr]: ['10.2.0.0/16'] })
  const plan = await s.plan(switched, CTX)
  t.same(plan.describe(), ['ipset destroy FABEDGE-LOCAL-POD-CIDR', 'ipset create FABEDGE-REMOTE-CIDR hash:net family inet (+1 members)'])
  t.equal(await s.apply(plan), 2, 'created and filled; the destroy waits')
  t.ok(port.sets.has(IPSET.localPodCidr))
  await t.rejects(s.apply(await s.plan(switched, CTX)), { kind: 'kernel', code: 'IPSET_ERR_BUSY', message: /stale set FABEDGE-LOCAL-POD-CIDR is still used by a rule that is not ours/ })
  port.inUse.clear()
  t.equal(await s.apply(await s.plan(switched, CTX)), 1, 'destroyed once nothing uses it')
  t.notOk(port.sets.has(IPSET.localPodCidr))
  t.equal((await s.plan(switched, CTX)).writes, 0)
})

t.test('a destroy refused for another reason is an error at once', async (t) => {
  const port = new FakeIpsets()
  port.sets.set(IPSET.localPodCidr, { name: IPSET.localPodCidr, type: 'hash:net', family: 4, revision: 1, members: [] })
  port.destroy = async () => {
    throw new NetlinkError('transport', 'EBADF', 'sendmsg: EBADF')
  }
  const s = new IpsetsSubsystem(port, log)
  await t.rejects(s.apply(await s.plan(desired({}), CTX)), { code: 'EBADF' })
})

t.test('cleanup destroys every set of ours that exists', async (t) => {
  const port = new FakeIpsets()
  const s = new IpsetsSubsystem(port, log)
  await s.apply(await s.plan(EDGE, CTX))
  port.sets.set('OTHER', { name: 'OTHER', type: 'hash:net', family: 4, revision: 1, members: [] })
  t.same(await s.cleanup(), [IPSET.remoteCidr, `${IPSET.remoteCidr}6`])
  t.same([...port.sets.keys()], ['OTHER'])
})
