// Kernel subsystems over netlink: routes in table 220 plus the `lookup 220` rule, and the FabEdge ipsets.
// Only our own objects are ever changed: routes carrying RTPROT_FABTUNNEL, and the FabEdge set names.
import { IPSET, ipsetName, ROUTE_TABLE, RTPROT_FABTUNNEL, type Family } from '../fabedge.js'
import type { Desired } from '../desired/types.js'
import type { Logger } from '../log.js'
import {
  defaultGateway, ipsetCreate, ipsetDestroy, ipsetList, ipsetPlan, ipsetAddMany, ipsetDelMany, NetlinkError, routeApply,
  routeList, routePlan, ruleAdd, ruleList, type NetlinkSocket, type RouteOp, type RuleSpec,
} from '../netlink/index.js'
import type { PassContext, Subsystem, SubsystemPlan } from './subsystem.js'

export interface RoutesPlan extends SubsystemPlan {
  ops: RouteOp[]
  rules: RuleSpec[]
}

export class RoutesSubsystem implements Subsystem<RoutesPlan> {
  readonly name = 'routes' as const
  private last = { routes: 0, rules: 0, conflicts: 0 }

  constructor(private readonly sock: NetlinkSocket, private readonly log: Logger) {}

  /** Default gateways of the main table, for xfrm routes (`ip route show default`). */
  async gateways(): Promise<{ 4?: string; 6?: string }> {
    const out: { 4?: string; 6?: string } = {}
    for (const f of [4, 6] as const) {
      const r = await defaultGateway(this.sock, f)
      if (r?.via) out[f] = r.via
    }
    return out
  }

  async plan(desired: Desired, _ctx?: PassContext): Promise<RoutesPlan> {
    const missingGw = desired.routes.filter((r) => r.via === undefined)
    if (missingGw.length) {
      const fams = [...new Set(missingGw.map((r) => `IPv${r.family}`))].join(', ')
      throw new NetlinkError('input', 'ENOGATEWAY', `no default gateway for ${fams}: cannot route ${missingGw.map((r) => r.dst).join(', ')} via table ${ROUTE_TABLE}`)
    }
    const observed = await routeList(this.sock, { table: ROUTE_TABLE })
    const specs = desired.routes.map((r) => ({ dst: r.dst, via: r.via!, table: r.table, protocol: r.protocol }))
    const plan = routePlan(specs, observed, RTPROT_FABTUNNEL)
    for (const c of plan.conflicts) this.log.warn({ op: 'route', dst: c.want.dst, foreignProtocol: c.foreign.protocol }, 'a foreign route holds this destination in table 220; left alone')
    const rules = await ruleList(this.sock)
    const missingRules: RuleSpec[] = desired.rules
      .filter((want) => !rules.some((r) => r.family === want.family && r.priority === want.priority && r.table === want.table && r.src === undefined && r.dst === undefined && r.iif === undefined && r.oif === undefined && r.fwmark === undefined))
      // Tagged with our protocol so cleanup removes only a rule the agent added, never charon's.
      .map((r) => ({ family: r.family, priority: r.priority, table: r.table, protocol: RTPROT_FABTUNNEL }))
    this.last = { routes: observed.filter((r) => r.protocol === RTPROT_FABTUNNEL).length, rules: desired.rules.length - missingRules.length, conflicts: plan.conflicts.length }
    return {
      ops: plan.ops,
      rules: missingRules,
      writes: plan.ops.length + missingRules.length,
      describe: () => [
        ...missingRules.map((r) => `ip -${r.family} rule add from all lookup ${r.table} priority ${r.priority} protocol ${RTPROT_FABTUNNEL}`),
        ...plan.ops.map((o) => `ip route ${o.op} ${o.route.dst}${o.route.via ? ` via ${o.route.via}` : ''} table ${o.route.table ?? ROUTE_TABLE} proto ${RTPROT_FABTUNNEL}`),
      ],
    }
  }

  async apply(plan: RoutesPlan): Promise<number> {
    let done = 0
    for (const r of plan.rules) {
      await ruleAdd(this.sock, r)
      done++
    }
    const results = await routeApply(this.sock, plan.ops)
    const failed = results.map((r, i) => ({ r, op: plan.ops[i]! })).filter(({ r }) => !r.ok && r.reason !== 'missing')
    done += results.length - failed.length
    if (failed.length) {
      const first = failed[0]!
      throw new Error(`${failed.length} route op(s) failed, first: ${first.op.op} ${first.op.route.dst}: ${(first.r as { error: Error }).error.message}`)
    }
    return done
  }

  summary(): Record<string, unknown> {
    return { table: ROUTE_TABLE, protocol: RTPROT_FABTUNNEL, ownRoutes: this.last.routes, rulesPresent: this.last.rules, conflicts: this.last.conflicts }
  }
}

/** Every set name the agent may own, in both families: nothing else is ever touched. */
export const OWN_SETS: ReadonlyArray<{ name: string; family: Family }> = Object.values(IPSET).flatMap((base) =>
  ([4, 6] as const).map((family) => ({ name: ipsetName(base, family), family })),
)

type SetOp =
  | { op: 'create'; name: string; family: Family; members: string[] }
  | { op: 'update'; name: string; add: string[]; del: string[] }
  | { op: 'destroy'; name: string }

export interface IpsetsPlan extends SubsystemPlan {
  ops: SetOp[]
}

export class IpsetsSubsystem implements Subsystem<IpsetsPlan> {
  readonly name = 'ipsets' as const
  private last: Record<string, number> = {}

  constructor(private readonly sock: NetlinkSocket, private readonly log: Logger) {}

  async plan(desired: Desired, _ctx?: PassContext): Promise<IpsetsPlan> {
    const ops: SetOp[] = []
    const sizes: Record<string, number> = {}
    for (const { name, family } of OWN_SETS) {
      const want = desired.ipsets[name]
      const live = await ipsetList(this.sock, name)
      if (want) {
        sizes[name] = want.members.length
        if (!live) {
          ops.push({ op: 'create', name, family, members: want.members })
          continue
        }
        if (live.type !== 'hash:net' || live.family !== family) {
          throw new NetlinkError('input', 'EWRONGSET', `set ${name} exists as ${live.type} IPv${live.family}; FabEdge needs hash:net IPv${family} (destroy it by hand: it is not ours to remove)`)
        }
        const d = ipsetPlan(want.members, live.members)
        if (d.add.length || d.del.length) ops.push({ op: 'update', name, add: d.add, del: d.del })
      } else if (live) {
        // A set of the other role (after a role switch): the iptables rules referencing it are rewritten in the
        // same pass, after this subsystem, so the kernel may still refuse; the follow-up pass removes it then.
        ops.push({ op: 'destroy', name })
      }
    }
    this.last = sizes
    const writes = ops.reduce((n, o) => n + (o.op === 'create' ? 1 + o.members.length : o.op === 'update' ? o.add.length + o.del.length : 1), 0)
    return {
      ops,
      writes,
      describe: () => ops.flatMap((o) =>
        o.op === 'create' ? [`ipset create ${o.name} hash:net family inet${o.family === 6 ? '6' : ''} (+${o.members.length} members)`]
          : o.op === 'update' ? [...o.add.map((m) => `ipset add ${o.name} ${m}`), ...o.del.map((m) => `ipset del ${o.name} ${m}`)]
            : [`ipset destroy ${o.name}`]),
    }
  }

  async apply(plan: IpsetsPlan): Promise<number> {
    let done = 0
    for (const o of plan.ops) {
      if (o.op === 'create') {
        await ipsetCreate(this.sock, o.name, o.family)
        if (o.members.length) await ipsetAddMany(this.sock, o.name, o.members)
        done += 1 + o.members.length
      } else if (o.op === 'update') {
        if (o.add.length) await ipsetAddMany(this.sock, o.name, o.add)
        if (o.del.length) await ipsetDelMany(this.sock, o.name, o.del)
        done += o.add.length + o.del.length
      } else {
        try {
          await ipsetDestroy(this.sock, o.name)
          done++
        } catch (err) {
          if (err instanceof NetlinkError && err.kind === 'kernel') {
            this.log.info({ op: 'ipset-destroy', set: o.name, err: err.message }, 'stale set still referenced; retried next pass')
            continue
          }
          throw err
        }
      }
    }
    return done
  }

  summary(): Record<string, unknown> {
    return { members: { ...this.last } }
  }
}
