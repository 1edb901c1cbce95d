// The tunnels subsystem proper: makes charon hold our connections, credentials and SAs as desired, through the
// TunnelsPort. A pass runs `prepare` (the explicit state steps: subscribe to SA events once charon is reachable,
// read the credential files, forget peers that left the config), then `plan` (observe charon and plan with the
// pure planTunnels; no side effects beyond caching what it observed and the status read model), then `apply`
// (credentials, load-conn, terminate, asynchronous initiates, unload-conn; then the credentials we rotated away
// from). SA events and reconnects trigger passes; backoff waits come back to the engine as `wakes`.
import { dict } from '../dict.js'
import { MEDIATOR_CONN } from '../fabedge.js'
import type { Desired, ViciSection } from '../desired/types.js'
import type { Logger } from '../log.js'
import type { MediationHook } from '../mediation/controller.js'
import { NO_CREDENTIALS_CHANGE, OwnCredentials, type CredentialPaths, type CredentialsChange } from './credentials.js'
import { SaStateTracker } from './sa-state.js'
import type { PassContext, Subsystem, SubsystemPlan } from './subsystem.js'
import type { SaEvent, TunnelsPort } from './tunnels-port.js'
import { TunnelsStatus, type PeerStatus } from './tunnels-status.js'
import {
  DEFAULT_BACKOFF,
  describeOp,
  listedFromSection,
  ownIds,
  planTunnels,
  sectionHash,
  type BackoffPolicy,
  type ListedConn,
  type ObservedIkeSa,
  type TunnelOp,
  type TunnelPlan,
  type TunnelPlanInput,
} from './tunnels.js'

export type { PeerStatus } from './tunnels-status.js'

export interface TunnelsPlan extends SubsystemPlan {
  ops: TunnelOp[]
  credentials: CredentialsChange
  /** Broken credential files seen by this pass: reported after the ops are applied. */
  credentialError: Error | null
  wakes: Array<{ at: number; reason: string }>
  /** Restart charon to clear a stale mediation request (src/mediation), with why. */
  mediationRestart?: string
}

export interface TunnelsOptions {
  credentials: CredentialPaths | null
  log: Logger
  /** Ask the agent for a pass (VICI events, reconnects), naming the connections the trigger concerns, if known. */
  trigger: (reason: string, conns?: readonly string[]) => void
  /** Called on every reconnect to charon (metric fabtunnel_vici_reconnects_total). */
  onReconnect?: () => void
  backoff?: BackoffPolicy
  now?: () => number
  /** Mediated edge-to-edge recovery (src/mediation): which mediated conns to initiate now, and charon restarts. */
  mediation?: MediationHook
}

export class TunnelsSubsystem implements Subsystem<TunnelsPlan> {
  readonly name = 'tunnels' as const
  readonly counters = { loads: 0, unloads: 0, initiates: 0, terminates: 0, credentialLoads: 0, reconnects: 0 }
  /** Plans made over every connection and over a pass's scope alone (PassScope), for /status and tests. */
  readonly plans = { full: 0, scoped: 0 }
  readonly credentials: OwnCredentials
  /** conn -> hash of the section loaded into this charon instance; cleared when charon restarts. */
  private readonly loaded = new Map<string, string>()
  /** The last list-conns, amended by our own applied ops (see PassContext); null: list again. */
  private listedConns: Map<string, ListedConn> | null = null
  /**
   * The IKE_SAs charon listed, by connection: the whole list on a full plan, one connection's (`list-sas` with
   * its name) on a scoped plan for each connection of its scope. null: list everything again.
   */
  private sasByConn: Map<string, ObservedIkeSa[]> | null = null
  /** Our own IKE identities as of the last full plan (ownIds over every desired section). */
  private ownIdsSeen = new Set<string>()
  private readonly observedView = {
    conns: new Map<string, ListedConn>() as ReadonlyMap<string, ListedConn>,
    sasOf: (conn: string): readonly ObservedIkeSa[] => this.sasByConn?.get(conn) ?? NO_SAS,
  }
  private readonly saState = new SaStateTracker()
  private readonly status: TunnelsStatus
  private readonly now: () => number
  /** The subscription, once asked for (also while in progress, so a concurrent caller never registers twice). */
  private subscription: Promise<void> | null = null
  private readonly eventHandler = (event: SaEvent, up: boolean, sas: ObservedIkeSa[]): void => this.onEvent(event, up, sas)
  /**
   * conn -> uniqueids of CHILD_SAs to replace: their connection was reloaded with other selectors, so they are
   * terminated on every pass until charon no longer lists them (a failed terminate is retried; the listing matching
   * the config after the load would never plan it again). Pruned with the peer and by the listing.
   */
  private readonly replacing = new Map<string, Set<string>>()
  private credentialError: Error | null = null

  constructor(readonly port: TunnelsPort, private readonly opts: TunnelsOptions) {
    this.now = opts.now ?? Date.now
    this.status = new TunnelsStatus(this.now)
    this.credentials = new OwnCredentials(port, opts.credentials)
    port.onConnection({
      reconnected: () => {
        // charon may have restarted and forgotten everything: forget what we believe it holds, then resync.
        this.loaded.clear()
        this.listedConns = null
        this.sasByConn = null
        this.credentials.forget()
        this.saState.reconnected()
        // A restarted charon reuses uniqueids: never terminate a new child for an old one's sake.
        this.replacing.clear()
        opts.mediation?.reset()
        this.counters.reconnects++
        opts.onReconnect?.()
        opts.log.warn({ op: 'vici-reconnected' }, 'reconnected to charon; reloading connections and credentials')
        opts.trigger('vici:reconnected')
      },
      disconnected: (err) => opts.log.error({ err: err.message }, 'lost the connection to charon; reconnecting'),
    })
  }

  /**
   * Subscribes to SA up/down events; safe to call again, also concurrently (the daemon subscribes at start while
   * the first pass may too): one subscription with one handler. A failed attempt is retried by the next call.
   */
  subscribe(): Promise<void> {
    this.subscription ??= this.port.subscribe(this.eventHandler).catch((err: unknown) => {
      this.subscription = null
      throw err
    })
    return this.subscription
  }

  private onEvent(event: SaEvent, up: boolean, sas: ObservedIkeSa[]): void {
    for (const sa of sas) this.opts.log.info({ op: event, conn: sa.name, up, state: sa.state }, `${event} ${up ? 'up' : 'down'}`)
    this.saState.onEvent(event, up, sas)
    // The connections named: a scoped pass re-lists their SAs alone (PassScope).
    this.opts.trigger(`vici:${event}`, sas.map((sa) => sa.name))
  }

  async prepare(desired: Desired, ctx: PassContext): Promise<void> {
    // charon was not up when we started (a failed first connect is not retried by the client, so no `reconnected`
    // will come): subscribe as soon as a pass can reach it, or SA events would never trigger passes.
    await this.subscribe()
    if (this.opts.credentials && (ctx.credentials || !this.credentials.current)) {
      this.credentialError = await this.credentials.refresh()
      const err = this.credentialError as (Error & { code?: string; file?: string }) | null
      if (err) this.opts.log.error({ op: 'credentials', code: err.code, file: err.file, err: err.message }, this.credentials.current ? 'credentials rejected; keeping the last good ones' : 'credentials rejected')
    }
    // A scoped pass forgets only the peers of its scope that left the config; the others are as the last pass left them.
    const names = this.scoped(ctx, desired) ? new Set(ctx.scope!.conns) : undefined
    const wanted = { has: (n: string): boolean => n in desired.conns }
    this.saState.prune(wanted)
    this.saState.expire(this.now(), (this.opts.backoff ?? DEFAULT_BACKOFF).inflightMs)
    for (const conn of names ?? this.replacing.keys()) if (!wanted.has(conn)) this.replacing.delete(conn)
    // A removed peer's hash stays while charon still lists its connection: it marks the connection as ours.
    for (const conn of names ?? this.loaded.keys()) if (!wanted.has(conn) && !this.listedConns?.has(conn)) this.loaded.delete(conn)
  }

  /**
   * Whether this pass may plan its scope alone: it has one and this subsystem's memory of charon is whole. Not on an
   * edge with a mediator (a few peers): mediation recovery's gate decides over every mediated peer's SAs at once.
   */
  private scoped(ctx: PassContext, desired: Desired): boolean {
    return ctx.scope !== undefined && !ctx.deep && this.listedConns !== null && this.sasByConn !== null && !(this.opts.mediation && MEDIATOR_CONN in desired.conns)
  }

  async plan(desired: Desired, ctx: PassContext): Promise<TunnelsPlan> {
    if (this.scoped(ctx, desired)) {
      this.plans.scoped++
      return this.planScoped(desired, ctx)
    }
    this.plans.full++
    // What charon has loaded only changes through load-conn/unload-conn: re-listed on deep passes, otherwise the
    // last listing as amended by our own applied ops (see PassContext).
    if (ctx.deep || !this.listedConns) {
      // Reduced by the port (compactListed) as charon streams it.
      this.listedConns = await this.port.listConns()
    }
    // Not `noblock`: an IKE_SA in the middle of its first exchange would be left out and look missing.
    const sas = await this.port.listSas()
    const byConn = new Map<string, ObservedIkeSa[]>()
    for (const sa of sas) {
      const list = byConn.get(sa.name)
      if (list) list.push(sa)
      else byConn.set(sa.name, [sa])
    }
    this.sasByConn = byConn
    this.forgetReplaced(sas)
    // Children the listing shows up settle our initiate memory now, as part of recording the observation (like
    // the listing cache): an up event that came late or not at all must not leave an initiate "in flight" for
    // the next time that child goes down, when it would hold back the re-initiate for the in-flight window.
    this.saState.settle(sas)
    const credentials = this.opts.credentials ? await this.credentials.observe(ctx.deep) : NO_CREDENTIALS_CHANGE
    const conns = this.sectionsWithOwnCert(desired.conns)
    this.ownIdsSeen = ownIds(conns)
    const observed = { conns: this.listedConns, sas }
    const gate = this.opts.mediation?.gate(desired, sas, this.now())
    const initiate = gate?.hold.size ? desired.initiate.filter((c) => !gate.hold.has(c)) : desired.initiate
    const { ops, waiting, wakes } = this.planWith({ conns, initiate, initiateChildren: desired.initiateChildren }, observed)
    if (gate) {
      for (const [conn, reason] of gate.hold) waiting.push({ conn, until: Number.POSITIVE_INFINITY, reason })
      wakes.push(...gate.wakes)
    }
    if (credentials.unloadKeys.length) this.reloadForRotation(conns, ops)
    this.observedView.conns = this.listedConns
    this.status.record(desired, this.observedView, waiting)
    return this.finish(ops, waiting, wakes, credentials, gate?.restart ?? undefined)
  }

  /**
   * The plan of a scoped pass (PassScope): only the connections of the scope (and the mediator, which mediated
   * connections wait for), each with its SAs listed afresh by name; everything else is as the last plan saw it.
   * The same pure planner decides, over that slice of the desired and observed state.
   */
  private async planScoped(desired: Desired, ctx: PassContext): Promise<TunnelsPlan> {
    const names = new Set(ctx.scope!.conns)
    const listed = this.listedConns!
    if (MEDIATOR_CONN in desired.conns || listed.has(MEDIATOR_CONN)) names.add(MEDIATOR_CONN)
    const byConn = this.sasByConn!
    const sas: ObservedIkeSa[] = []
    // A connection charon does not have (not in the listing as amended by our writes) and no SA was ever seen for
    // has no SAs: an IKE_SA needs its connection. Asked anyway when an event or a retry brought the pass, which
    // may concern what the listing has not seen yet. That is a peer just added to the file: one VICI round trip
    // (1-30 ms under load) less on the way to loading it.
    const configOnly = ctx.reasons.every((r) => r.startsWith('config') || r === 'verify')
    for (const name of names) {
      if (configOnly && !listed.has(name) && !byConn.has(name)) continue
      const mine = await this.port.listSas({ ike: name })
      if (mine.length) byConn.set(name, mine)
      else byConn.delete(name)
      sas.push(...mine)
    }
    this.forgetReplaced(sas, names)
    this.saState.settle(sas)
    const credentials = this.opts.credentials ? await this.credentials.observe(false) : NO_CREDENTIALS_CHANGE
    const pem = this.credentials.current?.certPem
    const conns = dict<ViciSection>()
    const observedConns = new Map<string, ListedConn>()
    for (const name of names) {
      const section = desired.conns[name]
      if (section) conns[name] = pem ? withLocalCert(section, pem) : section
      const l = listed.get(name)
      if (l) observedConns.set(name, l)
    }
    for (const id of ownIds(conns)) this.ownIdsSeen.add(id)
    // The initiators are the mediator and connector peers (a connector) or every peer (an edge): a short list.
    const initiate = desired.initiate.filter((n) => names.has(n))
    const { ops, waiting, wakes } = this.planWith({ conns, initiate, initiateChildren: desired.initiateChildren }, { conns: observedConns, sas })
    // Rotating keys needs every connection reloaded: a full plan's job.
    if (credentials.unloadKeys.length) this.reloadForRotation(this.sectionsWithOwnCert(desired.conns), ops)
    this.observedView.conns = listed
    this.status.record(desired, this.observedView, waiting, names)
    return this.finish(ops, [...this.status.waitingReasons()].map(([conn, reason]) => ({ conn, reason })), wakes, credentials)
  }

  /** The pure planner over (a slice of) the desired and observed state, with this subsystem's memory. */
  private planWith(desired: TunnelPlanInput['desired'], observed: TunnelPlanInput['observed']): TunnelPlan {
    return planTunnels({
      desired,
      observed,
      loaded: this.loaded,
      attempts: this.saState.view(),
      now: this.now(),
      ownership: { ids: this.ownIdsSeen, loaded: this.loaded },
      replacing: this.replacing,
      terminating: this.saState.terminatingChildren(),
      ...(this.opts.backoff ? { backoff: this.opts.backoff } : {}),
    })
  }

  private finish(ops: TunnelOp[], waiting: ReadonlyArray<{ conn: string; reason: string }>, wakes: Array<{ at: number; reason: string }>, credentials: CredentialsChange, restart?: string): TunnelsPlan {
    const credentialWrites = (credentials.load ? 1 : 0) + credentials.unloadKeys.length + credentials.unloadAuthorities.length
    const writes = ops.length + credentialWrites + (restart ? 1 : 0)
    if (this.credentialError && writes === 0) throw this.credentialError
    // Peers backing off after failed initiates: the subsystem retries them on its own wakes, but the node is not
    // converged while any is (an up-to-date but unreachable peer is not a tunnel that works).
    const failing = waiting.filter((w) => w.reason.startsWith('backoff after'))
    const unsettled = failing.length
      ? `${failing.length} peer(s) backing off after failed initiates: ${failing.slice(0, 5).map((w) => w.conn).join(', ')}${failing.length > 5 ? ', ...' : ''}`
      : undefined
    return {
      ops,
      credentials,
      credentialError: this.credentialError,
      wakes,
      writes,
      ...(restart ? { mediationRestart: restart } : {}),
      ...(unsettled ? { unsettled } : {}),
      describe: () => [
        ...(restart ? [`restart charon: ${restart}`] : []),
        ...(credentials.load ? ['load credentials (CA authorities, certificate, private key)'] : []),
        ...ops.map(describeOp),
        ...credentials.unloadAuthorities.map((n) => `unload-authority ${n}`),
        ...credentials.unloadKeys.map((k) => `unload-key ${k}`),
      ],
    }
  }

  /**
   * Our certificate in force, never anything else, in every section's `local.certs`: the connections always name
   * the certificate whose key we loaded, and a broken certificate file (which the desired state may see as no
   * certificate at all) never changes a section we load.
   */
  private sectionsWithOwnCert(conns: Record<string, ViciSection>): Record<string, ViciSection> {
    const pem = this.credentials.current?.certPem
    if (!pem) return conns
    const out = dict<ViciSection>()
    for (const [name, section] of Object.entries(conns)) out[name] = withLocalCert(section, pem)
    return out
  }

  /**
   * Keys we rotated away from are unloaded only once every connection names the new certificate. After an agent
   * restart we cannot know which certificate a listed connection holds (list-conns shows its subject only), so
   * connections not loaded by this instance with the current section are loaded again first (load-conn of an
   * unchanged connection leaves its SAs alone).
   */
  private reloadForRotation(conns: Record<string, ViciSection>, ops: TunnelOp[]): void {
    const loading = new Set(ops.filter((o) => o.op === 'load').map((o) => o.conn))
    const reloads: TunnelOp[] = []
    for (const [conn, section] of Object.entries(conns)) {
      const hash = sectionHash(section)
      if (!loading.has(conn) && this.loaded.get(conn) !== hash) reloads.push({ op: 'load', conn, section, hash, reason: 'changed' })
    }
    ops.unshift(...reloads)
  }

  async apply(plan: TunnelsPlan): Promise<number> {
    const { log } = this.opts
    // charon is about to exit and forget everything: the reconnect reloads it all, so nothing else is sent now.
    if (plan.mediationRestart && this.opts.mediation) {
      await this.opts.mediation.restart(plan.mediationRestart)
      return 1
    }
    let done = 0
    const failures: string[] = []
    const c = plan.credentials
    if (c.load) {
      await this.credentials.load(c.load)
      this.counters.credentialLoads++
      log.info({ op: 'load-credentials', fingerprint: c.load.fingerprint, keyId: c.load.keyId }, 'credentials loaded into charon')
      done++
    }
    // A connection whose load failed keeps its live SAs: terminating its changed children would only bring them
    // back on the old config, at every retry.
    const loadFailed = new Set<string>()
    const now = this.now()
    for (const op of plan.ops) {
      if (loadFailed.has(op.conn) && (op.op === 'terminate-child' || op.op.startsWith('initiate'))) continue
      try {
        switch (op.op) {
          case 'load':
            await this.port.loadConn(op.conn, op.section)
            this.loaded.set(op.conn, op.hash)
            this.listedConns?.set(op.conn, listedFromSection(op.section))
            this.counters.loads++
            break
          case 'unload':
            await this.port.unloadConn(op.conn)
            this.loaded.delete(op.conn)
            this.listedConns?.delete(op.conn)
            this.counters.unloads++
            break
          case 'terminate-ike':
            await this.terminateSa('ike', op.conn, op.ikeId, now)
            break
          case 'terminate-child': {
            // Remembered before the call: if it fails, the next pass terminates the child again.
            let ids = this.replacing.get(op.conn)
            if (!ids) this.replacing.set(op.conn, (ids = new Set()))
            ids.add(op.childId)
            await this.terminateSa('child', op.conn, op.childId, now)
            break
          }
          case 'initiate-ike':
          case 'initiate-child': {
            const child = op.op === 'initiate-child' ? op.child : ''
            this.saState.initiated(op.conn, child, now)
            try {
              await this.port.initiate(child === '' ? { ike: op.conn } : { ike: op.conn, child })
            } catch (err) {
              this.saState.refused(op.conn, child, now)
              throw err
            }
            this.counters.initiates++
            break
          }
        }
        done++
        log.debug({ op: op.op, conn: op.conn }, describeOp(op))
      } catch (err) {
        if (op.op === 'load') loadFailed.add(op.conn)
        const msg = `${describeOp(op)}: ${(err as Error).message}`
        this.status.error(op.conn, msg)
        failures.push(msg)
        log.error({ op: op.op, conn: op.conn, err: (err as Error).message }, 'tunnel operation failed')
      }
    }
    // Credentials we moved away from go last, and only once every connection was loaded with the new certificate.
    if (loadFailed.size === 0) {
      for (const name of c.unloadAuthorities) {
        try {
          await this.credentials.unloadAuthority(name)
          done++
        } catch (err) {
          failures.push(`unload-authority ${name}: ${(err as Error).message}`)
        }
      }
      for (const id of c.unloadKeys) {
        try {
          await this.credentials.unloadKey(id)
          log.info({ op: 'unload-key', keyId: id }, 'unloaded a private key we rotated away from')
          done++
        } catch (err) {
          failures.push(`unload-key ${id}: ${(err as Error).message}`)
        }
      }
    }
    if (failures.length) throw new Error(`${failures.length} tunnel operation(s) failed: ${failures.slice(0, 3).join('; ')}`)
    if (plan.credentialError) throw plan.credentialError
    return done
  }

  /** Children to replace that the listing no longer shows are gone: forgotten (part of caching the observation). */
  /**
   * Terminates every IKE_SA of the connections named (ours), keeping the connections loaded: a demoted or
   * stopping connector sends DELETE so edges re-establish with the new leader at once. Asynchronous (force): the
   * DELETE goes out without waiting for the peer's answer. Resolves with the number terminated; one failure does
   * not stop the others and is reported through `onError`.
   */
  async terminateOwnSas(conns: ReadonlySet<string>, onError: (conn: string, err: Error) => void = () => undefined): Promise<number> {
    const sas = (await this.port.listSas()).filter((sa) => conns.has(sa.name))
    const now = this.now()
    let n = 0
    await Promise.all(sas.map(async (sa) => {
      try {
        await this.terminateSa('ike', sa.name, sa.uniqueid, now)
        n++
      } catch (err) {
        onError(sa.name, err as Error)
      }
    }))
    return n
  }

  /**
   * Datapath repair (src/probe/prober.ts): ends the CHILD_SAs of connection `conn` (scope children) or its IKE_SAs
   * (scope ike, forced: no DELETE exchange to wait for, the peer may have lost it) and asks for a pass, which
   * initiates them again like any missing SA (only the initiator side repairs). Resolves with how many SAs ended,
   * or null when `stillNeeded` says no once charon answered (a charon that was frozen, ours included, queues the
   * request; by the time it runs, the datapath may be back and the repair would only break it).
   */
  async reestablish(conn: string, scope: 'children' | 'ike', stillNeeded: () => boolean = () => true): Promise<number | null> {
    const sas = (await this.port.listSas({ ike: conn })).filter((sa) => sa.name === conn)
    if (!stillNeeded()) return null
    const now = this.now()
    let n = 0
    for (const sa of sas) {
      if (scope === 'ike') {
        await this.terminateSa('ike', conn, sa.uniqueid, now)
        n++
      } else {
        for (const c of sa.children) {
          await this.terminateSa('child', conn, c.uniqueid, now)
          n++
        }
      }
    }
    if (scope === 'ike') this.saState.forgetConn(conn)
    // A shallow pass scoped to this connection re-initiates what was terminated (PassScope).
    this.opts.trigger('probe-repair', [conn])
    return n
  }

  /** Terminates one SA of ours; its down event is expected (and ignored) unless the call fails. */
  private async terminateSa(kind: 'ike' | 'child', conn: string, id: string, now: number): Promise<void> {
    this.saState.terminating(kind, conn, id, now)
    await this.port.terminate(kind === 'ike' ? { ikeId: id } : { childId: id }).catch((err: unknown) => {
      this.saState.terminateFailed(kind, id)
      throw err
    })
    this.counters.terminates++
  }

  private forgetReplaced(sas: readonly ObservedIkeSa[], only?: ReadonlySet<string>): void {
    for (const [conn, ids] of this.replacing) {
      if (only && !only.has(conn)) continue
      const listed = new Set(sas.filter((s) => s.name === conn).flatMap((s) => s.children.map((c) => c.uniqueid)))
      for (const id of ids) if (!listed.has(id)) ids.delete(id)
      if (ids.size === 0) this.replacing.delete(conn)
    }
  }

  /** Per peer: initiator, and IKE up / established / down (the datapath prober's view; cheap). */
  tunnelStates(): Map<string, { initiator: boolean; ike: 'up' | 'established' | 'down' }> {
    return this.status.tunnelStates()
  }

  /** Peer counts for the metrics (cheap: no per-peer entries built). */
  peerCounts(): { desired: number; loaded: number; up: number; childSasUp: number } {
    return this.status.counts()
  }

  /** Per-peer tunnel state from the last observation, for /status and metrics. */
  peers(): PeerStatus[] {
    const m = this.opts.mediation
    if (!m) return this.status.peers()
    return this.status.peers().map((p) => {
      const state = m.peerState(p.name)
      return state ? { ...p, mediation: state } : p
    })
  }

  summary(): Record<string, unknown> {
    return { loadedThisInstance: this.loaded.size, credentialsLoaded: this.credentials.loaded, counters: { ...this.counters }, plans: { ...this.plans } }
  }

  /** Sizes of every per-peer memory (tests assert that removed peers leave nothing behind). */
  residue(): { loaded: number; attempts: number; terminated: number; replacing: number; since: number; lastError: number } {
    return { loaded: this.loaded.size, attempts: this.saState.size, terminated: this.saState.terminatedSize, replacing: this.replacing.size, ...this.status.sizes }
  }
}

const certMemo = new WeakMap<ViciSection, { pem: string; section: ViciSection }>()

/** The section with `local.certs` = [pem] (the same object when it already is; memoized, so hashes stay cached). */
const NO_SAS: readonly ObservedIkeSa[] = Object.freeze([])

export function withLocalCert(section: ViciSection, pem: string): ViciSection {
  const local = section.local
  if (local === undefined || typeof local !== 'object' || Array.isArray(local)) return section
  const certs = local.certs
  if (Array.isArray(certs) && certs.length === 1 && certs[0] === pem) return section
  const memo = certMemo.get(section)
  if (memo?.pem === pem) return memo.section
  const patched: ViciSection = { ...section, local: { ...local, certs: [pem] } }
  certMemo.set(section, { pem, section: patched })
  return patched
}
