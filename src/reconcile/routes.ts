// The routes subsystem: FabEdge's routes in table 220 (xfrm datapath: `<peer subnet> via <default gateway>`) and
// the `from all lookup 220` rule of each family, over netlink through RoutesPort. Only our own objects are ever
// changed: routes and rules carrying RTPROT_FABTUNNEL; a foreign route holding a wanted slot is reported, not
// touched. Desired routes carry the gateway the agent read for their family when it computed the desired state.
import { ROUTE_TABLE, RTPROT_FABEDGE_GO, RTPROT_FABTUNNEL, type Family } from '../fabedge.js'
import type { Desired, DesiredRoute } from '../desired/types.js'
import type { Logger } from '../log.js'
import {
  defaultGateway, NetlinkError, routeApply, routeList, routePlan, ruleAdd, ruleDel, ruleList, type NetlinkSocket, type Route,
  type RouteOp, type RouteResult, type Rule, type RuleResult, type RuleSpec,
} from '../netlink/index.js'
import type { PassContext, Subsystem, SubsystemPlan } from './subsystem.js'

/** The few kernel operations the subsystem needs; netlinkRoutesPort is the real one. */
export interface RoutesPort {
  /** Every route of table 220, whatever its protocol (`ip route show table 220`). */
  listRoutes(): Promise<Route[]>
  /** `ip rule show`, both families. */
  listRules(): Promise<Rule[]>
  /** One batch of route replaces and deletes; per-op outcomes in op order. */
  applyRoutes(ops: readonly RouteOp[]): Promise<RouteResult[]>
  addRule(rule: RuleSpec): Promise<RuleResult>
  delRule(rule: RuleSpec): Promise<RuleResult>
  /** The gateway of the main table's default route of a family, if it has one with a gateway. */
  defaultGateway(family: Family): Promise<string | undefined>
}

export function netlinkRoutesPort(sock: NetlinkSocket): RoutesPort {
  return {
    listRoutes: () => routeList(sock, { table: ROUTE_TABLE }),
    listRules: () => ruleList(sock),
    applyRoutes: (ops) => routeApply(sock, ops),
    addRule: (rule) => ruleAdd(sock, rule),
    delRule: (rule) => ruleDel(sock, rule),
    defaultGateway: async (family) => (await defaultGateway(sock, family))?.via,
  }
}

export interface RoutesPlan extends SubsystemPlan {
  ops: RouteOp[]
  rules: RuleSpec[]
  /**
   * Desired routes of a family without a default gateway. They cannot be written; they count as writes so that
   * apply runs and reports them as an error naming the family (the pass is not converged). Our routes already
   * there for their destinations are left as they are.
   */
  unroutable: DesiredRoute[]
  /** Next hops that are `--connector-address`es (cloud role): a route the kernel refuses for one names it. */
  connectorVias: ReadonlySet<string>
}

function missingVia(r: Pick<DesiredRoute, 'family' | 'viaFrom'>): string {
  return r.viaFrom === 'connector-address' ? `no IPv${r.family} --connector-address given` : `no IPv${r.family} default gateway in the main table`
}

/** What the kernel answers for a gateway it cannot reach on-link (ENETUNREACH/EHOSTUNREACH, or EINVAL "Nexthop has invalid gateway"). */
function isUnreachableGateway(err: NetlinkError): boolean {
  return err.code === 'ENETUNREACH' || err.code === 'EHOSTUNREACH' || (err.code === 'EINVAL' && /gateway/i.test(err.extAck ?? ''))
}

const listed = (dsts: string[]): string => dsts.length > 10 ? `${dsts.slice(0, 10).join(', ')} and ${dsts.length - 10} more` : dsts.join(', ')

/** The kernel's key of a route in one table: destination and metric. */
const metricOf = (r: { metric?: number }): number => r.metric ?? 0

/**
 * Table 220 by destination: its route, or its routes of different metrics (a route's slot is its destination and
 * metric). A destination's single route is held as it is, not in a map of its own (~190 B less per route).
 */
export class RouteMirror {
  private readonly byDst = new Map<string, Route | Route[]>()

  /** The routes of a destination, in the order they were first set. */
  routes(dst: string): readonly Route[] {
    const v = this.byDst.get(dst)
    return v === undefined ? [] : Array.isArray(v) ? v : [v]
  }

  /** Every route. */
  *all(): IterableIterator<Route> {
    for (const v of this.byDst.values()) {
      if (Array.isArray(v)) yield* v
      else yield v
    }
  }

  /** Sets the route of its slot (replacing the one there). */
  set(route: Route): void {
    const v = this.byDst.get(route.dst)
    const m = metricOf(route)
    if (v === undefined || (!Array.isArray(v) && metricOf(v) === m)) this.byDst.set(route.dst, route)
    else if (!Array.isArray(v)) this.byDst.set(route.dst, [v, route])
    else {
      const i = v.findIndex((x) => metricOf(x) === m)
      if (i === -1) v.push(route)
      else v[i] = route
    }
  }

  /** Removes the route of a slot, if there. */
  delete(route: { dst: string; metric?: number }): void {
    const v = this.byDst.get(route.dst)
    if (v === undefined) return
    const m = metricOf(route)
    if (!Array.isArray(v)) {
      if (metricOf(v) === m) this.byDst.delete(route.dst)
      return
    }
    const rest = v.filter((x) => metricOf(x) !== m)
    if (rest.length === 0) this.byDst.delete(route.dst)
    else this.byDst.set(route.dst, rest.length === 1 ? rest[0]! : rest)
  }
}

export class RoutesSubsystem implements Subsystem<RoutesPlan> {
  readonly name = 'routes' as const
  private last = { routes: 0, rules: 0, conflicts: 0, unroutable: 0 }
  /**
   * Table 220 as last seen, by destination (every protocol): the full listing of the last full plan, kept current
   * by our own applied ops and by the kernel's route notifications (observe()). A scoped pass plans its
   * destinations against it without listing the table (10,000 routes). null: list again. Whatever changes
   * table 220 without a notification reaching us is found by the next full plan (a deep pass).
   */
  private mirror: RouteMirror | null = null

  constructor(private readonly port: RoutesPort, private readonly log: Logger) {}

  /** Default gateways of the main table, for xfrm routes (`ip route show default`). */
  async gateways(): Promise<{ 4?: string; 6?: string }> {
    const out: { 4?: string; 6?: string } = {}
    for (const f of [4, 6] as const) {
      // A family whose default route cannot be read is a family without a gateway: its routes are reported as not
      // programmed (ENOGATEWAY) and the other family still converges.
      const via = await this.port.defaultGateway(f).catch((err: unknown) => {
        this.log.warn({ op: 'default-gateway', family: f, err: (err as Error).message }, 'cannot read the default route')
        return undefined
      })
      if (via) out[f] = via
    }
    return out
  }

  /**
   * A route notification of the kernel (the daemon's netlink monitor): keeps the table-220 mirror current. Routes
   * of other tables are ignored. `lost` (the monitor overran its buffer): the mirror is dropped.
   */
  observe(action: 'new' | 'del' | 'lost', route?: Route): void {
    if (action === 'lost' || !route) {
      this.mirror = null
      return
    }
    if (route.table !== ROUTE_TABLE || !this.mirror) return
    if (action === 'new') this.mirror.set(route)
    else this.mirror.delete(route)
  }

  async plan(desired: Pick<Desired, 'routes' | 'rules' | 'index'>, ctx?: PassContext): Promise<RoutesPlan> {
    if (ctx?.scope && !ctx.deep && this.mirror && desired.index) return this.planScoped(desired.index, ctx.scope.dsts)
    const unroutable = desired.routes.filter((r) => r.via === undefined)
    const held = new Set(unroutable.map((r) => r.dst))
    const observed = await this.port.listRoutes()
    const mirror = new RouteMirror()
    for (const r of observed) mirror.set(r)
    this.mirror = mirror
    const specs = desired.routes.filter((r) => r.via !== undefined).map((r) => ({ dst: r.dst, via: r.via!, table: r.table, protocol: r.protocol }))
    const plan = routePlan(specs, observed.filter((r) => !(r.protocol === RTPROT_FABTUNNEL && held.has(r.dst))), RTPROT_FABTUNNEL, { adopt: [RTPROT_FABEDGE_GO] })
    for (const a of plan.adopted) this.log.info({ op: 'route', dst: a.want.dst, previousProtocol: a.previous.protocol }, "taking over FabEdge's route for this destination in table 220")
    for (const c of plan.conflicts) this.log.warn({ op: 'route', dst: c.want.dst, foreignProtocol: c.foreign.protocol }, 'a foreign route holds this destination in table 220; left alone')
    const rules = await this.port.listRules()
    const missingRules: RuleSpec[] = desired.rules
      .filter((want) => !rules.some((r) => r.family === want.family && r.priority === want.priority && r.table === want.table && r.src === undefined && r.dst === undefined && r.iif === undefined && r.oif === undefined && r.fwmark === undefined))
      // Tagged with our protocol so cleanup removes only a rule the agent added, never charon's.
      .map((r) => ({ family: r.family, priority: r.priority, table: r.table, protocol: RTPROT_FABTUNNEL }))
    this.last = {
      routes: observed.filter((r) => r.protocol === RTPROT_FABTUNNEL).length,
      rules: desired.rules.length - missingRules.length,
      conflicts: plan.conflicts.length,
      unroutable: unroutable.length,
    }
    const connectorVias = new Set(desired.routes.filter((r) => r.viaFrom === 'connector-address' && r.via !== undefined).map((r) => r.via!))
    return {
      ops: plan.ops,
      rules: missingRules,
      unroutable,
      connectorVias,
      writes: plan.ops.length + missingRules.length + unroutable.length,
      describe: () => [
        ...missingRules.map((r) => `ip -${r.family} rule add from all lookup ${r.table} priority ${r.priority} protocol ${RTPROT_FABTUNNEL}`),
        ...plan.ops.map((o) => `ip route ${o.op} ${o.route.dst}${o.route.via ? ` via ${o.route.via}` : ''} table ${o.route.table ?? ROUTE_TABLE} proto ${RTPROT_FABTUNNEL}`),
        ...unroutable.map((r) => `cannot route ${r.dst} table ${r.table}: ${missingVia(r)}`),
      ],
    }
  }

  /**
   * The plan of a scoped pass: the destinations of the scope alone, against the mirror. The rules are not looked
   * at (a rule change is a trigger that never scopes a pass).
   */
  private planScoped(index: NonNullable<Desired['index']>, dsts: ReadonlySet<string>): RoutesPlan {
    const wanted: DesiredRoute[] = []
    const observed: Route[] = []
    for (const dst of dsts) {
      const r = index.route(dst)
      if (r) wanted.push(r)
      for (const o of this.mirror!.routes(dst)) observed.push(o)
    }
    const unroutable = wanted.filter((r) => r.via === undefined)
    const held = new Set(unroutable.map((r) => r.dst))
    const specs = wanted.filter((r) => r.via !== undefined).map((r) => ({ dst: r.dst, via: r.via!, table: r.table, protocol: r.protocol }))
    const plan = routePlan(specs, observed.filter((r) => !(r.protocol === RTPROT_FABTUNNEL && held.has(r.dst))), RTPROT_FABTUNNEL, { adopt: [RTPROT_FABEDGE_GO] })
    for (const a of plan.adopted) this.log.info({ op: 'route', dst: a.want.dst, previousProtocol: a.previous.protocol }, "taking over FabEdge's route for this destination in table 220")
    for (const c of plan.conflicts) this.log.warn({ op: 'route', dst: c.want.dst, foreignProtocol: c.foreign.protocol }, 'a foreign route holds this destination in table 220; left alone')
    const connectorVias = new Set(wanted.filter((r) => r.viaFrom === 'connector-address' && r.via !== undefined).map((r) => r.via!))
    return {
      ops: plan.ops,
      rules: [],
      unroutable,
      connectorVias,
      writes: plan.ops.length + unroutable.length,
      describe: () => [
        ...plan.ops.map((o) => `ip route ${o.op} ${o.route.dst}${o.route.via ? ` via ${o.route.via}` : ''} table ${o.route.table ?? ROUTE_TABLE} proto ${RTPROT_FABTUNNEL}`),
        ...unroutable.map((r) => `cannot route ${r.dst} table ${r.table}: ${missingVia(r)}`),
      ],
    }
  }

  /** Records an applied route op in the mirror (the kernel's notification of it may come later). */
  private mirrorApplied(op: RouteOp): void {
    if (!this.mirror) return
    const dst = op.route.dst
    if (op.op === 'del') {
      this.mirror.delete(op.route)
      return
    }
    const family: 4 | 6 = dst.includes(':') ? 6 : 4
    this.mirror.set({ family, dst, ...(op.route.via !== undefined ? { via: op.route.via } : {}), table: op.route.table ?? ROUTE_TABLE, protocol: RTPROT_FABTUNNEL, ...(op.route.metric !== undefined ? { metric: op.route.metric } : {}), scope: 0, type: 1 })
  }

  /** Adds the rules and applies the route batch, then throws if anything failed or could not be routed. */
  async apply(plan: RoutesPlan): Promise<number> {
    let done = 0
    const errors: Error[] = []
    for (const r of plan.rules) {
      try {
        await this.port.addRule(r)
        done++
      } catch (err) {
        errors.push(err as Error)
      }
    }
    if (plan.ops.length) {
      try {
        const results = await this.port.applyRoutes(plan.ops)
        results.forEach((r, i) => {
          if (r.ok || (!r.ok && r.reason === 'missing')) this.mirrorApplied(plan.ops[i]!)
        })
        let failed = results.map((r, i) => ({ r, op: plan.ops[i]! })).filter(({ r }) => !r.ok && r.reason !== 'missing')
        done += results.filter((r) => r.ok).length
        // A cloud node's next hop is the connector: when the kernel cannot reach it on-link, say so once per family
        // (every route of that family shares the address); the other family's routes are written all the same.
        for (const family of [4, 6] as const) {
          const unreachable = failed.filter(({ r, op }) => op.op === 'replace' && op.route.via !== undefined && plan.connectorVias.has(op.route.via) && !r.ok && isUnreachableGateway(r.error) && (op.route.via.includes(':') ? 6 : 4) === family)
          if (!unreachable.length) continue
          const first = unreachable[0]!
          const cause = (first.r as { error: NetlinkError }).error
          errors.push(new NetlinkError('kernel', 'ECONNECTORUNREACHABLE', `IPv${family} --connector-address ${first.op.route.via} is not reachable on-link (${cause.code}${cause.extAck ? `: ${cause.extAck}` : ''}): ${unreachable.length} route(s) in table ${ROUTE_TABLE} not programmed: ${listed(unreachable.map((u) => u.op.route.dst))}`, { ...(cause.errno !== undefined ? { errno: cause.errno } : {}), cause }))
          failed = failed.filter((f) => !unreachable.includes(f))
        }
        if (failed.length) {
          const first = failed[0]!
          errors.push(new Error(`${failed.length} route op(s) failed, first: ${first.op.op} ${first.op.route.dst}: ${(first.r as { error: Error }).error.message}`))
        }
      } catch (err) {
        // What the batch did is unknown: list the table again next time.
        this.mirror = null
        errors.push(err as Error)
      }
    }
    for (const family of [4, 6] as const) {
      const held = plan.unroutable.filter((r) => r.family === family)
      if (!held.length) continue
      const fromConnector = held[0]!.viaFrom === 'connector-address'
      errors.push(new NetlinkError('input', fromConnector ? 'ENOCONNECTOR' : 'ENOGATEWAY', `${missingVia(held[0]!)}: ${held.length} route(s) in table ${ROUTE_TABLE} not programmed: ${listed(held.map((r) => r.dst))}`))
    }
    if (errors.length === 1) throw errors[0]!
    if (errors.length) throw new AggregateError(errors, errors.map((e) => e.message).join('; '))
    return done
  }

  /** Deletes every route of ours in table 220 (`fabtunnel cleanup`); returns the destinations deleted. */
  async cleanupRoutes(): Promise<string[]> {
    this.mirror = null
    const ours = (await this.port.listRoutes()).filter((r) => r.protocol === RTPROT_FABTUNNEL)
    const results = await this.port.applyRoutes(ours.map((r) => ({
      op: 'del' as const,
      route: { dst: r.dst, table: r.table, protocol: r.protocol, ...(r.metric !== undefined ? { metric: r.metric } : {}) },
    })))
    return ours.filter((_, i) => results[i]?.ok).map((r) => r.dst)
  }

  /** Deletes every rule carrying our protocol (`fabtunnel cleanup`); returns how many went. */
  async cleanupRules(): Promise<number> {
    let n = 0
    for (const r of await this.port.listRules()) {
      if (r.protocol !== RTPROT_FABTUNNEL) continue
      if ((await this.port.delRule({ family: r.family, priority: r.priority, table: r.table, protocol: RTPROT_FABTUNNEL })).ok) n++
    }
    return n
  }

  summary(): Record<string, unknown> {
    let own = this.last.routes
    if (this.mirror) {
      own = 0
      for (const r of this.mirror.all()) if (r.protocol === RTPROT_FABTUNNEL) own++
    }
    return {
      table: ROUTE_TABLE, protocol: RTPROT_FABTUNNEL, ownRoutes: own, rulesPresent: this.last.rules, conflicts: this.last.conflicts,
      unroutable: this.last.unroutable,
    }
  }
}
