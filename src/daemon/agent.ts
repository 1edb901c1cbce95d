// The agent: the node's config in force and its reconcile loop. A pass takes the config in force, derives the whole
// desired state and hands it to the pass engine (src/reconcile/engine.ts), which lets every subsystem plan and
// applies the plans that write, in order. Triggers (config watch, VICI and netlink events, SIGHUP, the resync
// timer) only decide when a pass runs.
//
// Bad input never costs connectivity: a config that does not validate is reported (log, /status, metrics) and the
// last good one stays in force; so does the last good certificate; a failing subsystem is reported and the others
// still converge.
import { createHash } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { monotonicMs } from '../clock.js'
import { ConfigError, type ConfigIssue } from '../config/errors.js'
import { ConfigParser, MAX_CONFIG_BYTES } from '../config/load.js'
import type { TunnelConfig } from '../config/schema.js'
import { DesiredBuilder, type DesiredDelta, type FullBuildReason } from '../desired/incremental.js'
import type { Datapath, Desired, Role } from '../desired/types.js'
import type { TcpMss } from '../iptables/mss.js'
import type { Logger } from '../log.js'
import { PassEngine, type PassRecord } from '../reconcile/engine.js'
import { PassScheduler } from '../reconcile/scheduler.js'
import { passContext, type PassContext, type PassScope, type Subsystem, type SubsystemName, type SubsystemPlan } from '../reconcile/subsystem.js'
import type { Metrics } from './metrics.js'
import { isoTime } from '../iso-time.js'

export interface AgentOptions {
  configPath: string
  datapath: Datapath
  /** `dpd_delay` of the connections this node initiates (charon duration, e.g. `3s`); default EDGE_DPD_DELAY. */
  dpdDelay?: string
  /** TCP MSS clamping of SYNs to and from remote prefixes (`--tcp-mss`); absent: none. */
  tcpMss?: TcpMss
  /** The role the node runs as; undefined: from the config's local endpoint type (connector or edge). */
  role?: Role
  /** Cloud role: the connector's internal address per family, the next hop of every route. */
  connectorAddresses?: { 4?: string; 6?: string }
  /** Ordered: apply happens in this order. */
  subsystems: Subsystem[]
  /**
   * Reads the local certificate PEM for `local.certs`; throws when the file is unreadable or holds no certificate
   * (the last good certificate then stays in the desired state).
   */
  certPem?: () => Promise<string>
  /** Default gateways for xfrm routes. */
  gateways?: () => Promise<{ 4?: string; 6?: string }>
  log: Logger
  metrics: Metrics
  coalesceMs?: number
  /** Periodic full resync (safety net), ms; 0 disables. */
  resyncMs?: number
  now?: () => number
  /** Called after every pass (metrics that depend on the observed state). */
  onPass?: (record: PassRecord) => void
  /** Called when a config is accepted, before a pass uses it (the daemon's compiler setting, heap-tuning.ts). */
  onConfig?: (config: TunnelConfig) => void
  /**
   * Whether this node leads (connector HA, src/daemon/leader.ts); read at every pass. A standby connector gets the
   * standby's share of the desired state (src/desired/standby.ts). Default: always the leader.
   */
  leader?: () => boolean
  /**
   * Node duties that follow the subsystems in every pass with a config in force (the CNI conflist). One that
   * throws makes the pass unconverged (not ready), is recorded in `record.duties` and is retried with backoff.
   */
  duties?: ReadonlyArray<{ name: string; afterPass(record: PassRecord, config: TunnelConfig): Promise<void> }>
}

export type { PassRecord }

export interface ConfigState {
  path: string
  generation: number
  hash: string | null
  loadedAt: string | null
  /** The problems of the file on disk when it was rejected; null when the file in force is the file on disk. */
  rejected: { at: string; errors: ConfigIssue[]; message: string } | null
  warnings: ConfigIssue[]
}

export class Agent {
  private config: TunnelConfig | null = null
  readonly configState: ConfigState
  lastPass: PassRecord | null = null
  private readonly scheduler: PassScheduler
  private readonly engine: PassEngine
  private resyncTimer: NodeJS.Timeout | null = null
  private readonly now: () => number
  /** Passes run, and writes in total: tests and benchmarks assert on these. */
  readonly counters = { passes: 0, writes: 0 }
  private errorStreak = 0

  constructor(private readonly opts: AgentOptions) {
    this.now = opts.now ?? Date.now
    this.configState = { path: opts.configPath, generation: 0, hash: null, loadedAt: null, rejected: null, warnings: [] }
    this.scheduler = new PassScheduler((reasons, keys) => this.pass(reasons, keys), {
      coalesceMs: opts.coalesceMs ?? 5,
      onError: (err) => opts.log.error({ err }, 'pass failed unexpectedly'),
      now: this.now,
    })
    this.engine = new PassEngine({ subsystems: opts.subsystems, log: opts.log, wake: (at, reason) => this.scheduler.triggerAt(at, reason), now: this.now })
  }

  get ready(): boolean {
    return this.lastPass?.converged === true
  }

  get hasConfig(): boolean {
    return this.config !== null
  }

  /** Requests a pass; `keys` name what the trigger concerns (connections, route destinations: see PassScope). */
  trigger(reason: string, keys?: Iterable<string>): void {
    this.scheduler.trigger(reason, keys)
  }

  /** Resolves when no pass is running or pending. */
  idle(): Promise<void> {
    return this.scheduler.idle()
  }

  start(): void {
    this.trigger('start')
    const resync = this.opts.resyncMs ?? 60_000
    if (resync > 0) {
      this.resyncTimer = setInterval(() => this.trigger('resync'), resync)
      this.resyncTimer.unref()
    }
  }

  /**
   * Stops scheduling passes and waits up to `graceMs` for the pass in flight. Resolves with whether it finished:
   * a pass stuck on a frozen charon (VICI calls time out after 30 s) must not hold a SIGTERM past the pod's or
   * systemd's grace period; the caller then closes the sockets under it.
   */
  async stop(graceMs = Number.POSITIVE_INFINITY): Promise<boolean> {
    if (this.resyncTimer) clearInterval(this.resyncTimer)
    const inFlight = this.scheduler.stop().then(() => true)
    if (!Number.isFinite(graceMs)) return inFlight
    let timer: NodeJS.Timeout | undefined
    const timeout = new Promise<boolean>((resolve) => { timer = setTimeout(() => resolve(false), graceMs) })
    try {
      return await Promise.race([inFlight, timeout])
    } finally {
      clearTimeout(timer)
    }
  }

  /**
   * Re-reads the config file. A changed, valid file becomes the config in force; an invalid one is reported and
   * the last good one stays. Unchanged content (the same bytes) costs no parse.
   */
  async reloadConfig(): Promise<'unchanged' | 'changed' | 'rejected' | 'missing'> {
    const { log, metrics } = this.opts
    const path = this.opts.configPath
    let bytes: Buffer
    const t0 = monotonicMs()
    try {
      // One synchronous read (the file is a ConfigMap on tmpfs or a local file): the asynchronous reader takes a
      // thread-pool round trip per 512 KiB, each waiting for the event loop, which a 2 MB file at 10,000 peers felt.
      bytes = readFileSync(path)
      if (bytes.length > MAX_CONFIG_BYTES) throw new ConfigError('ETOOBIG', path, [{ severity: 'error', path: '', line: null, column: null, message: `larger than ${MAX_CONFIG_BYTES} bytes` }])
    } catch (err) {
      const missing = (err as NodeJS.ErrnoException).code === 'ENOENT'
      if (missing && this.config === null) {
        if (this.configState.rejected?.message !== 'config file does not exist yet') log.warn({ file: path }, 'config file does not exist yet; waiting for it')
        this.configState.rejected = { at: isoTime(this.now()), errors: [], message: 'config file does not exist yet' }
        return 'missing'
      }
      return this.reject(err instanceof ConfigError ? err : new ConfigError(missing ? 'ENOENT' : 'EREAD', path, [{ severity: 'error', path: '', line: null, column: null, message: `cannot read: ${(err as Error).message}` }], { cause: err }))
    }
    const t1 = monotonicMs()
    // Unchanged content costs a memcmp with the bytes in force (no parse, no hash).
    if (this.config !== null && this.acceptedBytes !== null && bytes.equals(this.acceptedBytes)) {
      if (this.configState.rejected) {
        log.info({ file: path }, 'config file is back to the config in force')
        this.configState.rejected = null
        metrics.configValid.set(1)
      }
      return 'unchanged'
    }
    try {
      const { config, warnings } = this.parser.parseBytes(bytes, path)
      const t2 = monotonicMs()
      this.config = config
      this.configChange = this.parser.change
      this.acceptedBytes = bytes
      this.hashLater(bytes)
      this.configState.generation++
      this.configState.loadedAt = isoTime(this.now())
      this.configState.rejected = null
      this.configState.warnings = warnings
      metrics.configGeneration.set(this.configState.generation)
      metrics.configValid.set(1)
      for (const w of warnings) log.warn({ file: path, line: w.line, path: w.path }, w.message)
      log.info({ file: path, generation: this.configState.generation, peers: config.peers.length, role: config.local.type, ms: { read: ms(t1 - t0), parse: ms(t2 - t1) }, parsed: this.parser.last.whole ? 'whole' : this.parser.last.parsed, ...(this.parser.last.bytes ? { bytes: true } : {}) }, 'config accepted')
      this.opts.onConfig?.(config)
      return 'changed'
    } catch (err) {
      if (!(err instanceof ConfigError)) throw err
      return this.reject(err)
    }
  }

  /** The bytes of the config in force. */
  private acceptedBytes: Buffer | null = null

  /**
   * Sets `configState.hash` (the file's sha256, as `sha256sum` prints it) once the pass that applies the new config
   * is waiting on charon or the kernel: it only informs /status, and 2 MB take 1-5 ms to hash.
   */
  private hashLater(bytes: Buffer): void {
    this.configState.hash = null
    setImmediate(() => {
      if (this.acceptedBytes === bytes) this.configState.hash = createHash('sha256').update(bytes).digest('hex')
    }).unref()
  }

  private reject(err: ConfigError): 'rejected' {
    const { log, metrics } = this.opts
    metrics.configReloadErrors.inc()
    metrics.configValid.set(0)
    this.configState.rejected = { at: isoTime(this.now()), errors: err.errors, message: err.message }
    log.error({ file: err.file, code: err.code, errors: err.errors.map((e) => `${e.line ?? '-'}:${e.path}: ${e.message}`) }, this.config ? 'config rejected; keeping the last good config' : 'config rejected; no good config yet')
    return 'rejected'
  }

  /** Re-reads only the peers whose text changed (src/config/load.ts). */
  private readonly parser = new ConfigParser()
  /** The peers the last accepted config added and removed (the parser's change), for the builder. */
  private configChange: ConfigParser['change'] = null
  /** Derives only the changed peers' part of the desired state (src/desired/incremental.ts). */
  private readonly builder = new DesiredBuilder()
  /**
   * What changed in the desired state since the last pass took it (the union of the builder's deltas, or null
   * when anything may have): the config part of the next pass's scope.
   */
  private pendingDelta: DesiredDelta | null = { conns: new Set(), dsts: new Set(), members: new Map() }
  /** Why the last full build of the desired state was full (DesiredBuilder.stats.why), for the pass log. */
  private fullBuildWhy: FullBuildReason | null = null
  /** The scope of the last pass (null: it planned everything), which its verification pass re-checks. */
  private lastScope: PassScope | null = null
  /** The last certificate read successfully; undefined before the first read, null when none was ever good. */
  private certPem: string | null | undefined = undefined
  /** Why the last pass could not derive the desired state (e.g. `--role` contradicting the config), or null. */
  desiredError: string | null = null
  /** Why the certificate file on disk is not the one in force, or null. */
  certError: string | null = null

  /**
   * Reads the certificate for `local.certs`. A broken file keeps the last good certificate in force: dropping it
   * would change every connection section and reload every peer (and again once the file is fixed).
   */
  private async refreshCert(): Promise<void> {
    if (!this.opts.certPem) return
    try {
      this.certPem = await this.opts.certPem()
      if (this.certError) this.opts.log.info({ op: 'certificate' }, 'certificate file readable again')
      this.certError = null
    } catch (err) {
      const message = (err as Error).message
      if (message !== this.certError) {
        this.opts.log.error({ op: 'certificate', err: message }, this.certPem ? 'certificate unreadable; keeping the last good one in the connections' : 'certificate unreadable; connections are loaded without local.certs')
      }
      this.certError = message
      if (this.certPem === undefined) this.certPem = null
    }
  }

  /**
   * The desired state for the config in force, or null without one. Pure in its inputs, so it is recomputed only
   * when one of them (config generation, certificate, default gateways) changes; unchanged connection sections
   * then stay the same objects from pass to pass.
   */
  async desired(ctx: PassContext = passContext(['manual']), extra: { drainVip?: string } = {}): Promise<Desired | null> {
    if (!this.config) return null
    // The certificate file changes only with a credential trigger (directory watch) or is re-checked by deep passes.
    if (ctx.credentials || this.certPem === undefined) await this.refreshCert()
    const certPem = this.certPem ?? undefined
    // A cloud node's next hop is the connector, never the default gateway.
    const gateways = this.opts.datapath === 'xfrm' && this.opts.role !== 'cloud' ? await this.opts.gateways?.() : undefined
    const standby = !(this.opts.leader?.() ?? true)
    const { role, connectorAddresses } = this.opts
    const { desired, delta } = this.builder.build(this.config, role, {
      datapath: this.opts.datapath, ...(this.opts.dpdDelay !== undefined ? { dpdDelay: this.opts.dpdDelay } : {}), ...(certPem ? { certPem } : {}), ...(gateways ? { gateways } : {}), ...(connectorAddresses ? { connectorAddresses } : {}),
      ...(standby ? { standby } : {}), ...(extra.drainVip ? { drainVip: extra.drainVip } : {}), ...(this.opts.tcpMss ? { tcpMss: this.opts.tcpMss } : {}),
    }, this.configChange)
    this.configChange = null
    if (delta === null) {
      this.pendingDelta = null
      this.fullBuildWhy = this.builder.stats.why
    } else if (this.pendingDelta) mergeDelta(this.pendingDelta, delta)
    return desired
  }

  /**
   * The scope of a pass (PassScope), or undefined when it must plan everything: every reason must name what it
   * concerns, and the desired state must have changed by a known delta.
   */
  private scopeOf(ctx: PassContext, reasons: readonly string[], keys: ReadonlyMap<string, ReadonlySet<string> | null>, delta: DesiredDelta | null): PassScope | undefined {
    if (ctx.deep || delta === null) return undefined
    const conns = new Set(delta.conns)
    const dsts = new Set(delta.dsts)
    const members = new Map([...delta.members].map(([k, v]) => [k, new Set(v)]))
    for (const reason of reasons) {
      const named = keys.get(reason) ?? null
      if (reason.startsWith('config')) continue
      if (reason === 'vici:ike-updown' || reason === 'vici:child-updown' || reason === 'probe-repair') {
        if (!named) return undefined
        for (const k of named) conns.add(k)
      } else if (reason === 'netlink:route-new' || reason === 'netlink:route-del') {
        if (!named) return undefined
        for (const k of named) dsts.add(k)
      } else if (reason.startsWith('backoff:')) {
        conns.add(reason.slice('backoff:'.length))
      } else if (reason === 'verify') {
        if (!this.lastScope) return undefined
        for (const k of this.lastScope.conns) conns.add(k)
        for (const k of this.lastScope.dsts) dsts.add(k)
        for (const [set, m] of this.lastScope.members) for (const k of m) addMember(members, set, k)
      } else {
        return undefined
      }
    }
    return { conns, dsts, members }
  }

  /** Plans of every subsystem against the live node, without applying anything (`fabtunnel plan`). */
  async planAll(): Promise<Array<{ subsystem: SubsystemName; plan?: SubsystemPlan; error?: string }>> {
    const desired = await this.desired()
    if (!desired) return []
    const out: Array<{ subsystem: SubsystemName; plan?: SubsystemPlan; error?: string }> = []
    for (const s of this.engine.subsystems) {
      try {
        out.push({ subsystem: s.name, plan: await s.plan(desired, passContext(['manual'])) })
      } catch (err) {
        out.push({ subsystem: s.name, error: (err as Error).message })
      }
    }
    return out
  }

  /** Resolvers of nextPass(): settled when the next pass to start has finished. */
  private passWaiters: Array<() => void> = []

  /**
   * Resolves once a pass that starts after this call has finished (whatever its outcome), or after `timeoutMs`
   * (the agent may be stopping). Unlike idle(), pending backoff wakes do not hold it.
   */
  nextPass(timeoutMs = 5_000): Promise<void> {
    return new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, timeoutMs)
      timer.unref()
      this.passWaiters.push(() => {
        clearTimeout(timer)
        resolve()
      })
    })
  }

  private async pass(reasons: string[], keys: ReadonlyMap<string, ReadonlySet<string> | null> = new Map()): Promise<void> {
    const waiters = this.passWaiters.splice(0)
    try {
      await this.runPass(reasons, keys)
    } finally {
      for (const w of waiters) w()
    }
  }

  private async runPass(reasons: string[], keys: ReadonlyMap<string, ReadonlySet<string> | null>): Promise<void> {
    const { log, metrics } = this.opts
    const started = this.now()
    let ctx = passContext(reasons)
    let outcome: Awaited<ReturnType<Agent['reloadConfig']>> | null = null
    if (this.config === null || ctx.deep || reasons.some((r) => r.startsWith('config'))) {
      outcome = await this.reloadConfig()
      // No file yet (a ConfigMap not mounted yet): look again shortly, bounded by nothing but our own stop.
      if (outcome === 'missing') this.scheduler.triggerAt(this.now() + 1000, 'config-wait')
    }
    let desiredError: string | null = null
    const tDesired = monotonicMs()
    const desired = await this.desired(ctx).catch((err: unknown) => {
      desiredError = (err as Error).message
      log.error({ err }, 'cannot compute the desired state')
      return null
    })
    this.desiredError = desiredError
    const desiredMs = ms(monotonicMs() - tDesired)
    const delta = this.pendingDelta
    // Why the desired state may differ anywhere (a full build since the last pass), for the log line.
    const desiredFull = delta === null ? this.fullBuildWhy : null
    this.pendingDelta = { conns: new Set(), dsts: new Set(), members: new Map() }
    const scope = desired ? this.scopeOf(ctx, reasons, keys, delta) : undefined
    if (scope) ctx = { ...ctx, scope }
    this.lastScope = scope ?? null
    if (!desired) {
      this.lastPass = { startedAt: isoTime(started), durationMs: 0, reasons, writes: {}, errors: {}, unsettled: [], timings: {}, converged: false }
      metrics.ready.set(0)
      // A config in force whose desired state could not be computed (a failing read of the default gateways, the
      // certificate): retried with the same backoff as a failed subsystem. Without a config the watch wakes us.
      if (desiredError !== null) this.scheduler.triggerAt(this.now() + Math.min(10_000, 250 * 2 ** this.errorStreak++), 'retry')
      return
    }
    const record = await this.engine.run(desired, ctx)
    if (scope) record.scope = { conns: scope.conns.size, dsts: scope.dsts.size, members: [...scope.members.values()].reduce((n, m) => n + m.size, 0) }
    for (const duty of this.opts.duties ?? []) {
      try {
        await duty.afterPass(record, this.config!)
      } catch (err) {
        record.duties = { ...record.duties, [duty.name]: (err as Error).message }
        record.converged = false
        log.error({ duty: duty.name, err: (err as Error).message }, 'node duty failed; not ready until it succeeds')
      }
    }
    for (const [name, n] of Object.entries(record.writes)) {
      metrics.opsApplied.inc({ subsystem: name }, n)
      this.counters.writes += n
    }
    const failed = Object.keys(record.errors).filter((name) => !record.unsettled.includes(name as SubsystemName))
    for (const name of failed) metrics.subsystemErrors.inc({ subsystem: name })
    for (const name of Object.keys(record.duties ?? {})) metrics.subsystemErrors.inc({ subsystem: name })
    this.lastPass = record
    this.counters.passes++
    const wrote = Object.keys(record.writes).length > 0
    metrics.passes.inc({ result: record.converged ? (wrote ? 'applied' : 'converged') : 'error' })
    metrics.passDuration.observe(record.durationMs / 1000)
    metrics.ready.set(record.converged ? 1 : 0)
    if (record.converged) metrics.lastSuccess.set(Math.floor(this.now() / 1000))
    this.opts.onPass?.(record)
    // A failed subsystem (charon not up yet, a transient kernel error) is retried with backoff, not only by the
    // resync timer: 0.25 s, 0.5 s, ... up to 10 s.
    // Unsettled work (peers backing off) comes back through the subsystem's own wakes.
    if (failed.length === 0 && !record.duties) this.errorStreak = 0
    else this.scheduler.triggerAt(this.now() + Math.min(10_000, 250 * 2 ** this.errorStreak++), 'retry')
    // One verification pass after a pass that wrote: it must find nothing to do (and picks up work that a later
    // subsystem made possible, such as destroying a set the rewritten rules no longer reference).
    if (wrote && !reasons.includes('verify')) this.trigger('verify')
    // Tunnels may legitimately act again (an initiate the peer refused is retried); anything else writing twice
    // in a row means two writers fight over an object, or our plan and the kernel disagree.
    else if (Object.keys(record.writes).some((k) => k !== 'tunnels')) log.warn({ op: 'pass', writes: record.writes }, 'verification pass still had to write')
    // What the next config change's checks need is built now, not when that change is waiting for it.
    if (outcome === 'changed') setImmediate(() => this.parser.prepare()).unref()
    log[wrote || !record.converged ? 'info' : 'debug']({ op: 'pass', reasons, ...(record.scope ? { scope: record.scope } : {}), durationMs: ms(record.durationMs), writes: record.writes, errors: record.errors, ...(record.duties ? { duties: record.duties } : {}), desiredMs, ...(desiredFull ? { desiredFull } : {}), timings: record.timings }, 'pass done')
  }

  get configInForce(): TunnelConfig | null {
    return this.config
  }

  /** Subsystems whose last plan or apply failed and have not succeeded since. */
  get dirtySubsystems(): SubsystemName[] {
    return this.engine.dirtySubsystems
  }
}

/** Milliseconds rounded to 0.01 for logs. */
function ms(x: number): number {
  return Math.round(x * 100) / 100
}

function addMember(m: Map<string, Set<string>>, set: string, member: string): void {
  let s = m.get(set)
  if (!s) m.set(set, (s = new Set()))
  s.add(member)
}

/** Adds `b`'s keys to `a`. */
function mergeDelta(a: DesiredDelta, b: DesiredDelta): void {
  for (const k of b.conns) a.conns.add(k)
  for (const k of b.dsts) a.dsts.add(k)
  for (const [set, m] of b.members) for (const k of m) addMember(a.members, set, k)
}
