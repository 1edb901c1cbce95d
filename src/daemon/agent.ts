// The agent: one level-triggered reconcile loop per node. A pass takes the config in force, derives the whole
// desired state, lets every subsystem observe and plan, and applies only plans that write something, in a safe
// order: ipsets before the iptables rules that reference them, routes and the rule, then tunnels (connections
// loaded before they are initiated, stale ones unloaded last). Triggers (config watch, VICI and netlink events,
// SIGHUP, the resync timer) only decide when a pass runs.
//
// Bad input never costs connectivity: a config that does not validate is reported (log, /status, metrics) and the
// last good one stays in force; a failing subsystem is reported and the others still converge.
import { createHash } from 'node:crypto'
import { readFile } from 'node:fs/promises'
import { ConfigError, type ConfigIssue } from '../config/errors.js'
import { parseConfig } from '../config/load.js'
import { MAX_CONFIG_BYTES } from '../config/load.js'
import type { TunnelConfig } from '../config/schema.js'
import { desiredState } from '../desired/index.js'
import type { Datapath, Desired } from '../desired/types.js'
import type { Logger } from '../log.js'
import { PassScheduler } from '../reconcile/scheduler.js'
import { passContext, type PassContext, type Subsystem, type SubsystemName, type SubsystemPlan } from '../reconcile/subsystem.js'
import type { Metrics } from './metrics.js'

export interface AgentOptions {
  configPath: string
  datapath: Datapath
  /** Ordered: apply happens in this order. */
  subsystems: Subsystem[]
  /** Reads the local certificate PEM for `local.certs`; undefined when not available. */
  certPem?: () => Promise<string | undefined>
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
}

export interface PassRecord {
  startedAt: string
  durationMs: number
  reasons: string[]
  writes: Partial<Record<SubsystemName, number>>
  errors: Partial<Record<SubsystemName, string>>
  /** Milliseconds each subsystem took (plan + apply). */
  timings: Partial<Record<SubsystemName, number>>
  converged: boolean
}

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
  private configText: string | null = null
  readonly configState: ConfigState
  lastPass: PassRecord | null = null
  lastDesired: Desired | null = null
  private readonly scheduler: PassScheduler
  private resyncTimer: NodeJS.Timeout | null = null
  private readonly now: () => number
  /** Passes run, and writes in total: tests and benchmarks assert on these. */
  readonly counters = { passes: 0, writes: 0 }
  private errorStreak = 0

  constructor(private readonly opts: AgentOptions) {
    this.now = opts.now ?? Date.now
    this.configState = { path: opts.configPath, generation: 0, hash: null, loadedAt: null, rejected: null, warnings: [] }
    this.scheduler = new PassScheduler((reasons) => this.pass(reasons), {
      coalesceMs: opts.coalesceMs ?? 5,
      onError: (err) => opts.log.error({ err }, 'pass failed unexpectedly'),
    })
  }

  get ready(): boolean {
    return this.lastPass?.converged === true
  }

  get hasConfig(): boolean {
    return this.config !== null
  }

  trigger(reason: string): void {
    this.scheduler.trigger(reason)
  }

  triggerAt(when: number, reason: string): void {
    this.scheduler.triggerAt(when, reason)
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

  async stop(): Promise<void> {
    if (this.resyncTimer) clearInterval(this.resyncTimer)
    await this.scheduler.stop()
  }

  /**
   * Re-reads the config file. A changed, valid file becomes the config in force; an invalid one is reported and
   * the last good one stays. Unchanged content (same hash) costs no parse.
   */
  async reloadConfig(): Promise<'unchanged' | 'changed' | 'rejected' | 'missing'> {
    const { log, metrics } = this.opts
    const path = this.opts.configPath
    let text: string
    try {
      text = await readFile(path, 'utf8')
      if (Buffer.byteLength(text) > MAX_CONFIG_BYTES) throw new ConfigError('ETOOBIG', path, [{ severity: 'error', path: '', line: null, column: null, message: `larger than ${MAX_CONFIG_BYTES} bytes` }])
    } catch (err) {
      const missing = (err as NodeJS.ErrnoException).code === 'ENOENT'
      if (missing && this.config === null) {
        if (this.configState.rejected?.message !== 'config file does not exist yet') log.warn({ file: path }, 'config file does not exist yet; waiting for it')
        this.configState.rejected = { at: new Date(this.now()).toISOString(), errors: [], message: 'config file does not exist yet' }
        return 'missing'
      }
      return this.reject(err instanceof ConfigError ? err : new ConfigError(missing ? 'ENOENT' : 'EREAD', path, [{ severity: 'error', path: '', line: null, column: null, message: `cannot read: ${(err as Error).message}` }], { cause: err }))
    }
    const hash = createHash('sha256').update(text).digest('hex')
    if (hash === this.configState.hash && this.config !== null) {
      if (this.configState.rejected) {
        log.info({ file: path }, 'config file is back to the config in force')
        this.configState.rejected = null
        metrics.configValid.set(1)
      }
      return 'unchanged'
    }
    try {
      const { config, warnings } = parseConfig(text, path)
      this.config = config
      this.configText = text
      this.configState.hash = hash
      this.configState.generation++
      this.configState.loadedAt = new Date(this.now()).toISOString()
      this.configState.rejected = null
      this.configState.warnings = warnings
      metrics.configGeneration.set(this.configState.generation)
      metrics.configValid.set(1)
      for (const w of warnings) log.warn({ file: path, line: w.line, path: w.path }, w.message)
      log.info({ file: path, generation: this.configState.generation, peers: config.peers.length, role: config.local.type }, 'config accepted')
      return 'changed'
    } catch (err) {
      if (!(err instanceof ConfigError)) throw err
      return this.reject(err)
    }
  }

  private reject(err: ConfigError): 'rejected' {
    const { log, metrics } = this.opts
    metrics.configReloadErrors.inc()
    metrics.configValid.set(0)
    this.configState.rejected = { at: new Date(this.now()).toISOString(), errors: err.errors, message: err.message }
    log.error({ file: err.file, code: err.code, errors: err.errors.map((e) => `${e.line ?? '-'}:${e.path}: ${e.message}`) }, this.config ? 'config rejected; keeping the last good config' : 'config rejected; no good config yet')
    return 'rejected'
  }

  private desiredMemo: { key: string; desired: Desired } | null = null
  private certPem: string | null | undefined = undefined

  /**
   * The desired state for the config in force, or null without one. Pure in its inputs, so it is recomputed only
   * when one of them (config generation, certificate, default gateways) changes; unchanged connection sections
   * then stay the same objects from pass to pass.
   */
  async desired(ctx: PassContext = passContext(['manual'])): Promise<Desired | null> {
    if (!this.config) return null
    // The certificate file changes only with a credential trigger (directory watch) or is re-checked by deep passes.
    if (ctx.credentials || this.certPem === undefined) this.certPem = (await this.opts.certPem?.()) ?? null
    const certPem = this.certPem ?? undefined
    const gateways = this.opts.datapath === 'xfrm' ? await this.opts.gateways?.() : undefined
    const key = `${this.configState.generation}\0${certPem ?? ''}\0${JSON.stringify(gateways ?? {})}`
    if (this.desiredMemo?.key !== key) {
      const desired = desiredState(this.config, { datapath: this.opts.datapath, ...(certPem ? { certPem } : {}), ...(gateways ? { gateways } : {}) })
      this.desiredMemo = { key, desired }
    }
    return this.desiredMemo.desired
  }

  /** Plans of every subsystem against the live node, without applying anything (`fabtunnel plan`). */
  async planAll(): Promise<Array<{ subsystem: SubsystemName; plan?: SubsystemPlan; error?: string }>> {
    const desired = await this.desired()
    if (!desired) return []
    const out: Array<{ subsystem: SubsystemName; plan?: SubsystemPlan; error?: string }> = []
    for (const s of this.opts.subsystems) {
      try {
        out.push({ subsystem: s.name, plan: await s.plan(desired, passContext(['manual'])) })
      } catch (err) {
        out.push({ subsystem: s.name, error: (err as Error).message })
      }
    }
    return out
  }

  private async pass(reasons: string[]): Promise<void> {
    const { log, metrics } = this.opts
    const started = this.now()
    const t0 = process.hrtime.bigint()
    const ctx = passContext(reasons)
    if (this.config === null || ctx.deep || reasons.some((r) => r.startsWith('config'))) {
      const outcome = await this.reloadConfig()
      // No file yet (a ConfigMap not mounted yet): look again shortly, bounded by nothing but our own stop.
      if (outcome === 'missing') this.scheduler.triggerAt(this.now() + 1000, 'config-wait')
    }
    const desired = await this.desired(ctx).catch((err: unknown) => {
      log.error({ err }, 'cannot compute the desired state')
      return null
    })
    if (!desired) {
      this.lastPass = { startedAt: new Date(started).toISOString(), durationMs: 0, reasons, writes: {}, errors: {}, timings: {}, converged: false }
      metrics.ready.set(0)
      return
    }
    this.lastDesired = desired
    const record: PassRecord = { startedAt: new Date(started).toISOString(), durationMs: 0, reasons, writes: {}, errors: {}, timings: {}, converged: true }
    for (const s of this.opts.subsystems) {
      const ts = process.hrtime.bigint()
      try {
        await s.prepare?.(desired, ctx)
        const plan = await s.plan(desired, ctx)
        for (const w of plan.wakes ?? []) this.scheduler.triggerAt(w.at, w.reason)
        if (plan.writes === 0) continue
        log.info({ subsystem: s.name, op: 'apply', ops: plan.describe().slice(0, 50), writes: plan.writes }, 'applying')
        const done = await s.apply(plan)
        record.writes[s.name] = done
        metrics.opsApplied.inc({ subsystem: s.name }, done)
        this.counters.writes += done
      } catch (err) {
        record.errors[s.name] = (err as Error).message
        record.converged = false
        metrics.subsystemErrors.inc({ subsystem: s.name })
        log.error({ subsystem: s.name, err }, 'subsystem failed; the others still converge')
      } finally {
        record.timings[s.name] = Math.round(Number(process.hrtime.bigint() - ts) / 1e4) / 100
      }
    }
    record.durationMs = Number(process.hrtime.bigint() - t0) / 1e6
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
    if (record.converged) this.errorStreak = 0
    else this.scheduler.triggerAt(this.now() + Math.min(10_000, 250 * 2 ** this.errorStreak++), 'retry')
    // One verification pass after a pass that wrote: it must find nothing to do (and picks up work that a later
    // subsystem made possible, such as destroying a set the rewritten rules no longer reference).
    if (wrote && !reasons.includes('verify')) this.trigger('verify')
    // Tunnels may legitimately act again (an initiate the peer refused is retried); anything else writing twice
    // in a row means two writers fight over an object, or our plan and the kernel disagree.
    else if (Object.keys(record.writes).some((k) => k !== 'tunnels')) log.warn({ op: 'pass', writes: record.writes }, 'verification pass still had to write')
    log[wrote || !record.converged ? 'info' : 'debug']({ op: 'pass', reasons, durationMs: Math.round(record.durationMs * 100) / 100, writes: record.writes, errors: record.errors, timings: record.timings }, 'pass done')
  }

  get configInForce(): TunnelConfig | null {
    return this.config
  }

  get configTextInForce(): string | null {
    return this.configText
  }
}
