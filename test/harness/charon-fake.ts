// An in-memory charon behind the tunnels subsystem's port (TunnelsPort), for unit tests of plan, apply and every
// fault path: connections, IKE/CHILD SAs with events, and a VICI credential store (certificates, keys by id,
// authorities by name, like strongSwan 5.9.8's vici_cred.c / vici_authority.c). Scriptable: failing or slow
// calls, initiates that stay in negotiation (charon lists a child only once its exchange is done), initiates
// answered by a down event, down events of terminated SAs delivered late (after later calls, as real charon may),
// a restart with reconnect, and a reconnect of the session to a charon that kept everything. A stand-in for unit tests only: the real adapter is
// proven against real charon in test/integration.
import { createHash, createPublicKey, X509Certificate } from 'node:crypto'
import type { ViciSection } from '../../src/desired/types.js'
import type { ConnectionHandlers, PortCert, SaEvent, SaEventHandler, TunnelsPort } from '../../src/reconcile/tunnels-port.js'
import { compactListed, type ListedConn, type ObservedIkeSa } from '../../src/reconcile/tunnels.js'

/** What an initiate does: `up` at once (with events), `pending` until complete(), `down` (a down event), `reject` (the call fails). */
export type InitiateOutcome = 'up' | 'pending' | 'down' | 'reject'

type PortMethod = keyof Omit<TunnelsPort, 'subscribe' | 'onConnection'>

interface FakeSa {
  name: string
  uniqueid: string
  state: string
  localId: string
  children: Array<{ name: string; uniqueid: string; state: string }>
}

/** SHA-1 over the SubjectPublicKeyInfo's BIT STRING content: found by scanning for the last BIT STRING. */
function keyIdOfPublic(spki: Buffer): string {
  // The BIT STRING is the SPKI's last element: 0x03, a length, 0x00 (unused bits), then the key.
  for (let i = spki.length - 2; i >= 0; i--) {
    if (spki[i] !== 0x03) continue
    let len = spki[i + 1]!
    let start = i + 2
    if (len & 0x80) {
      const n = len & 0x7f
      len = 0
      for (let k = 0; k < n; k++) len = len * 256 + spki[start + k]!
      start += n
    }
    if (start + len === spki.length && spki[start] === 0) return createHash('sha1').update(spki.subarray(start + 1)).digest('hex')
  }
  throw new Error('no BIT STRING in SPKI')
}

function pemDer(pem: string): Buffer {
  return Buffer.from(pem.replace(/-----(BEGIN|END) CERTIFICATE-----/g, '').replace(/\s+/g, ''), 'base64')
}

/** charon 5.9.8's list-conns rendering of a loaded section (captured shape, see test/fixtures/vici). */
export function charonListing(section: ViciSection): ListedConn {
  const children: Record<string, unknown> = {}
  for (const [n, c] of Object.entries((section.children ?? {}) as Record<string, ViciSection>)) {
    children[n] = { mode: 'TUNNEL', rekey_time: '3600', dpd_action: c.dpd_action === 'clear' ? 'none' : c.dpd_action ?? 'none', close_action: 'none', 'local-ts': c.local_ts, 'remote-ts': c.remote_ts }
  }
  const local = (section.local ?? {}) as ViciSection
  const remote = section.remote as ViciSection | undefined
  const out: ListedConn = {
    local_addrs: ['%any'], remote_addrs: section.remote_addrs ?? ['%any'], version: 'IKEv2', reauth_time: '0', rekey_time: '14400', unique: 'UNIQUE_NO',
    'local-1': { id: local.id, class: 'public key', groups: [], certs: [] },
    'remote-1': remote ? { id: remote.id, class: 'public key', groups: [], certs: [] } : { groups: [], certs: [] },
    children,
  }
  if (typeof section.dpd_delay === 'string') out.dpd_delay = String(parseInt(section.dpd_delay, 10))
  return out
}

export class FakeCharon implements TunnelsPort {
  readonly conns = new Map<string, ViciSection>()
  /** Connections loaded by someone else (e.g. another VPN), listed as given. */
  readonly foreignConns = new Map<string, ListedConn>()
  sas: FakeSa[] = []
  readonly certs: Array<{ flag: 'NONE' | 'CA'; der: Buffer; by: 'cert' | 'authority' }> = []
  readonly keys = new Map<string, string>()
  readonly authorities = new Map<string, string>()
  /** Every call, in order, e.g. `initiate beijing.connector/beijing.connector-p2p`. */
  readonly calls: string[] = []
  /** Scripted failures: a method -> a function returning the error to throw (or undefined) for its argument. */
  readonly failures = new Map<PortMethod, (arg: string) => Error | undefined>()
  /** Scripted delays (ms) per method. */
  readonly delays = new Map<PortMethod, number>()
  /** What an initiate does, per `conn/child` (child '' for an IKE-only initiate). Default `up`. */
  outcome: (conn: string, child: string) => InitiateOutcome = () => 'up'
  /**
   * Late down events of terminated SAs, delivered by deliverLate(). `deletion`: `terminate` only queues the
   * deletion, as real charon does (its terminate job runs later, e.g. after the agent's initiate of the replacing
   * child): the SA stays listed as it was until its deletion runs and sends the event. `event`: the SA leaves the
   * listing at once, only its down event comes late (the event reaching the agent after a later listing).
   */
  lateDownEvents: false | 'deletion' | 'event' = false
  private readonly late: Array<() => void> = []
  private readonly pending: Array<{ conn: string; child: string }> = []
  private handlers: SaEventHandler[] = []
  private connection: ConnectionHandlers | null = null
  private nextId = 1

  constructor(readonly localId = 'C=CN, O=fabedge.io, CN=beijing.edge1') {}

  private async call(method: PortMethod, arg = ''): Promise<void> {
    this.calls.push(arg ? `${method} ${arg}` : method)
    const delay = this.delays.get(method)
    if (delay) await new Promise((r) => setTimeout(r, delay))
    const err = this.failures.get(method)?.(arg)
    if (err) throw err
  }

  /** Fails `method` (for arguments matching `match`, default all) with a charon-like error. */
  fail(method: PortMethod, match: (arg: string) => boolean = () => true, message = `${method} failed`): void {
    this.failures.set(method, (arg) => (match(arg) ? new Error(message) : undefined))
  }

  heal(method?: PortMethod): void {
    if (method) this.failures.delete(method)
    else this.failures.clear()
  }

  async listConns(): Promise<Map<string, ListedConn>> {
    await this.call('listConns')
    const out = new Map<string, ListedConn>()
    // Reduced like the real adapter's listing (the port's contract).
    for (const [name, section] of this.conns) out.set(name, compactListed(charonListing(section)))
    for (const [name, listed] of this.foreignConns) out.set(name, compactListed(listed))
    return out
  }

  async listSas(filter?: { ike?: string }): Promise<ObservedIkeSa[]> {
    await this.call('listSas', filter?.ike ?? '')
    return structuredClone(filter?.ike !== undefined ? this.sas.filter((s) => s.name === filter.ike) : this.sas)
  }

  async loadConn(name: string, section: ViciSection): Promise<void> {
    await this.call('loadConn', name)
    this.conns.set(name, structuredClone(section))
  }

  async unloadConn(name: string): Promise<void> {
    await this.call('unloadConn', name)
    if (!this.conns.delete(name) && !this.foreignConns.delete(name)) throw new Error(`unload: connection '${name}' not found`)
  }

  async initiate(t: { ike: string; child?: string }): Promise<void> {
    const child = t.child ?? ''
    await this.call('initiate', `${t.ike}/${child}`)
    if (!this.conns.has(t.ike)) throw new Error(`no config named '${t.ike}'`)
    const outcome = this.outcome(t.ike, child)
    if (outcome === 'reject') throw new Error(`establishing CHILD_SA '${child}' failed`)
    if (outcome === 'pending') {
      // The IKE_SA shows up at once (CONNECTING when new); the child only once its exchange is done.
      if (!this.sas.some((s) => s.name === t.ike)) this.sas.push(this.newSa(t.ike, 'CONNECTING'))
      this.pending.push({ conn: t.ike, child })
      return
    }
    if (outcome === 'down') {
      this.emit('child-updown', false, [{ name: t.ike, uniqueid: '0', state: 'CONNECTING', children: child ? [{ name: child, uniqueid: '0', state: 'DELETING' }] : [] }])
      return
    }
    this.establish(t.ike, child)
  }

  /** Completes the pending negotiations: the children appear and up events are sent. */
  complete(): void {
    for (const p of this.pending.splice(0)) this.establish(p.conn, p.child)
  }

  private newSa(conn: string, state: string): FakeSa {
    return { name: conn, uniqueid: String(this.nextId++), state, localId: this.localId, children: [] }
  }

  private establish(conn: string, child: string): void {
    let sa = this.sas.find((s) => s.name === conn)
    if (!sa) {
      sa = this.newSa(conn, 'ESTABLISHED')
      this.sas.push(sa)
    }
    const wasUp = sa.state === 'ESTABLISHED'
    sa.state = 'ESTABLISHED'
    if (!wasUp || child === '') this.emit('ike-updown', true, [structuredClone(sa)])
    if (child) {
      const c = { name: child, uniqueid: String(this.nextId++), state: 'INSTALLED' }
      sa.children.push(c)
      this.emit('child-updown', true, [{ ...structuredClone(sa), children: [c] }])
    }
  }

  /** INSTALLED CHILD_SAs per child name (duplicates show as counts above 1). */
  installed(): Map<string, number> {
    const out = new Map<string, number>()
    for (const sa of this.sas) for (const c of sa.children) if (c.state === 'INSTALLED') out.set(c.name, (out.get(c.name) ?? 0) + 1)
    return out
  }

  async terminate(t: { ikeId?: string; childId?: string }): Promise<void> {
    await this.call('terminate', t.ikeId !== undefined ? `ike#${t.ikeId}` : `child#${t.childId}`)
    if (t.ikeId !== undefined) {
      const sa = this.sas.find((s) => s.uniqueid === t.ikeId)
      if (!sa) throw new Error(`no IKE_SA #${t.ikeId} found`)
      this.deleting(
        () => (this.sas = this.sas.filter((s) => s !== sa)),
        () => this.emit('ike-updown', false, [sa]),
      )
      return
    }
    for (const sa of this.sas) {
      const c = sa.children.find((k) => k.uniqueid === t.childId)
      if (!c) continue
      const event = { ...structuredClone(sa), children: [c] }
      this.deleting(
        () => (sa.children = sa.children.filter((k) => k !== c)),
        () => this.emit('child-updown', false, [event]),
      )
      return
    }
    throw new Error(`no CHILD_SA #${t.childId} found`)
  }

  private deleting(remove: () => void, event: () => void): void {
    if (this.lateDownEvents === 'deletion') {
      this.late.push(() => {
        remove()
        event()
      })
      return
    }
    remove()
    if (this.lateDownEvents === 'event') this.late.push(event)
    else event()
  }

  /** Runs what lateDownEvents held back (deletions with their events, or events), in order. */
  deliverLate(): void {
    for (const run of this.late.splice(0)) run()
  }

  /** A CHILD_SA goes down on its own (peer deleted it, DPD). */
  drop(conn: string, child: string): void {
    for (const sa of this.sas.filter((s) => s.name === conn)) {
      const c = sa.children.find((k) => k.name === child)
      if (!c) continue
      sa.children = sa.children.filter((k) => k !== c)
      this.emit('child-updown', false, [{ ...sa, children: [c] }])
    }
  }

  async listCerts(): Promise<PortCert[]> {
    await this.call('listCerts')
    const keyIds = new Set(this.keys.keys())
    return this.certs.map((c) => ({
      flag: c.flag,
      hasPrivkey: c.flag === 'NONE' && keyIds.has(keyIdOfPublic(new X509Certificate(c.der).publicKey.export({ type: 'spki', format: 'der' }))),
      data: c.der,
    }))
  }

  async getKeys(): Promise<string[]> {
    await this.call('getKeys')
    return [...this.keys.keys()]
  }

  async loadCert(pem: string): Promise<void> {
    await this.call('loadCert')
    const der = pemDer(pem)
    // mem_cred keeps one copy of equal certificates.
    if (!this.certs.some((c) => c.der.equals(der))) this.certs.push({ flag: 'NONE', der, by: 'cert' })
  }

  async loadKey(pem: string): Promise<string> {
    await this.call('loadKey')
    const id = keyIdOfPublic(createPublicKey(pem).export({ type: 'spki', format: 'der' }))
    this.keys.set(id, pem)
    return id
  }

  async unloadKey(id: string): Promise<void> {
    await this.call('unloadKey', id)
    if (!this.keys.delete(id)) throw new Error('key not found')
  }

  async getAuthorities(): Promise<string[]> {
    await this.call('getAuthorities')
    return [...this.authorities.keys()]
  }

  async loadAuthority(name: string, caPem: string): Promise<void> {
    await this.call('loadAuthority', name)
    const prev = this.authorities.get(name)
    if (prev) this.removeAuthorityCert(prev)
    this.authorities.set(name, caPem)
    this.certs.push({ flag: 'CA', der: pemDer(caPem), by: 'authority' })
  }

  async unloadAuthority(name: string): Promise<void> {
    await this.call('unloadAuthority', name)
    const prev = this.authorities.get(name)
    if (prev === undefined) throw new Error(`unload: authority '${name}' not found`)
    this.authorities.delete(name)
    this.removeAuthorityCert(prev)
  }

  private removeAuthorityCert(pem: string): void {
    const der = pemDer(pem)
    const i = this.certs.findIndex((c) => c.by === 'authority' && c.der.equals(der))
    if (i >= 0) this.certs.splice(i, 1)
  }

  /** `clear-creds`: what the agent must never send (it wipes every VPN's credentials). */
  clearCreds(): void {
    this.calls.push('clearCreds')
    this.keys.clear()
    this.authorities.clear()
    this.certs.length = 0
  }

  async subscribe(handler: SaEventHandler): Promise<void> {
    this.calls.push('subscribe')
    const err = this.failures.get('subscribe' as PortMethod)?.('')
    if (err) throw err
    this.handlers.push(handler)
  }

  /** Handlers registered by subscribe (one per subscription). */
  get subscribers(): number {
    return this.handlers.length
  }

  onConnection(h: ConnectionHandlers): void {
    this.connection = h
  }

  emit(event: SaEvent, up: boolean, sas: ObservedIkeSa[]): void {
    for (const h of this.handlers) h(event, up, structuredClone(sas))
  }

  /** charon restarts: everything loaded over VICI and every SA is gone; the session reconnects. */
  restart(): void {
    this.conns.clear()
    this.sas = []
    this.keys.clear()
    this.authorities.clear()
    this.certs.length = 0
    this.pending.length = 0
    this.late.length = 0
    this.connection?.disconnected(new Error('VICI socket closed'))
    this.connection?.reconnected()
  }

  /** The session drops and comes back while charon keeps everything (the client gave up on a late answer). */
  reconnect(): void {
    this.connection?.disconnected(new Error('VICI request timed out'))
    this.connection?.reconnected()
  }
}
