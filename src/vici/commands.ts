// Typed VICI commands on top of ViciClient: what the agent needs from charon, with replies mapped into typed
// objects (the raw message kept alongside). Spec: the "Client-initiated commands" and "Server-issued events"
// sections of strongSwan's vici plugin README. Blocking initiate/terminate (timeout >= 0) hold a charon worker
// thread each and enough of them deadlock charon, so they run on a small bounded pool; the default is async.
import type { ViciInput, ViciMessage, ViciValue } from './codec.js'
import { ViciClient, type ViciClientOptions } from './client.js'
import { ViciError } from './errors.js'
import { dict } from '../dict.js'

export interface ViciVersion {
  daemon: string
  version: string
  sysname: string
  release: string
  machine: string
}

export interface ChildSa {
  /** CHILD_SA config name. */
  name: string
  uniqueid: string
  reqid: string | undefined
  /** e.g. INSTALLED, REKEYING, DELETING. */
  state: string
  localTs: string[]
  remoteTs: string[]
  raw: ViciMessage
}

export interface IkeSa {
  /** IKE_SA config (connection) name. */
  name: string
  uniqueid: string
  /** e.g. CONNECTING, ESTABLISHED, DELETING. */
  state: string
  localHost: string | undefined
  remoteHost: string | undefined
  localId: string | undefined
  remoteId: string | undefined
  children: ChildSa[]
  raw: ViciMessage
}

export interface ConnInfo {
  name: string
  raw: ViciMessage
}

export interface CertInfo {
  type: string
  flag: string
  hasPrivkey: boolean
  /** DER bytes. */
  data: Buffer
  subject: string | undefined
  notBefore: string | undefined
  notAfter: string | undefined
}

export interface SaTarget {
  child?: string
  ike?: string
}

export interface InitiateOptions extends SaTarget {
  /**
   * Omitted: asynchronous (`timeout = -1`, returns at once; follow `child-updown`/`ike-updown`, see
   * `watchUpdown`). A number >= 0 blocks charon's worker until done or that many ms (0 = no limit in charon,
   * but the call's own timeout still applies); such calls are bounded by `maxBlocking`.
   */
  timeoutMs?: number
  initLimits?: boolean
}

export interface TerminateOptions extends SaTarget {
  childId?: string | number
  ikeId?: string | number
  /** As for initiate: omitted = asynchronous. */
  timeoutMs?: number
  force?: boolean
}

export interface UpdownFilter extends SaTarget {
  /** Wait for up (default) or down. */
  up?: boolean
}

export interface UpdownWatch {
  /** Resolves with the matching SA (from the event), or rejects ViciError('timeout'). Unsubscribes either way. */
  wait(timeoutMs: number): Promise<IkeSa>
  cancel(): Promise<void>
}

export interface ViciOptions extends ViciClientOptions {
  /**
   * Blocking initiate/terminate calls allowed in flight at once, each on its own extra connection (opened on
   * first use). Default 4: charon has ~16 workers and ~49 parked ones deadlocked it (strongswan-netns.md).
   */
  maxBlocking?: number
}

function str(v: ViciValue | undefined): string | undefined {
  if (v === undefined) return undefined
  if (typeof v === 'string') return v
  if (Buffer.isBuffer(v)) return v.toString('utf8')
  return undefined
}

function list(v: ViciValue | undefined): string[] {
  return Array.isArray(v) ? v.map((x) => (typeof x === 'string' ? x : x.toString('utf8'))) : []
}

function section(v: ViciValue | undefined): ViciMessage | undefined {
  return v !== undefined && typeof v === 'object' && !Array.isArray(v) && !Buffer.isBuffer(v) ? v : undefined
}

/** The IKE_SAs in a `list-sa`, `ike-updown` or `child-updown` message (each keyed by connection name). */
export function parseIkeSas(msg: ViciMessage): IkeSa[] {
  const out: IkeSa[] = []
  for (const [name, v] of Object.entries(msg)) {
    const ike = section(v)
    if (!ike) continue
    const children: ChildSa[] = []
    for (const [key, cv] of Object.entries(section(ike['child-sas']) ?? {})) {
      const c = section(cv)
      if (!c) continue
      children.push({
        // charon keys child sections "<name>-<uniqueid>" in newer versions; the `name` value is authoritative
        name: str(c.name) ?? key,
        uniqueid: str(c.uniqueid) ?? '',
        reqid: str(c.reqid),
        state: str(c.state) ?? '',
        localTs: list(c['local-ts']),
        remoteTs: list(c['remote-ts']),
        raw: c,
      })
    }
    out.push({
      name,
      uniqueid: str(ike.uniqueid) ?? '',
      state: str(ike.state) ?? '',
      localHost: str(ike['local-host']),
      remoteHost: str(ike['remote-host']),
      localId: str(ike['local-id']),
      remoteId: str(ike['remote-id']),
      children,
      raw: ike,
    })
  }
  return out
}

/** The named sections of one event (a `list-conn` carries one connection, keyed by its name). */
function eachSection(ev: ViciMessage, fn: (name: string, raw: ViciMessage) => void): void {
  for (const [name, v] of Object.entries(ev)) {
    const s = section(v)
    if (s) fn(name, s)
  }
}

/**
 * Up to `max` extra connections for blocking initiate/terminate, handed out FIFO. Each holds at most one
 * blocking call (one request in flight per connection), so charon never has more than `max` workers parked by
 * us, and a blocking call never delays the main connection's queue.
 */
class BlockingPool {
  private readonly idle: ViciClient[] = []
  private readonly all: ViciClient[] = []
  private readonly waiters: Array<(c: ViciClient) => void> = []
  private closed = false

  constructor(
    private readonly max: number,
    private readonly make: () => ViciClient,
  ) {}

  async run<T>(fn: (c: ViciClient) => Promise<T>): Promise<T> {
    if (this.closed) throw new ViciError('closed', 'VICI session closed')
    let c = this.idle.pop()
    if (!c && this.all.length < this.max) {
      c = this.make()
      this.all.push(c)
    }
    c ??= await new Promise<ViciClient>((r) => this.waiters.push(r))
    try {
      return await fn(c)
    } finally {
      const next = this.waiters.shift()
      if (next) next(c)
      else this.idle.push(c)
    }
  }

  async close(): Promise<void> {
    this.closed = true
    await Promise.all(this.all.map((c) => c.close()))
  }
}

function saSelector(t: SaTarget, what: string): void {
  if (t.child === undefined && t.ike === undefined) throw new ViciError('invalid', `${what} needs child or ike`)
}

/** A VICI session with typed commands. `client` gives raw access (`call`, `stream`, `subscribe`, events). */
export class Vici {
  readonly client: ViciClient
  private readonly blocking: BlockingPool

  /** Options (a new client) or an existing client (blocking calls then use default options on its socket). */
  constructor(opts: ViciOptions | ViciClient = {}) {
    this.client = opts instanceof ViciClient ? opts : new ViciClient(opts)
    const o: ViciOptions = opts instanceof ViciClient ? { uri: opts.socketPath } : opts
    const max = o.maxBlocking ?? 4
    if (!Number.isInteger(max) || max < 1) throw new ViciError('invalid', `maxBlocking must be >= 1, got ${max}`)
    // Pool connections reconnect on demand (next call), not in the background: they hold no subscriptions. They
    // wait for a late answer for ever: charon does not abort a blocking initiate when its client goes away
    // (vici_control.c log_vici never cancels), so resetting the connection would free the slot while the worker
    // stays parked, and the pool could park more than maxBlocking of them.
    this.blocking = new BlockingPool(max, () => new ViciClient({ ...o, reconnect: false, lateAnswerMs: Number.POSITIVE_INFINITY }))
  }

  connect(): Promise<void> {
    return this.client.connect()
  }

  /** Closes the main client and the blocking-call connections. */
  async close(): Promise<void> {
    await Promise.all([this.client.close(), this.blocking.close()])
  }

  /** `swanctl --version --daemon` */
  async version(): Promise<ViciVersion> {
    const m = await this.client.call('version')
    return {
      daemon: str(m.daemon) ?? '',
      version: str(m.version) ?? '',
      sysname: str(m.sysname) ?? '',
      release: str(m.release) ?? '',
      machine: str(m.machine) ?? '',
    }
  }

  /** `swanctl --stats` (raw: the shape depends on charon's build). */
  stats(): Promise<ViciMessage> {
    return this.client.call('stats')
  }

  /** `swanctl --load-conns` for one connection: loads or replaces `name` with its swanctl.conf-shaped section. */
  async loadConn(name: string, conn: ViciInput): Promise<void> {
    // A record keyed by the name (src/dict.ts): a literal with a computed key is a plain object, which would add
    // a hidden-class transition per connection name.
    const msg = dict<ViciInput>()
    msg[name] = conn
    await this.client.call('load-conn', msg)
  }

  /** `swanctl --unload-conn`-like (swanctl unloads implicitly): `unload-conn { name }`. */
  async unloadConn(name: string): Promise<void> {
    await this.client.call('unload-conn', { name })
  }

  /** Names of connections loaded over VICI. */
  async getConns(): Promise<string[]> {
    return list((await this.client.call('get-conns')).conns)
  }

  /** `swanctl --list-conns`: every loaded connection (all backends), raw sections by name. */
  async listConns(filter: { ike?: string } = {}): Promise<ConnInfo[]> {
    const out: ConnInfo[] = []
    await this.eachConn((name, raw) => out.push({ name, raw }), filter)
    return out
  }

  /**
   * `list-conns`, each connection handed to `fn` as its event is decoded; nothing is collected, so the caller keeps
   * only what it needs of each (a listing of 10,000 connections is never held whole). An exception from `fn`
   * rejects the call.
   */
  async eachConn(fn: (name: string, raw: ViciMessage) => void, filter: { ike?: string } = {}): Promise<void> {
    await this.client.stream('list-conns', 'list-conn', { ike: filter.ike }, { onEvent: (ev) => eachSection(ev, fn) })
  }

  /** `swanctl --list-sas`: IKE_SAs with their CHILD_SAs. `noblock` skips SAs locked by a running exchange. */
  async listSas(filter: { ike?: string; ikeId?: string | number; noblock?: boolean } = {}): Promise<IkeSa[]> {
    const out: IkeSa[] = []
    await this.eachSa((sa) => out.push(sa), filter)
    return out
  }

  /** `list-sas`, each IKE_SA handed to `fn` as its event is decoded (nothing collected, as eachConn). */
  async eachSa(fn: (sa: IkeSa) => void, filter: { ike?: string; ikeId?: string | number; noblock?: boolean } = {}): Promise<void> {
    await this.client.stream('list-sas', 'list-sa', {
      ike: filter.ike,
      // as for terminate: charon (vici_query.c) reads ike-id, whatever the README says
      'ike-id': filter.ikeId === undefined ? undefined : String(filter.ikeId),
      noblock: filter.noblock ? 'yes' : undefined,
    }, { onEvent: (ev) => { for (const sa of parseIkeSas(ev)) fn(sa) } })
  }

  /** `swanctl --initiate --child X [--ike Y]`, asynchronous unless timeoutMs is given (see InitiateOptions). */
  async initiate(o: InitiateOptions): Promise<void> {
    saSelector(o, 'initiate')
    const msg = {
      child: o.child,
      ike: o.ike,
      'init-limits': o.initLimits === undefined ? undefined : o.initLimits ? 'yes' : 'no',
    }
    await this.controlCall('initiate', msg, o.timeoutMs)
  }

  /** `swanctl --terminate`, asynchronous unless timeoutMs is given. */
  async terminate(o: TerminateOptions): Promise<void> {
    if (o.child === undefined && o.ike === undefined && o.childId === undefined && o.ikeId === undefined) {
      throw new ViciError('invalid', 'terminate needs child, ike, childId or ikeId')
    }
    const msg = {
      child: o.child,
      ike: o.ike,
      // the README says child_id/ike_id, but charon (vici_control.c) reads child-id/ike-id
      'child-id': o.childId === undefined ? undefined : String(o.childId),
      'ike-id': o.ikeId === undefined ? undefined : String(o.ikeId),
      force: o.force ? 'yes' : undefined,
    }
    await this.controlCall('terminate', msg, o.timeoutMs)
  }

  /** `swanctl --load-creds` for one certificate (PEM or DER). */
  async loadCert(o: { data: string | Buffer; type?: 'X509' | 'X509_AC' | 'X509_CRL'; flag?: 'NONE' | 'CA' | 'AA' | 'OCSP' }): Promise<void> {
    await this.client.call('load-cert', { type: o.type ?? 'X509', flag: o.flag ?? 'NONE', data: o.data })
  }

  /** `swanctl --load-creds` for one private key; resolves with the key id (for unloadKey). */
  async loadKey(o: { data: string | Buffer; type?: 'rsa' | 'ecdsa' | 'bliss' | 'any' }): Promise<string> {
    const m = await this.client.call('load-key', { type: o.type ?? 'any', data: o.data })
    return str(m.id) ?? ''
  }

  /** `swanctl --load-creds` for one shared secret. `id` names it for unloadShared/getShared. */
  async loadShared(o: { data: string | Buffer; type?: 'IKE' | 'EAP' | 'XAUTH' | 'NTLM' | 'PPK'; owners?: string[]; id?: string }): Promise<void> {
    await this.client.call('load-shared', { id: o.id, type: o.type ?? 'IKE', data: o.data, owners: o.owners })
  }

  /** `swanctl --load-authorities` for one authority section (e.g. `{ cacert: <PEM> }`). */
  async loadAuthority(name: string, authority: ViciInput): Promise<void> {
    const msg = dict<ViciInput>()
    msg[name] = authority
    await this.client.call('load-authority', msg)
  }

  async unloadAuthority(name: string): Promise<void> {
    await this.client.call('unload-authority', { name })
  }

  async unloadKey(id: string): Promise<void> {
    await this.client.call('unload-key', { id })
  }

  async unloadShared(id: string): Promise<void> {
    await this.client.call('unload-shared', { id })
  }

  /** Ids of private keys loaded over VICI. */
  async getKeys(): Promise<string[]> {
    return list((await this.client.call('get-keys')).keys)
  }

  /** Ids of shared secrets loaded over VICI (only those loaded with an id). */
  async getShared(): Promise<string[]> {
    return list((await this.client.call('get-shared')).keys)
  }

  async getAuthorities(): Promise<string[]> {
    return list((await this.client.call('get-authorities')).authorities)
  }

  /** `swanctl --list-certs` (certificate data as DER Buffers). */
  async listCerts(filter: { type?: string; flag?: string; subject?: string } = {}): Promise<CertInfo[]> {
    const { events } = await this.client.stream('list-certs', 'list-cert', filter, { buffers: true })
    return events.map((e) => ({
      type: str(e.type) ?? '',
      flag: str(e.flag) ?? '',
      hasPrivkey: str(e.has_privkey) === 'yes',
      data: Buffer.isBuffer(e.data) ? e.data : Buffer.alloc(0),
      subject: str(e.subject),
      notBefore: str(e['not-before']),
      notAfter: str(e['not-after']),
    }))
  }

  /** `swanctl --list-authorities`. */
  async listAuthorities(filter: { name?: string } = {}): Promise<ConnInfo[]> {
    const out: ConnInfo[] = []
    await this.client.stream('list-authorities', 'list-authority', filter, { onEvent: (ev) => eachSection(ev, (name, raw) => out.push({ name, raw })) })
    return out
  }

  /**
   * Subscribes (resolving once charon confirmed) to `child-updown` (filter.child set) or `ike-updown`, so a
   * following initiate cannot race the event. Then `wait(timeoutMs)` for the first matching SA.
   */
  async watchUpdown(filter: UpdownFilter): Promise<UpdownWatch> {
    saSelector(filter, 'watchUpdown')
    const event = filter.child !== undefined ? 'child-updown' : 'ike-updown'
    const wantUp = filter.up ?? true
    let hit: IkeSa | undefined
    let notify: ((sa: IkeSa) => void) | undefined
    const handler = (_: string, msg: ViciMessage): void => {
      if (hit || (str(msg.up) === 'yes') !== wantUp) return
      const sa = parseIkeSas(msg).find(
        (s) =>
          (filter.ike === undefined || s.name === filter.ike) &&
          (filter.child === undefined || s.children.some((c) => c.name === filter.child)),
      )
      if (!sa) return
      hit = sa
      notify?.(sa)
    }
    await this.client.subscribe(event, handler)
    const cancel = (): Promise<void> => this.client.unsubscribe(event, handler).catch(() => undefined)
    return {
      cancel,
      wait: (timeoutMs) =>
        new Promise<IkeSa>((resolve, reject) => {
          const timer = setTimeout(() => {
            void cancel()
            const what = filter.child ?? filter.ike
            reject(new ViciError('timeout', `${event} ${wantUp ? 'up' : 'down'} for ${what} not seen in ${timeoutMs} ms`))
          }, timeoutMs)
          notify = (sa) => {
            clearTimeout(timer)
            void cancel()
            resolve(sa)
          }
          if (hit) notify(hit)
        }),
    }
  }

  /** Async initiate, then wait for the matching up event. Rejects with `timeout` or the initiate's error. */
  async initiateAndWait(target: SaTarget, timeoutMs: number): Promise<IkeSa> {
    const watch = await this.watchUpdown(target)
    try {
      await this.initiate(target)
    } catch (e) {
      await watch.cancel()
      throw e
    }
    return watch.wait(timeoutMs)
  }

  private async controlCall(command: string, msg: Record<string, string | undefined>, timeoutMs: number | undefined): Promise<void> {
    if (timeoutMs === undefined) {
      await this.client.call(command, { ...msg, timeout: '-1' })
      return
    }
    if (!Number.isInteger(timeoutMs) || timeoutMs < 0) throw new ViciError('invalid', `${command} timeoutMs must be an integer >= 0`)
    // Our own timeout a little later than charon's, so charon's answer (with its errmsg) normally wins.
    const callTimeout = timeoutMs === 0 ? undefined : timeoutMs + 2_000
    await this.blocking.run((c) => c.call(command, { ...msg, timeout: String(timeoutMs) }, { timeoutMs: callTimeout }))
  }
}
