// Leadership: whether this agent is the active connector. `GET /is-leader` answers it byte-compatibly with FabEdge
// (`true`/`false`, HTTP 200 both), served from memory so it answers even while a pass runs. It is not readiness: a
// transient subsystem error must not move a VIP. Three modes (`--leader-election`):
// - none: a single connector (or an edge node) leads whenever it runs;
// - vip: this node leads exactly while the VIP is assigned to one of its interfaces. keepalived (VRRP) decides who
//   holds it, probing the agent's /healthz (not /is-leader: that would be circular). Followed through netlink
//   address events after one initial dump: no polling;
// - lease: a coordination.k8s.io/v1 Lease with client-go's leader-election semantics (lease.ts).
// Every implementation notifies listeners on each change; the daemon turns a change into one pass (promotion: the
// standby's warm state plus initiators and routes) and, on demotion, terminates our own SAs.
import type { Addr } from '../netlink/addr.js'
import { ipToString, parseIp } from '../netlink/ip.js'
import { isoTime } from '../iso-time.js'

export type LeaderElectionMode = 'none' | 'vip' | 'lease'
export const LEADER_ELECTION_MODES: readonly LeaderElectionMode[] = ['none', 'vip', 'lease']

export interface LeadershipStatus {
  mode: LeaderElectionMode
  leader: boolean
  /** When leadership last changed (or the election started), ISO 8601. */
  since: string
  transitions: number
  vip?: { address: string; present: boolean; interfaces: number[] }
  lease?: { namespace: string; name: string; identity: string; holder: string | null; lastRenew: string | null }
}

export interface Leadership {
  readonly mode: LeaderElectionMode
  isLeader(): boolean
  /** Calls `fn` with the new value on every change; returns the unsubscribe function. */
  onChange(fn: (leader: boolean) => void): () => void
  /** Starts following the election; resolves once the initial state is known (vip: after the address dump). */
  start(): Promise<void>
  /** Gives leadership up now (lease: clears holderIdentity as client-go's release does; vip: keepalived moves it). */
  release(): Promise<void>
  /** Stops following the election (no release). */
  stop(): Promise<void>
  status(): LeadershipStatus
}

/** Listener bookkeeping, the transition counter and `since`, shared by every mode. */
export abstract class LeadershipBase implements Leadership {
  abstract readonly mode: LeaderElectionMode
  private leader: boolean
  private sinceMs: number
  private transitions = 0
  private readonly listeners = new Set<(leader: boolean) => void>()

  constructor(initial: boolean, protected readonly now: () => number = Date.now) {
    this.leader = initial
    this.sinceMs = now()
  }

  isLeader(): boolean {
    return this.leader
  }

  onChange(fn: (leader: boolean) => void): () => void {
    this.listeners.add(fn)
    return () => this.listeners.delete(fn)
  }

  /** Sets leadership; listeners hear only real changes. */
  protected setLeader(leader: boolean): void {
    if (leader === this.leader) return
    this.leader = leader
    this.sinceMs = this.now()
    this.transitions++
    for (const fn of [...this.listeners]) fn(leader)
  }

  protected baseStatus(): LeadershipStatus {
    return { mode: this.mode, leader: this.leader, since: isoTime(this.sinceMs), transitions: this.transitions }
  }

  status(): LeadershipStatus {
    return this.baseStatus()
  }

  abstract start(): Promise<void>
  abstract release(): Promise<void>
  abstract stop(): Promise<void>
}

/** `--leader-election none`: always the leader. */
export class SoleLeadership extends LeadershipBase {
  readonly mode = 'none' as const
  constructor(now?: () => number) {
    super(true, now)
  }
  async start(): Promise<void> {}
  async release(): Promise<void> {}
  async stop(): Promise<void> {}
}

export const SOLE_LEADER: Leadership = new SoleLeadership()

/** The canonical text of a VIP (`--vip`): the form netlink address events carry. Throws on anything else. */
export function canonicalVip(text: string): string {
  return ipToString(parseIp(text.trim()).bytes)
}

/** What vip mode needs of the kernel: one address dump and the address events (the daemon's netlink Monitor). */
export interface AddrSource {
  /** Every address of every interface (`ip addr show`). */
  dump(): Promise<Addr[]>
  /** Address events; the returned function unsubscribes. */
  subscribe(fn: (action: 'new' | 'del', addr: Addr) => void): () => void
  /** Event loss (netlink overrun): the dump must be read again. */
  onResync(fn: () => void): () => void
}

/**
 * `--leader-election vip --vip ADDR`: leads while ADDR is on one of this node's interfaces. Events that arrive while
 * the dump is read are replayed after it, so an address added or removed meanwhile is not lost either way.
 */
export class VipLeadership extends LeadershipBase {
  readonly mode = 'vip' as const
  /** Interface indexes holding the VIP. */
  private readonly holders = new Set<number>()
  private unsubscribe: Array<() => void> = []
  /** Events buffered during a dump; null when no dump is in progress. */
  private pending: Array<['new' | 'del', Addr]> | null = null
  private onDumpError: (err: Error) => void

  /** `vip` must be canonical (`canonicalAddress`). */
  constructor(readonly vip: string, private readonly source: AddrSource, opts: { now?: () => number; onDumpError?: (err: Error) => void } = {}) {
    super(false, opts.now)
    this.onDumpError = opts.onDumpError ?? (() => undefined)
  }

  async start(): Promise<void> {
    this.unsubscribe.push(this.source.subscribe((action, addr) => this.onAddr(action, addr)))
    this.unsubscribe.push(this.source.onResync(() => { this.redump().catch(this.onDumpError) }))
    await this.redump()
  }

  private async redump(): Promise<void> {
    this.pending = []
    try {
      const addrs = await this.source.dump()
      this.holders.clear()
      for (const a of addrs) if (a.address === this.vip) this.holders.add(a.index)
      for (const [action, addr] of this.pending) this.apply(action, addr)
    } finally {
      this.pending = null
    }
    this.setLeader(this.holders.size > 0)
  }

  private onAddr(action: 'new' | 'del', addr: Addr): void {
    if (addr.address !== this.vip) return
    if (this.pending) {
      this.pending.push([action, addr])
      return
    }
    this.apply(action, addr)
    this.setLeader(this.holders.size > 0)
  }

  private apply(action: 'new' | 'del', addr: Addr): void {
    if (action === 'new') this.holders.add(addr.index)
    else this.holders.delete(addr.index)
  }

  /** keepalived owns the VIP: giving leadership up means failing /healthz, which the daemon does when draining. */
  async release(): Promise<void> {}

  async stop(): Promise<void> {
    for (const u of this.unsubscribe) u()
    this.unsubscribe = []
  }

  override status(): LeadershipStatus {
    return { ...this.baseStatus(), vip: { address: this.vip, present: this.holders.size > 0, interfaces: [...this.holders].sort((a, b) => a - b) } }
  }
}
