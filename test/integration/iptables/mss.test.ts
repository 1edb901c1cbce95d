// The MSS clamp chain against the real iptables/ip6tables in throwaway namespaces, both backends, through the
// daemon's IptablesSubsystem over the real runner: FABEDGE-MSS holds what we render and one jump sits first in mangle
// POSTROUTING; a second pass writes nothing; a foreign mangle rule survives every step; pmtu -> fixed rewrites only
// our chain; off and cleanup remove chain and jump. That the clamp changes real SYNs: test/e2e/mss.test.ts.
import t from 'tap'
import { Netns, needsRoot } from '../../harness/netns.js'
import { execCapture } from '../../harness/exec.js'
import { iptablesPass } from '../../harness/iptables-pass.js'
import { IptablesRunner, type Backend } from '../../../src/iptables/runner.js'
import { iptablesCleanup } from '../../../src/iptables/sync.js'
import { renderRuleset, type RulesetInput } from '../../../src/iptables/render.js'
import { MSS_CHAIN, type TcpMss } from '../../../src/iptables/mss.js'
import { IPSET, ipsetName, type Family } from '../../../src/fabedge.js'

const BACKENDS: Backend[] = ['nft', 'legacy']
const FAMILIES: Family[] = [4, 6]
const cmd = (family: Family, backend: Backend): string => `${family === 6 ? 'ip6tables' : 'iptables'}-${backend}`
const FOREIGN = ['-p', 'udp', '-m', 'udp', '--dport', '9999', '-j', 'MARK', '--set-xmark', '0x7/0xffffffff']
const FOREIGN_TEXT = FOREIGN.join(' ')

/** Rules of one chain as iptables prints them. */
async function chainRules(ns: Netns, family: Family, backend: Backend, chain: string): Promise<string[]> {
  const out = await ns.run([`${cmd(family, backend)}-save`, '-t', 'mangle'])
  return out.split('\n').filter((l) => l.startsWith(`-A ${chain} `)).map((l) => l.slice(`-A ${chain} `.length))
}

const rendered = (input: RulesetInput): string[] =>
  renderRuleset(input).split('\n').filter((l) => l.startsWith(`-A ${MSS_CHAIN} `)).map((l) => l.slice(`-A ${MSS_CHAIN} `.length))

for (const backend of BACKENDS) {
  for (const family of FAMILIES) {
    t.test(`${backend} v${family}: write, no-op, foreign rule kept, switch, off, cleanup`, { skip: needsRoot }, async (t) => {
      const ns = await Netns.create('ipm')
      t.teardown(() => ns.destroy())
      const runner = await IptablesRunner.create({ backend, exec: (argv, o) => execCapture(['ip', 'netns', 'exec', ns.name, ...argv], o) })
      const fam = family === 6 ? 'inet6' : 'inet'
      await ns.run(['ipset', 'restore', '-exist'], { input: Object.values(IPSET).map((s) => `create ${ipsetName(s, family)} hash:net family ${fam}\n`).join('') })
      const input = (mss: TcpMss): RulesetInput => ({ role: 'edge', family, localPodCidrs: [family === 4 ? '10.234.1.0/24' : 'fd00:234:1::/64'], mss })
      const post = (): Promise<string[]> => chainRules(ns, family, backend, 'POSTROUTING')
      const ours = (): Promise<string[]> => chainRules(ns, family, backend, MSS_CHAIN)

      const first = await iptablesPass(runner, input({ mode: 'pmtu' }))
      t.ok(first.restore, 'first pass writes')
      const held = await ours()
      t.ok(held.length === 2 && held.every((r) => r.includes('--clamp-mss-to-pmtu')), 'two clamp rules held')
      t.same(held, rendered(input({ mode: 'pmtu' })), 'held == rendered, as iptables prints it')
      t.same(await post(), [`-j ${MSS_CHAIN}`], 'one jump in mangle POSTROUTING')
      const restores = runner.counters.restores
      t.equal((await iptablesPass(runner, input({ mode: 'pmtu' }))).restore, null, 'second pass plans nothing')
      t.equal(runner.counters.restores, restores, 'and runs no restore')

      // Someone puts a rule of theirs above our jump: the jump goes back to the top, their rule stays.
      await ns.run([cmd(family, backend), '-w', '-t', 'mangle', '-I', 'POSTROUTING', '1', ...FOREIGN])
      t.same(await post(), [FOREIGN_TEXT, `-j ${MSS_CHAIN}`])
      await iptablesPass(runner, input({ mode: 'pmtu' }))
      t.same(await post(), [`-j ${MSS_CHAIN}`, FOREIGN_TEXT], 'our jump first again, theirs kept')

      await iptablesPass(runner, input({ mode: 'fixed', mss: 1300 }))
      const fixed = await ours()
      t.same(fixed, rendered(input({ mode: 'fixed', mss: 1300 })))
      t.ok(fixed.length === 2 && fixed.every((r) => r.endsWith('-j TCPMSS --set-mss 1300')), 'fixed value held')
      t.same(await post(), [`-j ${MSS_CHAIN}`, FOREIGN_TEXT], 'jump untouched by a chain rewrite')

      await iptablesPass(runner, input({ mode: 'off' }))
      t.same(await post(), [FOREIGN_TEXT], 'off: our jump gone, theirs kept')
      t.notMatch(await ns.run([`${cmd(family, backend)}-save`, '-t', 'mangle']), MSS_CHAIN, 'off: our chain gone')
      t.equal((await iptablesPass(runner, input({ mode: 'off' }))).restore, null, 'off again: nothing to do')

      await iptablesPass(runner, input({ mode: 'pmtu' }))
      t.same(await post(), [`-j ${MSS_CHAIN}`, FOREIGN_TEXT])
      const cleanup = await iptablesCleanup(runner, family)
      t.ok(cleanup.deleted.some((c) => c.table === 'mangle' && c.chain === MSS_CHAIN), 'cleanup reports the chain')
      const after = await ns.run([`${cmd(family, backend)}-save`])
      t.notMatch(after, /FABEDGE-/, 'cleanup: nothing of ours in any table')
      t.same(await post(), [FOREIGN_TEXT], 'cleanup: their rule kept')
    })
  }
}
