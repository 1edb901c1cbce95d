// Whether to repair a peer whose datapath is down while IKE says it is up, and how. Pure: the caller passes the
// clock and what it remembers of earlier repairs.
//
// Policy (docs/probes.md):
// - Only the initiator side repairs: it re-establishes what it initiated, and the reconcile loop re-initiates what
//   the repair ended. A responder (a connector towards its edges) only reports: ending an SA the peer must
//   re-initiate would turn a datapath fault into a full outage until the peer notices.
// - First only while IKE says every CHILD_SA is installed, and has said so for as long as the losses took: when it
//   does not, the reconcile loop is already at work, and SAs that just came up deserve fresh probes first.
// - The first repair re-establishes the peer's CHILD_SAs (cheap; fixes a CHILD_SA lost or stale on one side); the
//   next ones, if the datapath is still down, the IKE_SA (fixes a peer whose charon lost the IKE_SA, e.g. restarted,
//   which the CHILD_SA exchange cannot reach).
// - Backoff per peer doubles from `baseBackoffMs` up to `maxBackoffMs`, reset once the datapath is up again.
// - At most `maxPerWindow` repairs over all peers per `windowMs`: a broken underlay takes every peer down at once,
//   and repairs cannot fix it, so they must not turn into a storm against charon and the peers.

export interface RepairPolicy {
  baseBackoffMs: number
  maxBackoffMs: number
  windowMs: number
  maxPerWindow: number
}

export const DEFAULT_REPAIR_POLICY: RepairPolicy = { baseBackoffMs: 10_000, maxBackoffMs: 300_000, windowMs: 10_000, maxPerWindow: 10 }

export interface RepairMemory {
  /** Repairs since the datapath was last up. */
  attempts: number
  lastAt: number
}

export type RepairScope = 'children' | 'ike'

export type RepairDecision = { repair: true; scope: RepairScope; attempt: number } | { repair: false; reason: string; until?: number }

export interface RepairInput {
  enabled: boolean
  datapathDown: boolean
  /** This side initiates the peer's connection. */
  initiator: boolean
  /**
   * up: an IKE_SA established and every CHILD_SA installed (the tunnels subsystem's `up`); established: an IKE_SA
   * established, CHILD_SAs not all installed (e.g. ours being re-established, stuck on a peer that lost the IKE_SA);
   * down: no IKE_SA established.
   */
  ike: 'up' | 'established' | 'down'
  /** How long IKE has said up without a break (ms). */
  ikeUpForMs: number
  /** How long the losses that mark a peer down take (down-after x probe period): a first repair needs IKE up that long. */
  evidenceMs: number
  memory: RepairMemory | undefined
  /** Times of the repairs (all peers) still inside the window. */
  recent: readonly number[]
  now: number
  policy?: RepairPolicy
}

export function repairBackoffMs(attempts: number, p: RepairPolicy = DEFAULT_REPAIR_POLICY): number {
  return Math.min(p.maxBackoffMs, p.baseBackoffMs * 2 ** Math.max(0, attempts - 1))
}

export function repairDecision(i: RepairInput): RepairDecision {
  const p = i.policy ?? DEFAULT_REPAIR_POLICY
  if (!i.datapathDown) return { repair: false, reason: 'datapath not down' }
  if (!i.enabled) return { repair: false, reason: 'repair disabled (--probe-repair off)' }
  if (!i.initiator) return { repair: false, reason: 'responder: the peer initiates; reporting only' }
  const escalating = (i.memory?.attempts ?? 0) > 0
  // A first repair needs IKE to claim the peer is up; an escalation only an IKE_SA that still claims to be there.
  if (i.ike === 'down' || (i.ike === 'established' && !escalating)) return { repair: false, reason: 'IKE not up: the reconcile loop re-establishes it' }
  // The losses must all fall in a time IKE said up: SAs that just came (back) up have not been probed yet.
  if (!escalating && i.ikeUpForMs < i.evidenceMs) return { repair: false, reason: 'IKE up too recently to blame the datapath' }
  if (i.memory && i.memory.attempts > 0) {
    const until = i.memory.lastAt + repairBackoffMs(i.memory.attempts, p)
    if (i.now < until) return { repair: false, reason: `backoff after ${i.memory.attempts} repair(s)`, until }
  }
  const inWindow = i.recent.filter((t) => t > i.now - p.windowMs)
  if (inWindow.length >= p.maxPerWindow) {
    return { repair: false, reason: `repair budget spent (${p.maxPerWindow} per ${p.windowMs / 1000}s)`, until: Math.min(...inWindow) + p.windowMs }
  }
  const attempt = (i.memory?.attempts ?? 0) + 1
  return { repair: true, scope: attempt === 1 ? 'children' : 'ike', attempt }
}
