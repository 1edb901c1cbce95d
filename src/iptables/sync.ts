// The iptables verbs around the pure planner: observe (one iptables-save, tables filter, nat and mangle parsed),
// apply a plan from plan.ts (a dry run, then one iptables-restore --noflush) and cleanup. The daemon's reconciler
// built on them is src/reconcile/iptables.ts. A plan without a payload performs no exec at all.
import type { Family } from '../fabedge.js'
import { rulesetParse } from './parse.js'
import { iptablesCleanupPlan, TABLES, type IptablesObserved, type IptablesPlan } from './plan.js'
import type { IptablesRunner } from './runner.js'

/** The runner's reading, writing and locking verbs: an IptablesRunner, or a fake in unit tests. */
export type IptablesTools = Pick<IptablesRunner, 'save' | 'restore' | 'counters' | 'exclusive'>

/**
 * Reads tables filter, nat and mangle of one family with a single `iptables-save`: one process per pass instead
 * of one per table (the other tables it prints are small and are not parsed past their lines).
 */
export async function iptablesObserve(runner: Pick<IptablesTools, 'save'>, family: Family): Promise<IptablesObserved> {
  const parsed = rulesetParse(await runner.save(family), family)
  const observed: IptablesObserved = { family, tables: {} }
  for (const table of TABLES) {
    const t = parsed.get(table)
    if (t) observed.tables[table] = t
  }
  return observed
}

/**
 * Writes a plan: `iptables-restore --test` first, so a payload the tools reject (a missing set, an unknown
 * match) changes nothing in any table, then the real restore. Returns whether anything was written.
 */
export async function iptablesApply(runner: Pick<IptablesTools, 'restore' | 'counters'>, plan: IptablesPlan): Promise<boolean> {
  if (plan.restore === null) return false
  await runner.restore(plan.family, plan.restore, { test: true })
  await runner.restore(plan.family, plan.restore)
  runner.counters.jumpWrites += plan.jumps.length
  runner.counters.chainWrites += plan.replaced.length + plan.deleted.length
  return true
}

/**
 * Removes our jumps and flushes and deletes every own chain in filter, nat and mangle of one family. Run it for both
 * families before destroying the FABEDGE ipsets: the kernel refuses to destroy a set a rule still references.
 */
export async function iptablesCleanup(runner: IptablesTools, family: Family): Promise<IptablesPlan> {
  return runner.exclusive(family, async () => {
    const plan = iptablesCleanupPlan(await iptablesObserve(runner, family))
    await iptablesApply(runner, plan)
    return plan
  })
}
