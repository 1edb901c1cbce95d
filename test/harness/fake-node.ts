// A NodeParts for unit tests of the daemon (run.ts, node.ts's status document, cleanup.ts) that opens nothing:
// the real Agent and the real TunnelsSubsystem over the in-memory charon (charon-fake.ts), and stand-ins for the
// ipsets, iptables and routes subsystems that keep their "kernel" state in memory. No netlink socket, no
// iptables, no VICI socket: the real adapters are proven in test/integration.
import { readCertPem } from '../../src/cert.js'
import { Agent } from '../../src/daemon/agent.js'
import { Metrics } from '../../src/daemon/metrics.js'
import { cniDuty, nodeCloser, type NodeParts } from '../../src/daemon/node.js'
import { CniConflist, type CniFs, type CniOptions } from '../../src/daemon/cni.js'
import type { Desired } from '../../src/desired/types.js'
import type { TunnelConfig } from '../../src/config/schema.js'
import type { Logger } from '../../src/log.js'
import type { IpsetsSubsystem } from '../../src/reconcile/ipsets.js'
import type { IptablesSubsystem } from '../../src/reconcile/iptables.js'
import type { RoutesSubsystem } from '../../src/reconcile/routes.js'
import type { PassContext, Subsystem, SubsystemName, SubsystemPlan } from '../../src/reconcile/subsystem.js'
import { TunnelsSubsystem } from '../../src/reconcile/tunnels-subsystem.js'
import { FakeCharon } from './charon-fake.js'

/** A kernel-side subsystem whose live state is the set of items it applied; also answers summary and cleanup. */
export class FakeKernelSubsystem implements Subsystem {
  readonly live = new Set<string>()
  /** Every plan's context, in order (a deep pass re-observes). */
  readonly contexts: PassContext[] = []
  /** When set, the next plan never resolves (a frozen kernel or charon under a pass). */
  stuck = false
  /** Set once a stuck plan has been entered. */
  enteredStuck = false
  /** Errors the cleanup methods throw, by method. */
  readonly cleanupFailures = new Map<string, Error>()
  readonly cleanupCalls: string[] = []

  constructor(readonly name: SubsystemName, private readonly pick: (d: Desired) => string[], private readonly order: string[] = []) {}

  async plan(d: Desired, ctx: PassContext): Promise<SubsystemPlan & { add: string[]; remove: string[] }> {
    this.contexts.push(ctx)
    if (this.stuck) {
      this.enteredStuck = true
      return new Promise(() => undefined)
    }
    const want = new Set(this.pick(d))
    const add = [...want].filter((x) => !this.live.has(x))
    const remove = [...this.live].filter((x) => !want.has(x))
    return { add, remove, writes: add.length + remove.length, describe: () => [...add.map((a) => `add ${a}`), ...remove.map((a) => `remove ${a}`)] }
  }

  async apply(p: SubsystemPlan & { add: string[]; remove: string[] }): Promise<number> {
    for (const a of p.add) this.live.add(a)
    for (const a of p.remove) this.live.delete(a)
    return p.add.length + p.remove.length
  }

  summary(): Record<string, unknown> {
    return { [this.name]: [...this.live].sort() }
  }

  /** Removes every item (the cleanup of each kind returns what went). */
  private async clean(method: string): Promise<string[]> {
    this.cleanupCalls.push(method)
    this.order.push(`${this.name} ${method}`)
    const err = this.cleanupFailures.get(method)
    if (err) throw err
    const gone = [...this.live].sort()
    this.live.clear()
    return gone
  }

  cleanup(family?: 4 | 6): Promise<string[]> {
    return this.clean(family ? `cleanup ${family}` : 'cleanup')
  }

  cleanupRoutes(): Promise<string[]> {
    return this.clean('cleanupRoutes')
  }

  async cleanupRules(): Promise<number> {
    return (await this.clean('cleanupRules')).length
  }

  /** Route notifications (RoutesSubsystem.observe): the fake keeps no mirror; it records them. */
  readonly observed: string[] = []
  observe(action: 'new' | 'del' | 'lost', route?: { dst: string }): void {
    this.observed.push(route ? `${action} ${route.dst}` : action)
  }

  async gateways(): Promise<{ 4?: string; 6?: string }> {
    return { 4: '192.0.2.1' }
  }
}

export interface FakeNode {
  parts: NodeParts
  charon: FakeCharon
  ipsets: FakeKernelSubsystem
  iptables: FakeKernelSubsystem
  routes: FakeKernelSubsystem
  /** Every reason given to agent.trigger, in order. */
  triggers: string[]
  /** Every cleanup call of the three kernel-side subsystems, in order (`iptables cleanup 4`, `routes cleanupRules`). */
  cleanupOrder: string[]
  /** How many times the connections under the agent were closed. */
  closed: { count: number }
}

export interface FakeNodeOptions {
  config: string
  cert: string
  key: string
  ca: string
  log: Logger
  charon?: FakeCharon
  coalesceMs?: number
  /** Read the certificate file for local.certs, as the real node does (default: no certificate). */
  readCert?: boolean
  /** Whether the node leads (NodeOptions.leader); default always. */
  leader?: () => boolean
  /** Keep a CNI conflist, as the real node does with --cni-conf-path (through `cniFs`, default the real fs). */
  cni?: CniOptions
  cniFs?: CniFs
  /** NodeOptions.afterPass (the datapath probes refresh after every pass). */
  afterPass?: () => void
  /** NodeOptions.onConfig (the daemon's compiler setting). */
  onConfig?: (config: TunnelConfig) => void
}

export function fakeNode(o: FakeNodeOptions): FakeNode {
  const charon = o.charon ?? new FakeCharon()
  const metrics = new Metrics({ processMetrics: false })
  const triggers: string[] = []
  let agent: Agent | undefined
  const tunnels = new TunnelsSubsystem(charon, { credentials: null, log: o.log, trigger: (r) => agent?.trigger(r) })
  const cleanupOrder: string[] = []
  const ipsets = new FakeKernelSubsystem('ipsets', (d) => Object.entries(d.ipsets).flatMap(([n, s]) => s.members.map((m) => `${n}:${m}`)), cleanupOrder)
  const iptables = new FakeKernelSubsystem('iptables', (d) => Object.keys(d.iptables), cleanupOrder)
  const routes = new FakeKernelSubsystem('routes', (d) => Object.keys(d.conns).map((c) => `route-for:${c}`), cleanupOrder)
  const cni = o.cni ? new CniConflist(o.cni, o.cniFs) : null
  agent = new Agent({
    configPath: o.config, datapath: 'libipsec', subsystems: [ipsets, iptables, routes, tunnels],
    ...(cni ? { duties: [cniDuty(cni, o.log)] } : {}),
    ...(o.readCert ? { certPem: () => readCertPem(o.cert) } : {}),
    gateways: () => routes.gateways(), log: o.log, metrics, coalesceMs: o.coalesceMs ?? 1, resyncMs: 0,
    ...(o.leader ? { leader: o.leader } : {}),
    ...(o.afterPass ? { onPass: () => o.afterPass!() } : {}),
    ...(o.onConfig ? { onConfig: o.onConfig } : {}),
  })
  const trigger = agent.trigger.bind(agent)
  agent.trigger = (reason: string) => {
    triggers.push(reason)
    trigger(reason)
  }
  const closed = { count: 0 }
  const parts: NodeParts = {
    agent, metrics, tunnels, role: undefined, connectorAddresses: undefined,
    routes: routes as unknown as RoutesSubsystem,
    ipsets: ipsets as unknown as IpsetsSubsystem,
    iptables: iptables as unknown as IptablesSubsystem,
    // Never used by the daemon's run loop, status or cleanup: every kernel and charon call goes through the subsystems.
    vici: undefined as never, iptablesRunner: undefined as never, routeSock: undefined as never, nfSock: undefined as never,
    paths: { cert: o.cert, key: o.key, ca: o.ca },
    cni,
    close: nodeCloser(agent, o.log, async () => { closed.count++ }),
  }
  return { parts, charon, ipsets, iptables, routes, triggers, cleanupOrder, closed }
}

/** The daemon's logger writing into an array (one parsed object per line). */
export async function memoryLogger(): Promise<{ log: Logger; lines: Array<Record<string, unknown>> }> {
  const { createLogger } = await import('../../src/log.js')
  const lines: Array<Record<string, unknown>> = []
  const log = createLogger('debug', { write: (s: string) => void lines.push(JSON.parse(s) as Record<string, unknown>) })
  return { log, lines }
}

/** Waits (bounded) until `cond` holds; returns whether it did. */
export async function until(cond: () => boolean, ms = 5000): Promise<boolean> {
  const deadline = Date.now() + ms
  while (!cond() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10))
  return cond()
}
