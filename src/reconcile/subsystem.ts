// One subsystem of the node (ipsets, iptables, routes, tunnels): observe the live state and plan against the
// desired state, then apply the plan. `plan` may read the live node but never writes; `apply` writes exactly what
// the plan says. A converged node yields plans with zero writes, and a pass then writes nothing.
import type { Desired } from '../desired/types.js'

export type SubsystemName = 'ipsets' | 'iptables' | 'routes' | 'tunnels'

export interface SubsystemPlan {
  /** Number of write operations `apply` will perform (0: converged, apply is skipped). */
  writes: number
  /** One human-readable line per operation, for `fabtunnel plan` and debug logs. */
  describe(): string[]
}

/**
 * Why a pass runs. `full` passes (start, config or credential change, resync, SIGHUP, retry, verification, a
 * charon reconnect, a netlink overrun) observe everything. Passes triggered only by VICI SA events or netlink
 * route/rule events cannot have changed iptables or the credential files, so a subsystem may skip observations
 * that cost process spawns or file reads (iptables-save is ~25-70 ms per table and family); what others change
 * behind our back there is repaired by the next full pass (resync timer, default 60 s, or SIGHUP).
 */
export interface PassContext {
  reasons: readonly string[]
  full: boolean
}

const EVENT_ONLY = /^(vici:(ike|child)-updown|netlink:(route|rule)-(new|del)|backoff:.*)$/

export function passContext(reasons: readonly string[]): PassContext {
  return { reasons, full: reasons.length === 0 || reasons.some((r) => !EVENT_ONLY.test(r)) }
}

export interface Subsystem<P extends SubsystemPlan = SubsystemPlan> {
  readonly name: SubsystemName
  plan(desired: Desired, ctx: PassContext): Promise<P>
  /** Applies the plan; resolves with the writes done (ops that failed are reported by throwing at the end). */
  apply(plan: P): Promise<number>
  /** A short summary of the live state for /status. */
  summary?(): Record<string, unknown>
}
