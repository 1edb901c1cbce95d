// The tunnels subsystem's port: the few charon operations it needs (observe connections, SAs and credentials;
// load/unload connections and our own credentials; initiate/terminate; SA events and connection-state
// notifications), and the real adapter over our VICI session. Unit tests drive the subsystem through an in-memory
// charon (test/harness/charon-fake.ts); the adapter is proven against real charon in network namespaces.
import type { ViciSection } from '../desired/types.js'
import type { Vici } from '../vici/index.js'
import { parseIkeSas, type IkeSa } from '../vici/commands.js'
import type { ViciMessage } from '../vici/codec.js'
import { compactListed, type ListedConn, type ListInterner, type ObservedIkeSa } from './tunnels.js'

export interface PortCert {
  /** `NONE` for an end-entity certificate, `CA` for an authority. */
  flag: string
  hasPrivkey: boolean
  /** DER bytes. */
  data: Buffer
}

export type SaEvent = 'ike-updown' | 'child-updown'

export interface SaEventHandler {
  (event: SaEvent, up: boolean, sas: ObservedIkeSa[]): void
}

export interface ConnectionHandlers {
  /** The session to charon came back (charon may have restarted and forgotten everything loaded over VICI). */
  reconnected(): void
  disconnected(err: Error): void
}

export interface TunnelsPort {
  /**
   * `list-conns`: every loaded connection by name, reduced with compactListed (the real adapter reduces each
   * connection as charon streams it, so the full listing is never held).
   */
  listConns(): Promise<Map<string, ListedConn>>
  /**
   * `list-sas` (blocking: an IKE_SA in its first exchange is listed, not skipped); `ike`: only the IKE_SAs of that
   * connection.
   */
  listSas(filter?: { ike?: string }): Promise<ObservedIkeSa[]>
  loadConn(name: string, section: ViciSection): Promise<void>
  unloadConn(name: string): Promise<void>
  /** Asynchronous initiate (returns once charon queued it). */
  initiate(target: { ike: string; child?: string }): Promise<void>
  /** Asynchronous terminate (force: no DELETE exchange wait), or blocking up to `timeoutMs`. */
  terminate(target: { ikeId?: string; childId?: string }, timeoutMs?: number): Promise<void>
  /** `list-certs` of X.509 certificates (end-entity and CA). */
  listCerts(): Promise<PortCert[]>
  /** `get-keys`: ids (hex SHA-1 of the public key) of the private keys loaded over VICI, anyone's. */
  getKeys(): Promise<string[]>
  loadCert(pem: string): Promise<void>
  /** Resolves with charon's key id. */
  loadKey(pem: string): Promise<string>
  unloadKey(id: string): Promise<void>
  /** `get-authorities`: names of the authorities loaded over VICI, anyone's. */
  getAuthorities(): Promise<string[]>
  /** Loads or replaces the authority `name` holding one CA certificate. */
  loadAuthority(name: string, caPem: string): Promise<void>
  unloadAuthority(name: string): Promise<void>
  /** Subscribes to ike-updown and child-updown; resolves once charon confirmed. */
  subscribe(handler: SaEventHandler): Promise<void>
  /** Connection-state notifications (registered once, synchronously). */
  onConnection(handlers: ConnectionHandlers): void
}

export function observedSa(s: IkeSa): ObservedIkeSa {
  return {
    name: s.name,
    uniqueid: s.uniqueid,
    state: s.state,
    ...(s.localId !== undefined ? { localId: s.localId } : {}),
    children: s.children.map((c) => ({ name: c.name, uniqueid: c.uniqueid, state: c.state })),
  }
}

/** The real port over a VICI session. */
export function viciTunnelsPort(vici: Vici): TunnelsPort {
  return {
    listConns: async () => {
      const out = new Map<string, ListedConn>()
      const lists: ListInterner = new Map()
      await vici.eachConn((name, raw) => out.set(name, compactListed(raw as ListedConn, lists)))
      return out
    },
    listSas: async (filter) => {
      const out: ObservedIkeSa[] = []
      await vici.eachSa((sa) => out.push(observedSa(sa)), filter?.ike !== undefined ? { ike: filter.ike } : {})
      return out
    },
    loadConn: (name, section) => vici.loadConn(name, section),
    unloadConn: (name) => vici.unloadConn(name),
    initiate: (t) => vici.initiate(t.child === undefined ? { ike: t.ike } : { ike: t.ike, child: t.child }),
    terminate: (t, timeoutMs) =>
      vici.terminate({ ...(t.ikeId !== undefined ? { ikeId: t.ikeId } : {}), ...(t.childId !== undefined ? { childId: t.childId } : {}), force: true, ...(timeoutMs !== undefined ? { timeoutMs } : {}) }),
    listCerts: async () => (await vici.listCerts({ type: 'X509' })).map((c) => ({ flag: c.flag, hasPrivkey: c.hasPrivkey, data: c.data })),
    getKeys: () => vici.getKeys(),
    loadCert: (pem) => vici.loadCert({ data: pem }),
    loadKey: (pem) => vici.loadKey({ data: pem }),
    unloadKey: (id) => vici.unloadKey(id),
    getAuthorities: () => vici.getAuthorities(),
    loadAuthority: (name, caPem) => vici.loadAuthority(name, { cacert: caPem }),
    unloadAuthority: (name) => vici.unloadAuthority(name),
    subscribe: (handler) =>
      vici.client.subscribe(['ike-updown', 'child-updown'], (event: string, msg: ViciMessage) => {
        handler(event as SaEvent, msg.up === 'yes', parseIkeSas(msg).map(observedSa))
      }),
    onConnection: (h) => {
      vici.client.on('reconnected', () => h.reconnected())
      vici.client.on('disconnected', (err) => h.disconnected(err))
    },
  }
}
