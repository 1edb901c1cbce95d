// iptables/ip6tables in throwaway namespaces, both backends, through the daemon's IptablesSubsystem over the real
// runner: what we write is what iptables holds, a second pass writes nothing, jumps stay single and first, foreign
// rules and chains survive, cleanup restores the namespace.
import t from 'tap'
import { Netns, needsRoot } from '../../harness/netns.js'
import { execCapture } from '../../harness/exec.js'
import { IptablesRunner, type Backend } from '../../../src/iptables/runner.js'
import { iptablesCleanup, iptablesObserve } from '../../../src/iptables/sync.js'
import { iptablesPass } from '../../harness/iptables-pass.js'
import { iptablesPlan } from '../../../src/iptables/plan.js'
import { renderRuleset, type RulesetInput } from '../../../src/iptables/render.js'
import { IPSET, ipsetName, type Family } from '../../../src/fabedge.js'

const BACKENDS: Backend[] = ['nft', 'legacy']
const FAMILIES: Family[] = [4, 6]
const cmd = (family: Family, backend: Backend): string => `${family === 6 ? 'ip6tables' : 'iptables'}-${backend}`
const pods = (family: Family): string[] => (family === 4 ? ['10.234.1.0/24', '10.234.9.0/24'] : ['fd00:234:1::/64', 'fd00:234:9::/64'])
const edge = (family: Family): RulesetInput => ({ role: 'edge', family, localPodCidrs: pods(family) })
const connector = (family: Family): RulesetInput => ({ role: 'connector', family, localPodCidrs: [] })

async function nsWithRunner(t: { teardown: (fn: () => Promise<void>) => void }, backend: Backend): Promise<{ ns: Netns; runner: IptablesRunner }> {
  const ns = await Netns.create('ipt')
  t.teardown(() => ns.destroy())
  const runner = await IptablesRunner.create({ backend, exec: (argv, o) => execCapture(['ip', 'netns', 'exec', ns.name, ...argv], o) })
  return { ns, runner }
}

async function setsCreate(ns: Netns, family: Family, names: string[] = Object.values(IPSET)): Promise<void> {
  const fam = family === 6 ? 'inet6' : 'inet'
  const input = names.map((s) => `create ${ipsetName(s, family)} hash:net family ${fam}\n`).join('')
  await ns.run(['ipset', 'restore', '-exist'], { input })
}

/** `iptables-save` of filter and nat without comment lines and with chain counters zeroed. */
async function saveText(ns: Netns, family: Family, backend: Backend): Promise<string> {
  let out = ''
  for (const table of ['filter', 'nat']) out += await ns.run([`${cmd(family, backend)}-save`, '-t', table])
  return out
    .split('\n')
    .filter((l) => !l.startsWith('#'))
    .map((l) => l.replace(/\[\d+:\d+\]$/, '[0:0]'))
    .join('\n')
}

/** How many of a built-in chain's rules are our bare jump, and whether one of them is rule 1. */
function ourJumpAndFirst(rules: string[]): { count: number; first: boolean } {
  return { count: rules.filter((r) => r === '-j FABEDGE-POSTROUTING').length, first: rules[0] === '-j FABEDGE-POSTROUTING' }
}

/** Rules of one chain as iptables prints them. */
async function chainRules(ns: Netns, family: Family, backend: Backend, table: string, chain: string): Promise<string[]> {
  const out = await ns.run([`${cmd(family, backend)}-save`, '-t', table])
  return out.split('\n').filter((l) => l.startsWith(`-A ${chain} `)).map((l) => l.slice(`-A ${chain} `.length))
}

for (const backend of BACKENDS) {
  t.test(`${backend}: apply twice -> same ruleset, one jump each, the second pass writes nothing`, { skip: needsRoot }, async (t) => {
    for (const family of FAMILIES) {
      for (const input of [connector(family), edge(family)]) {
        const { ns, runner } = await nsWithRunner(t, backend)
        await setsCreate(ns, family)
        const first = await iptablesPass(runner, input)
        t.ok(first.restore, `${input.role} v${family}: first pass writes`)
        const after1 = await saveText(ns, family, backend)
        const writes = { ...runner.counters }
        const second = await iptablesPass(runner, input)
        t.equal(second.restore, null, `${input.role} v${family}: second pass plans nothing`)
        t.equal(runner.counters.restores, writes.restores, 'no restore ran')
        t.equal(runner.counters.tests, writes.tests, 'not even a dry run')
        t.equal(runner.counters.jumpWrites, writes.jumpWrites, 'no jump written')
        t.equal(await saveText(ns, family, backend), after1, 'ruleset identical')
        t.same(await chainRules(ns, family, backend, 'filter', 'INPUT'), ['-j FABEDGE-INPUT'])
        t.same(await chainRules(ns, family, backend, 'filter', 'FORWARD'), ['-j FABEDGE-FORWARD'])
        t.same(await chainRules(ns, family, backend, 'nat', 'POSTROUTING'), ['-j FABEDGE-POSTROUTING'])
        // What iptables holds is exactly what we rendered, rule for rule, as iptables prints it.
        const rendered = renderRuleset(input).split('\n').filter((l) => l.startsWith('-A '))
        const held = after1.split('\n').filter((l) => l.startsWith('-A FABEDGE-'))
        t.same(held.sort(), rendered.sort(), `${input.role} v${family}: held == rendered`)
      }
    }
  })

  t.test(`${backend}: a foreign rule inserted above our POSTROUTING jump -> ours back on top, theirs kept`, { skip: needsRoot }, async (t) => {
    for (const family of FAMILIES) {
      const { ns, runner } = await nsWithRunner(t, backend)
      await setsCreate(ns, family)
      await iptablesPass(runner, edge(family))
      const theirs = family === 4 ? '10.77.0.0/16' : 'fd00:77::/64'
      await ns.run([cmd(family, backend), '-w', '-t', 'nat', '-I', 'POSTROUTING', '1', '-s', theirs, '-j', 'MASQUERADE'])
      await ns.run([cmd(family, backend), '-w', '-t', 'nat', '-A', 'POSTROUTING', '-j', 'ACCEPT'])
      const before = { ...runner.counters }
      const plan = await iptablesPass(runner, edge(family))
      t.same(plan.replaced, [], 'chains untouched')
      t.same(await chainRules(ns, family, backend, 'nat', 'POSTROUTING'), ['-j FABEDGE-POSTROUTING', `-s ${theirs} -j MASQUERADE`, '-j ACCEPT'])
      t.equal(runner.counters.restores - before.restores, 1, 'one restore')
      t.equal(runner.counters.jumpWrites - before.jumpWrites, 2, 'delete + insert')
      t.equal((await iptablesPass(runner, edge(family))).restore, null, 'then converged')
    }
  })
}

t.test('many passes with another tool fighting over POSTROUTING, a duplicated jump and a pass cut short: never two jumps', { skip: needsRoot }, async (t) => {
  const backend: Backend = 'nft'
  const family: Family = 4
  const { ns, runner } = await nsWithRunner(t, backend)
  await setsCreate(ns, family)
  for (let i = 0; i < 8; i++) {
    await iptablesPass(runner, edge(family))
    if (i % 2 === 0) await ns.run(['iptables', '-w', '-t', 'nat', '-I', 'POSTROUTING', '1', '-d', `10.88.${i}.0/24`, '-j', 'RETURN'])
    if (i === 3) await ns.run(['iptables', '-w', '-A', 'FORWARD', '-j', 'FABEDGE-FORWARD'])
  }
  await iptablesPass(runner, edge(family))
  const post = await chainRules(ns, family, backend, 'nat', 'POSTROUTING')
  t.equal(post[0], '-j FABEDGE-POSTROUTING')
  t.equal(post.filter((r) => r === '-j FABEDGE-POSTROUTING').length, 1)
  t.equal(post.length, 5, 'the 4 foreign rules kept')
  t.same(await chainRules(ns, family, backend, 'filter', 'FORWARD'), ['-j FABEDGE-FORWARD'])

  // A pass that died after committing only its first table: the next pass completes it without duplicates.
  await iptablesCleanup(runner, family)
  const plan = iptablesPlan(renderRuleset(edge(family)), await iptablesObserve(runner, family))
  const filterOnly = plan.restore!.slice(0, plan.restore!.indexOf('*nat'))
  await runner.restore(family, filterOnly)
  await iptablesPass(runner, edge(family))
  t.same(await chainRules(ns, family, backend, 'filter', 'INPUT'), ['-j FABEDGE-INPUT'])
  t.same(await chainRules(ns, family, backend, 'filter', 'FORWARD'), ['-j FABEDGE-FORWARD'])
  t.same(ourJumpAndFirst(await chainRules(ns, family, backend, 'nat', 'POSTROUTING')), { count: 1, first: true })

  // Overlapping passes from one process are serialized, so both cannot insert the same missing jump.
  await iptablesCleanup(runner, family)
  await Promise.all([iptablesPass(runner, edge(family)), iptablesPass(runner, edge(family)), iptablesPass(runner, edge(family))])
  t.same(await chainRules(ns, family, backend, 'filter', 'INPUT'), ['-j FABEDGE-INPUT'])
  t.same(ourJumpAndFirst(await chainRules(ns, family, backend, 'nat', 'POSTROUTING')), { count: 1, first: true })
})

for (const backend of BACKENDS) {
  t.test(`${backend}: foreign chains survive apply and cleanup; cleanup restores iptables-save exactly`, { skip: needsRoot }, async (t) => {
    for (const family of FAMILIES) {
      const { ns, runner } = await nsWithRunner(t, backend)
      await setsCreate(ns, family)
      const ipt = (...args: string[]): Promise<string> => ns.run([cmd(family, backend), '-w', ...args])
      const net = family === 4 ? '10.66.0.0/16' : 'fd00:66::/64'
      await ipt('-N', 'KUBE-FORWARD')
      await ipt('-A', 'KUBE-FORWARD', '-s', net, '-j', 'ACCEPT')
      await ipt('-A', 'FORWARD', '-j', 'KUBE-FORWARD')
      await ipt('-P', 'FORWARD', 'DROP')
      await ipt('-t', 'nat', '-N', 'KUBE-POSTROUTING')
      await ipt('-t', 'nat', '-A', 'KUBE-POSTROUTING', '-m', 'mark', '--mark', '0x4000/0x4000', '-j', 'MASQUERADE')
      await ipt('-t', 'nat', '-A', 'POSTROUTING', '-j', 'KUBE-POSTROUTING')
      const original = await saveText(ns, family, backend)

      await iptablesPass(runner, connector(family))
      const applied = await saveText(ns, family, backend)
      for (const line of original.split('\n').filter((l) => l.startsWith('-A') || l.startsWith(':'))) {
        t.ok(applied.includes(line), `v${family} after apply still holds: ${line}`)
      }
      t.same(await chainRules(ns, family, backend, 'nat', 'POSTROUTING'), ['-j FABEDGE-POSTROUTING', '-j KUBE-POSTROUTING'])

      const plan = await iptablesCleanup(runner, family)
      t.equal(plan.deleted.length, 3)
      t.equal(await saveText(ns, family, backend), original, `v${family}: iptables-save exactly as before`)
      t.equal((await iptablesCleanup(runner, family)).restore, null, 'a second cleanup has nothing to do')
      // Sets can go now that nothing references them.
      for (const s of Object.values(IPSET)) await ns.run(['ipset', 'destroy', ipsetName(s, family)])
    }
  })
}

t.test('role switch edge -> connector -> edge ends with exactly the new role; FabEdge leftovers removed', { skip: needsRoot }, async (t) => {
  const backend: Backend = 'nft'
  for (const family of FAMILIES) {
    const { ns, runner } = await nsWithRunner(t, backend)
    await setsCreate(ns, family)
    // What FabEdge's own edge agent leaves behind: FABEDGE-NAT-OUTGOING appended to POSTROUTING.
    const ipt = (...args: string[]): Promise<string> => ns.run([cmd(family, backend), '-w', ...args])
    await ipt('-t', 'nat', '-N', 'FABEDGE-NAT-OUTGOING')
    await ipt('-t', 'nat', '-A', 'FABEDGE-NAT-OUTGOING', '-s', pods(family)[0]!, '-j', 'MASQUERADE')
    await ipt('-t', 'nat', '-A', 'POSTROUTING', '-j', 'FABEDGE-NAT-OUTGOING')

    const fresh = async (input: RulesetInput): Promise<string> => {
      const other = await nsWithRunner(t, backend)
      await setsCreate(other.ns, family)
      await iptablesPass(other.runner, input)
      return saveText(other.ns, family, backend)
    }
    const edgeOnly = await fresh(edge(family))
    const connectorOnly = await fresh(connector(family))

    const p1 = await iptablesPass(runner, edge(family))
    t.same(p1.deleted, [{ table: 'nat', chain: 'FABEDGE-NAT-OUTGOING' }])
    t.equal(await saveText(ns, family, backend), edgeOnly, `v${family} edge == fresh edge`)
    await iptablesPass(runner, connector(family))
    t.equal(await saveText(ns, family, backend), connectorOnly, `v${family} connector == fresh connector`)
    await iptablesPass(runner, edge(family))
    t.equal(await saveText(ns, family, backend), edgeOnly, `v${family} back to edge == fresh edge`)
  }
})

for (const backend of BACKENDS) {
  t.test(`${backend}: a restore that fails (missing set) -> typed error with line and context, previous rules kept`, { skip: needsRoot }, async (t) => {
    const family: Family = 4
    const { ns, runner } = await nsWithRunner(t, backend)
    await setsCreate(ns, family, [IPSET.remoteCidr])
    await iptablesPass(runner, edge(family))
    const before = await saveText(ns, family, backend)
    // The connector's sets were never created: its FORWARD chain (table filter) already references one.
    const err = await iptablesPass(runner, connector(family)).catch((e: unknown) => e)
    t.match(err, { name: 'IptablesError', code: 'restore-failed', restore: { line: Number, context: /> \d+: -A FABEDGE-FORWARD -m set --match-set FABEDGE-LOCAL-POD-CIDR/ } })
    t.match((err as Error).message, /FABEDGE-LOCAL-POD-CIDR/)
    t.equal(await saveText(ns, family, backend), before, 'no table changed, not even the ones before the failing line')
    t.equal(runner.counters.failures, 1)
    t.equal(runner.counters.restores, 1, 'the failing pass stopped at its dry run: only the first pass restored')
    await setsCreate(ns, family)
    await iptablesPass(runner, connector(family))
    t.equal((await iptablesPass(runner, connector(family))).restore, null, 'recovers once the sets exist')
  })
}

t.test('the host backend is detected inside a namespace holding legacy rules', { skip: needsRoot }, async (t) => {
  const ns = await Netns.create('ipt')
  t.teardown(() => ns.destroy())
  const exec = (argv: readonly string[], o: { input?: string; timeoutMs: number }) => execCapture(['ip', 'netns', 'exec', ns.name, ...argv], o)
  // The runner lives in this (host) namespace here, so its /proc probe must look into the test namespace.
  const legacyTables = async () => (await ns.run(['cat', '/proc/net/ip_tables_names', '/proc/net/ip6_tables_names'])).split('\n').filter(Boolean)
  const empty = await IptablesRunner.create({ exec, legacyTables })
  t.equal(empty.backend, 'nft', 'empty: nft')
  t.match(empty.info.reason, /no legacy xtables table/, 'decided without running any save')
  await ns.run(['iptables-legacy', '-A', 'INPUT', '-i', 'lo', '-j', 'ACCEPT'])
  const r = await IptablesRunner.create({ exec, legacyTables })
  t.equal(r.backend, 'legacy')
  t.match(r.info.reason, /legacy tables hold 1 rules, nft 0/)
})
