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
  /** Passes this subsystem wants later (a backoff expiring): the engine hands them to the scheduler. */
  wakes?: ReadonlyArray<{ at: number; reason: string }>
  /**
   * Failures this subsystem is still retrying on its own schedule (e.g. peers backing off after failed
   * initiates), as one line for /status: the pass is not converged, and so not ready, while there are any.
   */
  unsettled?: string
}

/**
 * Why a pass runs, and so how deep it looks. A `deep` pass (start, resync, SIGHUP, a charon reconnect, a
 * netlink overrun, `fabtunnel plan`) observes everything from scratch. Other passes are triggered by VICI SA
 * events, netlink route/rule events (table 220, and a default route of the main table: `netlink:gateway`), a
 * backoff expiring, a config / credential file change, the retry after a failed pass (the engine makes each
 * subsystem that failed plan deep, the others need not re-observe), or are the verification pass after a pass that
 * wrote (what it must confirm is what we just wrote); those
 * cannot have changed iptables or what charon has loaded behind our back, so a subsystem may reuse an expensive
 * observation it made itself (iptables-save costs ~25-70 ms per family; list-conns of 1,000 connections ~250 ms)
 * and is only required to look at what the trigger could have changed. Whatever others change meanwhile is
 * repaired by the next deep pass (the resync timer, default 60 s, or SIGHUP).
 */
export interface PassContext {
  reasons: readonly string[]
  deep: boolean
  /** The credential files may have changed: read them again. */
  credentials: boolean
  /**
   * Set on a shallow pass whose every trigger names what it can have changed (a config change as the desired
   * state's delta, SA events by connection, table-220 route events by destination, a backoff expiring by
   * connection, the verification of a scoped pass): only these keys can differ from what each subsystem planned,
   * applied or observed before, so a subsystem whose own memory of the node is intact plans these keys alone and
   * the pass costs O(change), not O(peers). Absent: plan everything.
   */
  scope?: PassScope
}

/** The keys a scoped pass may find changed. */
export interface PassScope {
  /** Connection names. */
  conns: ReadonlySet<string>
  /** Table-220 route destinations. */
  dsts: ReadonlySet<string>
  /** Set name -> members. */
  members: ReadonlyMap<string, ReadonlySet<string>>
}

const SHALLOW = /^(retry|probe-repair|vici:(ike|child)-updown|netlink:(route|rule)-(new|del)|netlink:gateway|backoff:.*|config.*|credentials|verify)$/

export function passContext(reasons: readonly string[]): PassContext {
  const deep = reasons.length === 0 || reasons.some((r) => !SHALLOW.test(r))
  return { reasons, deep, credentials: deep || reasons.includes('credentials') }
}

export interface Subsystem<P extends SubsystemPlan = SubsystemPlan> {
  readonly name: SubsystemName
  /**
   * The pass's explicit state steps before planning (e.g. subscribing to events, re-reading credential files,
   * forgetting peers that left the config). The engine calls it in every pass; `fabtunnel plan` does not, so
   * planning alone never changes the subsystem.
   */
  prepare?(desired: Desired, ctx: PassContext): Promise<void>
  plan(desired: Desired, ctx: PassContext): Promise<P>
  /** Applies the plan; resolves with the writes done (ops that failed are reported by throwing at the end). */
  apply(plan: P): Promise<number>
  /** A short summary of the live state for /status. */
  summary?(): Record<string, unknown>
}
