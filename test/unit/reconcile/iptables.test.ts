// IptablesSubsystem against a fake port: plan, apply and every fault path (save failing, restore --test
// rejecting, restore failing after its dry run passed, one family failing), readiness after a failed apply
// (issue 12 defect 1), and overlapping passes.
import t, { type Test } from 'tap'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Agent } from '../../../src/daemon/agent.js'
import { Metrics } from '../../../src/daemon/metrics.js'
import type { Desired } from '../../../src/desired/types.js'
import type { Family } from '../../../src/fabedge.js'
import { IptablesError } from '../../../src/iptables/errors.js'
import { renderRuleset } from '../../../src/iptables/render.js'
import type { IptablesCounters } from '../../../src/iptables/runner.js'
import { createLogger } from '../../../src/log.js'
import { IptablesSubsystem, type IptablesPort } from '../../../src/reconcile/iptables.js'
import { passContext } from '../../../src/reconcile/subsystem.js'

const fixture = (name: string): string => readFileSync(new URL(`../../fixtures/iptables/${name}`, import.meta.url), 'utf8')
const PODS: Record<Family, string[]> = { 4: ['10.234.1.0/24', '10.234.9.0/24'], 6: ['fd00:234:1::/64', 'fd00:234:9::/64'] }
/** The rendered edge rulesets whose converged iptables-save the fixtures hold. */
const EDGE: Pick<Desired, 'iptables'> = {
  iptables: { ipv4: renderRuleset({ role: 'edge', family: 4, localPodCidrs: PODS[4] }), ipv6: renderRuleset({ role: 'edge', family: 6, localPodCidrs: PODS[6] }) },
}
const EMPTY_HOST = '*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n'
const DEEP = passContext(['resync'])
const SHALLOW = passContext(['vici:child-updown'])

/**
 * iptables as the subsystem sees it: iptables-save prints `live`; a restore that succeeds leaves the node as the
 * fixture captured after the real tools applied the edge payload (or empty again for a cleanup payload). Faults
 * are scripted per family and per step; the counters and the per-family queue behave as IptablesRunner's.
 */
class FakeIptables implements IptablesPort {
  readonly backend = 'nft' as const
  readonly counters: IptablesCounters = { saves: 0, restores: 0, tests: 0, jumpWrites: 0, chainWrites: 0, failures: 0 }
  live: Record<Family, string> = { 4: EMPTY_HOST, 6: EMPTY_HOST }
  fail: { save?: Family; test?: Family; restore?: Family } = {}
  restored: Array<{ family: Family; test: boolean }> = []
  private readonly queues = new Map<Family, Promise<unknown>>()

  async save(family: Family): Promise<string> {
    this.counters.saves++
    if (this.fail.save === family) throw new IptablesError('save-failed', `iptables-save (v${family}) exited 4: lock`)
    return this.live[family]
  }

  async restore(family: Family, payload: string, opts: { test?: boolean } = {}): Promise<void> {
    const test = opts.test === true
    this.restored.push({ family, test })
    if (test) this.counters.tests++
    else this.counters.restores++
    if ((test ? this.fail.test : this.fail.restore) === family) {
      this.counters.failures++
      throw new IptablesError('restore-failed', `iptables-restore${test ? ' --test' : ''} (v${family}) failed at line 3`)
    }
    if (!test) this.live[family] = /^-X FABEDGE-/m.test(payload) ? EMPTY_HOST : fixture(`edge-v${family}-nft.save`)
  }

  exclusive<T>(family: Family, fn: () => Promise<T>): Promise<T> {
    const run = (this.queues.get(family) ?? Promise.resolve()).then(fn, fn)
    this.queues.set(family, run.catch(() => undefined))
    return run
  }
}

t.test('an empty host gets one dry run and one restore per family; converged passes write nothing', async (t) => {
  const port = new FakeIptables()
  const s = new IptablesSubsystem(port)
  const plan = await s.plan(EDGE, DEEP)
  t.equal(plan.writes, 2, 'one restore per family')
  const lines = (tool: string): string[] => [
    `${tool} -t filter: rewrite chain FABEDGE-INPUT`, `${tool} -t filter: rewrite chain FABEDGE-FORWARD`, `${tool} -t nat: rewrite chain FABEDGE-POSTROUTING`,
    `${tool} -t filter -I INPUT -j FABEDGE-INPUT`, `${tool} -t filter -I FORWARD -j FABEDGE-FORWARD`, `${tool} -t nat -I POSTROUTING -j FABEDGE-POSTROUTING`,
  ]
  t.same(plan.describe(), [...lines('iptables'), ...lines('ip6tables')])
  t.equal(await s.apply(plan), 2)
  t.same(port.restored, [{ family: 4, test: true }, { family: 4, test: false }, { family: 6, test: true }, { family: 6, test: false }], 'a dry run before each restore')
  t.equal(port.counters.jumpWrites, 6, 'three jumps per family')

  const saves = port.counters.saves
  t.equal((await s.plan(EDGE, SHALLOW)).writes, 0, 'shallow pass after a successful apply: nothing')
  t.equal(port.counters.saves, saves, 'and it did not even read iptables')
  t.equal((await s.plan(EDGE, DEEP)).writes, 0, 'a deep pass observes and finds it converged')
  t.equal(port.counters.saves, saves + 2)
  t.equal((await s.plan(EDGE, SHALLOW)).writes, 0, 'a converged observation counts as known-live too')
  t.equal(port.counters.saves, saves + 2)

  const other = { iptables: { ...EDGE.iptables, ipv4: renderRuleset({ role: 'edge', family: 4, localPodCidrs: ['10.234.1.0/24'] }) } }
  const changed = await s.plan(other, SHALLOW)
  t.equal(changed.writes, 1, 'a shallow pass with a changed rendering observes and plans the family that changed')
  t.same(changed.describe(), ['iptables -t filter: rewrite chain FABEDGE-FORWARD', 'iptables -t nat: rewrite chain FABEDGE-POSTROUTING'])
  t.same(s.summary(), { backend: 'nft', counters: port.counters })
})

t.test('defect 1: a failed restore keeps the subsystem dirty; shallow passes re-plan and fail until a restore succeeds', async (t) => {
  const port = new FakeIptables()
  const s = new IptablesSubsystem(port, [4])
  port.fail.restore = 4
  const first = await s.plan(EDGE, DEEP)
  await t.rejects(s.apply(first), { code: 'restore-failed' })
  t.same(port.restored, [{ family: 4, test: true }, { family: 4, test: false }], 'the dry run passed, the restore failed')
  for (const reason of ['verify', 'vici:child-updown', 'netlink:route-del']) {
    const again = await s.plan(EDGE, passContext([reason]))
    t.equal(again.writes, 1, `${reason}: the write is still planned`)
    await t.rejects(s.apply(again), { code: 'restore-failed' }, `${reason}: and still fails`)
  }
  delete port.fail.restore
  const fixed = await s.plan(EDGE, SHALLOW)
  t.equal(fixed.writes, 1)
  t.equal(await s.apply(fixed), 1, 'the restore succeeds now')
  t.equal((await s.plan(EDGE, SHALLOW)).writes, 0, 'then the pass is clean')
})

t.test('restore --test rejecting: nothing is written, the error is thrown, the next shallow pass plans again', async (t) => {
  const port = new FakeIptables()
  const s = new IptablesSubsystem(port, [4])
  port.fail.test = 4
  await t.rejects(s.apply(await s.plan(EDGE, DEEP)), { name: 'IptablesError', code: 'restore-failed', message: /--test/ })
  t.equal(port.counters.restores, 0, 'no real restore after a rejected dry run')
  t.equal(port.live[4], EMPTY_HOST)
  t.equal((await s.plan(EDGE, SHALLOW)).writes, 1)
})

t.test('save failing: plan throws, and the next shallow pass observes again instead of trusting the last apply', async (t) => {
  const port = new FakeIptables()
  const s = new IptablesSubsystem(port, [4])
  await s.apply(await s.plan(EDGE, DEEP))
  port.fail.save = 4
  await t.rejects(s.plan(EDGE, DEEP), { code: 'save-failed' })
  delete port.fail.save
  port.live[4] = EMPTY_HOST // someone flushed iptables while we could not look
  const saves = port.counters.saves
  const p = await s.plan(EDGE, SHALLOW)
  t.equal(port.counters.saves, saves + 1, 'observed')
  t.equal(p.writes, 1, 'and found the flush')
})

t.test('one family failing does not stop the other; the error is thrown after both were tried', async (t) => {
  const port = new FakeIptables()
  const s = new IptablesSubsystem(port)
  port.fail.restore = 4
  await t.rejects(s.apply(await s.plan(EDGE, DEEP)), { code: 'restore-failed', message: /v4/ })
  t.equal(port.live[6], fixture('edge-v6-nft.save'), 'IPv6 written')
  port.fail = { test: 4, restore: 6 }
  port.live[6] = EMPTY_HOST
  const err = await s.apply(await s.plan(EDGE, SHALLOW)).catch((e: unknown) => e)
  t.type(err, AggregateError, 'both families failed: both errors')
  t.match((err as AggregateError).message, /--test \(v4\).*; .*\(v6\)/)
  t.equal((err as AggregateError).errors.length, 2)
})

t.test('overlapping passes: the second apply sees the first one wrote, looks again and writes nothing', async (t) => {
  const port = new FakeIptables()
  const s = new IptablesSubsystem(port, [4])
  const a = await s.plan(EDGE, DEEP)
  const b = await s.plan(EDGE, DEEP)
  const [da, db] = await Promise.all([s.apply(a), s.apply(b)])
  t.same([da, db], [1, 0])
  t.equal(port.counters.restores, 1, 'one restore: no jump inserted twice')
  t.equal(port.counters.jumpWrites, 3)
})

t.test('cleanup removes our chains and jumps of a family and makes the next pass observe', async (t) => {
  const port = new FakeIptables()
  const s = new IptablesSubsystem(port, [4])
  await s.apply(await s.plan(EDGE, DEEP))
  t.same((await s.cleanup(4)).sort(), ['filter/FABEDGE-FORWARD', 'filter/FABEDGE-INPUT', 'nat/FABEDGE-POSTROUTING'])
  t.equal(port.live[4], EMPTY_HOST)
  t.same(await s.cleanup(4), [], 'nothing left the second time')
  t.equal((await s.plan(EDGE, SHALLOW)).writes, 1, 'not trusted as live any more')
})

function agentWith(t: Test, s: IptablesSubsystem): Agent {
  const dir = mkdtempSync(join(tmpdir(), 'ftipt-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const configPath = join(dir, 'tunnels.yaml')
  writeFileSync(configPath, readFileSync(new URL('../../fixtures/config/edge.yaml', import.meta.url)))
  const agent = new Agent({ configPath, datapath: 'libipsec', subsystems: [s], log: createLogger('silent'), metrics: new Metrics({ processMetrics: false }), coalesceMs: 1, resyncMs: 0 })
  t.teardown(() => agent.stop())
  return agent
}

t.test('defect 1 through the agent: after a failed restore a shallow pass is not converged, so not ready', async (t) => {
  const port = new FakeIptables()
  const agent = agentWith(t, new IptablesSubsystem(port))
  port.fail.restore = 4
  agent.start()
  await agent.idle()
  t.notOk(agent.ready, 'the failing pass is not ready')
  agent.trigger('vici:child-updown')
  await agent.idle()
  t.same(agent.lastPass?.reasons, ['vici:child-updown'], 'a shallow pass ran')
  t.notOk(agent.ready, 'and it is still not ready')
  t.match(agent.lastPass?.errors, { iptables: /restore/ })
  delete port.fail.restore
  agent.trigger('vici:child-updown')
  await agent.idle()
  t.ok(agent.ready, 'ready once a restore succeeded')
  t.equal(port.live[4], fixture('edge-v4-nft.save'))
})
