// Desired strongSwan connections (VICI `load-conn` sections) per ../shared/fabedge-compat.md §2, and which of them
// this node initiates. Pure.
//
// Initiator rule between two connectors (multi-cluster community): the connector whose `name` sorts first
// (plain code-unit order, e.g. "beijing.connector" < "shanghai.connector") initiates; the other only responds.
// Both sides compute the same answer from their own configs, so exactly one side initiates and no duplicate
// CHILD_SAs are created (FabEdge lets both initiate). Both sides still load `remote_addrs`.
import { dict } from '../dict.js'
import { childNames, MEDIATOR_CONN } from '../fabedge.js'
import type { Endpoint, PeerEndpoint, TunnelConfig } from '../config/schema.js'
import type { DesiredOptions, Role, ViciSection } from './types.js'

/** Dead-peer detection interval FabEdge's edge agent uses (`fabtunnel run --dpd-delay 10s` restores it). */
export const FABEDGE_DPD_DELAY = '10s'

/**
 * fabtunnel's default DPD interval for the connections a node initiates (`--dpd-delay`). With the retransmission
 * schedule the shipped strongswan.conf files set (give up ~5.4 s after the first unanswered DPD), an edge declares
 * a dead connector dead at most ~8.4 s after its last packet, within the 10 s connector failover target; FabEdge's
 * 10 s plus charon's default 165 s schedule takes up to ~3 minutes. The cost: one INFORMATIONAL exchange (~100
 * bytes each way) per 3 s on an idle tunnel only; a tunnel carrying traffic sends none (see docs/ha.md).
 */
export const EDGE_DPD_DELAY = '3s'

export function roleOf(config: TunnelConfig): Role {
  return config.local.type === 'Connector' ? 'connector' : 'edge'
}

/** Whether this node initiates the connection to `peer`. */
export function initiatesTo(config: TunnelConfig, peer: PeerEndpoint): boolean {
  if (config.local.type === 'EdgeNode') return true
  if (peer.type === 'EdgeNode') return false
  return config.local.name < peer.name
}

// Every connection of a node carries the same `local` section and the same local selectors: one shared (never
// mutated) object each instead of one per peer, which is most of a section's size with 10,000 peers.
const localAuthMemo = new WeakMap<Endpoint, { pem: string | undefined; auth: ViciSection }>()

function localAuth(local: Endpoint, opts: DesiredOptions): ViciSection {
  const memo = localAuthMemo.get(local)
  if (memo && memo.pem === opts.certPem) return memo.auth
  const auth: ViciSection = { auth: 'pubkey', id: local.id }
  if (opts.certPem) auth.certs = [opts.certPem]
  localAuthMemo.set(local, { pem: opts.certPem, auth })
  return auth
}

function ports(peer: Endpoint, section: ViciSection): void {
  if (peer.port !== null && peer.port !== 500) {
    // A non-500 remote port needs a non-500 local port too, or charon sends IKE_SA_INIT from 500 and the reply is
    // matched to the wrong socket; 4500 is the NAT-T port FabEdge picks.
    section.remote_port = String(peer.port)
    section.local_port = '4500'
  }
}

/** DPD on a connection we initiate; `dpdDelay` '0s' turns it off (charon: dpd_delay 0). */
function dpd(section: ViciSection, opts: DesiredOptions): void {
  const delay = opts.dpdDelay ?? EDGE_DPD_DELAY
  if (delay !== '0s') section.dpd_delay = delay
}

function children(local: Endpoint, peer: Endpoint, conn: string, initiator: boolean): ViciSection {
  const names = childNames(conn)
  const dpdAction = initiator ? 'trap' : 'clear'
  const out: ViciSection = dict()
  const add = (name: string, localTs: string[], remoteTs: string[]): void => {
    // An empty selector list would make strongSwan fall back to `dynamic` (the IKE address): leave the child out.
    if (localTs.length === 0 || remoteTs.length === 0) return
    // The config's own lists (never mutated): shared by every connection rather than copied into each.
    out[name] = { local_ts: localTs as string[], remote_ts: remoteTs as string[], start_action: 'none', dpd_action: dpdAction }
  }
  add(names.p2p, local.subnets, peer.subnets)
  add(names.n2p, local.nodeSubnets, peer.subnets)
  add(names.p2n, local.subnets, peer.nodeSubnets)
  return out
}

export function peerConn(config: TunnelConfig, peer: PeerEndpoint, opts: DesiredOptions): ViciSection {
  const initiator = initiatesTo(config, peer)
  const mediated = config.local.type === 'EdgeNode' && peer.type === 'EdgeNode' && config.mediator !== null
  const section: ViciSection = { version: '2' }
  if (mediated) {
    // Through a mediator the real addresses are learned from it; configured ones would be wrong behind NAT.
    section.mediated_by = MEDIATOR_CONN
    // strongSwan needs mediation_peer although the docs call it optional; FabEdge sets it to the peer's name.
    section.mediation_peer = peer.name
  } else if (config.local.type === 'EdgeNode' || peer.type === 'Connector') {
    if (peer.publicAddresses.length) section.remote_addrs = [...peer.publicAddresses]
    ports(peer, section)
  }
  if (initiator) dpd(section, opts)
  // A connector never lets MOBIKE move its IKE_SAs off the address peers dial. With connector HA that address is a
  // VIP: when keepalived moves it away, charon would roam every SA to the node's own address and tell the peers,
  // which then keep a half-working tunnel to the demoted node (their packets reach it, the cloud's replies go to
  // the new holder of the internal VIP) and never notice through DPD, since the old node still answers. Without
  // MOBIKE their SAs stay on the VIP, DPD finds them dead on the new holder, and they re-initiate (docs/ha.md).
  if (config.local.type === 'Connector') section.mobike = 'no'
  section.local = localAuth(config.local, opts)
  section.remote = { auth: 'pubkey', id: peer.id }
  section.children = children(config.local, peer, peer.name, initiator)
  return section
}

function mediatorConn(config: TunnelConfig, mediator: Endpoint, opts: DesiredOptions): ViciSection {
  const section: ViciSection = { version: '2', mediation: 'yes' }
  if (config.local.type === 'EdgeNode') {
    section.remote_addrs = [...mediator.publicAddresses]
    ports(mediator, section)
    dpd(section, opts)
    // Registered under the endpoint name (a DNS SAN of the node certificate), as FabEdge's agent does
    // (pkg/agent/manager.go ensureMediatorConnection): the server looks peers up by the `mediation_peer` the other
    // edge sends, which is this name; and on the connector the distinct identity is what selects its `mediator`
    // conn (no remote id) instead of the conn for this edge (remote id = the DN).
    section.local = { ...localAuth(config.local, opts), id: config.local.name }
    section.remote = { auth: 'pubkey', id: mediator.id }
  } else {
    // The connector is the mediation server: edges register with it; it never dials, and accepts any
    // authenticated edge (no remote id). DPD (FabEdge's connector has none) drops an edge that vanished without a
    // DELETE from the server's registry: the server forwards every request for a registered peer to that peer's
    // mediation SA, and a request forwarded to a dead one is never answered nor retried by strongSwan's client
    // (docs/mediation.md). The edges DPD this SA at the same interval, so the server's probes rarely go out.
    dpd(section, opts)
    section.local = localAuth(config.local, opts)
  }
  return section
}

export interface DesiredConns {
  conns: Record<string, ViciSection>
  initiate: string[]
  initiateChildren: Record<string, string[]>
}

export function desiredConns(config: TunnelConfig, opts: DesiredOptions): DesiredConns {
  const conns = dict<ViciSection>()
  const initiate: string[] = []
  const initiateChildren = dict<string[]>()
  if (config.mediator) {
    conns[MEDIATOR_CONN] = mediatorConn(config, config.mediator, opts)
    // Edges register with the mediator before any mediated connection can be set up.
    if (config.local.type === 'EdgeNode') {
      initiate.push(MEDIATOR_CONN)
      initiateChildren[MEDIATOR_CONN] = []
    }
  }
  // The connector first, so an edge's cloud connectivity never waits behind edge-to-edge tunnels.
  const peers = [...config.peers].sort((a, b) => (a.type === b.type ? 0 : a.type === 'Connector' ? -1 : 1))
  for (const peer of peers) {
    const section = peerConn(config, peer, opts)
    conns[peer.name] = section
    if (initiatesTo(config, peer)) {
      const kids = Object.keys(section.children as ViciSection)
      if (kids.length) {
        initiate.push(peer.name)
        initiateChildren[peer.name] = kids
      }
    }
  }
  return { conns, initiate, initiateChildren }
}
