// A small cluster for daemon tests: one connector and N edge nodes, each a namespace joined to a hub bridge, each
// with a real charon (kernel-libipsec), throwaway certificates, a pod namespace behind it, and a kubelet-style
// ConfigMap directory holding its tunnels.yaml. Addresses live only inside these namespaces:
//   underlay 172.31.<k>.0/24 on the hub (k per cluster instance), gateway i = .10+i
//   pod subnet of node i 10.<80+i>.0.0/24 (.1 on the gateway's podbr, .2 in its pod ns)
//   node IP of node i 10.<80+i>.255.1/32 (on podbr, distinct from the IKE address as libipsec requires)
import { mkdir, mkdtemp, rename, rm, symlink, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Charon } from './charon.js'
import { exec } from './exec.js'
import { Netns, uniqueName, vethPair } from './netns.js'
import { TestPki, type NodeCert } from './pki.js'
import { AgentProc } from './agent-proc.js'

let instances = 0

export interface ClusterNode {
  name: string
  fullName: string
  type: 'Connector' | 'EdgeNode'
  index: number
  ns: Netns
  pod: Netns
  underlay: string
  podCidr: string
  podGw: string
  podIp: string
  nodeIp: string
  charon: Charon
  cert: NodeCert
  configDir: string
  agent: AgentProc
}

export class Cluster {
  readonly nodes: ClusterNode[] = []
  private version = 0
  private constructor(readonly dir: string, readonly hub: Netns, readonly pki: TestPki, readonly net: number, readonly bridge: string) {}

  static async create(edges: number): Promise<Cluster> {
    const dir = await mkdtemp(join(tmpdir(), 'ft-cluster-'))
    const hub = await Netns.create('fthb')
    const pki = await TestPki.create()
    const bridge = uniqueName('br')
    await hub.run(['ip', 'link', 'add', bridge, 'type', 'bridge'])
    await hub.run(['ip', 'link', 'set', bridge, 'up'])
    const c = new Cluster(dir, hub, pki, 31 - (instances++ % 8), bridge)
    await c.addNode('connector', 'Connector')
    for (let i = 1; i <= edges; i++) await c.addNode(`edge${i}`, 'EdgeNode')
    return c
  }

  get connector(): ClusterNode {
    return this.nodes[0]!
  }

  async addNode(name: string, type: 'Connector' | 'EdgeNode'): Promise<ClusterNode> {
    const index = this.nodes.length
    const ns = await Netns.create('ftgw')
    const pod = await Netns.create('ftpd')
    const [hubIf, gwIf] = await vethPair(this.hub, ns)
    await this.hub.run(['ip', 'link', 'set', hubIf, 'master', this.bridge])
    const underlay = `172.${this.net}.0.${10 + index}`
    await ns.run(['ip', 'addr', 'add', `${underlay}/24`, 'dev', gwIf])
    await ns.run(['sysctl', '-qw', 'net.ipv4.ip_forward=1'])
    const podCidr = `10.${80 + index}.0.0/24`
    const podGw = `10.${80 + index}.0.1`
    const podIp = `10.${80 + index}.0.2`
    const nodeIp = `10.${80 + index}.255.1`
    await ns.run(['ip', 'link', 'add', 'podbr', 'type', 'bridge'])
    await ns.run(['ip', 'link', 'set', 'podbr', 'up'])
    await ns.run(['ip', 'addr', 'add', `${nodeIp}/32`, 'dev', 'podbr'])
    const [gwPodIf, podIf] = await vethPair(ns, pod)
    await ns.run(['ip', 'link', 'set', gwPodIf, 'master', 'podbr'])
    await ns.run(['ip', 'addr', 'add', `${podGw}/24`, 'dev', 'podbr'])
    await pod.run(['ip', 'addr', 'add', `${podIp}/24`, 'dev', podIf])
    await pod.run(['ip', 'route', 'add', 'default', 'via', podGw])
    const charon = await Charon.start(ns)
    const cert = await this.pki.issue('test', name)
    const configDir = join(this.dir, name, 'config')
    await mkdir(configDir, { recursive: true })
    const agent = new AgentProc(ns, {
      config: join(configDir, 'tunnels.yaml'), vici: charon.uri, cert: cert.certPath, key: cert.keyPath, ca: this.pki.caCertPath,
      datapath: 'libipsec', dir: join(this.dir, name), logLevel: 'debug',
    })
    const node: ClusterNode = { name, fullName: `test.${name}`, type, index, ns, pod, underlay, podCidr, podGw, podIp, nodeIp, charon, cert, configDir, agent }
    this.nodes.push(node)
    return node
  }

  /** The FabEdge operator's view for `node`: itself plus its peers (4-space block YAML). */
  tunnelsYaml(node: ClusterNode, peers: ClusterNode[] = this.nodes.filter((n) => n !== node && (node.type === 'Connector' || n.type === 'Connector'))): string {
    const ep = (n: ClusterNode, indent: string, first: string): string => [
      `${first}id: ${n.cert.id}`,
      `${indent}name: ${n.fullName}`,
      `${indent}publicAddresses:`, `${indent}    - ${n.underlay}`,
      `${indent}subnets:`, `${indent}    - ${n.podCidr}`,
      `${indent}nodeSubnets:`, `${indent}    - ${n.nodeIp}`,
      `${indent}type: ${n.type}`,
    ].join('\n')
    const lines = [ep(node, '', ''), 'peers:']
    for (const p of peers) lines.push(ep(p, '      ', '    - '))
    return `${lines.join('\n')}\n`
  }

  /** Writes a node's config as kubelet does: a new timestamped dir, then an atomic `..data` symlink swap. */
  async writeConfig(node: ClusterNode, text: string): Promise<void> {
    const v = `..${Date.now()}_${this.version++}`
    await mkdir(join(node.configDir, v))
    await writeFile(join(node.configDir, v, 'tunnels.yaml'), text)
    const tmp = join(node.configDir, '..data_tmp')
    await rm(tmp, { force: true })
    await symlink(v, tmp)
    await rename(tmp, join(node.configDir, '..data'))
    await symlink('..data/tunnels.yaml', join(node.configDir, 'tunnels.yaml')).catch((e: NodeJS.ErrnoException) => {
      if (e.code !== 'EEXIST') throw e
    })
  }

  /** ping from one pod namespace to an address; resolves the exit code (bounded). */
  async ping(from: Netns, to: string): Promise<boolean> {
    const r = await from.capture(['ping', '-c', '1', '-W', '2', to], { timeoutMs: 5000 })
    return r.code === 0
  }

  async destroy(): Promise<void> {
    for (const n of this.nodes) await n.agent.stop().catch(() => undefined)
    for (const n of this.nodes) {
      await n.ns.destroy()
      await n.pod.destroy()
    }
    await this.hub.destroy()
    await this.pki.destroy()
    await rm(this.dir, { recursive: true, force: true })
  }
}

export { exec }
