// The tunnels subsystem over a live charon (VICI): observe `list-conns`, `list-sas` and `list-certs`, plan with
// the pure planTunnels, apply with load-conn / initiate (asynchronous) / terminate / unload-conn. Credentials are
// loaded at start, after every charon restart and when the files change. VICI `ike-updown` / `child-updown` and
// reconnects trigger passes, so a tunnel that went down is re-initiated at once (with per-peer backoff when it
// keeps failing).
import type { Desired, ViciSection } from '../desired/types.js'
import type { Logger } from '../log.js'
import type { Vici } from '../vici/index.js'
import type { ViciMessage } from '../vici/codec.js'
import { CredentialsError, type CredentialPaths, type Credentials, readCredentials } from './credentials.js'
import type { PassContext, Subsystem, SubsystemPlan } from './subsystem.js'
import {
  connUp,
  planTunnels,
  type BackoffPolicy,
  type InitiateState,
  type ListedConn,
  type ObservedIkeSa,
  type ObservedTunnels,
  type TunnelOp,
} from './tunnels.js'

export interface TunnelsPlan extends SubsystemPlan {
  ops: TunnelOp[]
  credentials: Credentials | null
  /** Broken credential files seen by this plan: reported after the ops are applied. */
  credentialError: Error | null
  observed: ObservedTunnels
  waiting: Array<{ conn: string; until: number; reason: string }>
}

export interface PeerStatus {
  name: string
  type: string
  initiator: boolean
  loaded: boolean
  ike: Array<{ uniqueid: string; state: string }>
  children: Array<{ name: string; uniqueid: string; state: string }>
  childrenDesired: number
  childrenUp: number
  state: 'up' | 'partial' | 'connecting' | 'down' | 'waiting'
  since: string
  lastError: string | null
  waiting: string | null
}

export interface TunnelsOptions {
  credentials: CredentialPaths | null
  log: Logger
  /** Ask the agent for a pass (VICI events, reconnects). */
  trigger: (reason: string) => void
  triggerAt: (when: number, reason: string) => void
  backoff?: BackoffPolicy
  now?: () => number
}

const UP_STATES = new Set(['INSTALLED', 'REKEYING', 'REKEYED'])

export class ViciTunnels implements Subsystem<TunnelsPlan> {
  readonly name = 'tunnels' as const
  /** conn -> hash of the section loaded into this charon instance; cleared when charon restarts. */
  private readonly loaded = new Map<string, string>()
  private readonly initiate = new Map<string, InitiateState>()
  private credsLoaded: string | null = null
  private readonly now: () => number
  private lastObserved: ObservedTunnels | null = null
  private lastDesired: Desired | null = null
  private lastWaiting = new Map<string, string>()
  private readonly since = new Map<string, { state: string; at: number }>()
  private readonly lastError = new Map<string, string>()
  private subscribed = false
  readonly counters = { loads: 0, unloads: 0, initiates: 0, terminates: 0, credentialLoads: 0, reconnects: 0 }

  constructor(readonly vici: Vici, private readonly opts: TunnelsOptions) {
    this.now = opts.now ?? Date.now
    vici.client.on('reconnected', () => {
      // charon may have restarted and forgotten everything: forget what we believe it holds, then resync.
      this.loaded.clear()
      this.listedConns = null
      this.credsLoaded = null
      this.counters.reconnects++
      opts.log.warn({ op: 'vici-reconnected' }, 'reconnected to charon; reloading connections and credentials')
      opts.trigger('vici:reconnected')
    })
    vici.client.on('disconnected', (err) => {
      opts.log.error({ err: err.message }, 'lost the connection to charon; reconnecting')
    })
  }

  /** Subscribes to SA up/down events; safe to call again. */
  async subscribe(): Promise<void> {
    if (this.subscribed) return
    await this.vici.client.subscribe(['ike-updown', 'child-updown'], (event, msg) => this.onEvent(event, msg))
    this.subscribed = true
  }

  private onEvent(event: string, msg: ViciMessage): void {
    for (const [conn, v] of Object.entries(msg)) {
      if (conn === 'up') continue
      const up = (msg as Record<string, unknown>).up === 'yes'
      this.opts.log.info({ op: event, conn, up, state: (v as Record<string, unknown>)?.state }, `${event} ${up ? 'up' : 'down'}`)
    }
    this.opts.trigger(`vici:${event}`)
  }

  private credentials: Credentials | null = null
  private listedConns: Map<string, ListedConn> | null = null

  async plan(desired: Desired, ctx: PassContext): Promise<TunnelsPlan> {
    this.lastDesired = desired
    // charon was not up when we started (a failed first connect is not retried by the client, so no `reconnected`
    // will come): subscribe as soon as a pass can reach it, or SA events would never trigger passes.
    if (!this.subscribed) await this.subscribe()
    // Broken credential files (unreadable, not PEM, key not matching the certificate) are reported, and the last
    // good credentials stay in force, like the last good config.
    let credentialError: Error | null = null
    if (this.opts.credentials && (ctx.credentials || !this.credentials)) {
      try {
        this.credentials = await readCredentials(this.opts.credentials)
      } catch (err) {
        if (!(err instanceof CredentialsError)) throw err
        credentialError = err
        this.opts.log.error({ op: 'credentials', code: err.code, file: err.file, err: err.message }, this.credentials ? 'credentials rejected; keeping the last good ones' : 'credentials rejected')
      }
    }
    const credentials = this.credentials
    // What charon has loaded only changes through load-conn/unload-conn: re-listed on deep passes, otherwise the
    // last listing as amended by our own applied ops (see PassContext).
    if (ctx.deep || !this.listedConns) {
      this.listedConns = new Map((await this.vici.listConns()).map((c) => [c.name, c.raw as ListedConn]))
    }
    // Not `noblock`: an IKE_SA in the middle of its first exchange would be left out, look missing, and be
    // initiated a second time.
    const sas = await this.vici.listSas()
    const observed: ObservedTunnels = {
      conns: this.listedConns,
      sas: sas.map((s) => ({ name: s.name, uniqueid: s.uniqueid, state: s.state, children: s.children.map((c) => ({ name: c.name, uniqueid: c.uniqueid, state: c.state })) })),
    }
    this.lastObserved = observed
    this.trackStates(desired, observed.sas)
    let needCreds: Credentials | null = null
    if (credentials && this.credsLoaded !== credentials.fingerprint) {
      needCreds = (await this.credentialsPresent(credentials)) ? null : credentials
      // Present in charon already (agent restart): adopt without a write.
      if (!needCreds) this.credsLoaded = credentials.fingerprint
    }
    const { ops, waiting } = planTunnels({ desired, observed, loaded: this.loaded, initiate: this.initiate, now: this.now(), ...(this.opts.backoff ? { backoff: this.opts.backoff } : {}) })
    this.lastWaiting = new Map(waiting.map((w) => [w.conn, w.reason]))
    for (const w of waiting) this.opts.triggerAt(w.until, `backoff:${w.conn}`)
    const writes = ops.length + (needCreds ? 1 : 0)
    if (credentialError && writes === 0) throw credentialError
    return {
      ops,
      credentials: needCreds,
      credentialError,
      observed,
      waiting,
      writes,
      describe: () => [
        ...(needCreds ? ['load credentials (certificate, private key, CA)'] : []),
        ...ops.map(describeOp),
      ],
    }
  }

  /** Whether charon holds our certificate with its private key, and our CA. */
  private async credentialsPresent(c: Credentials): Promise<boolean> {
    const certs = await this.vici.listCerts({ type: 'X509' })
    const mine = certs.some((x) => x.flag !== 'CA' && x.hasPrivkey && x.data.equals(c.certDer))
    const cas = c.caDers.every((der) => certs.some((x) => x.data.equals(der)))
    return mine && cas
  }

  async apply(plan: TunnelsPlan): Promise<number> {
    const { log } = this.opts
    let done = 0
    const failures: string[] = []
    if (plan.credentials) {
      const c = plan.credentials
      // A rotated certificate has the same subject as the old one: clear first, or charon may keep using the old.
      if (this.credsLoaded !== null || (await this.vici.listCerts({ type: 'X509' })).some((x) => x.flag !== 'CA')) {
        await this.vici.client.call('clear-creds')
      }
      for (const ca of c.caPems) await this.vici.loadCert({ data: ca, flag: 'CA' })
      await this.vici.loadCert({ data: c.certPem })
      await this.vici.loadKey({ data: await c.readKey() })
      // charon accepts any key; it only pairs it with the certificate whose public key matches. A key that does
      // not belong to the certificate would fail every authentication later, so say it now.
      if (!(await this.credentialsPresent(c))) {
        throw new CredentialsError('EMISMATCH', this.opts.credentials!.key, 'the private key does not belong to the certificate (charon holds the certificate without its key)')
      }
      this.credsLoaded = c.fingerprint
      this.counters.credentialLoads++
      log.info({ op: 'load-credentials', fingerprint: c.fingerprint }, 'credentials loaded into charon')
      done++
    }
    const now = this.now()
    for (const op of plan.ops) {
      try {
        switch (op.op) {
          case 'load':
            await this.vici.loadConn(op.conn, op.section)
            this.loaded.set(op.conn, op.hash)
            this.listedConns?.set(op.conn, listedFromSection(op.section))
            this.counters.loads++
            break
          case 'unload':
            await this.vici.unloadConn(op.conn)
            this.loaded.delete(op.conn)
            this.listedConns?.delete(op.conn)
            this.initiate.delete(op.conn)
            this.counters.unloads++
            break
          case 'terminate-ike':
            await this.vici.terminate({ ikeId: op.ikeId, force: true })
            this.counters.terminates++
            break
          case 'terminate-child':
            await this.vici.terminate({ childId: op.childId, force: true })
            this.counters.terminates++
            break
          case 'initiate-ike':
          case 'initiate-child': {
            const prev = this.initiate.get(op.conn)
            if (!prev || prev.lastAttempt !== now) this.initiate.set(op.conn, { lastAttempt: now, failures: prev ? prev.failures + 1 : 0 })
            await this.vici.initiate(op.op === 'initiate-ike' ? { ike: op.conn } : { child: op.child })
            this.counters.initiates++
            break
          }
        }
        done++
        log.debug({ op: op.op, conn: op.conn }, describeOp(op))
      } catch (err) {
        const msg = `${describeOp(op)}: ${(err as Error).message}`
        this.lastError.set(op.conn, msg)
        failures.push(msg)
        log.error({ op: op.op, conn: op.conn, err: (err as Error).message }, 'tunnel operation failed')
      }
    }
    if (failures.length) throw new Error(`${failures.length} tunnel operation(s) failed: ${failures.slice(0, 3).join('; ')}`)
    if (plan.credentialError) throw plan.credentialError
    return done
  }

  private trackStates(desired: Desired, sas: ObservedIkeSa[]): void {
    const now = this.now()
    for (const conn of Object.keys(desired.conns)) {
      const kids = Object.keys((desired.conns[conn]!.children ?? {}) as object)
      const up = connUp(conn, kids, sas)
      if (up) {
        this.initiate.delete(conn)
        this.lastError.delete(conn)
      }
      const state = up ? 'up' : sas.some((s) => s.name === conn) ? 'connecting' : 'down'
      const prev = this.since.get(conn)
      if (!prev || prev.state !== state) this.since.set(conn, { state, at: now })
    }
  }

  /** Per-peer tunnel state from the last observation, for /status and metrics. */
  peers(): PeerStatus[] {
    const d = this.lastDesired
    const o = this.lastObserved
    if (!d || !o) return []
    return Object.entries(d.conns).map(([name, section]) => {
      const kids = Object.keys((section.children ?? {}) as object)
      const sas = o.sas.filter((s) => s.name === name)
      const children = sas.flatMap((s) => s.children)
      const upKids = kids.filter((k) => children.some((c) => c.name === k && UP_STATES.has(c.state)))
      const established = sas.some((s) => s.state === 'ESTABLISHED')
      let state: PeerStatus['state']
      if (kids.length === 0 ? established : upKids.length === kids.length) state = 'up'
      else if (upKids.length > 0) state = 'partial'
      else if (sas.length > 0) state = 'connecting'
      else if (this.lastWaiting.has(name)) state = 'waiting'
      else state = 'down'
      const since = this.since.get(name)
      return {
        name,
        type: name === 'mediator' ? 'Mediator' : 'Peer',
        initiator: d.initiate.includes(name),
        loaded: o.conns.has(name),
        ike: sas.map((s) => ({ uniqueid: s.uniqueid, state: s.state })),
        children: children.map((c) => ({ name: c.name, uniqueid: c.uniqueid, state: c.state })),
        childrenDesired: kids.length,
        childrenUp: upKids.length,
        state,
        since: new Date(since?.at ?? this.now()).toISOString(),
        lastError: this.lastError.get(name) ?? null,
        waiting: this.lastWaiting.get(name) ?? null,
      }
    })
  }

  summary(): Record<string, unknown> {
    return { loadedThisInstance: this.loaded.size, credentialsLoaded: this.credsLoaded !== null, counters: { ...this.counters } }
  }
}

/** What `list-conns` will show for a section we just loaded (the projection's fields), for the cached listing. */
export function listedFromSection(section: ViciSection): ListedConn {
  const children: Record<string, unknown> = {}
  for (const [name, c] of Object.entries((section.children ?? {}) as Record<string, ViciSection>)) {
    children[name] = { 'local-ts': c.local_ts, 'remote-ts': c.remote_ts, dpd_action: c.dpd_action }
  }
  const local = (section.local ?? {}) as ViciSection
  const remote = (section.remote ?? {}) as ViciSection
  const out: ListedConn = {
    remote_addrs: section.remote_addrs ?? ['%any'],
    'local-1': { id: local.id },
    'remote-1': remote.id === undefined ? {} : { id: remote.id },
    children,
  }
  if (section.dpd_delay !== undefined) out.dpd_delay = section.dpd_delay
  return out
}

export function describeOp(op: TunnelOp): string {
  switch (op.op) {
    case 'load':
      return `load-conn ${op.conn} (${op.reason})`
    case 'unload':
      return `unload-conn ${op.conn}`
    case 'terminate-ike':
      return `terminate ike ${op.conn} #${op.ikeId}`
    case 'terminate-child':
      return `terminate child ${op.child} #${op.childId}`
    case 'initiate-ike':
      return `initiate ike ${op.conn}`
    case 'initiate-child':
      return `initiate child ${op.child}`
  }
}
