import t from 'tap'
import { readFileSync } from 'node:fs'
import { rulesetParse } from '../../../src/iptables/parse.js'
import { iptablesCleanupPlan, iptablesPlan, type IptablesObserved, type Table } from '../../../src/iptables/plan.js'
import { renderRuleset } from '../../../src/iptables/render.js'
import type { Family } from '../../../src/fabedge.js'

const fixture = (name: string): string => readFileSync(new URL(`../../fixtures/iptables/${name}`, import.meta.url), 'utf8')
const observedOf = (text: string, family: Family = 4): IptablesObserved => {
  const parsed = rulesetParse(text, family)
  return { family, tables: { filter: parsed.get('filter'), nat: parsed.get('nat') } as Record<Table, never> }
}
const EDGE4 = renderRuleset({ role: 'edge', family: 4, localPodCidrs: ['10.234.1.0/24', '10.234.9.0/24'] })
const CONNECTOR4 = renderRuleset({ role: 'connector', family: 4, localPodCidrs: [] })

/** A save output with only built-in chains plus the given extra lines per table. */
const saveOf = (filter: string[], nat: string[]): string =>
  [
    '*filter', ':INPUT ACCEPT [0:0]', ':FORWARD ACCEPT [0:0]', ':OUTPUT ACCEPT [0:0]', ...filter, 'COMMIT',
    '*nat', ':PREROUTING ACCEPT [0:0]', ':INPUT ACCEPT [0:0]', ':OUTPUT ACCEPT [0:0]', ':POSTROUTING ACCEPT [0:0]', ...nat, 'COMMIT',
  ].join('\n')

/** The edge-v4 capture with some lines replaced or added, to model drift. */
const edgeSave = (edit: (lines: string[]) => string[]): string => edit(fixture('edge-v4-nft.save').split('\n')).join('\n')

t.test('converged (captured from real iptables, both backends): nothing to write', async (t) => {
  for (const backend of ['nft', 'legacy']) {
    for (const role of ['connector', 'edge'] as const) {
      for (const family of [4, 6] as const) {
        const cidrs = family === 4 ? ['10.234.1.0/24', '10.234.9.0/24'] : ['fd00:234:1::/64', 'fd00:234:9::/64']
        const plan = iptablesPlan(renderRuleset({ role, family, localPodCidrs: cidrs }), observedOf(fixture(`${role}-v${family}-${backend}.save`), family))
        t.same(plan, { family, restore: null, jumps: [], replaced: [], deleted: [], kept: [] }, `${backend} ${role} v${family}`)
      }
    }
  }
})

t.test('fresh node: every chain declared and filled, one jump each inserted at the top', async (t) => {
  const plan = iptablesPlan(EDGE4, observedOf(saveOf([], [])))
  t.equal(
    plan.restore,
    `*filter
:FABEDGE-INPUT - [0:0]
:FABEDGE-FORWARD - [0:0]
-A FABEDGE-INPUT -p udp -m udp --dport 500 -j ACCEPT
-A FABEDGE-INPUT -p udp -m udp --dport 4500 -j ACCEPT
-A FABEDGE-INPUT -p esp -j ACCEPT
-A FABEDGE-INPUT -p ah -j ACCEPT
-A FABEDGE-FORWARD -s 10.234.1.0/24 -j ACCEPT
-A FABEDGE-FORWARD -d 10.234.1.0/24 -j ACCEPT
-A FABEDGE-FORWARD -s 10.234.9.0/24 -j ACCEPT
-A FABEDGE-FORWARD -d 10.234.9.0/24 -j ACCEPT
-I INPUT 1 -j FABEDGE-INPUT
-I FORWARD 1 -j FABEDGE-FORWARD
COMMIT
*nat
:FABEDGE-POSTROUTING - [0:0]
-A FABEDGE-POSTROUTING -s 10.234.1.0/24 -m set --match-set FABEDGE-REMOTE-CIDR dst -j RETURN
-A FABEDGE-POSTROUTING -s 10.234.1.0/24 -d 10.234.1.0/24 -j RETURN
-A FABEDGE-POSTROUTING -s 10.234.1.0/24 -j MASQUERADE
-A FABEDGE-POSTROUTING -s 10.234.9.0/24 -m set --match-set FABEDGE-REMOTE-CIDR dst -j RETURN
-A FABEDGE-POSTROUTING -s 10.234.9.0/24 -d 10.234.9.0/24 -j RETURN
-A FABEDGE-POSTROUTING -s 10.234.9.0/24 -j MASQUERADE
-I POSTROUTING 1 -j FABEDGE-POSTROUTING
COMMIT
`,
  )
  t.same(plan.replaced, [
    { table: 'filter', chain: 'FABEDGE-INPUT' },
    { table: 'filter', chain: 'FABEDGE-FORWARD' },
    { table: 'nat', chain: 'FABEDGE-POSTROUTING' },
  ])
})

t.test('a foreign rule above our POSTROUTING jump: our jump moves back to the top, theirs is not in the payload', async (t) => {
  const observed = observedOf(
    edgeSave((l) => l.flatMap((x) => (x === '-A POSTROUTING -j FABEDGE-POSTROUTING' ? ['-A POSTROUTING -s 10.9.0.0/16 -j MASQUERADE', x] : [x]))),
  )
  const plan = iptablesPlan(EDGE4, observed)
  t.equal(plan.restore, '*nat\n-D POSTROUTING -j FABEDGE-POSTROUTING\n-I POSTROUTING 1 -j FABEDGE-POSTROUTING\nCOMMIT\n')
  t.same(plan.replaced, [])
})

t.test('duplicate jumps: all removed by rule spec, one inserted', async (t) => {
  const observed = observedOf(edgeSave((l) => [...l.slice(0, 8), '-A FORWARD -j DOCKER-USER', '-A FORWARD -j FABEDGE-FORWARD', ...l.slice(8)]))
  t.equal(
    iptablesPlan(EDGE4, observed).restore,
    '*filter\n-D FORWARD -j FABEDGE-FORWARD\n-D FORWARD -j FABEDGE-FORWARD\n-I FORWARD 1 -j FABEDGE-FORWARD\nCOMMIT\n',
  )
})

t.test('INPUT and FORWARD jumps may sit below foreign rules; only POSTROUTING must be first', async (t) => {
  const observed = observedOf(
    edgeSave((l) => l.flatMap((x) => (x.startsWith('-A INPUT') || x.startsWith('-A FORWARD') ? ['-A ' + x.split(' ')[1] + ' -i lo -j ACCEPT', x] : [x]))),
  )
  t.equal(iptablesPlan(EDGE4, observed).restore, null)
})

t.test('a conditional jump to our chain is foreign and left alone; a jump from another built-in too', async (t) => {
  const observed = observedOf(edgeSave((l) => [...l.slice(0, 8), '-A FORWARD -i eth0 -j FABEDGE-FORWARD', '-A OUTPUT -j FABEDGE-INPUT', ...l.slice(8)]))
  t.equal(iptablesPlan(EDGE4, observed).restore, null)
})

t.test('only the chain that differs is rewritten', async (t) => {
  const desired = renderRuleset({ role: 'edge', family: 4, localPodCidrs: ['10.234.1.0/24'] })
  const plan = iptablesPlan(desired, observedOf(fixture('edge-v4-nft.save')))
  t.same(plan.replaced, [
    { table: 'filter', chain: 'FABEDGE-FORWARD' },
    { table: 'nat', chain: 'FABEDGE-POSTROUTING' },
  ])
  t.equal(
    plan.restore,
    `*filter
:FABEDGE-FORWARD - [0:0]
-A FABEDGE-FORWARD -s 10.234.1.0/24 -j ACCEPT
-A FABEDGE-FORWARD -d 10.234.1.0/24 -j ACCEPT
COMMIT
*nat
:FABEDGE-POSTROUTING - [0:0]
-A FABEDGE-POSTROUTING -s 10.234.1.0/24 -m set --match-set FABEDGE-REMOTE-CIDR dst -j RETURN
-A FABEDGE-POSTROUTING -s 10.234.1.0/24 -d 10.234.1.0/24 -j RETURN
-A FABEDGE-POSTROUTING -s 10.234.1.0/24 -j MASQUERADE
COMMIT
`,
  )
})

t.test('a rule added by hand inside our chain is detected and the chain rewritten', async (t) => {
  const observed = observedOf(edgeSave((l) => [...l.slice(0, 9), '-A FABEDGE-FORWARD -j DROP', ...l.slice(9)]))
  t.same(iptablesPlan(EDGE4, observed).replaced, [{ table: 'filter', chain: 'FABEDGE-FORWARD' }])
})

t.test("role switch edge -> connector: FORWARD and POSTROUTING rewritten, INPUT and the jumps kept", async (t) => {
  const plan = iptablesPlan(CONNECTOR4, observedOf(fixture('edge-v4-nft.save')))
  t.same(plan.replaced, [
    { table: 'filter', chain: 'FABEDGE-FORWARD' },
    { table: 'nat', chain: 'FABEDGE-POSTROUTING' },
  ])
  t.same(plan.jumps, [])
  t.same(plan.deleted, [])
})

t.test("FabEdge's own leftover chain (FABEDGE-NAT-OUTGOING + bare jump) is unhooked, flushed and deleted", async (t) => {
  const observed = observedOf(
    edgeSave((l) =>
      l.flatMap((x) =>
        x === ':FABEDGE-POSTROUTING - [0:0]'
          ? [':FABEDGE-NAT-OUTGOING - [0:0]', x]
          : x === '-A POSTROUTING -j FABEDGE-POSTROUTING'
            ? [x, '-A POSTROUTING -j FABEDGE-NAT-OUTGOING', '-A FABEDGE-NAT-OUTGOING -s 10.234.1.0/24 -j MASQUERADE']
            : [x],
      ),
    ),
  )
  const plan = iptablesPlan(EDGE4, observed)
  t.equal(plan.restore, '*nat\n:FABEDGE-NAT-OUTGOING - [0:0]\n-D POSTROUTING -j FABEDGE-NAT-OUTGOING\n-X FABEDGE-NAT-OUTGOING\nCOMMIT\n')
  t.same(plan.deleted, [{ table: 'nat', chain: 'FABEDGE-NAT-OUTGOING' }])
  t.same(plan.jumps, [{ op: 'delete', table: 'nat', chain: 'POSTROUTING', target: 'FABEDGE-NAT-OUTGOING' }])
})

t.test('a stale own chain a foreign rule still references is emptied but kept, and then left alone', async (t) => {
  const withRef = (rules: string[]): IptablesObserved =>
    observedOf(saveOf([':FABEDGE-OLD - [0:0]', ':KUBE-X - [0:0]', '-A KUBE-X -s 10.0.0.0/8 -j FABEDGE-OLD', ...rules], []))
  const plan = iptablesPlan('', withRef(['-A FABEDGE-OLD -j ACCEPT']))
  t.equal(plan.restore, '*filter\n:FABEDGE-OLD - [0:0]\nCOMMIT\n')
  t.same(plan.kept, [{ table: 'filter', chain: 'FABEDGE-OLD' }])
  t.same(plan.deleted, [])
  const again = iptablesPlan('', withRef([]))
  t.equal(again.restore, null, 'an empty kept chain is no reason to write')
})

t.test('foreign chains and rules never appear in any payload', async (t) => {
  const observed = observedOf(
    saveOf(
      [':KUBE-FORWARD - [0:0]', ':FABEDGE-FORWARD - [0:0]', '-A FORWARD -j KUBE-FORWARD', '-A FORWARD -j FABEDGE-FORWARD', '-A KUBE-FORWARD -j ACCEPT'],
      [':KUBE-POSTROUTING - [0:0]', '-A POSTROUTING -j KUBE-POSTROUTING', '-A KUBE-POSTROUTING -j MASQUERADE'],
    ),
  )
  for (const plan of [iptablesPlan(EDGE4, observed), iptablesCleanupPlan(observed)]) {
    t.notMatch(plan.restore ?? '', /KUBE/)
  }
})

t.test('cleanup: every jump removed, every own chain flushed and deleted, both tables', async (t) => {
  const plan = iptablesCleanupPlan(observedOf(fixture('connector-v6-nft.save'), 6))
  t.equal(
    plan.restore,
    `*filter
:FABEDGE-FORWARD - [0:0]
:FABEDGE-INPUT - [0:0]
-D INPUT -j FABEDGE-INPUT
-D FORWARD -j FABEDGE-FORWARD
-X FABEDGE-FORWARD
-X FABEDGE-INPUT
COMMIT
*nat
:FABEDGE-POSTROUTING - [0:0]
-D POSTROUTING -j FABEDGE-POSTROUTING
-X FABEDGE-POSTROUTING
COMMIT
`,
  )
  t.equal(iptablesCleanupPlan(observedOf(saveOf([], []))).restore, null, 'nothing of ours: nothing to do')
})

t.test('a desired payload must declare only own chains with -A rules in filter/nat/mangle', async (t) => {
  const obs = observedOf(saveOf([], []))
  t.throws(() => iptablesPlan('*filter\n:KUBE-X - [0:0]\nCOMMIT\n', obs), { code: 'bad-payload' })
  t.throws(() => iptablesPlan('*raw\n:FABEDGE-X - [0:0]\nCOMMIT\n', obs), { code: 'bad-payload' })
  t.throws(() => iptablesPlan('*mangle\n:KUBE-X - [0:0]\nCOMMIT\n', obs), { code: 'bad-payload' })
  t.throws(() => iptablesPlan('*filter\n:FABEDGE-X - [0:0]\n-I INPUT 1 -j FABEDGE-X\nCOMMIT\n', obs), { code: 'bad-payload' })
  t.throws(() => iptablesPlan('*filter\n-A INPUT -j FABEDGE-X\nCOMMIT\n', obs), { code: 'bad-payload' })
})

t.test('foreign rules are not tokenized on a converged pass: one we cannot read does not stop us', async (t) => {
  const observed = observedOf(
    edgeSave((l) => l.flatMap((x) => (x === ':FABEDGE-POSTROUTING - [0:0]' ? [x, ':KUBE-ODD - [0:0]', '-A KUBE-ODD -m comment --comment "unterminated -j ACCEPT'] : [x]))),
  )
  t.equal(iptablesPlan(EDGE4, observed).restore, null)
  t.throws(() => iptablesPlan('*nat\n:FABEDGE-X - [0:0]\n-A FABEDGE-X -m comment --comment "open\nCOMMIT\n', observed), { code: 'bad-payload' }, 'our own payload is checked strictly')
})

t.test('cloud: the KUBE-POSTROUTING rule is planned only where kube-proxy\'s chain exists', async (t) => {
  const CLOUD4 = renderRuleset({ role: 'cloud', family: 4, localPodCidrs: [] })
  const bare = iptablesPlan(CLOUD4, observedOf(saveOf([], [])))
  t.ok(bare.restore !== null)
  t.notMatch(bare.restore!, /KUBE-POSTROUTING/, 'no kube-proxy: the rule is left out instead of failing the whole restore')
  t.match(bare.restore!, /-A FABEDGE-POSTROUTING -m set --match-set FABEDGE-REMOTE-POD-CIDR dst -j ACCEPT/)
  t.match(bare.restore!, /-I POSTROUTING 1 -j FABEDGE-POSTROUTING/)
  t.match(bare.restore!, /-I FORWARD 1 -j FABEDGE-FORWARD/)
  t.notMatch(bare.restore!, /INPUT/, 'no INPUT jump on a cloud node')
  const kube = iptablesPlan(CLOUD4, observedOf(saveOf([], [':KUBE-POSTROUTING - [0:0]'])))
  t.match(kube.restore!, /-A FABEDGE-POSTROUTING -m mark --mark 0x4000\/0x4000 -j KUBE-POSTROUTING\n-A FABEDGE-POSTROUTING -m set/, 'with kube-proxy: the rule comes first, as FabEdge writes it')
})
