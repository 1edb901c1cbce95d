// `--leader-election lease`: FabEdge-compatible connector election over a coordination.k8s.io/v1 Lease (FabEdge's
// names and defaults: lock `connector` in namespace $NAMESPACE, 15 s / 10 s / 2 s, identity = node name), following
// client-go's tools/leaderelection semantics:
// - tryAcquireOrRenew: read the Lease (create it when absent); a record held by someone else is respected until
//   this candidate has gone a full LeaseDuration *without observing a change to it* (measured on the local clock,
//   never by comparing the holder's timestamps); then write ourselves in with the resourceVersion read, so of two
//   candidates racing only one write succeeds (the other gets a 409 conflict);
// - a candidate retries every RetryPeriod with jitter factor 1.2 (2 s .. 4.4 s);
// - the leader renews every RetryPeriod; when no renew succeeded within RenewDeadline it stops leading. Because
//   RenewDeadline + RetryPeriod < LeaseDuration, it has stopped before any other candidate could take the lease;
// - release (SIGTERM) writes holderIdentity "" and leaseDurationSeconds 1, as client-go's ReleaseOnCancel does, so
//   a standby takes over at its next retry instead of after a LeaseDuration. FabEdge never cancels its context and so
//   never releases; we do.
// After losing leadership the agent stays up and campaigns again (as Submariner does, and FabEdge after its PR 414).
//
// The state machine talks to the API through LeaseApi and to time through LeaseClock, so unit tests run it with a
// fake clock against an in-process API double with optimistic concurrency. The real adapter uses the official
// Kubernetes JavaScript client with in-cluster config, imported only when lease mode is selected. It has NOT been
// proven against a real API server (none can run on the build machines); see README.
import type { Logger } from '../log.js'
import { LeadershipBase, type LeadershipStatus } from './leader.js'
import { isoTime } from '../iso-time.js'

/** The fields of a Lease's spec that leader election uses (client-go's LeaderElectionRecord). */
export interface LeaseRecord {
  holderIdentity: string
  leaseDurationSeconds: number
  /** Unix ms, or null. */
  acquireTime: number | null
  renewTime: number | null
  leaseTransitions: number
}

export interface LeaseObject {
  resourceVersion: string
  spec: LeaseRecord
}

/** Optimistic concurrency lost: the Lease exists (create) or changed since it was read (replace). HTTP 409. */
export class LeaseConflict extends Error {
  override readonly name = 'LeaseConflict'
}

/** The Lease operations the election needs, bound to one namespace/name. */
export interface LeaseApi {
  /** null when the Lease does not exist (404). */
  get(signal?: AbortSignal): Promise<LeaseObject | null>
  /** Throws LeaseConflict when it exists already. */
  create(spec: LeaseRecord, signal?: AbortSignal): Promise<LeaseObject>
  /** Replaces the spec if the Lease is still at `resourceVersion`; throws LeaseConflict otherwise. */
  replace(resourceVersion: string, spec: LeaseRecord, signal?: AbortSignal): Promise<LeaseObject>
}

export interface LeaseClock {
  now(): number
  /** Resolves after `ms`, or at once when `signal` aborts. */
  sleep(ms: number, signal: AbortSignal): Promise<void>
}

export const REAL_CLOCK: LeaseClock = {
  now: Date.now,
  sleep: (ms, signal) =>
    new Promise<void>((resolve) => {
      if (signal.aborted) return resolve()
      const timer = setTimeout(done, ms)
      timer.unref()
      function done(): void {
        clearTimeout(timer)
        signal.removeEventListener('abort', done)
        resolve()
      }
      signal.addEventListener('abort', done, { once: true })
    }),
}

export interface LeaseElectionOptions {
  namespace: string
  /** `--leader-lock-name` (default connector). */
  name: string
  /** Identity written as holderIdentity: the node name. */
  identity: string
  leaseDurationMs: number
  renewDeadlineMs: number
  retryPeriodMs: number
}

/** FabEdge's (and client-go's usual) defaults: 15 s / 10 s / 2 s. */
export const LEASE_DEFAULTS = { leaseDurationMs: 15_000, renewDeadlineMs: 10_000, retryPeriodMs: 2_000 } as const
export const JITTER_FACTOR = 1.2

/** client-go's checks of the timings; a typed message for --help-style usage errors. */
export function checkLeaseTimings(o: Pick<LeaseElectionOptions, 'leaseDurationMs' | 'renewDeadlineMs' | 'retryPeriodMs'>): string | null {
  if (o.leaseDurationMs <= o.renewDeadlineMs) return '--leader-lease-duration must be greater than --leader-renew-deadline'
  if (o.renewDeadlineMs <= JITTER_FACTOR * o.retryPeriodMs) return '--leader-renew-deadline must be greater than 1.2 x --leader-retry-period'
  if (o.retryPeriodMs < 1) return '--leader-retry-period must be positive'
  return null
}

function sameRecord(a: LeaseRecord | null, b: LeaseRecord): boolean {
  return a !== null && a.holderIdentity === b.holderIdentity && a.leaseDurationSeconds === b.leaseDurationSeconds &&
    a.acquireTime === b.acquireTime && a.renewTime === b.renewTime && a.leaseTransitions === b.leaseTransitions
}

export class LeaseLeadership extends LeadershipBase {
  readonly mode = 'lease' as const
  private observed: LeaseObject | null = null
  /** Local time at which `observed` last changed. */
  private observedAt = 0
  private lastRenew: number | null = null
  private readonly clock: LeaseClock
  private readonly random: () => number
  private readonly log: Logger | undefined
  private abort = new AbortController()
  /** The last API error logged as a warning (repeats go to debug). */
  private lastApiError: string | null = null
  private loop: Promise<void> | null = null

  constructor(private readonly api: LeaseApi, readonly opts: LeaseElectionOptions, deps: { clock?: LeaseClock; random?: () => number; log?: Logger } = {}) {
    const clock = deps.clock ?? REAL_CLOCK
    super(false, () => clock.now())
    this.clock = clock
    this.random = deps.random ?? Math.random
    this.log = deps.log
  }

  /** Starts campaigning in the background; resolves at once (a standby until the first acquire succeeds). */
  async start(): Promise<void> {
    if (this.loop) return
    this.abort = new AbortController()
    const signal = this.abort.signal
    this.loop = this.run(signal).catch((err: unknown) => this.log?.error({ err: (err as Error).message }, 'lease election loop failed'))
  }

  private async run(signal: AbortSignal): Promise<void> {
    while (!signal.aborted) {
      // Campaign: every RetryPeriod with jitter, until we hold the lease.
      // Each attempt bounded (a hung request must not stall the candidate for good), like client-go's HTTP timeout.
      while (!signal.aborted && !(await this.tryAcquireOrRenew(signal, this.clock.now() + this.opts.renewDeadlineMs))) {
        await this.clock.sleep(this.opts.retryPeriodMs * (1 + this.random() * JITTER_FACTOR), signal)
      }
      if (signal.aborted) return
      this.log?.info({ holder: this.opts.identity, lease: `${this.opts.namespace}/${this.opts.name}` }, 'lease acquired')
      this.setLeader(true)
      // Lead: renew every RetryPeriod; a renew window of RenewDeadline without success ends leadership.
      while (!signal.aborted) {
        await this.clock.sleep(this.opts.retryPeriodMs, signal)
        if (signal.aborted) return
        if (!(await this.renewWithin(signal))) break
      }
      if (signal.aborted) return
      this.log?.warn({ lease: `${this.opts.namespace}/${this.opts.name}`, renewDeadlineMs: this.opts.renewDeadlineMs }, 'lease not renewed within the renew deadline: leadership lost')
      this.setLeader(false)
    }
  }

  /** client-go's renew: retry every RetryPeriod until success or RenewDeadline passes. */
  private async renewWithin(outer: AbortSignal): Promise<boolean> {
    const deadline = this.clock.now() + this.opts.renewDeadlineMs
    const window = new AbortController()
    const onOuter = (): void => window.abort()
    outer.addEventListener('abort', onOuter, { once: true })
    try {
      for (;;) {
        if (await this.tryAcquireOrRenew(window.signal, deadline)) return true
        const left = deadline - this.clock.now()
        if (left <= 0 || outer.aborted) return false
        await this.clock.sleep(Math.min(this.opts.retryPeriodMs, left), outer)
        if (this.clock.now() >= deadline) return false
      }
    } finally {
      outer.removeEventListener('abort', onOuter)
    }
  }

  /**
   * One attempt (client-go tryAcquireOrRenew). With a `deadline`, an API call still pending then counts as failed
   * (the real adapter aborts it through the signal).
   */
  async tryAcquireOrRenew(signal: AbortSignal, deadline?: number): Promise<boolean> {
    const call = <T>(p: (s: AbortSignal) => Promise<T>): Promise<T> => this.bounded(p, signal, deadline)
    const now = this.clock.now()
    const mine: LeaseRecord = {
      holderIdentity: this.opts.identity,
      leaseDurationSeconds: Math.ceil(this.opts.leaseDurationMs / 1000),
      acquireTime: now,
      renewTime: now,
      leaseTransitions: 0,
    }
    let current: LeaseObject | null
    try {
      current = await call((s) => this.api.get(s))
    } catch (err) {
      this.apiError(err, 'lease read failed')
      return false
    }
    if (current === null) {
      try {
        this.observe(await call((s) => this.api.create(mine, s)))
        this.lastRenew = this.clock.now()
        return true
      } catch (err) {
        this.apiError(err, 'lease create failed')
        return false
      }
    }
    if (!sameRecord(this.observed?.spec ?? null, current.spec)) this.observe(current)
    else this.observed = current
    const held = current.spec.holderIdentity !== '' && current.spec.holderIdentity !== this.opts.identity
    if (held && this.observedAt + this.opts.leaseDurationMs > this.clock.now()) return false
    if (current.spec.holderIdentity === this.opts.identity) {
      mine.acquireTime = current.spec.acquireTime
      mine.leaseTransitions = current.spec.leaseTransitions
    } else {
      mine.leaseTransitions = current.spec.leaseTransitions + 1
    }
    try {
      this.observe(await call((s) => this.api.replace(current.resourceVersion, mine, s)))
      this.lastRenew = this.clock.now()
      return true
    } catch (err) {
      if (err instanceof LeaseConflict) this.log?.debug({ err: err.message }, 'lease update lost a conflict')
      else this.apiError(err, 'lease update failed')
      return false
    }
  }

  private apiError(err: unknown, what: string): void {
    const message = (err as Error).message
    if (message !== this.lastApiError) this.log?.warn({ err: message, lease: `${this.opts.namespace}/${this.opts.name}` }, what)
    else this.log?.debug({ err: message }, what)
    this.lastApiError = message
  }

  private observe(o: LeaseObject): void {
    this.lastApiError = null
    this.observed = o
    this.observedAt = this.clock.now()
  }

  /** Runs an API call that is abandoned (and aborted) when `signal` aborts or `deadline` passes. */
  private async bounded<T>(p: (s: AbortSignal) => Promise<T>, signal: AbortSignal, deadline?: number): Promise<T> {
    const ac = new AbortController()
    const onAbort = (): void => ac.abort()
    signal.addEventListener('abort', onAbort, { once: true })
    const stopped = new Promise<never>((_, reject) => ac.signal.addEventListener('abort', () => reject(new Error(deadline !== undefined && this.clock.now() >= deadline ? 'renew deadline passed' : 'aborted')), { once: true }))
    // Rejects also after the call settled (the finally below aborts): that rejection is expected, not unhandled.
    stopped.catch(() => undefined)
    const stops = [stopped]
    if (deadline !== undefined) {
      const left = deadline - this.clock.now()
      if (left <= 0) ac.abort()
      else this.clock.sleep(left, ac.signal).then(() => ac.abort(), () => undefined)
    }
    try {
      return await Promise.race([p(ac.signal), ...stops])
    } finally {
      signal.removeEventListener('abort', onAbort)
      ac.abort()
    }
  }

  /**
   * Stops campaigning and, when leading, gives the lease up (holderIdentity "", leaseDurationSeconds 1) so a standby
   * takes over at its next retry. Demotes first: nothing leader-only may happen after the write.
   */
  async release(): Promise<void> {
    const wasLeader = this.isLeader()
    await this.halt()
    this.setLeader(false)
    if (!wasLeader || !this.observed || this.observed.spec.holderIdentity !== this.opts.identity) return
    const now = this.clock.now()
    const spec: LeaseRecord = { holderIdentity: '', leaseDurationSeconds: 1, acquireTime: now, renewTime: now, leaseTransitions: this.observed.spec.leaseTransitions }
    try {
      this.observe(await this.api.replace(this.observed.resourceVersion, spec))
    } catch (err) {
      if (!(err instanceof LeaseConflict)) throw err
      // A renew aborted by the halt may still have landed: read again, release if it is still ours.
      const current = await this.api.get()
      if (!current || current.spec.holderIdentity !== this.opts.identity) return
      this.observe(await this.api.replace(current.resourceVersion, { ...spec, leaseTransitions: current.spec.leaseTransitions }))
    }
    this.log?.info({ lease: `${this.opts.namespace}/${this.opts.name}` }, 'lease released')
  }

  /** Stops campaigning without releasing (the lease then expires after LeaseDuration). */
  async stop(): Promise<void> {
    await this.halt()
  }

  private async halt(): Promise<void> {
    this.abort.abort()
    await this.loop
    this.loop = null
  }

  override status(): LeadershipStatus {
    return {
      ...this.baseStatus(),
      lease: {
        namespace: this.opts.namespace,
        name: this.opts.name,
        identity: this.opts.identity,
        holder: this.observed ? this.observed.spec.holderIdentity || null : null,
        lastRenew: this.lastRenew === null ? null : isoTime(this.lastRenew),
      },
    }
  }
}

function inCluster(kc: import('@kubernetes/client-node').KubeConfig): void {
  if (!process.env.KUBERNETES_SERVICE_HOST || !process.env.KUBERNETES_SERVICE_PORT) {
    throw new Error('--leader-election lease needs in-cluster config: KUBERNETES_SERVICE_HOST/PORT are not set (run it in a pod)')
  }
  kc.loadFromCluster()
}

interface ApiErrorLike {
  code?: number
  statusCode?: number
}

function httpCode(err: unknown): number | undefined {
  const e = err as ApiErrorLike
  return e?.code ?? e?.statusCode
}

/**
 * The real LeaseApi over @kubernetes/client-node (CoordinationV1Api) with in-cluster config (the pod's service
 * account token and CA). Imported lazily: only lease mode pays for loading the client.
 */
export async function kubernetesLeaseApi(
  namespace: string,
  name = 'connector',
  /** How the client finds the API server; default in-cluster (tests point it at an HTTP double). */
  configure: (kc: import('@kubernetes/client-node').KubeConfig) => void = inCluster,
): Promise<LeaseApi> {
  const k8s = await import('@kubernetes/client-node')
  const kc = new k8s.KubeConfig()
  configure(kc)
  const api = kc.makeApiClient(k8s.CoordinationV1Api)
  const toObject = (l: import('@kubernetes/client-node').V1Lease): LeaseObject => ({
    resourceVersion: l.metadata?.resourceVersion ?? '',
    spec: {
      holderIdentity: l.spec?.holderIdentity ?? '',
      leaseDurationSeconds: l.spec?.leaseDurationSeconds ?? 0,
      acquireTime: l.spec?.acquireTime ? new Date(l.spec.acquireTime).getTime() : null,
      renewTime: l.spec?.renewTime ? new Date(l.spec.renewTime).getTime() : null,
      leaseTransitions: l.spec?.leaseTransitions ?? 0,
    },
  })
  const body = (spec: LeaseRecord, resourceVersion?: string): import('@kubernetes/client-node').V1Lease => ({
    apiVersion: 'coordination.k8s.io/v1',
    kind: 'Lease',
    metadata: { name, namespace, ...(resourceVersion ? { resourceVersion } : {}) },
    spec: {
      holderIdentity: spec.holderIdentity,
      leaseDurationSeconds: spec.leaseDurationSeconds,
      // MicroTime: the API server parses exactly six fractional digits (a plain Date would send three).
      ...(spec.acquireTime !== null ? { acquireTime: new k8s.V1MicroTime(spec.acquireTime) } : {}),
      ...(spec.renewTime !== null ? { renewTime: new k8s.V1MicroTime(spec.renewTime) } : {}),
      leaseTransitions: spec.leaseTransitions,
    },
  })
  const conflict = (err: unknown): never => {
    if (httpCode(err) === 409) throw new LeaseConflict(`lease ${namespace}/${name}: conflict`, { cause: err })
    throw err
  }
  return {
    get: async () => {
      try {
        return toObject(await api.readNamespacedLease({ name, namespace }))
      } catch (err) {
        if (httpCode(err) === 404) return null
        throw err
      }
    },
    create: async (spec) => toObject(await api.createNamespacedLease({ namespace, body: body(spec) }).catch(conflict)),
    replace: async (rv, spec) => toObject(await api.replaceNamespacedLease({ name, namespace, body: body(spec, rv) }).catch(conflict)),
  }
}
