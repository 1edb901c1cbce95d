// The engine's two subsystem hooks: `prepare` runs before `plan` in every pass (never for `fabtunnel plan`), and a
// plan's `wakes` schedule a later pass whether or not the plan writes (how the tunnels subsystem's backoff comes
// back without plan() scheduling anything itself).
import t from 'tap'
import { copyFileSync, mkdtempSync, rmSync } from 'node:fs'
import { join } from 'node:path'
import { tmpdir } from 'node:os'
import { Agent } from '../../../src/daemon/agent.js'
import { Metrics } from '../../../src/daemon/metrics.js'
import { createLogger } from '../../../src/log.js'
import type { PassContext, Subsystem, SubsystemPlan } from '../../../src/reconcile/subsystem.js'

const FIX = new URL('../../fixtures/config/', import.meta.url).pathname

class Hooked implements Subsystem {
  readonly name = 'tunnels' as const
  readonly calls: string[] = []
  wakeIn: number | null = null
  async prepare(_d: unknown, ctx: PassContext): Promise<void> {
    this.calls.push(`prepare ${ctx.reasons.join(',')}`)
  }
  async plan(_d: unknown, ctx: PassContext): Promise<SubsystemPlan> {
    this.calls.push(`plan ${ctx.reasons.join(',')}`)
    const wakes = this.wakeIn === null ? [] : [{ at: Date.now() + this.wakeIn, reason: 'backoff:peer' }]
    this.wakeIn = null
    return { writes: 0, describe: () => [], wakes }
  }
  async apply(): Promise<number> {
    throw new Error('nothing to apply')
  }
}

t.test('prepare before plan in passes only; wakes of a plan without writes schedule a pass', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ftagent-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const configPath = join(dir, 'tunnels.yaml')
  copyFileSync(join(FIX, 'edge.yaml'), configPath)
  const sub = new Hooked()
  const agent = new Agent({ configPath, datapath: 'libipsec', subsystems: [sub], log: createLogger('silent'), metrics: new Metrics({ processMetrics: false }), coalesceMs: 1, resyncMs: 0 })
  t.teardown(() => agent.stop())
  await agent.reloadConfig()
  await agent.planAll()
  t.same(sub.calls, ['plan manual'], '`fabtunnel plan` never prepares')
  sub.calls.length = 0
  sub.wakeIn = 30
  agent.start()
  await agent.idle()
  t.same(sub.calls, ['prepare start', 'plan start'])
  for (let i = 0; i < 100 && sub.calls.length < 4; i++) await new Promise((r) => setTimeout(r, 10))
  await agent.idle()
  t.same(sub.calls, ['prepare start', 'plan start', 'prepare backoff:peer', 'plan backoff:peer'], 'the wake ran a pass')
})
