// Builds a FabEdge-shaped network out of namespaces from a TopologySpec (addressing.ts has the plan): a hub
// "underlay" namespace with a bridge, one namespace per node (connectors and edges run a real charon; cloud nodes
// sit behind their connector on a cluster LAN), pod namespaces behind every node, per-node certificates with
// FabEdge DNs, and each gateway's tunnels.yaml in a kubelet-style ConfigMap directory. Running the agents is
// agents.ts's job. Everything is torn down by destroy(), also after a failure or Ctrl-C (teardownOnSignals).
// Recipe and libipsec rules: ../shared/strongswan-netns.md. This is the one harness of the demo, the e2e suite, the
// benchmarks and the daemon namespace tests (test/integration/daemon). The small shape of a daemon test, one
// connector + N edges with real charon and the real agent (dist/cli.js, build first), no second cluster:
//
//   const topo = await Topology.create({ spec: starTopology(2) })   // beijing.connector, beijing.edge1, .edge2
//   const driver = await defaultDriver({ logLevel: 'debug' })        // options: datapath 'xfrm', resyncInterval
//   t.teardown(async () => { await driver.stopAll(); await topo.destroy() })
//   await startAgents(topo, driver)                                  // connector first; resolves when all are ready
//   const e1 = topo.gateway('beijing.edge1'), a1 = driver.agent(e1) // AgentHandle: start/stop/kill/restart/signal,
//   await a1.waitFor('up', async () => ...(await a1.status())...)   //   get(path), status(), waitFor(), logTail()
//   await ping(topo.podOf('beijing.edge1').ns, topo.podOf('beijing.connector').ip)   // matrix.ts
//   await topo.writeConfig(e1.name, 'broken: [')                     // any tunnels.yaml text, kubelet ..data swap
//   await topo.removeEdge('beijing.edge2') / addEdge(...)            // the operator's view, every node rewritten
//   e1.charon.stop() / restart(); e1.ns.run([...]); fabtunnel(e1, ['plan', ...]) (agents.ts)
//
// Each gateway's tunnels.yaml exists from create() on (the operator's view), so an agent can start at any time,
// also before its charon (stop the charon first).
import { readFileSync } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Charon } from './charon.js'
import { ConfigMapDir } from './configmap.js'
import { exec } from './exec.js'
import { Netns, vethPair } from './netns.js'
import { TestPki, type NodeCert } from './pki.js'
import {
  defaultTopology,
  planTopology,
  renderTunnelsYaml,
  tunnelsView,
  type NatPlan,
  type NodePlan,
  type TopologyPlan,
  type TopologySpec,
} from './addressing.js'

/** Every agent listens here inside its own namespace (each namespace has its own loopback). */
export const AGENT_LISTEN = '127.0.0.1:30306'

export interface TopologyOptions {
  spec?: TopologySpec
  /** Edges (full names) that exist as namespaces but are left out of every tunnels.yaml until addEdge(). */
  inactiveEdges?: string[]
  /** charon filelog level. Default 1. */
  charonLogLevel?: number
  /** Every gateway's charon is started again when it exits on its own (CharonOptions.respawn). Default false. */
  charonRespawn?: boolean
  /**
   * Cloud nodes get no static route to the connector: their routes come from `fabtunnel run --role cloud` (a
   * CloudNode, run like a gateway's agent by the DaemonDriver). Default false: a static default route via the
   * connector's LAN address, as every other test expects.
   */
  cloudAgents?: boolean
}

export interface Pod {
  name: string
  ip: string
  ns: Netns
  node: NodePlan
}

export class Gateway {
  constructor(
    readonly plan: NodePlan,
    readonly ns: Netns,
    readonly charon: Charon,
    readonly cert: NodeCert,
    readonly config: ConfigMapDir,
    /** Instance dir of this node: agent log, generated swanctl files. */
    readonly dir: string,
    readonly caPath: string,
    /** The harness's name of the node when it differs from its FabEdge name (HA: two replicas of one connector). */
    readonly nodeName?: string,
  ) {}

  get name(): string {
    return this.nodeName ?? this.plan.fullName
  }

  /** The path the agent is given (`<configmap>/tunnels.yaml`, through the `..data` symlink). */
  get configPath(): string {
    return this.config.path('tunnels.yaml')
  }

  get listen(): string {
    return AGENT_LISTEN
  }
}

/**
 * The sidecar's retransmission settings, read from deploy/image/strongswan/strongswan.conf so the harness runs what
 * ships (a dead peer is declared dead ~5.4 s after its first unanswered request; see the comments there).
 */
export const CHARON_RETRANSMIT = shippedRetransmit()

export function shippedRetransmit(file = new URL('../../deploy/image/strongswan/strongswan.conf', import.meta.url).pathname): string {
  const lines = readFileSync(file, 'utf8').split('\n').map((l) => l.trim()).filter((l) => /^retransmit_[a-z_]+ = [0-9.]+$/.test(l))
  if (lines.length === 0) throw new Error(`${file}: no retransmit_* settings`)
  return lines.join('\n')
}

/**
 * A cloud node running `fabtunnel run --role cloud` (TopologyOptions.cloudAgents): it reads its connector's
 * tunnels.yaml (the `connector-config` ConfigMap every cloud node mounts) and has no charon, certificate or config
 * of its own.
 */
export class CloudNode {
  /** `--connector-address` of the next start: the connector's LAN address unless a test changes it. */
  connectorAddress: string

  constructor(
    readonly plan: NodePlan,
    readonly ns: Netns,
    readonly connector: Gateway,
    /** Instance dir of this node: agent log. */
    readonly dir: string,
  ) {
    this.connectorAddress = connector.plan.lanCidr!.split('/')[0]!
  }

  get name(): string {
    return this.plan.fullName
  }

  /** The connector's tunnels.yaml (same ConfigMap directory, so the connector's updates reach it as they do in a pod). */
  get configPath(): string {
    return this.connector.configPath
  }

  get listen(): string {
    return AGENT_LISTEN
  }
}


export class Topology {
  readonly gateways = new Map<string, Gateway>()
  /** Node namespaces by full name, cloud nodes included. */
  readonly nodes = new Map<string, Netns>()
  readonly pods = new Map<string, Pod>()
  /** Cloud nodes run by an agent (TopologyOptions.cloudAgents), by full name; empty otherwise. */
  readonly cloudNodes = new Map<string, CloudNode>()
  /** NAT router namespaces (TopologySpec.edgeNat) by NatPlan name, with the name of their underlay interface. */
  readonly nats = new Map<string, { ns: Netns; plan: NatPlan; outIf: string }>()
  private readonly activeEdges: Set<string>
  private destroyed = false

  private constructor(
    readonly plan: TopologyPlan,
    readonly dir: string,
    readonly hub: Netns,
    readonly pki: TestPki,
    inactive: ReadonlySet<string>,
    private readonly cloudAgents: boolean,
  ) {
    this.activeEdges = new Set(plan.gateways.filter((g) => g.role === 'edge' && !inactive.has(g.fullName)).map((g) => g.fullName))
  }

  /** Creates the whole topology (without agents). On any failure everything created so far is removed. */
  static async create(opts: TopologyOptions = {}): Promise<Topology> {
    const plan = planTopology(opts.spec ?? defaultTopology())
    const inactive = new Set(opts.inactiveEdges ?? [])
    for (const name of inactive) {
      if (!plan.gateways.some((g) => g.fullName === name && g.role === 'edge')) throw new Error(`inactiveEdges: no edge ${name}`)
    }
    const dir = await mkdtemp(join(tmpdir(), 'ft-topo-'))
    let pki: TestPki
    let hub: Netns
    try {
      pki = await TestPki.create()
      hub = await Netns.create('fthb')
    } catch (e) {
      await rm(dir, { recursive: true, force: true })
      throw e
    }
    const topo = new Topology(plan, dir, hub, pki, inactive, opts.cloudAgents === true)
    hub.onDestroy(async () => {
      await pki.destroy()
      await rm(dir, { recursive: true, force: true })
    })
    try {
      await topo.build(opts.charonLogLevel ?? 1, opts.charonRespawn === true)
    } catch (e) {
      await topo.destroy()
      throw e
    }
    return topo
  }

  private async build(charonLogLevel: number, respawn: boolean): Promise<void> {
    await this.hub.run(['ip', 'link', 'add', 'ul', 'type', 'bridge'])
    await this.hub.run(['ip', 'link', 'set', 'ul', 'up'])
    const all = this.plan.clusters.flatMap((c) => c.nodes)
    await settleAll(
      all.map(async (n) => {
        const ns = await Netns.create(n.role === 'connector' ? 'ftc' : n.role === 'edge' ? 'fte' : 'ftk')
        this.nodes.set(n.fullName, ns)
      }),
    )
    await settleAll(this.plan.nats.map((n) => this.addNat(n)))
    // Connectors first: they own the LAN bridge their cloud nodes plug into.
    await settleAll(all.filter((n) => n.role === 'connector').map((n) => this.wireNode(n)))
    await settleAll(all.filter((n) => n.role !== 'connector').map((n) => this.wireNode(n)))
    await settleAll(all.flatMap((n) => n.pods.map((p) => this.addPod(n, p.name, p.ip))))
    await settleAll(this.plan.gateways.map((g) => this.startGateway(g, charonLogLevel, respawn)))
    if (this.cloudAgents) {
      for (const n of all.filter((x) => x.role === 'cloud')) {
        const connector = this.gateway(this.plan.clusters.find((c) => c.name === n.cluster)!.connector.fullName)
        this.cloudNodes.set(n.fullName, new CloudNode(n, this.nodes.get(n.fullName)!, connector, join(this.dir, n.fullName)))
      }
    }
  }

  private async wireNode(n: NodePlan): Promise<void> {
    const ns = this.nodes.get(n.fullName)!
    const batch: string[] = []
    if (n.nat) {
      const nat = this.nats.get(n.nat.name)!
      const [inNat, inNode] = await vethPair(nat.ns, ns, 'vn')
      await nat.ns.run(['ip', 'link', 'set', inNat, 'master', 'natlan'])
      batch.push(`addr add ${n.ikeIp}/24 dev ${inNode}`, `route add default via ${n.nat.insideIp}`)
    } else if (n.publicIp) {
      const [inHub, inNode] = await vethPair(this.hub, ns, 'vu')
      await this.hub.run(['ip', 'link', 'set', inHub, 'master', 'ul'])
      batch.push(`addr add ${n.publicIp}/16 dev ${inNode}`)
    }
    if (n.role === 'connector' && n.lanCidr) await addBridge(ns, 'lanbr', [n.lanCidr])
    if (n.role === 'cloud') {
      const connector = this.plan.clusters.find((c) => c.name === n.cluster)!.connector
      const cns = this.nodes.get(connector.fullName)!
      const [inConnector, inCloud] = await vethPair(cns, ns, 'vl')
      await cns.run(['ip', 'link', 'set', inConnector, 'master', 'lanbr'])
      batch.push(`addr add ${n.lanCidr!} dev ${inCloud}`)
    }
    await addBridge(ns, 'podbr', n.podbrAddrs)
    // A connector's routes to cloud pods need the cloud end of the LAN up: added in startGateway.
    // With cloud agents, a cloud node's way to the connector is the agent's table 220 and nothing else.
    const agentRouted = n.role === 'cloud' && this.cloudAgents
    if (n.role !== 'connector' && !agentRouted) for (const r of n.routes) batch.push(`route replace ${r.dst} via ${r.via}`)
    if (batch.length) await exec(['ip', '-n', ns.name, '-batch', '-'], { input: batch.join('\n') + '\n' })
    await ns.run(['sysctl', '-q', '-w', 'net.ipv4.ip_forward=1', 'net.ipv4.conf.all.rp_filter=0', 'net.ipv4.conf.default.rp_filter=0'])
  }

  /**
   * A NAT router: underlay address on a veth into the hub, the inside LAN on a bridge, MASQUERADE of the inside LAN
   * out of the underlay interface. Nothing else: no port forwards, so inbound packets pass only as replies to a
   * mapping an inside host opened (what hole punching has to work with).
   */
  private async addNat(plan: NatPlan): Promise<void> {
    const ns = await Netns.create('ftn')
    this.nats.set(plan.name, { ns, plan, outIf: '' })
    const [inHub, outIf] = await vethPair(this.hub, ns, 'vu')
    this.nats.get(plan.name)!.outIf = outIf
    await this.hub.run(['ip', 'link', 'set', inHub, 'master', 'ul'])
    await exec(['ip', '-n', ns.name, '-batch', '-'], { input: `addr add ${plan.publicIp}/16 dev ${outIf}\n` })
    await addBridge(ns, 'natlan', [`${plan.insideIp}/24`])
    await ns.run(['sysctl', '-q', '-w', 'net.ipv4.ip_forward=1'])
    // Like any home or cloud NAT gateway, it drops what arrives unsolicited on its public side. That matters for
    // hole punching, not only for realism: a conntrack entry is confirmed only once its first packet survives the
    // hooks, so a punch packet that reaches this NAT before the inside edge sent its own leaves no trace here. A NAT
    // that accepted it (into INPUT, no listener) would keep that entry, and the edge's own punch packets towards the
    // same peer would then clash with it and leave on another port, never matching the peer NAT's mapping.
    const rules = [
      ['-t', 'nat', '-A', 'POSTROUTING', '-s', plan.insideCidr, '-o', outIf, '-j', 'MASQUERADE'],
      ['-A', 'INPUT', '-i', outIf, '-m', 'conntrack', '--ctstate', 'ESTABLISHED,RELATED', '-j', 'ACCEPT'],
      ['-A', 'INPUT', '-i', outIf, '-j', 'DROP'],
    ]
    for (const r of rules) await ns.run(['iptables', '-w', ...r])
  }

  /** The NAT in front of an edge. */
  natOf(edge: string): { ns: Netns; plan: NatPlan; outIf: string } {
    const plan = this.gateway(edge).plan.nat
    if (!plan) throw new Error(`${edge} is not behind a NAT`)
    return this.nats.get(plan.name)!
  }

  /** Forgets every mapping of an edge's NAT (`conntrack -F`): the next packet out gets a fresh one. */
  async flushNat(edge: string): Promise<void> {
    await this.natOf(edge).ns.run(['conntrack', '-F'])
  }

  private async addPod(node: NodePlan, name: string, ip: string): Promise<void> {
    const host = this.nodes.get(node.fullName)!
    const ns = await Netns.create('ftp')
    this.pods.set(name, { name, ip, ns, node })
    const [inHost, inPod] = await vethPair(host, ns, 'vp')
    await host.run(['ip', 'link', 'set', inHost, 'master', 'podbr'])
    await exec(['ip', '-n', ns.name, '-batch', '-'], {
      input: `addr add ${ip}/24 dev ${inPod}\nroute add default via ${node.podGateway}\n`,
    })
  }

  private async startGateway(n: NodePlan, charonLogLevel: number, respawn: boolean): Promise<void> {
    const ns = this.nodes.get(n.fullName)!
    if (n.role === 'connector' && n.routes.length) {
      await exec(['ip', '-n', ns.name, '-batch', '-'], { input: n.routes.map((r) => `route replace ${r.dst} via ${r.via}\n`).join('') })
    }
    const dir = join(this.dir, n.fullName)
    const [charon, cert] = await Promise.all([Charon.start(ns, { logLevel: charonLogLevel, extraConf: CHARON_RETRANSMIT, respawn }), this.pki.issue(n.cluster, n.name)])
    const config = await ConfigMapDir.create(join(dir, 'config'), { 'tunnels.yaml': this.tunnelsYaml(n) })
    this.gateways.set(n.fullName, new Gateway(n, ns, charon, cert, config, dir, this.pki.caCertPath))
  }

  /** The tunnels.yaml the operator would write for this gateway now (active edges only). */
  tunnelsYaml(n: NodePlan): string {
    return renderTunnelsYaml(tunnelsView(this.plan, n, this.activeEdges))
  }

  gateway(name: string): Gateway {
    const g = this.gateways.get(name)
    if (!g) throw new Error(`no gateway ${name} (have ${[...this.gateways.keys()].join(', ')})`)
    return g
  }

  pod(name: string): Pod {
    const p = this.pods.get(name)
    if (!p) throw new Error(`no pod ${name}`)
    return p
  }

  /** The first pod behind a node (every edge, and the connector of starTopology, has one). */
  podOf(node: string): Pod {
    const p = [...this.pods.values()].find((x) => x.node.fullName === node)
    if (!p) throw new Error(`no pod behind ${node}`)
    return p
  }

  cloudNode(name: string): CloudNode {
    const c = this.cloudNodes.get(name)
    if (!c) throw new Error(`no cloud node ${name} run by an agent (have ${[...this.cloudNodes.keys()].join(', ') || 'none: cloudAgents is off'})`)
    return c
  }

  node(name: string): Netns {
    const ns = this.nodes.get(name)
    if (!ns) throw new Error(`no node ${name}`)
    return ns
  }

  /** Gateways whose agent should run: connectors and the edges present in the configuration. */
  activeGateways(): Gateway[] {
    return [...this.gateways.values()].filter((g) => g.plan.role === 'connector' || this.activeEdges.has(g.name))
  }

  isActive(name: string): boolean {
    return this.gateway(name).plan.role === 'connector' || this.activeEdges.has(name)
  }

  /** Puts an edge into the configuration and rewrites (..data swap) every affected tunnels.yaml. */
  async addEdge(name: string): Promise<Gateway[]> {
    if (this.gateway(name).plan.role !== 'edge') throw new Error(`${name} is not an edge`)
    this.activeEdges.add(name)
    return this.rewriteCluster(this.gateway(name).plan.cluster)
  }

  /** Takes an edge out of the configuration of its cluster and rewrites every affected tunnels.yaml. */
  async removeEdge(name: string): Promise<Gateway[]> {
    if (!this.activeEdges.delete(name)) throw new Error(`${name} is not an active edge`)
    return this.rewriteCluster(this.gateway(name).plan.cluster)
  }

  /** Rewrites the config of every gateway of a cluster (and of the edge set's own files); returns those changed. */
  private async rewriteCluster(cluster: string): Promise<Gateway[]> {
    const touched = [...this.gateways.values()].filter((g) => g.plan.cluster === cluster)
    await Promise.all(touched.map((g) => g.config.update({ 'tunnels.yaml': this.tunnelsYaml(g.plan) })))
    return touched
  }

  /** Writes arbitrary text (e.g. a broken file) as a gateway's tunnels.yaml, with the kubelet swap. */
  async writeConfig(name: string, text: string): Promise<void> {
    await this.gateway(name).config.update({ 'tunnels.yaml': text })
  }

  /** Restores the operator's tunnels.yaml for a gateway. */
  async restoreConfig(name: string): Promise<void> {
    await this.writeConfig(name, this.tunnelsYaml(this.gateway(name).plan))
  }

  /** Removes every namespace, daemon and file of the topology. Idempotent, never throws. */
  async destroy(): Promise<void> {
    if (this.destroyed) return
    this.destroyed = true
    const spaces = [...[...this.pods.values()].map((p) => p.ns), ...this.nodes.values(), ...[...this.nats.values()].map((n) => n.ns)]
    await Promise.all(spaces.map((ns) => ns.destroy()))
    await this.hub.destroy()
  }
}

/** Like Promise.all, but waits for every branch so nothing is still being created when cleanup starts. */
export async function settleAll(work: Array<Promise<unknown>>): Promise<void> {
  const results = await Promise.allSettled(work)
  const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected')
  if (failed) throw failed.reason
}

export async function addBridge(ns: Netns, name: string, addrs: string[]): Promise<void> {
  const lines = [`link add ${name} type bridge`, `link set ${name} up`, ...addrs.map((a) => `addr add ${a} dev ${name}`)]
  await exec(['ip', '-n', ns.name, '-batch', '-'], { input: lines.join('\n') + '\n' })
}
