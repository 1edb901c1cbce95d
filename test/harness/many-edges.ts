// Many edges to one connector without a namespace and a charon per edge: one connector namespace (real charon with
// the shipped scale settings, the real agent run by the DaemonDriver) and ONE edge namespace whose single charon
// carries N edge identities: N certificates from TestPki, N connections loaded over VICI exactly as a FabEdge edge's
// agent would load its connection to the connector (desiredState of that edge's tunnels.yaml; only the connection
// name is the edge's own, since all N share one charon), each with its own IKE id, pod CIDR and node IP. The
// connector's tunnels.yaml lists the N edges. Issue 13 "charon at scale"; figures in docs/scale.md.
//
//   const m = await ManyEdges.create({ edges: 200 })          // addressing 'shared' (one source IP, as N edges
//   const driver = await defaultDriver()                      //   behind one NAT) or 'distinct' (one IP each)
//   t.teardown(async () => { await driver.stopAll(); await m.destroy() })
//   await driver.start(m.connector); await driver.waitReady(m.connector, 30_000)
//   await m.bringUp(60_000)                                   // load + initiate on the edge charon until N are up
//   const s = await m.connectorSas()                          // counted on the connector's charon (VICI list-sas)
//   await m.ping(0)                                           // edge 0's pod address -> the connector's pod
//
// Addressing (edge i = 0..N-1; the connector is node 1 of cluster 1 of addressing.ts, plus one pod):
//   connector  IKE 10.77.1.1/16, node IP 10.78.1.1, pods 10.81.1.0/24 (pod 10.81.1.10), services 10.91.0.0/16
//   edge i     IKE 10.77.2.1 (shared) or 10.77.(2 + i/250).(1 + i%250) (distinct); node IP 10.78.(2 + i/250).(1 +
//              i%250)/32; pod CIDR 10.(100 + i/256).(i%256).0/24, its .1 on the edge namespace's port-less `podbr`
//              (libipsec installs a CHILD_SA only when the namespace owns an address inside its local_ts)
// Userspace ESP makes every packet cost a trip through charon: data flow is proven on samples, not all N.
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { parseConfig } from '../../src/config/load.js'
import { desiredState } from '../../src/desired/index.js'
import type { ViciSection } from '../../src/desired/types.js'
import { Vici, type IkeSa } from '../../src/vici/index.js'
import { desiredOf, loadCredentials } from './agents.js'
import { connectorEndpoint, planTopology, renderTunnelsYaml, starTopology, type EndpointView } from './addressing.js'
import { Charon } from './charon.js'
import { ConfigMapDir } from './configmap.js'
import { exec } from './exec.js'
import { ping } from './matrix.js'
import { Netns, vethPair } from './netns.js'
import { TestPki, type NodeCert } from './pki.js'
import { parseStrongswanConf, renderCharonSettings, SCALE_KEYS } from './strongswan-conf.js'
import { addBridge, CHARON_RETRANSMIT, Gateway, settleAll } from './topology.js'

export const MAX_MANY_EDGES = 2_000
const CLUSTER = 'beijing'

/** The libipsec sidecar config: the datapath these namespaces run. */
const SHIPPED_LIBIPSEC = new URL('../../deploy/image/strongswan/strongswan-libipsec.conf', import.meta.url).pathname

/** The shipped scale settings (SCALE_KEYS) as lines for the harness's `charon { }`. */
export async function shippedScaleConf(file = SHIPPED_LIBIPSEC): Promise<string> {
  return renderCharonSettings(parseStrongswanConf(await readFile(file, 'utf8'), file), SCALE_KEYS)
}

export interface ManyEdgesOptions {
  edges: number
  /**
   * `shared` (default): every identity dials from one address, like edges behind one NAT address (the case the
   * per-IP cookie and block thresholds decide); `distinct`: one address per identity.
   */
  addressing?: 'shared' | 'distinct'
  /** The connector charon's settings: `shipped` (default; scale + retransmit from the sidecar image) or `default` (strongSwan's own). */
  connectorCharon?: 'shipped' | 'default'
  charonLogLevel?: number
}

export interface EdgeIdentity {
  index: number
  /** `beijing.edge<i+1>`: FabEdge endpoint name, and the connection name on both charons. */
  name: string
  id: string
  address: string
  nodeIp: string
  podCidr: string
  /** The edge's address inside its pod CIDR (.1): the source of its sample pings. */
  podIp: string
  cert: NodeCert
}

export interface ConnectorSas {
  /** ESTABLISHED IKE_SAs of edge connections. */
  ike: number
  /** INSTALLED CHILD_SAs in them. */
  children: number
  /** Distinct remote ids of ESTABLISHED IKE_SAs whose 3 children are all INSTALLED. */
  fullyUp: Set<string>
}

export class ManyEdges {
  private destroyed = false

  private constructor(
    readonly dir: string,
    readonly pki: TestPki,
    readonly connector: Gateway,
    /** A pod behind the connector (10.81.1.10): the far end of the sample pings. */
    readonly connectorPod: { ns: Netns; ip: string },
    readonly edgeNs: Netns,
    readonly edgeCharon: Charon,
    readonly edges: EdgeIdentity[],
  ) {}

  static async create(opts: ManyEdgesOptions): Promise<ManyEdges> {
    const n = opts.edges
    if (!Number.isInteger(n) || n < 1 || n > MAX_MANY_EDGES) throw new Error(`edges must be 1..${MAX_MANY_EDGES}`)
    const shared = (opts.addressing ?? 'shared') === 'shared'
    const plan = planTopology(starTopology(0, CLUSTER)).clusters[0]!
    const cplan = plan.connector
    const dir = await mkdtemp(join(tmpdir(), 'ft-many-'))
    const spaces: Netns[] = []
    let pki: TestPki | null = null
    try {
      pki = await TestPki.create()
      // One at a time, so a failure leaves nothing behind that `spaces` does not know of.
      for (const prefix of ['ftmc', 'ftme', 'ftmp']) spaces.push(await Netns.create(prefix))
      const [cns, ens, pns] = spaces
      const edges = await issueAll(pki, n, shared)
      // Underlay: one veth between the two gateways.
      const [inC, inE] = await vethPair(cns!, ens!, 'vm')
      await cns!.run(['ip', 'addr', 'add', `${cplan.publicIp}/16`, 'dev', inC])
      const edgeAddrs = [...new Set(edges.map((e) => e.address))]
      await exec(['ip', '-n', ens!.name, '-batch', '-'], { input: edgeAddrs.map((a) => `addr add ${a}/16 dev ${inE}\n`).join('') })
      await addBridge(cns!, 'podbr', cplan.podbrAddrs)
      await addBridge(ens!, 'podbr', edges.flatMap((e) => [`${e.podIp}/24`, `${e.nodeIp}/32`]))
      const pod = cplan.pods[0]!
      const [inHost, inPod] = await vethPair(cns!, pns!, 'vp')
      await cns!.run(['ip', 'link', 'set', inHost, 'master', 'podbr'])
      await exec(['ip', '-n', pns!.name, '-batch', '-'], { input: `addr add ${pod.ip}/24 dev ${inPod}\nroute add default via ${cplan.podGateway}\n` })
      for (const ns of [cns!, ens!]) {
        await ns.run(['sysctl', '-q', '-w', 'net.ipv4.ip_forward=1', 'net.ipv4.conf.all.rp_filter=0', 'net.ipv4.conf.default.rp_filter=0'])
      }
      const scale = await shippedScaleConf()
      const level = opts.charonLogLevel ?? 1
      const connectorConf = (opts.connectorCharon ?? 'shipped') === 'shipped' ? `${CHARON_RETRANSMIT}\n${scale}` : ''
      const [ccharon, echaron, ccert] = await Promise.all([
        Charon.start(cns!, { logLevel: level, extraConf: connectorConf }),
        // The edge side always runs the shipped image's settings: its N initiators must not be the bottleneck.
        Charon.start(ens!, { logLevel: level, extraConf: `${CHARON_RETRANSMIT}\n${scale}` }),
        pki.issue(CLUSTER, 'connector'),
      ])
      const view = { local: connectorEndpoint(plan), peers: edges.map(edgeView), mediator: null }
      const config = await ConfigMapDir.create(join(dir, 'connector', 'config'), { 'tunnels.yaml': renderTunnelsYaml(view) })
      const gw = new Gateway(cplan, cns!, ccharon!, ccert!, config, join(dir, 'connector'), pki.caCertPath)
      return new ManyEdges(dir, pki, gw, { ns: pns!, ip: pod.ip }, ens!, echaron!, edges)
    } catch (e) {
      await settleAll(spaces.map((ns) => ns.destroy())).catch(() => undefined)
      await pki?.destroy()
      await rm(dir, { recursive: true, force: true })
      throw e
    }
  }

  /** The connection the edge's agent would load for identity e (desiredState of its tunnels.yaml), renamed to e.name. */
  edgeConn(e: EdgeIdentity, distinctAddress: boolean): { section: ViciSection; children: string[] } {
    const plan = planTopology(starTopology(0, CLUSTER)).clusters[0]!
    const yaml = renderTunnelsYaml({ local: edgeView(e), peers: [connectorEndpoint(plan)], mediator: null })
    // parseConfig throws a ConfigError on invalid input: a harness bug, surfaced as such.
    const { config } = parseConfig(yaml, `${e.name}.yaml`)
    const desired = desiredState(config, { datapath: 'libipsec', certPem: e.cert.certPem })
    const [conn] = desired.initiate
    const section = { ...desired.conns[conn!]! }
    // All N dial from one charon: pin the source when each identity has its own address.
    if (distinctAddress) section.local_addrs = [e.address]
    return { section, children: desired.initiateChildren[conn!] ?? [] }
  }

  /**
   * Brings every edge identity up from the edge charon: loads keys, the CA and N connections, initiates
   * asynchronously (the first child creates the IKE_SA, the other two follow once it is up) and re-initiates what
   * is still down, until the CONNECTOR's charon has N IKE_SAs with all children INSTALLED. Resolves with the ms.
   */
  async bringUp(timeoutMs: number, opts: { holdConnectorMs?: number } = {}): Promise<number> {
    const t0 = performance.now()
    // holdConnectorMs: the connector's charon is stopped (SIGSTOP) while the first round of initiates goes out and
    // resumed that long after the hold began, so every IKE_SA_INIT reaches it at once, whatever the machine's speed
    // (a reconnect storm; without the hold a quiet machine answers each before the next arrives). Below the 4 s
    // retransmit, so nothing is sent twice meanwhile.
    const held = opts.holdConnectorMs ? this.connector.charon.pid : undefined
    let heldAt = 0
    const resume = (): void => {
      if (held === undefined || heldAt === 0) return
      heldAt = 0
      process.kill(held, 'SIGCONT')
    }
    const vici = new Vici({ uri: this.edgeCharon.uri, reconnect: false, timeoutMs: 20_000 })
    await vici.connect()
    try {
      const distinct = new Set(this.edges.map((e) => e.address)).size > 1
      const conns = new Map(this.edges.map((e) => [e.name, this.edgeConn(e, distinct)]))
      await vici.loadCert({ data: this.pki.caCertPem, flag: 'CA' })
      for (const e of this.edges) await vici.loadKey({ type: 'any', data: e.cert.keyPem })
      for (const [name, c] of conns) await vici.loadConn(name, c.section)
      if (held !== undefined) {
        process.kill(held, 'SIGSTOP')
        heldAt = performance.now()
      }
      const sentAt = new Map<string, number>()
      // An initiate whose SA is neither up nor under way after this long is sent again (charon gave up on it).
      const RETRY_MS = 6_000
      for (;;) {
        const sas = await vici.listSas()
        const byName = new Map<string, IkeSa[]>()
        for (const s of sas) byName.set(s.name, [...(byName.get(s.name) ?? []), s])
        let up = 0
        const now = performance.now()
        for (const [name, c] of conns) {
          const mine = byName.get(name) ?? []
          const est = mine.find((s) => s.state === 'ESTABLISHED')
          const installed = new Set(est?.children.filter((k) => k.state === 'INSTALLED').map((k) => k.name) ?? [])
          const missing = c.children.filter((k) => !installed.has(k))
          if (est && missing.length === 0) {
            up++
            continue
          }
          const targets = est ? missing : mine.length === 0 ? c.children.slice(0, 1) : []
          for (const child of targets) {
            const key = `${name}/${child}`
            const last = sentAt.get(key)
            if (last !== undefined && now - last < RETRY_MS) continue
            sentAt.set(key, now)
            await vici.initiate({ ike: name, child })
          }
        }
        if (heldAt !== 0) {
          await new Promise((r) => setTimeout(r, Math.max(0, heldAt + opts.holdConnectorMs! - performance.now())))
          resume()
        }
        if (up === conns.size && (await this.connectorSas()).fullyUp.size === conns.size) return performance.now() - t0
        if (performance.now() - t0 > timeoutMs) throw new Error(`bringUp: ${up}/${conns.size} edges up on the edge charon after ${timeoutMs} ms`)
        await new Promise((r) => setTimeout(r, 100))
      }
    } finally {
      resume()
      await vici.close()
    }
  }

  /**
   * The floor without the agent: the connector's credentials and its N connections (the agent's very desired state)
   * loaded into its charon straight over VICI; no routes, ipsets or iptables.
   */
  async loadConnectorDirect(): Promise<void> {
    const vici = new Vici({ uri: this.connector.charon.uri, reconnect: false, timeoutMs: 20_000 })
    await vici.connect()
    try {
      const desired = await desiredOf(this.connector)
      await loadCredentials(vici, this.connector)
      for (const [name, conn] of Object.entries(desired.conns)) await vici.loadConn(name, conn)
    } finally {
      await vici.close()
    }
  }

  /** IKE_SA_INITs the connector's charon ignored (per-IP block threshold, half-open or job-load limit), from its log. */
  async connectorIgnoredInits(): Promise<number> {
    return ((await this.connector.charon.log()).match(/ignoring IKE_SA setup from/g) ?? []).length
  }

  /** The edges' SAs as the connector's charon sees them (VICI list-sas on the connector, not the edge). */
  async connectorSas(): Promise<ConnectorSas> {
    const vici = new Vici({ uri: this.connector.charon.uri, reconnect: false, timeoutMs: 20_000 })
    await vici.connect()
    try {
      const names = new Set(this.edges.map((e) => e.name))
      const out: ConnectorSas = { ike: 0, children: 0, fullyUp: new Set() }
      for (const s of await vici.listSas()) {
        if (!names.has(s.name) || s.state !== 'ESTABLISHED') continue
        out.ike++
        const installed = s.children.filter((k) => k.state === 'INSTALLED')
        out.children += installed.length
        const kinds = new Set(installed.map((k) => k.name.replace(/^.*-/, '')))
        if (['p2p', 'n2p', 'p2n'].every((k) => kinds.has(k)) && s.remoteId) out.fullyUp.add(s.remoteId)
      }
      return out
    } finally {
      await vici.close()
    }
  }

  /** A ping from edge i's pod address to the connector's pod, through edge i's tunnel (bounded by timeoutMs). */
  ping(i: number, timeoutMs = 3_000): Promise<boolean> {
    const e = this.edges[i]
    if (!e) throw new Error(`no edge ${i}`)
    return ping(this.edgeNs, this.connectorPod.ip, timeoutMs, e.podIp)
  }

  /** Removes both namespaces, the pod, both charons, the PKI and the files. Idempotent, never throws. */
  async destroy(): Promise<void> {
    if (this.destroyed) return
    this.destroyed = true
    await Promise.all([this.connectorPod.ns, this.connector.ns, this.edgeNs].map((ns) => ns.destroy()))
    await this.pki.destroy()
    await rm(this.dir, { recursive: true, force: true })
  }
}

function edgeView(e: EdgeIdentity): EndpointView & { type: 'EdgeNode' } {
  return { id: e.id, name: e.name, publicAddresses: [e.address], subnets: [e.podCidr], nodeSubnets: [e.nodeIp], type: 'EdgeNode' }
}

/** Edge i's addresses (pure; see the header). */
export function edgeAddressing(i: number, shared: boolean): Pick<EdgeIdentity, 'address' | 'nodeIp' | 'podCidr' | 'podIp'> {
  if (!Number.isInteger(i) || i < 0 || i >= MAX_MANY_EDGES) throw new Error(`edge index ${i} out of 0..${MAX_MANY_EDGES - 1}`)
  const host = `${2 + Math.floor(i / 250)}.${1 + (i % 250)}`
  const pod = `10.${100 + Math.floor(i / 256)}.${i % 256}`
  return { address: shared ? '10.77.2.1' : `10.77.${host}`, nodeIp: `10.78.${host}`, podCidr: `${pod}.0/24`, podIp: `${pod}.1` }
}

/** N edge identities with their certificates (made in process: TestPki.issueInProcess). */
async function issueAll(pki: TestPki, n: number, shared: boolean): Promise<EdgeIdentity[]> {
  const out: EdgeIdentity[] = new Array(n)
  let next = 0
  const worker = async (): Promise<void> => {
    while (next < n) {
      const i = next++
      const node = `edge${i + 1}`
      const cert = await pki.issueInProcess(CLUSTER, node)
      out[i] = { index: i, name: `${CLUSTER}.${node}`, id: cert.id, cert, ...edgeAddressing(i, shared) }
    }
  }
  await Promise.all(Array.from({ length: 6 }, worker))
  return out
}
