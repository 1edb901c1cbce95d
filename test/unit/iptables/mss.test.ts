// TCP MSS clamping: the --tcp-mss value, the FABEDGE-MSS rules per role and family, and the plans that write,
// keep, switch and remove them (foreign mangle rules untouched). The real iptables: test/integration/iptables/mss.test.ts.
import t from 'tap'
import { rulesetParse } from '../../../src/iptables/parse.js'
import { iptablesCleanupPlan, iptablesPlan, type IptablesObserved } from '../../../src/iptables/plan.js'
import { renderRuleset } from '../../../src/iptables/render.js'
import { MSS_CHAIN, mssRules, parseTcpMss, tcpMssText, type TcpMss } from '../../../src/iptables/mss.js'
import type { Family } from '../../../src/fabedge.js'

const PMTU: TcpMss = { mode: 'pmtu' }
const OFF: TcpMss = { mode: 'off' }
const fixed = (mss: number): TcpMss => ({ mode: 'fixed', mss })

const observedOf = (text: string, family: Family = 4): IptablesObserved => {
  const parsed = rulesetParse(text, family)
  const tables: IptablesObserved['tables'] = {}
  for (const name of ['filter', 'nat', 'mangle'] as const) {
    const tb = parsed.get(name)
    if (tb) tables[name] = tb
  }
  return { family, tables }
}

/**
 * What iptables-save prints after our payload was applied on a node: every desired chain with its rules, one jump to
 * each at the top of its built-in chain, plus the foreign lines given per table.
 */
function liveOf(payload: string, foreign: { mangle?: string[]; mangleFirst?: string[] } = {}, family: Family = 4): string {
  const desired = rulesetParse(payload, family, true)
  const jumps: Record<string, Array<[string, string]>> = {
    filter: [['INPUT', 'FABEDGE-INPUT'], ['FORWARD', 'FABEDGE-FORWARD']],
    nat: [['POSTROUTING', 'FABEDGE-POSTROUTING']],
    mangle: [['POSTROUTING', MSS_CHAIN]],
  }
  const builtins: Record<string, string[]> = {
    filter: ['INPUT', 'FORWARD', 'OUTPUT'],
    nat: ['PREROUTING', 'INPUT', 'OUTPUT', 'POSTROUTING'],
    mangle: ['PREROUTING', 'INPUT', 'FORWARD', 'OUTPUT', 'POSTROUTING'],
  }
  const out: string[] = []
  for (const table of ['filter', 'nat', 'mangle']) {
    const chains = desired.get(table)?.chains
    out.push(`*${table}`, ...builtins[table]!.map((c) => `:${c} ACCEPT [0:0]`))
    for (const name of chains?.keys() ?? []) out.push(`:${name} - [0:0]`)
    if (table === 'mangle') out.push(...(foreign.mangleFirst ?? []))
    for (const [from, to] of jumps[table]!) if (chains?.has(to)) out.push(`-A ${from} -j ${to}`)
    if (table === 'mangle') out.push(...(foreign.mangle ?? []))
    for (const c of chains?.values() ?? []) for (const r of c.rules) out.push(`-A ${c.name} ${r.text}`)
    out.push('COMMIT')
  }
  return out.join('\n') + '\n'
}

const edge = (family: Family, mss?: TcpMss): string =>
  renderRuleset({ role: 'edge', family, localPodCidrs: [family === 4 ? '10.234.1.0/24' : 'fd00:234:1::/64'], ...(mss ? { mss } : {}) })

t.test('--tcp-mss: pmtu, off or a number of bytes in range; anything else is a clear error', async (t) => {
  t.same(parseTcpMss('pmtu'), { ok: true, value: PMTU })
  t.same(parseTcpMss(' PMTU '), { ok: true, value: PMTU })
  t.same(parseTcpMss('off'), { ok: true, value: OFF })
  t.same(parseTcpMss('1360'), { ok: true, value: fixed(1360) })
  t.same(parseTcpMss('536'), { ok: true, value: fixed(536) }, 'the smallest IPv4 MSS')
  t.same(parseTcpMss('9000'), { ok: true, value: fixed(9000) })
  for (const bad of ['535', '9001', '0', '-1', '1360.5', '1e3', '', 'auto', '1360 bytes', '99999999999']) {
    const r = parseTcpMss(bad)
    t.equal(r.ok, false, `"${bad}" is refused`)
    if (!r.ok) t.match(r.message, /^--tcp-mss must be pmtu, off or a number of bytes from 536 to 9000, got "/)
  }
  t.equal(tcpMssText(PMTU), 'pmtu')
  t.equal(tcpMssText(OFF), 'off')
  t.equal(tcpMssText(fixed(1380)), '1380')
})

t.test('rules: SYN and SYN-ACK to and from the remote sets of each role, v4 and v6', async (t) => {
  const syn = '-m tcp --tcp-flags SYN,RST SYN -j TCPMSS'
  t.same(mssRules('edge', 4, PMTU), [
    `-p tcp -m set --match-set FABEDGE-REMOTE-CIDR dst ${syn} --clamp-mss-to-pmtu`,
    `-p tcp -m set --match-set FABEDGE-REMOTE-CIDR src ${syn} --clamp-mss-to-pmtu`,
  ])
  t.same(mssRules('edge', 6, PMTU), [
    `-p tcp -m set --match-set FABEDGE-REMOTE-CIDR6 dst ${syn} --clamp-mss-to-pmtu`,
    `-p tcp -m set --match-set FABEDGE-REMOTE-CIDR6 src ${syn} --clamp-mss-to-pmtu`,
  ])
  t.same(mssRules('connector', 4, fixed(1380)), [
    `-p tcp -m set --match-set FABEDGE-REMOTE-POD-CIDR dst ${syn} --set-mss 1380`,
    `-p tcp -m set --match-set FABEDGE-REMOTE-NODE-CIDR dst ${syn} --set-mss 1380`,
    `-p tcp -m set --match-set FABEDGE-REMOTE-POD-CIDR src ${syn} --set-mss 1380`,
    `-p tcp -m set --match-set FABEDGE-REMOTE-NODE-CIDR src ${syn} --set-mss 1380`,
  ])
  t.same(mssRules('connector', 6, fixed(1000)).map((r) => r.split(' ').at(-1)), ['1220', '1220', '1220', '1220'], 'IPv6 never below 1220')
  t.same(mssRules('connector', 6, fixed(1300)).map((r) => r.split(' ').at(-1)), ['1300', '1300', '1300', '1300'])
  t.same(mssRules('cloud', 4, PMTU), [], 'a cloud node has no tunnel route to take a PMTU from')
  t.same(mssRules('cloud', 4, fixed(1360)), [
    `-p tcp -m set --match-set FABEDGE-REMOTE-POD-CIDR dst ${syn} --set-mss 1360`,
    `-p tcp -m set --match-set FABEDGE-REMOTE-POD-CIDR src ${syn} --set-mss 1360`,
  ])
  for (const role of ['connector', 'edge', 'cloud'] as const) t.same(mssRules(role, 4, OFF), [], `${role}: off is no rule`)
})

t.test('render: the mangle chain after filter and nat; without mss (or off) no mangle table at all', async (t) => {
  const without = edge(4)
  t.equal(edge(4, OFF), without)
  t.notMatch(without, /mangle/)
  t.equal(
    edge(4, PMTU),
    `${without}*mangle
:FABEDGE-MSS - [0:0]
-A FABEDGE-MSS -p tcp -m set --match-set FABEDGE-REMOTE-CIDR dst -m tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu
-A FABEDGE-MSS -p tcp -m set --match-set FABEDGE-REMOTE-CIDR src -m tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu
COMMIT
`,
  )
  t.notMatch(renderRuleset({ role: 'cloud', family: 4, localPodCidrs: [], mss: PMTU }), /mangle/)
})

t.test('plan: a fresh node gets the chain and one jump at the top of mangle POSTROUTING', async (t) => {
  const fresh = observedOf(liveOf(edge(4)))
  const plan = iptablesPlan(edge(4, PMTU), fresh)
  t.equal(
    plan.restore,
    `*mangle
:FABEDGE-MSS - [0:0]
-A FABEDGE-MSS -p tcp -m set --match-set FABEDGE-REMOTE-CIDR dst -m tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu
-A FABEDGE-MSS -p tcp -m set --match-set FABEDGE-REMOTE-CIDR src -m tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu
-I POSTROUTING 1 -j FABEDGE-MSS
COMMIT
`,
    'filter and nat already converged: only mangle is written',
  )
  t.same(plan.replaced, [{ table: 'mangle', chain: MSS_CHAIN }])
  t.same(plan.jumps, [{ op: 'insert', table: 'mangle', chain: 'POSTROUTING', target: MSS_CHAIN }])
  const bare = observedOf('*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n')
  t.match(iptablesPlan(edge(4, PMTU), bare).restore, /\*mangle\n:FABEDGE-MSS - \[0:0\]\n/, 'a node without a mangle table yet')
})

t.test('plan: converged is a no-op, v4 and v6, pmtu and fixed', async (t) => {
  for (const family of [4, 6] as const) {
    for (const mss of [PMTU, fixed(1360)]) {
      const payload = edge(family, mss)
      const plan = iptablesPlan(payload, observedOf(liveOf(payload, {}, family), family))
      t.same(plan, { family, restore: null, jumps: [], replaced: [], deleted: [], kept: [] }, `v${family} ${tcpMssText(mss)}`)
    }
  }
})

t.test('plan: foreign mangle rules are kept, never written; our jump goes back to the top', async (t) => {
  const foreign = ['-A POSTROUTING -o eth0 -p udp -m udp --dport 68 -j CHECKSUM --checksum-fill', '-A FORWARD -j MARK --set-xmark 0x1/0x1']
  // Someone inserted a rule above our jump.
  const plan = iptablesPlan(edge(4, PMTU), observedOf(liveOf(edge(4, PMTU), { mangleFirst: [foreign[0]!], mangle: [foreign[1]!] })))
  t.equal(plan.restore, '*mangle\n-D POSTROUTING -j FABEDGE-MSS\n-I POSTROUTING 1 -j FABEDGE-MSS\nCOMMIT\n')
  t.notMatch(plan.restore, /CHECKSUM|MARK/, 'foreign rules are not in the payload')
  t.same(plan.replaced, [], 'our chain is unchanged: not rewritten')
  const converged = iptablesPlan(edge(4, PMTU), observedOf(liveOf(edge(4, PMTU), { mangle: foreign })))
  t.equal(converged.restore, null, 'with our jump first, foreign rules after it are fine')
})

t.test('plan: pmtu -> fixed rewrites only our chain; -> off deletes chain and jump; cleanup removes them', async (t) => {
  const live = observedOf(liveOf(edge(4, PMTU), { mangle: ['-A POSTROUTING -o eth0 -j ACCEPT'] }))
  const toFixed = iptablesPlan(edge(4, fixed(1300)), live)
  t.equal(
    toFixed.restore,
    `*mangle
:FABEDGE-MSS - [0:0]
-A FABEDGE-MSS -p tcp -m set --match-set FABEDGE-REMOTE-CIDR dst -m tcp --tcp-flags SYN,RST SYN -j TCPMSS --set-mss 1300
-A FABEDGE-MSS -p tcp -m set --match-set FABEDGE-REMOTE-CIDR src -m tcp --tcp-flags SYN,RST SYN -j TCPMSS --set-mss 1300
COMMIT
`,
  )
  t.same(toFixed.jumps, [], 'the jump stays')
  const toOff = iptablesPlan(edge(4, OFF), live)
  t.equal(toOff.restore, '*mangle\n:FABEDGE-MSS - [0:0]\n-D POSTROUTING -j FABEDGE-MSS\n-X FABEDGE-MSS\nCOMMIT\n')
  t.same(toOff.deleted, [{ table: 'mangle', chain: MSS_CHAIN }])
  const cleanup = iptablesCleanupPlan(live)
  t.match(cleanup.restore, /\*mangle\n:FABEDGE-MSS - \[0:0\]\n-D POSTROUTING -j FABEDGE-MSS\n-X FABEDGE-MSS\nCOMMIT\n$/)
  t.same(cleanup.deleted.filter((c) => c.table === 'mangle'), [{ table: 'mangle', chain: MSS_CHAIN }])
  t.notMatch(cleanup.restore, /eth0/, 'the foreign mangle rule is left alone')
})
