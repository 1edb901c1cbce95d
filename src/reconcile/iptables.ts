// The iptables subsystem: the FabEdge chains for both families, applied with one iptables-restore per family and
// only when what is live differs from what is rendered (src/iptables).
import type { Desired } from '../desired/types.js'
import type { Family } from '../fabedge.js'
import { iptablesApply, iptablesObserve } from '../iptables/sync.js'
import { iptablesPlan, type IptablesPlan } from '../iptables/plan.js'
import type { IptablesRunner } from '../iptables/runner.js'
import type { PassContext, Subsystem, SubsystemPlan } from './subsystem.js'

export interface FirewallPlan extends SubsystemPlan {
  plans: IptablesPlan[]
}

export class FirewallSubsystem implements Subsystem<FirewallPlan> {
  readonly name = 'iptables' as const

  constructor(private readonly runner: IptablesRunner, private readonly families: readonly Family[] = [4, 6]) {}

  private lastPayloads: string | null = null

  async plan(desired: Desired, ctx: PassContext): Promise<FirewallPlan> {
    const payloads = `${desired.iptables.ipv4}\0${desired.iptables.ipv6}`
    // Only a deep pass re-reads iptables when what we render is unchanged (see PassContext).
    if (!ctx.deep && payloads === this.lastPayloads) return { plans: [], writes: 0, describe: () => [] }
    this.lastPayloads = payloads
    const plans: IptablesPlan[] = []
    for (const family of this.families) {
      const payload = family === 4 ? desired.iptables.ipv4 : desired.iptables.ipv6
      plans.push(iptablesPlan(payload, await iptablesObserve(this.runner, family)))
    }
    const changed = plans.filter((p) => p.restore !== null)
    return {
      plans,
      writes: changed.length,
      describe: () => changed.flatMap((p) => [
        ...p.replaced.map((c) => `${p.family === 6 ? 'ip6tables' : 'iptables'} -t ${c.table}: rewrite chain ${c.chain}`),
        ...p.deleted.map((c) => `${p.family === 6 ? 'ip6tables' : 'iptables'} -t ${c.table}: delete stale chain ${c.chain}`),
        ...p.jumps.map((j) => `${p.family === 6 ? 'ip6tables' : 'iptables'} ${JSON.stringify(j)}`),
      ]),
    }
  }

  async apply(plan: FirewallPlan): Promise<number> {
    let done = 0
    for (const p of plan.plans) {
      if (p.restore === null) continue
      await this.runner.exclusive(p.family, () => iptablesApply(this.runner, p))
      done++
    }
    return done
  }

  summary(): Record<string, unknown> {
    return { backend: this.runner.backend, counters: { ...this.runner.counters } }
  }
}
