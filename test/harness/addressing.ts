// Pure part of the namespace topology: from a small declarative description (clusters, nodes, communities) to an
// address plan and to each node's `tunnels.yaml` as the FabEdge operator writes it (../shared/fabedge-compat.md §1,
// 4-space block YAML). No I/O here, so the plan and the YAML are unit-tested without root.
//
// Addressing (cluster c = 1.., node k = 1.. inside its cluster, the connector is always k = 1):
//   underlay / IKE (public) address  10.77.c.k/16    on the gateway's veth into the hub bridge
//   node IP (`nodeSubnets`)          10.78.c.k/32    on the gateway's port-less `podbr` (never the IKE address:
//                                                    libipsec refuses children whose selectors cover IKE traffic)
//   cluster LAN (connector <-> cloud) 10.79.c.k/24   connector .1, cloud nodes .k; a cloud node's node IP
//   pod CIDR of node k               10.(80+c).k.0/24, gateway .1 on `podbr`, pods .10, .11, ...
//   service CIDR of cluster c        10.(90+c).0.0/16, "ClusterIP" 10.(90+c).0.10 answering on the connector
// libipsec installs a CHILD_SA only when the gateway owns an address inside every local_ts, so a connector also
// holds a /32 "anchor" in each local subnet it routes but does not host (cloud node pod CIDRs: .254; the service
// CIDR: the ClusterIP itself).

export type NodeRole = 'connector' | 'edge' | 'cloud'

export interface NodeSpec {
  /** Node name inside the cluster (`connector` for the connector, as FabEdge names it). */
  name: string
  role: NodeRole
  /** Pod namespaces behind the node. Default 1 (0 for a connector). */
  pods?: number
}

export interface ClusterSpec {
  name: string
  /** Exactly one connector; cloud nodes sit behind it on the cluster LAN; edges reach it over the underlay. */
  nodes: NodeSpec[]
}

/**
 * How edges of one cluster reach each other: `mediated` (FabEdge community: the connector is the IKE mediation
 * server, edges open direct tunnels brokered by it), `direct` (edges dial each other's public address) or `none`.
 */
export type EdgeMesh = 'mediated' | 'direct' | 'none'

/**
 * Where edges sit: `none` (on the underlay with their own public address), `each` (every edge behind a NAT of its
 * own: a namespace doing MASQUERADE onto the underlay), `shared` (all edges of a cluster behind one NAT).
 */
export type EdgeNat = 'none' | 'each' | 'shared'

export interface TopologySpec {
  clusters: ClusterSpec[]
  /** Groups of cluster names whose connectors peer with each other (FabEdge Community of connectors). */
  communities?: string[][]
  edgeMesh?: EdgeMesh
  edgeNat?: EdgeNat
}

/**
 * A NAT router in front of one or more edges (TopologySpec.edgeNat):
 *   public (underlay) address   10.77.(100+c).k/16 (`each`, edge k) or 10.77.(200+c).1/16 (`shared`)
 *   inside LAN                  172.(16+c).k.0/24 (`each`) or 172.(16+c).0.0/24 (`shared`), the NAT on .1,
 *                               the edge on .2 (`each`) or .(k+1) (`shared`)
 * The NAT masquerades the inside LAN behind its public address (Linux keeps the source port when it is free), so
 * an edge's address and port as seen by the connector differ from its own.
 */
export interface NatPlan {
  /** `nat-<cluster>.<edge>` or `nat-<cluster>.shared`. */
  name: string
  publicIp: string
  /** The NAT's own inside address: the edges' default gateway. */
  insideIp: string
  /** The inside LAN, e.g. 172.17.2.0/24. */
  insideCidr: string
}

export interface PodPlan {
  /** `<cluster>.<node>.pod<j>` */
  name: string
  ip: string
}

export interface NodePlan {
  cluster: string
  name: string
  /** `<cluster>.<node>`: the FabEdge endpoint name and strongSwan connection name. */
  fullName: string
  role: NodeRole
  /** FabEdge's IKE identity (certificate subject). */
  id: string
  clusterIndex: number
  index: number
  /**
   * The address peers see (gateways only): the node's underlay address, or its NAT's public address when it sits
   * behind one; FabEdge's `publicAddresses`.
   */
  publicIp: string | null
  /** The address the node itself holds and charon speaks IKE from: publicIp, or its inside address behind a NAT. */
  ikeIp: string | null
  /** The NAT in front of this edge, if any. */
  nat: NatPlan | null
  /** Node IP: on `podbr` for gateways, the LAN address for cloud nodes. */
  nodeIp: string
  /** Cluster LAN address with prefix (connector when the cluster has cloud nodes, and cloud nodes). */
  lanCidr: string | null
  podCidr: string
  podGateway: string
  pods: PodPlan[]
  /** Addresses (with prefix) the gateway's `podbr` holds: pod gateway, node IP, anchors. */
  podbrAddrs: string[]
  /** Routes (`dst via`) inside this node's namespace besides connected ones. */
  routes: Array<{ dst: string; via: string }>
}

export interface ClusterPlan {
  name: string
  index: number
  serviceCidr: string
  /** The address standing for a ClusterIP; answers pings on the connector. */
  serviceIp: string
  connector: NodePlan
  nodes: NodePlan[]
}

export interface TopologyPlan {
  spec: TopologySpec
  clusters: ClusterPlan[]
  /** Every node that runs charon and the agent (connectors and edges). */
  gateways: NodePlan[]
  /** Cluster names (sorted) joined by a community, per cluster. */
  communityOf: Map<string, Set<string>>
  edgeMesh: EdgeMesh
  /** Every NAT router, each once (shared NATs are listed by several edges). */
  nats: NatPlan[]
}

export class TopologySpecError extends Error {
  readonly code = 'EINVALID'
  constructor(message: string) {
    super(message)
    this.name = 'TopologySpecError'
  }
}

const NAME = /^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$/
export const MAX_CLUSTERS = 9
export const MAX_NODES = 250
export const MAX_PODS = 200

/** The default topology of the demo and the e2e suite: two clusters joined by a community. */
export function defaultTopology(): TopologySpec {
  return {
    clusters: [
      {
        name: 'beijing',
        nodes: [
          { name: 'connector', role: 'connector' },
          { name: 'cloud1', role: 'cloud' },
          { name: 'edge1', role: 'edge' },
          { name: 'edge2', role: 'edge' },
        ],
      },
      { name: 'shanghai', nodes: [{ name: 'connector', role: 'connector', pods: 1 }] },
    ],
    communities: [['beijing', 'shanghai']],
    // Its edges are not behind NAT, so they dial each other; the mediated shape behind NAT (edgeNat) has its own
    // e2e and demo (docs/mediation.md).
    edgeMesh: 'direct',
  }
}

/** One cluster: a connector with `edges` edge nodes (one pod each), no cloud node; the benchmark's larger shape. */
export function starTopology(edges: number, cluster = 'beijing'): TopologySpec {
  const nodes: NodeSpec[] = [{ name: 'connector', role: 'connector', pods: 1 }]
  for (let i = 1; i <= edges; i++) nodes.push({ name: `edge${i}`, role: 'edge' })
  return { clusters: [{ name: cluster, nodes }], edgeMesh: 'none' }
}

export function fabedgeDn(cluster: string, node: string): string {
  return `C=CN, O=fabedge.io, CN=${cluster}.${node}`
}

/** Validates the spec and assigns every address. Throws TopologySpecError naming the offending part. */
export function planTopology(spec: TopologySpec): TopologyPlan {
  if (spec.clusters.length === 0) throw new TopologySpecError('a topology needs at least one cluster')
  if (spec.clusters.length > MAX_CLUSTERS) throw new TopologySpecError(`at most ${MAX_CLUSTERS} clusters`)
  const seen = new Set<string>()
  const clusters: ClusterPlan[] = spec.clusters.map((c, ci) => {
    if (!NAME.test(c.name)) throw new TopologySpecError(`bad cluster name "${c.name}"`)
    if (seen.has(c.name)) throw new TopologySpecError(`duplicate cluster "${c.name}"`)
    seen.add(c.name)
    return planCluster(c, ci + 1, spec.edgeNat ?? 'none')
  })
  const communityOf = new Map<string, Set<string>>()
  for (const group of spec.communities ?? []) {
    for (const name of group) {
      if (!seen.has(name)) throw new TopologySpecError(`community names unknown cluster "${name}"`)
      const set = communityOf.get(name) ?? new Set<string>()
      for (const other of group) if (other !== name) set.add(other)
      communityOf.set(name, set)
    }
  }
  const gateways = clusters.flatMap((c) => c.nodes.filter((n) => n.role !== 'cloud'))
  const nats = new Map<string, NatPlan>()
  for (const g of gateways) if (g.nat) nats.set(g.nat.name, g.nat)
  return { spec, clusters, gateways, communityOf, edgeMesh: spec.edgeMesh ?? 'none', nats: [...nats.values()] }
}

function planCluster(spec: ClusterSpec, c: number, edgeNat: EdgeNat): ClusterPlan {
  const connectors = spec.nodes.filter((n) => n.role === 'connector')
  if (connectors.length !== 1) throw new TopologySpecError(`cluster "${spec.name}" needs exactly one connector`)
  if (connectors[0]!.name !== 'connector') throw new TopologySpecError(`the connector of "${spec.name}" must be named "connector"`)
  if (spec.nodes.length > MAX_NODES) throw new TopologySpecError(`cluster "${spec.name}": at most ${MAX_NODES} nodes`)
  const names = new Set<string>()
  // The connector is node 1 whatever its position in the list, so its addresses never move.
  const ordered = [connectors[0]!, ...spec.nodes.filter((n) => n.role !== 'connector')]
  const hasCloud = ordered.some((n) => n.role === 'cloud')
  const nodes = ordered.map((n, i) => {
    if (!NAME.test(n.name)) throw new TopologySpecError(`bad node name "${n.name}" in cluster "${spec.name}"`)
    if (names.has(n.name)) throw new TopologySpecError(`duplicate node "${n.name}" in cluster "${spec.name}"`)
    names.add(n.name)
    return planNode(spec.name, c, i + 1, n, hasCloud)
  })
  const shared: NatPlan = { name: `nat-${spec.name}.shared`, publicIp: `10.77.${200 + c}.1`, insideIp: `172.${16 + c}.0.1`, insideCidr: `172.${16 + c}.0.0/24` }
  for (const n of nodes) {
    if (n.role !== 'edge' || edgeNat === 'none') continue
    if (edgeNat === 'each') {
      n.nat = { name: `nat-${n.fullName}`, publicIp: `10.77.${100 + c}.${n.index}`, insideIp: `172.${16 + c}.${n.index}.1`, insideCidr: `172.${16 + c}.${n.index}.0/24` }
      n.ikeIp = `172.${16 + c}.${n.index}.2`
    } else {
      n.nat = shared
      n.ikeIp = `172.${16 + c}.0.${n.index + 1}`
    }
    n.publicIp = n.nat.publicIp
  }
  const connector = nodes[0]!
  const serviceCidr = `10.${90 + c}.0.0/16`
  const serviceIp = `10.${90 + c}.0.10`
  connector.podbrAddrs.push(`${serviceIp}/32`)
  for (const cloud of nodes.filter((n) => n.role === 'cloud')) {
    connector.podbrAddrs.push(`${anchorOf(cloud.podCidr)}/32`)
    connector.routes.push({ dst: cloud.podCidr, via: cloud.nodeIp })
  }
  return { name: spec.name, index: c, serviceCidr, serviceIp, connector, nodes }
}

function anchorOf(podCidr: string): string {
  return podCidr.replace(/\.0\/24$/, '.254')
}

function planNode(cluster: string, c: number, k: number, spec: NodeSpec, hasCloud: boolean): NodePlan {
  const podCount = spec.pods ?? (spec.role === 'connector' ? 0 : 1)
  if (!Number.isInteger(podCount) || podCount < 0 || podCount > MAX_PODS) {
    throw new TopologySpecError(`node "${cluster}.${spec.name}": pods must be 0..${MAX_PODS}`)
  }
  const podNet = `10.${80 + c}.${k}`
  const pods = Array.from({ length: podCount }, (_, j) => ({ name: `${cluster}.${spec.name}.pod${j + 1}`, ip: `${podNet}.${10 + j}` }))
  const gateway = spec.role !== 'cloud'
  const lanCidr = spec.role === 'cloud' || (spec.role === 'connector' && hasCloud) ? `10.79.${c}.${k}/24` : null
  const nodeIp = gateway ? `10.78.${c}.${k}` : `10.79.${c}.${k}`
  const plan: NodePlan = {
    cluster,
    name: spec.name,
    fullName: `${cluster}.${spec.name}`,
    role: spec.role,
    id: fabedgeDn(cluster, spec.name),
    clusterIndex: c,
    index: k,
    publicIp: gateway ? `10.77.${c}.${k}` : null,
    ikeIp: gateway ? `10.77.${c}.${k}` : null,
    nat: null,
    nodeIp,
    lanCidr,
    podCidr: `${podNet}.0/24`,
    podGateway: `${podNet}.1`,
    pods,
    podbrAddrs: [`${podNet}.1/24`],
    routes: [],
  }
  if (gateway) plan.podbrAddrs.push(`${nodeIp}/32`)
  if (spec.role === 'cloud') plan.routes.push({ dst: 'default', via: `10.79.${c}.1` })
  return plan
}

/** A FabEdge endpoint as the operator describes it. */
export interface EndpointView {
  id: string
  name: string
  publicAddresses: string[]
  subnets: string[]
  nodeSubnets: string[]
  type?: 'Connector' | 'EdgeNode'
}

export interface TunnelsView {
  local: EndpointView & { type: 'Connector' | 'EdgeNode' }
  peers: Array<EndpointView & { type: 'Connector' | 'EdgeNode' }>
  mediator: EndpointView | null
}

function clusterOf(plan: TopologyPlan, name: string): ClusterPlan {
  const c = plan.clusters.find((x) => x.name === name)
  if (!c) throw new TopologySpecError(`unknown cluster "${name}"`)
  return c
}

/** The connector endpoint: service CIDR first (as FabEdge lists it), its own pods, the cloud nodes' pods. */
export function connectorEndpoint(c: ClusterPlan): EndpointView & { type: 'Connector' } {
  const n = c.connector
  return {
    id: n.id,
    name: n.fullName,
    publicAddresses: [n.publicIp!],
    subnets: [c.serviceCidr, n.podCidr, ...c.nodes.filter((x) => x.role === 'cloud').map((x) => x.podCidr)],
    nodeSubnets: [n.nodeIp],
    type: 'Connector',
  }
}

export function edgeEndpoint(n: NodePlan): EndpointView & { type: 'EdgeNode' } {
  return { id: n.id, name: n.fullName, publicAddresses: [n.publicIp!], subnets: [n.podCidr], nodeSubnets: [n.nodeIp], type: 'EdgeNode' }
}

/**
 * What the operator would put in a gateway's tunnels.yaml. `edges` limits which edges of the cluster exist in
 * the configuration (runtime add/remove); default: all of the plan's edges.
 */
export function tunnelsView(plan: TopologyPlan, node: NodePlan, edges?: ReadonlySet<string>): TunnelsView {
  const c = clusterOf(plan, node.cluster)
  const present = (n: NodePlan): boolean => n.role === 'edge' && (edges === undefined || edges.has(n.fullName))
  const clusterEdges = c.nodes.filter(present)
  const mediated = plan.edgeMesh === 'mediated' && clusterEdges.length > 1
  const mediator: EndpointView | null = mediated
    ? { id: c.connector.id, name: 'mediator', publicAddresses: [c.connector.publicIp!], subnets: [], nodeSubnets: [] }
    : null
  if (node.role === 'connector') {
    const remote = [...(plan.communityOf.get(c.name) ?? [])].sort().map((name) => connectorEndpoint(clusterOf(plan, name)))
    return { local: connectorEndpoint(c), peers: [...clusterEdges.map(edgeEndpoint), ...remote], mediator }
  }
  if (node.role !== 'edge') throw new TopologySpecError(`${node.fullName} is a cloud node: it has no tunnels.yaml`)
  const others = plan.edgeMesh === 'none' ? [] : clusterEdges.filter((e) => e !== node).map(edgeEndpoint)
  return { local: edgeEndpoint(node), peers: [connectorEndpoint(c), ...others], mediator }
}

function yamlScalar(v: string): string {
  // Everything we emit is an address, CIDR, DN or name; DNs contain ", " and "=" which plain YAML scalars allow.
  if (!/^[A-Za-z0-9=., :/_-]+$/.test(v) || /^[ -]|: | $/.test(v)) throw new TopologySpecError(`value not plain-YAML safe: ${v}`)
  return v
}

function endpointLines(e: EndpointView, indent: string, first: string, itemIndent: string): string[] {
  const out: string[] = []
  let lead = first
  const field = (k: string, v: string): void => {
    out.push(`${lead}${k}: ${yamlScalar(v)}`)
    lead = indent
  }
  const list = (k: string, vs: string[]): void => {
    if (vs.length === 0) return
    out.push(`${lead}${k}:`)
    lead = indent
    for (const v of vs) out.push(`${itemIndent}- ${yamlScalar(v)}`)
  }
  field('id', e.id)
  field('name', e.name)
  list('publicAddresses', e.publicAddresses)
  list('subnets', e.subnets)
  list('nodeSubnets', e.nodeSubnets)
  if (e.type) field('type', e.type)
  return out
}

/** tunnels.yaml text in the operator's layout (same shape as test/fixtures/config/*.yaml). */
export function renderTunnelsYaml(view: TunnelsView): string {
  // Column of list items as the operator writes them: 4 under a mapping key, 2 under a key inside a sequence item.
  const lines = endpointLines(view.local, '', '', '    ')
  if (view.peers.length) {
    lines.push('peers:')
    for (const p of view.peers) lines.push(...endpointLines(p, '      ', '    - ', '        '))
  }
  if (view.mediator) {
    lines.push('mediator:')
    lines.push(...endpointLines(view.mediator, '    ', '    ', '        '))
  }
  return lines.join('\n') + '\n'
}
