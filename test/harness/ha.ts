// The connector-HA shape (issue 14): two connector replicas of one cluster, each with its own charon, agent and
// real keepalived, on one LAN with a cloud node, plus edges on the underlay. Built from the same pieces as
// topology.ts (address plan, namespaces, charon, PKI, ConfigMap dirs); agents run through agents.ts's DaemonDriver.
//
//   hub "ul" bridge (underlay 10.77.0.0/16)                    LAN switch "lan" bridge (10.79.1.0/24)
//     edge1 10.77.1.3   edge2 10.77.1.4                          cloud1 10.79.1.2 (default via the internal VIP)
//     connector-a 10.77.1.201  connector-b 10.77.1.202           connector-a 10.79.1.201  connector-b 10.79.1.202
//     public VIP 10.77.1.1/16 (keepalived)                       internal VIP 10.79.1.1/24 (keepalived)
//
// The VIPs are the plan's connector addresses: every tunnels.yaml names the public VIP as the connector's
// publicAddresses, and the cloud node routes through the internal VIP, so whoever holds the VIPs is "the connector".
// Both replicas carry the same certificate (`beijing.connector`) and the same tunnels.yaml. keepalived (unicast VRRP,
// one sync group for both VIPs, nopreempt) tracks each replica's agent through deploy/keepalived/check-fabtunnel.sh
// (its /healthz, which drains to 503 on SIGTERM):
// a dead agent puts its node in FAULT, and a crashed node (keepalived killed too) stops advertising.
// Every namespace, process and file is removed by destroy(), also after a failure.
import { readFileSync } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { planTopology, renderTunnelsYaml, tunnelsView, type NodePlan, type TopologyPlan } from './addressing.js'
import type { DaemonDriver } from './agents.js'
import { Charon } from './charon.js'
import { ConfigMapDir } from './configmap.js'
import { exec } from './exec.js'
import { Keepalived, type KeepalivedSpec } from './keepalived.js'
import { Netns, vethPair } from './netns.js'
import { TestPki, type NodeCert } from './pki.js'
import { addBridge, CHARON_RETRANSMIT, Gateway, settleAll, type Pod } from './topology.js'

export const HA_CLUSTER = 'beijing'
export const CONNECTOR = `${HA_CLUSTER}.connector`

export interface HaOptions {
  /** Edge nodes (one pod each). Default 2. */
  edges?: number
  /** VRRPv3 advertisement interval, s. Default 0.5 (a dead master is replaced after ~3.4 intervals: ~1.7 s). */
  advertInt?: number
  /** keepalived's agent check: every `interval` s; `fall` failures -> FAULT (VIPs go); `rise` successes back. */
  check?: { interval: number; fall: number; rise: number }
  charonLogLevel?: number
}

// The check as deploy/keepalived/keepalived.conf.example ships it (every 1 s, 2 failures), but rise 1: a revived
// replica need not wait 3 s to become eligible in a test.
export const DEFAULT_HA = { edges: 2, advertInt: 0.5, check: { interval: 1, fall: 2, rise: 1 } }

/** The check script keepalived runs in each connector namespace: the one deploy/keepalived ships (/healthz). */
export const CHECK_SCRIPT = new URL('../../deploy/keepalived/check-fabtunnel.sh', import.meta.url).pathname

export function checkScript(): string {
  return readFileSync(CHECK_SCRIPT, 'utf8')
}

export interface Replica {
  /** Harness name: `beijing.connector-a` / `-b` (the FabEdge name of both is beijing.connector). */
  name: string
  gateway: Gateway
  keepalived: Keepalived
  underlayIf: string
  lanIf: string
  underlayIp: string
  lanIp: string
}

interface ReplicaNet {
  name: string
  ns: Netns
  underlayIf: string
  lanIf: string
  underlayIp: string
  lanIp: string
}

export class HaTopology {
  readonly replicas: Replica[] = []
  readonly edges: Gateway[] = []
  readonly pods = new Map<string, Pod>()
  private readonly spaces: Netns[] = []
  private destroyed = false

  private constructor(
    readonly plan: TopologyPlan,
    readonly opts: typeof DEFAULT_HA & { charonLogLevel: number },
    readonly dir: string,
    readonly hub: Netns,
    readonly lan: Netns,
    readonly pki: TestPki,
  ) {}

  /** Public VIP (underlay; the edges' tunnels.yaml names it). */
  get publicVip(): string {
    return this.plan.clusters[0]!.connector.publicIp!
  }

  /** Internal VIP (LAN; the cloud node's gateway). */
  get internalVip(): string {
    return this.plan.clusters[0]!.connector.lanCidr!.split('/')[0]!
  }

  get cloudPod(): Pod {
    return [...this.pods.values()].find((p) => p.node.role === 'cloud')!
  }

  podOf(node: string): Pod {
    const p = [...this.pods.values()].find((x) => x.node.fullName === node)
    if (!p) throw new Error(`no pod behind ${node}`)
    return p
  }

  replica(name: string): Replica {
    const r = this.replicas.find((x) => x.name === name)
    if (!r) throw new Error(`no replica ${name}`)
    return r
  }

  /** Gateways whose agents run: both replicas and the edges. */
  gateways(): Gateway[] {
    return [...this.replicas.map((r) => r.gateway), ...this.edges]
  }

  /** `fabtunnel run` arguments of the HA shape: the replicas elect their leader by the public VIP. */
  agentArgs(g: Gateway): string[] {
    return this.replicas.some((r) => r.gateway === g) ? ['--leader-election', 'vip', '--vip', this.publicVip] : []
  }

  static async create(options: HaOptions = {}): Promise<HaTopology> {
    const opts = { ...DEFAULT_HA, ...options, check: { ...DEFAULT_HA.check, ...options.check }, charonLogLevel: options.charonLogLevel ?? 1 }
    const nodes = [{ name: 'connector', role: 'connector' as const }, { name: 'cloud1', role: 'cloud' as const }]
    for (let i = 1; i <= opts.edges; i++) nodes.push({ name: `edge${i}`, role: 'edge' as never })
    const plan = planTopology({ clusters: [{ name: HA_CLUSTER, nodes }], edgeMesh: 'none' })
    const dir = await mkdtemp(join(tmpdir(), 'ft-ha-'))
    const made: Netns[] = []
    let topo: HaTopology | null = null
    try {
      const pki = await TestPki.create()
      const hub = await Netns.create('fthb')
      made.push(hub)
      const lan = await Netns.create('ftl')
      made.push(lan)
      topo = new HaTopology(plan, opts, dir, hub, lan, pki)
      topo.spaces.push(...made)
      await topo.build()
      return topo
    } catch (e) {
      if (topo) await topo.destroy()
      else for (const ns of made) await ns.destroy()
      await rm(dir, { recursive: true, force: true })
      throw e
    }
  }

  private async newNs(prefix: string): Promise<Netns> {
    const ns = await Netns.create(prefix)
    this.spaces.push(ns)
    return ns
  }

  private async build(): Promise<void> {
    const c = this.plan.clusters[0]!
    await this.hub.run(['ip', 'link', 'add', 'ul', 'type', 'bridge'])
    await this.hub.run(['ip', 'link', 'set', 'ul', 'up'])
    await this.lan.run(['ip', 'link', 'add', 'lan', 'type', 'bridge'])
    await this.lan.run(['ip', 'link', 'set', 'lan', 'up'])
    const cloud = c.nodes.find((n) => n.role === 'cloud')!
    const edgePlans = c.nodes.filter((n) => n.role === 'edge')
    const [connectorCert, ...edgeCerts] = await Promise.all([this.pki.issue(HA_CLUSTER, 'connector'), ...edgePlans.map((n) => this.pki.issue(HA_CLUSTER, n.name))])
    const nets = await Promise.all(['a', 'b'].map((suffix, i) => this.wireReplica(c.connector, cloud, suffix, i)))
    await this.wireCloud(cloud)
    const edgeNs = await Promise.all(edgePlans.map((n) => this.wireEdge(n)))
    await settleAll(c.nodes.flatMap((n) => n.pods.map((p) => this.addPod(n, p.name, p.ip, n.role === 'cloud' ? this.cloudNs! : edgeNs[edgePlans.indexOf(n)]!))))
    // Charons, configs, keepalived.
    await settleAll([
      ...nets.map(async (net, i) => {
        const other = nets[1 - i]!
        const gateway = await this.gateway(c.connector, net.ns, connectorCert!, net.name)
        const spec: KeepalivedSpec = {
          routerName: net.name.replace(/\./g, '_'),
          // a starts first as master; nopreempt keeps whoever is master there.
          priority: i === 0 ? 101 : 100,
          advertInt: this.opts.advertInt,
          instances: [
            { name: 'public', interface: net.underlayIf, routerId: 51, src: net.underlayIp, peers: [other.underlayIp], vip: `${this.publicVip}/16` },
            { name: 'internal', interface: net.lanIf, routerId: 52, src: net.lanIp, peers: [other.lanIp], vip: c.connector.lanCidr! },
          ],
          check: { script: '', ...this.opts.check },
        }
        const kdir = await mkdtemp(join(this.dir, 'check-'))
        // A copy in a root-only dir: enable_script_security refuses scripts on paths others could modify.
        spec.check.script = join(kdir, 'check-fabtunnel.sh')
        const keepalived = await Keepalived.start(net.ns, spec, checkScript())
        this.replicas[i] = { name: net.name, gateway, keepalived, underlayIf: net.underlayIf, lanIf: net.lanIf, underlayIp: net.underlayIp, lanIp: net.lanIp }
      }),
      ...edgePlans.map(async (n, i) => {
        this.edges[i] = await this.gateway(n, edgeNs[i]!, edgeCerts[i]!)
      }),
    ])
  }

  private cloudNs: Netns | null = null

  /** The replicas' route to the cloud node's pods. */
  private get cloudRoute(): { dst: string; via: string } {
    const cloud = this.plan.clusters[0]!.nodes.find((n) => n.role === 'cloud')!
    return { dst: cloud.podCidr, via: cloud.nodeIp }
  }

  private async wireReplica(n: NodePlan, cloud: NodePlan, suffix: string, i: number): Promise<ReplicaNet> {
    const ns = await this.newNs('ftc')
    const underlayIp = `10.77.1.${201 + i}`
    const lanIp = `10.79.1.${201 + i}`
    const [inHub, underlayIf] = await vethPair(this.hub, ns, 'vu')
    await this.hub.run(['ip', 'link', 'set', inHub, 'master', 'ul'])
    const [inLan, lanIf] = await vethPair(this.lan, ns, 'vl')
    await this.lan.run(['ip', 'link', 'set', inLan, 'master', 'lan'])
    await addBridge(ns, 'podbr', n.podbrAddrs)
    const batch = [`addr add ${underlayIp}/16 dev ${underlayIf}`, `addr add ${lanIp}/24 dev ${lanIf}`, `route replace ${cloud.podCidr} via ${cloud.nodeIp}`]
    await exec(['ip', '-n', ns.name, '-batch', '-'], { input: batch.join('\n') + '\n' })
    await ns.run(['sysctl', '-q', '-w', 'net.ipv4.ip_forward=1', 'net.ipv4.conf.all.rp_filter=0', 'net.ipv4.conf.default.rp_filter=0'])
    return { name: `${n.fullName}-${suffix}`, ns, underlayIf, lanIf, underlayIp, lanIp }
  }

  private async wireCloud(n: NodePlan): Promise<void> {
    const ns = await this.newNs('ftk')
    this.cloudNs = ns
    const [inLan, cloudIf] = await vethPair(this.lan, ns, 'vl')
    await this.lan.run(['ip', 'link', 'set', inLan, 'master', 'lan'])
    await addBridge(ns, 'podbr', n.podbrAddrs)
    const batch = [`addr add ${n.lanCidr!} dev ${cloudIf}`, ...n.routes.map((r) => `route replace ${r.dst} via ${r.via}`)]
    await exec(['ip', '-n', ns.name, '-batch', '-'], { input: batch.join('\n') + '\n' })
    await ns.run(['sysctl', '-q', '-w', 'net.ipv4.ip_forward=1'])
  }

  private async wireEdge(n: NodePlan): Promise<Netns> {
    const ns = await this.newNs('fte')
    const [inHub, inNode] = await vethPair(this.hub, ns, 'vu')
    await this.hub.run(['ip', 'link', 'set', inHub, 'master', 'ul'])
    await addBridge(ns, 'podbr', n.podbrAddrs)
    await exec(['ip', '-n', ns.name, '-batch', '-'], { input: `addr add ${n.publicIp}/16 dev ${inNode}\n` })
    await ns.run(['sysctl', '-q', '-w', 'net.ipv4.ip_forward=1', 'net.ipv4.conf.all.rp_filter=0', 'net.ipv4.conf.default.rp_filter=0'])
    return ns
  }

  private async addPod(node: NodePlan, name: string, ip: string, host: Netns): Promise<void> {
    const ns = await this.newNs('ftp')
    this.pods.set(name, { name, ip, ns, node })
    const [inHost, inPod] = await vethPair(host, ns, 'vp')
    await host.run(['ip', 'link', 'set', inHost, 'master', 'podbr'])
    await exec(['ip', '-n', ns.name, '-batch', '-'], { input: `addr add ${ip}/24 dev ${inPod}\nroute add default via ${node.podGateway}\n` })
  }

  private async gateway(n: NodePlan, ns: Netns, cert: NodeCert, nodeName?: string): Promise<Gateway> {
    const dir = join(this.dir, nodeName ?? n.fullName)
    const charon = await Charon.start(ns, { logLevel: this.opts.charonLogLevel, extraConf: CHARON_RETRANSMIT })
    const config = await ConfigMapDir.create(join(dir, 'config'), { 'tunnels.yaml': renderTunnelsYaml(tunnelsView(this.plan, n)) })
    return new Gateway(n, ns, charon, cert, config, dir, this.pki.caCertPath, nodeName)
  }

  /** Replicas holding the public (or internal) VIP on a link that is up (a crashed node's downed links hold nothing). */
  async vipHolders(which: 'public' | 'internal' = 'public'): Promise<string[]> {
    const vip = which === 'public' ? this.publicVip : this.internalVip
    const out: string[] = []
    for (const r of this.replicas) {
      const res = await r.gateway.ns.capture(['ip', '-o', '-4', 'addr', 'show', 'up'], { timeoutMs: 5_000 })
      if (res.stdout.includes(` ${vip}/`)) out.push(r.name)
    }
    return out
  }

  /** Table-220 routes of a replica (`ip route show table 220`). */
  async tunnelRoutes(r: Replica): Promise<string[]> {
    const res = await r.gateway.ns.capture(['ip', 'route', 'show', 'table', '220'], { timeoutMs: 5_000 })
    return res.stdout.split('\n').filter((l) => l.trim() !== '')
  }

  /**
   * A node crash: its agent, charon and keepalived killed with SIGKILL and its links downed, all at once (nothing
   * gets to say goodbye: no IKE DELETE, no VRRP priority-0 advert). Resolves with performance.now() of the fault.
   */
  async crash(r: Replica, driver: DaemonDriver): Promise<number> {
    const t0 = performance.now()
    const charonPid = r.gateway.charon.pid
    await Promise.all([
      driver.kill(r.gateway),
      r.keepalived.kill(),
      (async () => {
        if (charonPid !== undefined) {
          try {
            process.kill(charonPid, 'SIGKILL')
          } catch {
            // already gone
          }
        }
      })(),
      r.gateway.ns.run(['ip', 'link', 'set', r.underlayIf, 'down']),
      r.gateway.ns.run(['ip', 'link', 'set', r.lanIf, 'down']),
    ])
    return t0
  }

  /**
   * Brings a crashed replica back as a rebooted node: the VIPs its killed keepalived left on the links are gone (as
   * after a reboot), links up, charon, keepalived and its agent started again (it rejoins as standby: nopreempt).
   */
  async revive(r: Replica, driver: DaemonDriver): Promise<void> {
    await r.gateway.ns.capture(['ip', 'addr', 'del', `${this.publicVip}/16`, 'dev', r.underlayIf])
    await r.gateway.ns.capture(['ip', 'addr', 'del', this.plan.clusters[0]!.connector.lanCidr!, 'dev', r.lanIf])
    await r.gateway.ns.run(['ip', 'link', 'set', r.underlayIf, 'up'])
    await r.gateway.ns.run(['ip', 'link', 'set', r.lanIf, 'up'])
    // Downing the LAN link flushed the route to the cloud pods; the rebooted node's network setup adds it again.
    await r.gateway.ns.run(['ip', 'route', 'replace', this.cloudRoute.dst, 'via', this.cloudRoute.via])
    await r.gateway.charon.restart()
    await r.keepalived.restart()
    await driver.start(r.gateway)
  }

  /** Blocks (or unblocks) VRRP (IP protocol 112) into both replicas: each sees no adverts from the other. */
  async blockVrrp(block: boolean): Promise<void> {
    await Promise.all(this.replicas.map((r) => r.gateway.ns.run(['iptables', '-w', block ? '-I' : '-D', 'INPUT', '-p', '112', '-j', 'DROP'])))
  }

  async destroy(): Promise<void> {
    if (this.destroyed) return
    this.destroyed = true
    // Pods, then nodes, then the switches (reverse creation), each with its processes.
    for (const ns of [...this.spaces].reverse()) await ns.destroy()
    await this.pki.destroy()
    await rm(this.dir, { recursive: true, force: true })
  }
}
