// One pass of the daemon's iptables subsystem for one family, through a real IptablesRunner: observe, plan, apply,
// exactly as the agent runs it (a deep pass). Namespace tests and the iptables benchmark use it so that they
// exercise the code the daemon runs.
import type { IptablesPlan } from '../../src/iptables/plan.js'
import { renderRuleset, type RulesetInput } from '../../src/iptables/render.js'
import type { IptablesRunner } from '../../src/iptables/runner.js'
import { IptablesSubsystem } from '../../src/reconcile/iptables.js'
import { passContext } from '../../src/reconcile/subsystem.js'

/** The family's plan as observed (restore null: the pass wrote nothing). Throws what apply throws. */
export async function iptablesPass(runner: IptablesRunner, input: RulesetInput): Promise<IptablesPlan> {
  const subsystem = new IptablesSubsystem(runner, [input.family])
  const payload = renderRuleset(input)
  const plan = await subsystem.plan({ iptables: { ipv4: input.family === 4 ? payload : '', ipv6: input.family === 6 ? payload : '' } }, passContext(['resync']))
  if (plan.writes > 0) await subsystem.apply(plan)
  return plan.plans[0]!
}
