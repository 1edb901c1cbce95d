// The ipsets subsystem: the FabEdge hash:net sets of the node's role, both families, over nfnetlink through
// IpsetsPort. Only the FabEdge set names (OWN_SETS) are ever created, changed or destroyed; every pass lists them
// again, so nothing observed is carried from one pass to the next.
import { IPSET, ipsetName, type Family } from '../fabedge.js'
import type { Desired } from '../desired/types.js'
import type { Logger } from '../log.js'
import {
  ipsetAddMany, ipsetCreate, ipsetDelMany, ipsetDestroy, ipsetList, ipsetPlan, NetlinkError, type IpsetInfo, type IpsetResult,
  type NetlinkSocket,
} from '../netlink/index.js'
import type { PassContext, Subsystem, SubsystemPlan } from './subsystem.js'

/** Every set name the agent may own, in both families: nothing else is ever touched. */
export const OWN_SETS: ReadonlyArray<{ name: string; family: Family }> = Object.values(IPSET).flatMap((base) =>
  ([4, 6] as const).map((family) => ({ name: ipsetName(base, family), family })),
)

/** The few set operations the subsystem needs; netlinkIpsetsPort is the real one. */
export interface IpsetsPort {
  /** `ipset list NAME`; undefined when there is no such set. */
  list(name: string): Promise<IpsetInfo | undefined>
  /** `ipset create NAME hash:net family inet|inet6 -exist`. */
  create(name: string, family: Family): Promise<void>
  addMany(name: string, members: readonly string[]): Promise<void>
  delMany(name: string, members: readonly string[]): Promise<void>
  /** `ipset destroy NAME`; a set still referenced by a rule throws (IPSET_ERR_BUSY). */
  destroy(name: string): Promise<IpsetResult>
}

export function netlinkIpsetsPort(sock: NetlinkSocket): IpsetsPort {
  return {
    list: (name) => ipsetList(sock, name),
    create: async (name, family) => {
      await ipsetCreate(sock, name, family)
    },
    addMany: (name, members) => ipsetAddMany(sock, name, members),
    delMany: (name, members) => ipsetDelMany(sock, name, members),
    destroy: (name) => ipsetDestroy(sock, name),
  }
}

type SetOp =
  | { op: 'create'; name: string; family: Family; members: string[] }
  | { op: 'update'; name: string; add: string[]; del: string[] }
  | { op: 'destroy'; name: string }

export interface IpsetsPlan extends SubsystemPlan {
  ops: SetOp[]
  /**
   * Sets of ours that exist with another type or family: never changed (not ours to remove), counted as writes so
   * that apply reports them after writing the other sets.
   */
  wrong: Array<{ name: string; family: Family; live: IpsetInfo }>
}

/** The kernel's answer to destroying a set an iptables rule still uses (checked in a namespace). */
const IN_USE = 'IPSET_ERR_BUSY'

export class IpsetsSubsystem implements Subsystem<IpsetsPlan> {
  readonly name = 'ipsets' as const
  private last: Record<string, number> = {}
  /**
   * Stale sets whose destroy the kernel refused because a rule still used them. The first refusal is expected (the
   * iptables rules that use a set of the old role are rewritten later in the same pass); a second one for the same
   * set is an error. Bounded by OWN_SETS.
   */
  private readonly refused = new Set<string>()
  /**
   * Our sets as last seen (members, by set name): the listing of the last full plan, kept current by our own
   * applied ops. A scoped pass checks the members of its scope against it without listing the sets (10,000
   * members each). The kernel sends no notification for set changes: whatever else changes a set of ours is found
   * by the next full plan (a deep pass). null: list again.
   */
  private mirror: Map<string, Set<string>> | null = null

  constructor(private readonly port: IpsetsPort, private readonly log: Logger) {}

  async plan(desired: Pick<Desired, 'ipsets' | 'index'>, ctx?: PassContext): Promise<IpsetsPlan> {
    if (ctx?.scope && !ctx.deep && this.mirror && desired.index) {
      const scoped = this.planScoped(desired, desired.index, ctx.scope.members)
      if (scoped) return scoped
    }
    const mirror = new Map<string, Set<string>>()
    const ops: SetOp[] = []
    const wrong: IpsetsPlan['wrong'] = []
    const sizes: Record<string, number> = {}
    for (const { name, family } of OWN_SETS) {
      const want = desired.ipsets[name]
      const live = await this.port.list(name)
      if (!live) this.refused.delete(name)
      else if (live.type === 'hash:net' && live.family === family) mirror.set(name, new Set(live.members))
      if (want) {
        sizes[name] = want.members.length
        if (!live) {
          ops.push({ op: 'create', name, family, members: want.members })
        } else if (live.type !== 'hash:net' || live.family !== family) {
          wrong.push({ name, family, live })
        } else {
          const d = ipsetPlan(want.members, live.members)
          if (d.add.length || d.del.length) ops.push({ op: 'update', name, add: d.add, del: d.del })
        }
      } else if (live) {
        ops.push({ op: 'destroy', name })
      }
    }
    this.last = sizes
    this.mirror = mirror
    return this.planOf(ops, wrong)
  }

  /**
   * The plan of a scoped pass: the members of its scope, each checked against the desired state's index and the
   * mirror. null when a set of the scope is not in the mirror (it must be created: a full plan's job).
   */
  private planScoped(desired: Pick<Desired, 'ipsets'>, index: NonNullable<Desired['index']>, members: ReadonlyMap<string, ReadonlySet<string>>): IpsetsPlan | null {
    const ops: SetOp[] = []
    for (const [name, candidates] of members) {
      const live = this.mirror!.get(name)
      if (!live || !desired.ipsets[name]) return null
      const add: string[] = []
      const del: string[] = []
      for (const m of candidates) {
        const want = index.setHas(name, m)
        if (want && !live.has(m)) add.push(m)
        else if (!want && live.has(m)) del.push(m)
      }
      if (add.length || del.length) ops.push({ op: 'update', name, add, del })
    }
    return this.planOf(ops, [])
  }

  private planOf(ops: SetOp[], wrong: IpsetsPlan['wrong']): IpsetsPlan {
    const writes = wrong.length + ops.reduce((n, o) => n + (o.op === 'create' ? 1 + o.members.length : o.op === 'update' ? o.add.length + o.del.length : 1), 0)
    return {
      ops,
      wrong,
      writes,
      describe: () => [
        ...ops.flatMap((o) =>
          o.op === 'create' ? [`ipset create ${o.name} hash:net family inet${o.family === 6 ? '6' : ''} (+${o.members.length} members)`]
            : o.op === 'update' ? [...o.add.map((m) => `ipset add ${o.name} ${m}`), ...o.del.map((m) => `ipset del ${o.name} ${m}`)]
              : [`ipset destroy ${o.name}`]),
        ...wrong.map((w) => `cannot use ${w.name}: it exists as ${w.live.type} IPv${w.live.family}`),
      ],
    }
  }

  /** Applies every set's ops (one failing set does not stop the others), then throws if anything failed. */
  async apply(plan: IpsetsPlan): Promise<number> {
    let done = 0
    const errors: Error[] = []
    for (const o of plan.ops) {
      try {
        if (o.op === 'create') {
          await this.port.create(o.name, o.family)
          this.mirror?.set(o.name, new Set())
          done++
          await this.port.addMany(o.name, o.members)
          for (const m of o.members) this.mirror?.get(o.name)?.add(m)
          done += o.members.length
        } else if (o.op === 'update') {
          if (o.add.length) await this.port.addMany(o.name, o.add)
          for (const m of o.add) this.mirror?.get(o.name)?.add(m)
          done += o.add.length
          if (o.del.length) await this.port.delMany(o.name, o.del)
          for (const m of o.del) this.mirror?.get(o.name)?.delete(m)
          done += o.del.length
        } else if (await this.destroy(o.name)) {
          this.mirror?.delete(o.name)
          done++
        }
      } catch (err) {
        // What a failed batch did is unknown: list the sets again next time.
        this.mirror = null
        errors.push(err as Error)
      }
    }
    for (const w of plan.wrong) {
      errors.push(new NetlinkError('input', 'EWRONGSET', `set ${w.name} exists as ${w.live.type} IPv${w.live.family}; FabEdge needs hash:net IPv${w.family} (destroy it by hand: it is not ours to remove)`))
    }
    if (errors.length === 1) throw errors[0]!
    if (errors.length) throw new AggregateError(errors, errors.map((e) => e.message).join('; '))
    return done
  }

  /** Destroys a stale set; false when a rule still uses it for the first time (see `refused`). */
  private async destroy(name: string): Promise<boolean> {
    try {
      await this.port.destroy(name)
      this.refused.delete(name)
      return true
    } catch (err) {
      if (!(err instanceof NetlinkError && err.kind === 'kernel' && err.code === IN_USE)) throw err
      if (this.refused.has(name)) {
        throw new NetlinkError('kernel', err.code, `stale set ${name} is still used by a rule that is not ours; it cannot be destroyed`, { cause: err })
      }
      this.refused.add(name)
      this.log.info({ op: 'ipset-destroy', set: name, err: err.message }, 'stale set still referenced; retried next pass')
      return false
    }
  }

  /** Destroys every set of ours (`fabtunnel cleanup`, after the rules that use them are gone); returns those gone. */
  async cleanup(): Promise<string[]> {
    this.mirror = null
    const gone: string[] = []
    for (const { name } of OWN_SETS) if ((await this.port.destroy(name)).ok) gone.push(name)
    this.refused.clear()
    return gone
  }

  summary(): Record<string, unknown> {
    if (this.mirror) return { members: Object.fromEntries(Object.keys(this.last).map((name) => [name, this.mirror!.get(name)?.size ?? 0])) }
    return { members: { ...this.last } }
  }
}
