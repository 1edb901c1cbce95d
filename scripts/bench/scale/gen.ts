// What the scaling benchmark writes: a FabEdge connector tunnels.yaml with N edge peers, and the floor's inputs for
// the same N peers (a swanctl.conf with the same connections, an `ip -batch` file with the same table-220 routes,
// an `ipset restore` file with the same sets). Pure: text in, text out, so the unit tests compare whole texts.
import { IPSET, ROUTE_TABLE, RTPROT_FABTUNNEL } from '../../../src/fabedge.js'

/** The connector every generated config describes (its certificate is issued for this id). */
export const CONNECTOR = {
  id: 'C=CN, O=fabedge.io, CN=bench.connector',
  name: 'bench.connector',
  publicAddress: '172.19.0.1',
  subnets: ['10.96.0.0/16', '10.99.0.0/16'],
  nodeIp: '172.19.0.1',
} as const

/** Peer indices fit the address plan below: 10.100.0.0/24 ... 10.163.255.0/24, alternate subnets from 10.164. */
export const MAX_PEER_INDEX = 64 * 256 - 1

function checkIndex(i: number): void {
  if (!Number.isInteger(i) || i < 0 || i > MAX_PEER_INDEX) throw new RangeError(`peer index ${i} outside 0..${MAX_PEER_INDEX}`)
}

export function peerName(i: number): string {
  checkIndex(i)
  return `bench.e${i}`
}

/** The pod subnet of peer i; `alt` is the one a subnet-change sample moves it to (disjoint from every primary). */
export function peerSubnet(i: number, alt = false): string {
  checkIndex(i)
  return `10.${(alt ? 164 : 100) + (i >> 8)}.${i & 255}.0/24`
}

/** Node (and public) address of peer i. */
export function peerNodeIp(i: number): string {
  checkIndex(i)
  return `172.20.${i >> 8}.${i & 255}`
}

export interface PeerSpec {
  index: number
  /** Use the alternate pod subnet (subnet-change samples). */
  alt?: boolean
}

/** `0..n-1`, primary subnets. */
export function firstPeers(n: number): PeerSpec[] {
  return Array.from({ length: n }, (_, index) => ({ index }))
}

/** The connector's tunnels.yaml, in the layout FabEdge's operator writes (4-space lists). */
export function connectorYaml(peers: readonly PeerSpec[]): string {
  const lines = [
    `id: ${CONNECTOR.id}`, `name: ${CONNECTOR.name}`, 'publicAddresses:', `    - ${CONNECTOR.publicAddress}`,
    'subnets:', ...CONNECTOR.subnets.map((s) => `    - ${s}`), 'nodeSubnets:', `    - ${CONNECTOR.nodeIp}`,
    'type: Connector', 'peers:',
  ]
  for (const p of peers) {
    lines.push(
      `    - id: C=CN, O=fabedge.io, CN=${peerName(p.index)}`,
      `      name: ${peerName(p.index)}`,
      '      publicAddresses:', `        - ${peerNodeIp(p.index)}`,
      '      subnets:', `        - ${peerSubnet(p.index, p.alt)}`,
      '      nodeSubnets:', `        - ${peerNodeIp(p.index)}`,
      '      type: EdgeNode',
    )
  }
  return `${lines.join('\n')}\n`
}

/** An edge's tunnels.yaml with one peer: the connector (at `connectorAddress`, which nobody answers in the bench). */
export function edgeYaml(connectorAddress: string): string {
  return [
    `id: C=CN, O=fabedge.io, CN=${peerName(0)}`, `name: ${peerName(0)}`, 'publicAddresses:', `    - ${peerNodeIp(0)}`,
    'subnets:', `    - ${peerSubnet(0)}`, 'nodeSubnets:', `    - ${peerNodeIp(0)}`, 'type: EdgeNode', 'peers:',
    `    - id: ${CONNECTOR.id}`, `      name: ${CONNECTOR.name}`, '      publicAddresses:', `        - ${connectorAddress}`,
    '      subnets:', ...CONNECTOR.subnets.map((s) => `        - ${s}`), '      nodeSubnets:', `        - ${CONNECTOR.nodeIp}`,
    '      type: Connector', '',
  ].join('\n')
}

/**
 * The same connections the agent loads for these peers (responder side: version 2, no MOBIKE, the local
 * certificate, the peer's id, children p2p/n2p/p2n with the same selectors), as one swanctl.conf. Section names
 * cannot contain dots in swanctl.conf, so `bench.e7` is `bench_e7` here. `certPath` is absolute.
 */
export function swanctlConf(peers: readonly PeerSpec[], certPath: string): string {
  if (!certPath.startsWith('/') || /["\s{}]/.test(certPath)) throw new Error(`certificate path must be absolute and plain: ${certPath}`)
  const local = CONNECTOR.subnets.join(', ')
  const out = ['connections {']
  for (const p of peers) {
    const name = peerName(p.index).replace('.', '_')
    const child = (kind: string, l: string, r: string): string =>
      `      ${name}-${kind} {\n        local_ts = ${l}\n        remote_ts = ${r}\n        start_action = none\n        dpd_action = clear\n      }`
    out.push(
      `  ${name} {`, '    version = 2', '    mobike = no',
      '    local {', '      auth = pubkey', `      id = "${CONNECTOR.id}"`, `      certs = ${certPath}`, '    }',
      '    remote {', '      auth = pubkey', `      id = "C=CN, O=fabedge.io, CN=${peerName(p.index)}"`, '    }',
      '    children {',
      child('p2p', local, peerSubnet(p.index, p.alt)),
      child('n2p', `${CONNECTOR.nodeIp}/32`, peerSubnet(p.index, p.alt)),
      child('p2n', local, `${peerNodeIp(p.index)}/32`),
      '    }', '  }',
    )
  }
  out.push('}', '')
  return out.join('\n')
}

/** `ip -batch` lines for the agent's xfrm-datapath routes: `<peer subnet> via <gateway> table 220 proto 220`. */
export function routeBatch(peers: readonly PeerSpec[], gateway: string): string {
  return peers.map((p) => `route replace ${peerSubnet(p.index, p.alt)} via ${gateway} table ${ROUTE_TABLE} proto ${RTPROT_FABTUNNEL}\n`).join('')
}

/** The connector's inet sets and members (the inet6 twins are empty and left out of the floor). */
export function connectorSets(peers: readonly PeerSpec[]): Record<string, string[]> {
  return {
    [IPSET.remotePodCidr]: peers.map((p) => peerSubnet(p.index, p.alt)),
    [IPSET.remoteNodeCidr]: peers.map((p) => `${peerNodeIp(p.index)}/32`),
    [IPSET.localPodCidr]: [...CONNECTOR.subnets],
    [IPSET.localNodeCidr]: [`${CONNECTOR.nodeIp}/32`],
  }
}

/** `ipset restore` input creating the connector's sets (hash:net, inet) with their members. */
export function ipsetRestore(peers: readonly PeerSpec[]): string {
  const out: string[] = []
  for (const [name, members] of Object.entries(connectorSets(peers))) {
    out.push(`create ${name} hash:net family inet`)
    for (const m of members) out.push(`add ${name} ${m}`)
  }
  return `${out.join('\n')}\n`
}
