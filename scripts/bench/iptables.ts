// Benchmark: the cost of a converged iptables pass as the daemon runs it (IptablesSubsystem.plan on a deep pass
// through the real runner: one iptables-save per family, parse, plan, no write) against what an agent that
// rewrites every pass pays (one iptables-restore --noflush of the same payload, as FabEdge does). Both run the
// real tools in a throwaway namespace through `ip netns exec`, so both carry the same process overhead. Two hosts:
// no foreign rules, and a kube-proxy-sized nat table; both backends.
// Run as root: node --import tsx scripts/bench/iptables.ts [iterations]
import { performance } from 'node:perf_hooks'
import { Netns, teardownOnSignals } from '../../test/harness/netns.js'
import { execCapture } from '../../test/harness/exec.js'
import { iptablesPass } from '../../test/harness/iptables-pass.js'
import { IptablesRunner, type Backend } from '../../src/iptables/runner.js'
import { renderRuleset, type RulesetInput } from '../../src/iptables/render.js'
import { IptablesSubsystem } from '../../src/reconcile/iptables.js'
import { passContext } from '../../src/reconcile/subsystem.js'
import { IPSET } from '../../src/fabedge.js'

const iterations = Number(process.argv[2] ?? 30)

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.floor(s.length / 2)]!
}

/** A nat table shaped like kube-proxy's: one chain per service with a DNAT rule, jumped to from KUBE-SERVICES. */
function foreignNat(services: number): string {
  const lines = ['*nat', ':KUBE-SERVICES - [0:0]']
  for (let i = 0; i < services; i++) lines.push(`:KUBE-SVC-${i} - [0:0]`)
  for (let i = 0; i < services; i++) {
    const ip = `10.96.${Math.floor(i / 250)}.${(i % 250) + 1}`
    lines.push(`-A KUBE-SERVICES -d ${ip}/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-${i}`)
    lines.push(`-A KUBE-SVC-${i} -p tcp -m tcp -j DNAT --to-destination 10.244.${Math.floor(i / 250)}.${(i % 250) + 1}:8080`)
  }
  lines.push('-A PREROUTING -j KUBE-SERVICES', 'COMMIT', '')
  return lines.join('\n')
}

async function scenario(backend: Backend, name: string, services: number): Promise<void> {
  const ns = await Netns.create('bch')
  try {
    const runner = await IptablesRunner.create({ backend, exec: (argv, o) => execCapture(['ip', 'netns', 'exec', ns.name, ...argv], o) })
    const sets = Object.values(IPSET).map((s) => `create ${s} hash:net family inet\n`).join('')
    await ns.run(['ipset', 'restore', '-exist'], { input: sets })
    if (services > 0) await ns.run([`iptables-${backend}-restore`, '--noflush'], { input: foreignNat(services) })
    const input: RulesetInput = { role: 'connector', family: 4, localPodCidrs: [] }
    const payload = renderRuleset(input)
    await iptablesPass(runner, input)
    const subsystem = new IptablesSubsystem(runner, [4])
    const desired = { iptables: { ipv4: payload, ipv6: '' } }
    const deep = passContext(['resync'])

    const ours: number[] = []
    const baseline: number[] = []
    for (let i = 0; i < iterations; i++) {
      let t0 = performance.now()
      const plan = await subsystem.plan(desired, deep)
      ours.push(performance.now() - t0)
      if (plan.writes !== 0) throw new Error('bench: the pass was not converged')
      t0 = performance.now()
      await runner.restore(4, payload)
      baseline.push(performance.now() - t0)
    }
    const o = median(ours)
    const b = median(baseline)
    console.log(
      `${name}: converged deep pass (IptablesSubsystem.plan: observe+plan, 0 writes) ${o.toFixed(2)} ms | baseline one iptables-restore ${b.toFixed(2)} ms | ratio ours/baseline ${(o / b).toFixed(2)} (median of ${iterations}, backend ${runner.backend})`,
    )
  } finally {
    await ns.destroy()
  }
}

teardownOnSignals()
for (const backend of ['nft', 'legacy'] as const) {
  await scenario(backend, 'empty host', 0)
  await scenario(backend, 'host with 2000 kube-proxy-like services in nat', 2000)
}
