// The pass engine: one level-triggered pass over the subsystems, in their apply order (ipsets before the iptables
// rules that reference them, routes and the rule, then tunnels). Every subsystem plans against the desired state;
// only plans that write are applied. A failing subsystem is recorded and the others still converge.
//
// Readiness never lies: a subsystem whose last plan or apply failed is "dirty" and plans its next pass as a deep
// one (re-observing everything instead of trusting what it cached before the failure), and the pass that ends
// without any error is the only one that counts as converged.
import type { Desired } from '../desired/types.js'
import type { Logger } from '../log.js'
import type { PassContext, Subsystem, SubsystemName } from './subsystem.js'
import { isoTime } from '../iso-time.js'

export interface PassRecord {
  startedAt: string
  durationMs: number
  reasons: string[]
  writes: Partial<Record<SubsystemName, number>>
  errors: Partial<Record<SubsystemName, string>>
  /** Subsystems whose entry in `errors` is a failure they retry on their own schedule (see SubsystemPlan). */
  unsettled: SubsystemName[]
  /** Milliseconds each subsystem took (plan + apply). */
  timings: Partial<Record<SubsystemName, number>>
  converged: boolean
  /**
   * Node duties done after the subsystems (e.g. the CNI conflist, src/daemon/cni.ts) that failed in this pass,
   * by name: the pass is then not converged either. Absent when none failed.
   */
  duties?: Record<string, string>
  /** A scoped pass (PassScope): how many keys it planned; absent when it planned everything. */
  scope?: { conns: number; dsts: number; members: number }
}

export interface EngineOptions {
  /** Ordered: apply happens in this order. */
  subsystems: readonly Subsystem[]
  log: Logger
  /** A subsystem asks for a pass at a later time (a backoff expiring). */
  wake: (at: number, reason: string) => void
  now?: () => number
}

export class PassEngine {
  /** Subsystems whose last plan or apply failed. */
  private readonly dirty = new Set<SubsystemName>()
  private readonly now: () => number

  constructor(private readonly opts: EngineOptions) {
    this.now = opts.now ?? Date.now
  }

  get subsystems(): readonly Subsystem[] {
    return this.opts.subsystems
  }

  /** Names of the subsystems that failed last time and have not succeeded since. */
  get dirtySubsystems(): SubsystemName[] {
    return [...this.dirty]
  }

  async run(desired: Desired, ctx: PassContext): Promise<PassRecord> {
    const { log } = this.opts
    const t0 = process.hrtime.bigint()
    const record: PassRecord = { startedAt: isoTime(this.now()), durationMs: 0, reasons: [...ctx.reasons], writes: {}, errors: {}, unsettled: [], timings: {}, converged: true }
    for (const s of this.opts.subsystems) {
      const ts = process.hrtime.bigint()
      const sctx: PassContext = this.dirty.has(s.name) && !ctx.deep ? { ...ctx, deep: true, credentials: true } : ctx
      try {
        await s.prepare?.(desired, sctx)
        const plan = await s.plan(desired, sctx)
        for (const w of plan.wakes ?? []) this.opts.wake(w.at, w.reason)
        if (plan.writes > 0) {
          log.info({ subsystem: s.name, op: 'apply', ops: plan.describe().slice(0, 50), writes: plan.writes }, 'applying')
          record.writes[s.name] = await s.apply(plan)
        }
        this.dirty.delete(s.name)
        // Failures the subsystem retries on its own schedule: nothing to re-observe, but not converged either.
        if (plan.unsettled) {
          record.errors[s.name] = plan.unsettled
          record.unsettled.push(s.name)
          record.converged = false
        }
      } catch (err) {
        this.dirty.add(s.name)
        record.errors[s.name] = (err as Error).message
        record.converged = false
        log.error({ subsystem: s.name, err }, 'subsystem failed; the others still converge')
      } finally {
        record.timings[s.name] = Math.round(Number(process.hrtime.bigint() - ts) / 1e4) / 100
      }
    }
    record.durationMs = Number(process.hrtime.bigint() - t0) / 1e6
    return record
  }
}
