// The validated, canonical form of a FabEdge `tunnels.yaml` (../shared/fabedge-compat.md §1). Everything here is
// already checked: CIDRs are canonical and de-duplicated, node IPs carry their /32 or /128.

export type EndpointType = 'Connector' | 'EdgeNode'

export interface Endpoint {
  /** IKE identity, usually an X.509 DN (`C=CN, O=fabedge.io, CN=beijing.edge1`). */
  id: string
  /** `<cluster>.<node>`; the strongSwan connection name for a peer. */
  name: string
  /** IPs (canonical text) or DNS names peers dial. */
  publicAddresses: string[]
  /** Canonical pod (and, for a connector, service) CIDRs, in file order. */
  subnets: string[]
  /** Canonical node CIDRs; bare IPs became /32 or /128. */
  nodeSubnets: string[]
  type: EndpointType | null
  /** Public IKE port when not 500. */
  port: number | null
}

export interface LocalEndpoint extends Endpoint {
  type: EndpointType
}

export interface PeerEndpoint extends Endpoint {
  type: EndpointType
}

export interface TunnelConfig {
  local: LocalEndpoint
  peers: PeerEndpoint[]
  mediator: Endpoint | null
}
