// The iptables subsystem: the FabEdge chains of both families, observed with one iptables-save and written with
// one iptables-restore per family, only when what is live differs from what is rendered (planning: src/iptables).
// It talks to iptables through IptablesPort; the real one is the IptablesRunner itself.
import type { Desired } from '../desired/types.js'
import type { Family } from '../fabedge.js'
import { iptablesApply, iptablesCleanup, iptablesObserve, type IptablesTools } from '../iptables/sync.js'
import { iptablesPlan, type IptablesPlan as FamilyPlan } from '../iptables/plan.js'
import type { IptablesRunner } from '../iptables/runner.js'
import type { PassContext, Subsystem, SubsystemPlan } from './subsystem.js'

/**
 * What the subsystem needs of iptables: save and restore (with --test) per family, serialized per family, the
 * backend and the counters for /status. The real port is the IptablesRunner itself.
 */
export type IptablesPort = IptablesTools & Pick<IptablesRunner, 'backend'>

export interface IptablesPlan extends SubsystemPlan {
  plans: FamilyPlan[]
  /** The rendered rulesets this plan was made for. */
  rendered: Desired['iptables']
  /** `port.counters.restores` when observed: another restore since then makes apply look again. */
  restoresSeen: number
}

export class IptablesSubsystem implements Subsystem<IptablesPlan> {
  readonly name = 'iptables' as const
  /**
   * The payloads known to be live: set only by an observation that found nothing to write or by an apply that
   * succeeded; any failure clears it, so a failed restore keeps every later pass (shallow ones too) re-observing
   * and re-planning until a write succeeds.
   */
  private live: string | null = null

  constructor(private readonly port: IptablesPort, private readonly families: readonly Family[] = [4, 6]) {}

  async plan(desired: Pick<Desired, 'iptables'>, ctx: PassContext): Promise<IptablesPlan> {
    const rendered = desired.iptables
    const payloads = keyOf(rendered)
    const restoresSeen = this.port.counters.restores
    // Only a deep pass re-reads iptables when what we render is what we know to be live (see PassContext).
    if (!ctx.deep && payloads === this.live) return { plans: [], rendered, restoresSeen, writes: 0, describe: () => [] }
    this.live = null
    const plans: FamilyPlan[] = []
    for (const family of this.families) plans.push(iptablesPlan(payloadOf(desired, family), await iptablesObserve(this.port, family)))
    const changed = plans.filter((p) => p.restore !== null)
    if (changed.length === 0) this.live = payloads
    return {
      plans,
      rendered,
      restoresSeen,
      writes: changed.length,
      describe: () => changed.flatMap((p) => [
        ...p.replaced.map((c) => `${tool(p.family)} -t ${c.table}: rewrite chain ${c.chain}`),
        ...p.deleted.map((c) => `${tool(p.family)} -t ${c.table}: delete stale chain ${c.chain}`),
        ...p.jumps.map((j) => `${tool(p.family)} -t ${j.table} ${j.op === 'insert' ? '-I' : '-D'} ${j.chain} -j ${j.target}`),
      ]),
    }
  }

  /** Writes each family that needs it (a dry run first, then the restore); both are tried, then any failure throws. */
  async apply(plan: IptablesPlan): Promise<number> {
    this.live = null
    let done = 0
    let seen = plan.restoresSeen
    const errors: Error[] = []
    for (const p of plan.plans) {
      if (p.restore === null) continue
      try {
        const wrote = await this.port.exclusive(p.family, async () => {
          // A restore through this port since the plan observed (an overlapping pass) invalidates the plan: a
          // second insert of the same missing jump would duplicate it. Look again and write what is still needed.
          const fresh = this.port.counters.restores === seen
            ? p
            : iptablesPlan(payloadOf({ iptables: plan.rendered }, p.family), await iptablesObserve(this.port, p.family))
          try {
            return await iptablesApply(this.port, fresh)
          } finally {
            seen = this.port.counters.restores
          }
        })
        if (wrote) done++
      } catch (err) {
        errors.push(err as Error)
      }
    }
    if (errors.length === 1) throw errors[0]!
    if (errors.length) throw new AggregateError(errors, errors.map((e) => e.message).join('; '))
    this.live = keyOf(plan.rendered)
    return done
  }

  /** Removes our jumps and chains of one family (`fabtunnel cleanup`); returns the chains deleted. */
  async cleanup(family: Family): Promise<string[]> {
    this.live = null
    const plan = await iptablesCleanup(this.port, family)
    return plan.deleted.map((c) => `${c.table}/${c.chain}`)
  }

  summary(): Record<string, unknown> {
    return { backend: this.port.backend, counters: { ...this.port.counters } }
  }
}

const tool = (family: Family): string => (family === 6 ? 'ip6tables' : 'iptables')
const payloadOf = (d: Pick<Desired, 'iptables'>, family: Family): string => (family === 4 ? d.iptables.ipv4 : d.iptables.ipv6)
const keyOf = (r: Desired['iptables']): string => `${r.ipv4}\0${r.ipv6}`
