// Tunnels: (desired connections, what charon reports) -> the VICI operations that make charon match. Pure.
//
// Content, not names, decides whether a loaded connection is current. charon's `list-conns` shows only part of a
// connection (addresses, identities, DPD, children with their selectors and DPD action; not ports, mediation or
// certificates), so two comparisons are combined:
//   1. a projection of the desired section onto exactly what `list-conns` shows, against the live entry: catches
//      out-of-band changes in charon and adopts an already-correct charon after an agent restart without a write;
//   2. a hash of the full section we loaded into this charon instance (kept in memory, forgotten when charon
//      restarts): catches changes to fields `list-conns` does not show.
// Ownership (isOwnConn): what we loaded into this charon instance, the mediator's name, FabEdge's child names, or
// our own identity on a connection without any child. Connections loaded by anyone else are never unloaded or
// terminated, also when they use our identity.
import { createHash, type Hash } from 'node:crypto'
import { dict } from '../dict.js'
import { MEDIATOR_CONN } from '../fabedge.js'
import type { Desired, ViciSection } from '../desired/types.js'

/** What `list-conns` reports for a connection: a VICI message (strings, lists, nested sections). */
export interface ListedConn {
  [key: string]: unknown
}

export interface ObservedChildSa {
  name: string
  uniqueid: string
  state: string
}

export interface ObservedIkeSa {
  /** Connection name. */
  name: string
  uniqueid: string
  state: string
  /** Our IKE identity in this SA as charon prints it (list-sas `local-id`), when known. */
  localId?: string
  children: ObservedChildSa[]
}

export interface ObservedTunnels {
  conns: Map<string, ListedConn>
  sas: ObservedIkeSa[]
}

export type TunnelOp =
  | { op: 'load'; conn: string; section: ViciSection; hash: string; reason: 'missing' | 'changed' }
  | { op: 'unload'; conn: string }
  | { op: 'terminate-ike'; conn: string; ikeId: string }
  | { op: 'terminate-child'; conn: string; child: string; childId: string }
  | { op: 'initiate-ike'; conn: string }
  | { op: 'initiate-child'; conn: string; child: string }

/**
 * What we remember of our own initiates, per child (per connection for an IKE-only one such as the mediator):
 * owned by the SA-state tracker (sa-state.ts) and passed in, so the plan itself stays pure.
 */
export interface InitiateAttempt {
  /** When the last initiate was sent (ms since epoch). */
  lastAttempt: number
  /** Earlier attempts that ended without the child coming up. */
  failures: number
  /**
   * The last initiate is still negotiating: neither a child-updown, nor a listing with the child, nor a down event
   * has been seen since. charon lists a child only once its CREATE_CHILD_SA exchange is done, so a child missing
   * from the listing is not proof that it needs another initiate.
   */
  inflight: boolean
  /**
   * Set on a reconnect to charon: the session dropped while this initiate was in flight, so charon may still be
   * negotiating it (a late answer made the client reconnect) or may have restarted and forgotten it. It counts as
   * in flight only while charon lists an IKE_SA of the connection (any state); otherwise it is gone.
   */
  unconfirmed?: boolean
}

/** Key of an attempt in the memory: `conn/child`, or `conn/` for a connection initiated through its IKE_SA alone. */
export function attemptKey(conn: string, child: string): string {
  return `${conn}/${child}`
}

/** Which connections and SAs are ours besides FabEdge's naming (see isOwnConn). */
export interface Ownership {
  /** Our own IKE identities (the `local.id` of our connections), normalized with normalizeId. */
  ids: ReadonlySet<string>
  /** Connection names we loaded into the current charon instance. */
  loaded: Pick<ReadonlySet<string>, 'has'>
}

export const NO_OWNERSHIP_HINTS: Ownership = { ids: new Set(), loaded: new Set() }

export interface TunnelPlanInput {
  desired: Pick<Desired, 'conns' | 'initiate' | 'initiateChildren'>
  observed: ObservedTunnels
  /** conn -> hash of the section loaded into the current charon instance. */
  loaded: ReadonlyMap<string, string>
  /** attemptKey -> memory of our initiates. */
  attempts: ReadonlyMap<string, InitiateAttempt>
  now: number
  backoff?: BackoffPolicy
  ownership?: Ownership
  /**
   * conn -> uniqueids of CHILD_SAs that must be replaced (their connection was reloaded with other selectors and
   * the terminate was sent, but may have failed): terminated on every pass while charon still lists them.
   */
  replacing?: ReadonlyMap<string, ReadonlySet<string>>
  /**
   * Uniqueids of CHILD_SAs whose terminate was sent and is still pending: charon lists them until its terminate
   * job ran, so they are neither terminated again nor counted as present.
   */
  terminating?: ReadonlySet<string>
}

export interface TunnelPlan {
  ops: TunnelOp[]
  /** Connections that need an initiate but must wait (in flight, backing off, mediator down), with why. */
  waiting: Array<{ conn: string; until: number; reason: string }>
  /** When a pass must run again for a wait to end (finite waits of `waiting`). */
  wakes: Array<{ at: number; reason: string }>
}

export interface BackoffPolicy {
  /** Delay after the first failed attempt: the first retry never follows at once. */
  baseMs: number
  maxMs: number
  /** How long an initiate counts as in flight when neither an event nor the listing settles it. */
  inflightMs: number
}

export const DEFAULT_BACKOFF: BackoffPolicy = { baseMs: 500, maxMs: 30_000, inflightMs: 30_000 }

/** Delay before the next attempt after `failures` failed ones: base, 2*base, ... capped; 0 without a failure. */
export function backoffDelay(failures: number, p: BackoffPolicy = DEFAULT_BACKOFF): number {
  if (failures <= 0) return 0
  return Math.min(p.maxMs, p.baseMs * 2 ** (failures - 1))
}

// Desired sections are recomputed only when the config changes and listed entries only when re-listed, so
// per-object memos make a pass over 1,000 unchanged connections cost lookups instead of hashing. The projection memo
// keeps a 64-bit hash of the projection, not its canonical JSON (~460 B per object, two objects per peer).
const hashMemo = new WeakMap<object, string>()
const projectionMemo = new WeakMap<object, string>()

export function sectionHash(section: ViciSection): string {
  let h = hashMemo.get(section)
  if (h === undefined) {
    h = hex64(createHash('sha256').update(stableJson(section)))
    hashMemo.set(section, h)
  }
  return h
}

/**
 * The first 64 bits of a digest in hex, as a string of its own: `digest('hex').slice(0, 16)` is a slice that keeps
 * the whole 64-character digest alive (88 B more per memo entry, three per peer).
 */
function hex64(h: Hash): string {
  return h.digest().toString('hex', 0, 8)
}

function memoProjection<T extends object>(obj: T, project: (o: T) => Projection): string {
  let p = projectionMemo.get(obj)
  if (p === undefined) {
    p = projectionHash(project(obj))
    projectionMemo.set(obj, p)
  }
  return p
}

/**
 * A hash of the projection's canonical form: the fields in a fixed order, children sorted by name, lists in their
 * order (what `stableJson` of the projection spells, as one native JSON.stringify of arrays instead of a string
 * per key: a deep pass projects every listed connection afresh).
 */
export function projectionHash(p: Projection): string {
  const children = Object.keys(p.children).sort().map((name) => {
    const c = p.children[name]!
    return [name, c.localTs, c.remoteTs, c.dpdAction]
  })
  return hex64(createHash('sha256').update(JSON.stringify([p.remoteAddrs, p.dpdDelay, p.localId, p.remoteId, children])))
}

function stableJson(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(stableJson).join(',')}]`
  if (v !== null && typeof v === 'object') {
    return `{${Object.keys(v as object).sort().map((k) => `${JSON.stringify(k)}:${stableJson((v as Record<string, unknown>)[k])}`).join(',')}}`
  }
  return JSON.stringify(v)
}

const CHILD_SUFFIXES = ['-p2p', '-n2p', '-p2n']

/**
 * An IKE identity in one spelling: charon prints DNs as `C=CN, O=fabedge.io, CN=x` whatever spacing the config
 * used, so compare with the blanks around RDN separators removed.
 */
export function normalizeId(id: string): string {
  return id.split(',').map((p) => p.trim()).join(',')
}

/** The local identities of a set of desired sections (all ours, normally one). */
export function ownIds(conns: Record<string, ViciSection>): Set<string> {
  const out = new Set<string>()
  for (const section of Object.values(conns)) {
    const id = asString(asRecord(section.local)?.id)
    if (id) out.add(normalizeId(id))
  }
  return out
}

/**
 * Whether a loaded connection is ours: named `mediator`; or loaded by us into this charon instance; or all its
 * children carry FabEdge's child names (`<conn>-p2p|n2p|p2n`); or it has no children at all and carries our own
 * IKE identity as its local id (a peer whose children were all left out, recognised after an agent restart).
 * Our identity alone never makes a connection ours: a bare-metal edge's own VPN may use the node certificate, and a
 * connection with any child not named by FabEdge belongs to someone else. Foreign connections are never unloaded or
 * terminated.
 */
export function isOwnConn(name: string, listed: ListedConn, hints: Ownership = NO_OWNERSHIP_HINTS): boolean {
  if (name === MEDIATOR_CONN || hints.loaded.has(name)) return true
  const names = Object.keys(asRecord(listed.children) ?? {})
  if (names.length === 0) {
    const local = localIdOf(listed)
    return local !== undefined && hints.ids.has(normalizeId(local))
  }
  return names.every((c) => isFabEdgeChild(name, c))
}

/** The same ownership test for an IKE SA whose connection is no longer loaded (list-sas shows its local id). */
export function isOwnSa(sa: ObservedIkeSa, hints: Ownership = NO_OWNERSHIP_HINTS): boolean {
  if (sa.name === MEDIATOR_CONN) return true
  if (sa.children.length === 0) return sa.localId !== undefined && hints.ids.has(normalizeId(sa.localId))
  return sa.children.every((c) => isFabEdgeChild(sa.name, c.name))
}

function isFabEdgeChild(conn: string, child: string): boolean {
  return CHILD_SUFFIXES.some((s) => child === `${conn}${s}`)
}

function localIdOf(listed: ListedConn): string | undefined {
  const key = Object.keys(listed).find((k) => k.startsWith('local-') && asRecord(listed[k]))
  return key ? asString(asRecord(listed[key])!.id) : undefined
}

function asRecord(v: unknown): Record<string, unknown> | undefined {
  return v !== null && typeof v === 'object' && !Array.isArray(v) ? (v as Record<string, unknown>) : undefined
}

function asList(v: unknown): string[] {
  return Array.isArray(v) ? v.map(String) : []
}

function asString(v: unknown): string | undefined {
  return typeof v === 'string' ? v : undefined
}

/** Seconds as charon prints them (`dpd_delay = 10s` is listed as `10`). */
function seconds(v: string | undefined): string {
  if (v === undefined) return '0'
  const m = /^(\d+)(s|m|h|d)?$/.exec(v)
  if (!m) return v
  const mult = { s: 1, m: 60, h: 3600, d: 86400 }[(m[2] ?? 's') as 's' | 'm' | 'h' | 'd']
  return String(Number(m[1]) * mult)
}

// charon 5.9 folds `clear` into `none` for dpd_action and close_action.
function action(v: string | undefined): string {
  const a = (v ?? 'none').toLowerCase()
  return a === 'clear' ? 'none' : a
}

export interface Projection {
  remoteAddrs: string[]
  dpdDelay: string
  localId: string
  remoteId: string
  children: Record<string, { localTs: string[]; remoteTs: string[]; dpdAction: string }>
}

/** The desired section, reduced to what `list-conns` shows. */
export function projectDesired(s: ViciSection): Projection {
  const local = asRecord(s.local) ?? {}
  const remote = asRecord(s.remote) ?? {}
  const children: Projection['children'] = dict()
  for (const [name, c] of Object.entries(asRecord(s.children) ?? {})) {
    const child = asRecord(c) ?? {}
    children[name] = { localTs: asList(child.local_ts), remoteTs: asList(child.remote_ts), dpdAction: action(asString(child.dpd_action)) }
  }
  const remoteAddrs = asList(s.remote_addrs)
  return {
    remoteAddrs: remoteAddrs.length ? remoteAddrs : ['%any'],
    dpdDelay: seconds(asString(s.dpd_delay)),
    localId: asString(local.id) ?? '',
    remoteId: asString(remote.id) ?? '',
    children,
  }
}

/** A `list-conns` entry, reduced to the same shape. */
export function projectListed(l: ListedConn): Projection {
  const auth = (prefix: string): Record<string, unknown> => {
    const key = Object.keys(l).find((k) => k.startsWith(`${prefix}-`) && asRecord(l[k]))
    return key ? asRecord(l[key])! : {}
  }
  const children: Projection['children'] = dict()
  for (const [name, c] of Object.entries(asRecord(l.children) ?? {})) {
    const child = asRecord(c) ?? {}
    children[name] = { localTs: asList(child['local-ts']), remoteTs: asList(child['remote-ts']), dpdAction: action(asString(child.dpd_action)) }
  }
  return {
    remoteAddrs: asList(l.remote_addrs).length ? asList(l.remote_addrs) : ['%any'],
    dpdDelay: seconds(asString(l.dpd_delay)),
    localId: asString(auth('local').id) ?? '',
    remoteId: asString(auth('remote').id) ?? '',
    children,
  }
}

export function connDiffers(desired: ViciSection, listed: ListedConn): boolean {
  return memoProjection(desired, projectDesired) !== memoProjection(listed, projectListed)
}

/** Child names whose selectors or DPD action differ between desired and listed (or that only one side has). */
function changedChildren(desired: ViciSection, listed: ListedConn | undefined): Set<string> {
  const a = projectDesired(desired).children
  const b = listed ? projectListed(listed).children : {}
  const out = new Set<string>()
  for (const name of new Set([...Object.keys(a), ...Object.keys(b)])) {
    if (stableJson(a[name]) !== stableJson(b[name])) out.add(name)
  }
  return out
}

const LIVE_CHILD = new Set(['INSTALLED', 'INSTALLING', 'REKEYING', 'REKEYED', 'CREATED', 'ROUTED'])
const UP_CHILD = new Set(['INSTALLED', 'REKEYING', 'REKEYED'])
const LIVE_IKE = new Set(['CONNECTING', 'ESTABLISHED', 'PASSIVE', 'REKEYING', 'REKEYED'])

/** Whether every child of `conn` is up in some IKE SA of that connection (the mediator: its IKE SA). */
export function connUp(conn: string, children: readonly string[], sas: readonly ObservedIkeSa[]): boolean {
  const mine = sas.filter((s) => s.name === conn)
  if (children.length === 0) return mine.some((s) => s.state === 'ESTABLISHED')
  return children.every((c) => mine.some((s) => s.children.some((k) => k.name === c && UP_CHILD.has(k.state))))
}

export function planTunnels(input: TunnelPlanInput): TunnelPlan {
  const { desired, observed, loaded, now } = input
  const policy = input.backoff ?? DEFAULT_BACKOFF
  const hints = input.ownership ?? NO_OWNERSHIP_HINTS
  const ops: TunnelOp[] = []
  const waiting: TunnelPlan['waiting'] = []
  const reloaded = new Map<string, Set<string>>()

  for (const [conn, section] of Object.entries(desired.conns)) {
    const listed = observed.conns.get(conn)
    const hash = sectionHash(section)
    if (!listed) {
      ops.push({ op: 'load', conn, section, hash, reason: 'missing' })
      reloaded.set(conn, changedChildren(section, undefined))
    } else if (connDiffers(section, listed) || (loaded.has(conn) && loaded.get(conn) !== hash)) {
      ops.push({ op: 'load', conn, section, hash, reason: 'changed' })
      reloaded.set(conn, changedChildren(section, listed))
    }
  }

  // CHILD_SAs that no longer match their config: gone from it, or established with selectors that changed.
  for (const sa of observed.sas) {
    const section = desired.conns[sa.name]
    if (!section) continue
    const wanted = new Set(Object.keys(asRecord(section.children) ?? {}))
    const changed = reloaded.get(sa.name) ?? new Set<string>()
    const replace = input.replacing?.get(sa.name)
    for (const child of sa.children) {
      if (input.terminating?.has(child.uniqueid)) continue
      if (!wanted.has(child.name) || (changed.has(child.name) && observed.conns.has(sa.name)) || replace?.has(child.uniqueid)) {
        ops.push({ op: 'terminate-child', conn: sa.name, child: child.name, childId: child.uniqueid })
      }
    }
  }

  // A child counts as present only through a live CHILD_SA that is not being terminated or replaced: an
  // old-selector child replaced in this pass needs its initiate, one whose replacement is already up does not.
  const terminatedIds = new Set(ops.flatMap((o) => (o.op === 'terminate-child' ? [o.childId] : [])))
  for (const id of input.terminating ?? []) terminatedIds.add(id)
  for (const ids of input.replacing?.values() ?? []) for (const id of ids) terminatedIds.add(id)
  const mediatorUp = connUp(MEDIATOR_CONN, [], observed.sas)
  const sasByConn = new Map<string, ObservedIkeSa[]>()
  for (const sa of observed.sas) {
    const list = sasByConn.get(sa.name)
    if (list) list.push(sa)
    else sasByConn.set(sa.name, [sa])
  }
  for (const conn of desired.initiate) {
    const children = desired.initiateChildren[conn] ?? []
    const section = desired.conns[conn]
    if (!section) continue
    if (section.mediated_by === MEDIATOR_CONN && !mediatorUp) {
      waiting.push({ conn, until: Number.POSITIVE_INFINITY, reason: 'waiting for the mediator' })
      continue
    }
    const sas = sasByConn.get(conn) ?? []
    const missing = children.length === 0
      ? (sas.some((s) => LIVE_IKE.has(s.state)) ? [] : [''])
      : children.filter((c) => !sas.some((s) => s.children.some((k) => k.name === c && LIVE_CHILD.has(k.state) && !terminatedIds.has(k.uniqueid))))
    for (const child of missing) {
      const attempt = input.attempts.get(attemptKey(conn, child))
      const gone = attempt?.unconfirmed === true && sas.length === 0
      const wait = gone ? null : attemptWait(attempt, now, policy)
      if (wait) {
        waiting.push({ conn, ...wait })
        continue
      }
      ops.push(child === '' ? { op: 'initiate-ike', conn } : { op: 'initiate-child', conn, child })
    }
  }

  // Stale connections last: unload first so nothing re-establishes them, then terminate what is left. SAs of an
  // own connection that is already unloaded (an earlier terminate failed, or charon kept them) are ended too.
  const terminating = new Set<string>()
  for (const [conn, listed] of observed.conns) {
    if (conn in desired.conns || !isOwnConn(conn, listed, hints)) continue
    ops.push({ op: 'unload', conn })
    for (const sa of sasByConn.get(conn) ?? []) {
      ops.push({ op: 'terminate-ike', conn, ikeId: sa.uniqueid })
      terminating.add(sa.uniqueid)
    }
  }
  for (const sa of observed.sas) {
    if (sa.name in desired.conns || observed.conns.has(sa.name) || terminating.has(sa.uniqueid)) continue
    if (!isOwnSa(sa, hints)) continue
    ops.push({ op: 'terminate-ike', conn: sa.name, ikeId: sa.uniqueid })
  }
  const wakes = waiting.filter((w) => Number.isFinite(w.until)).map((w) => ({ at: w.until, reason: `backoff:${w.conn}` }))
  return { ops, waiting, wakes }
}

/**
 * Why a missing child must not be initiated now, or null. An initiate still in flight is never doubled (that is
 * how duplicate CHILD_SAs are made); one that expired unanswered counts as failed; failures back off.
 */
export function attemptWait(a: InitiateAttempt | undefined, now: number, policy: BackoffPolicy = DEFAULT_BACKOFF): { until: number; reason: string } | null {
  if (!a) return null
  if (a.inflight && now < a.lastAttempt + policy.inflightMs) return { until: a.lastAttempt + policy.inflightMs, reason: 'initiate in flight' }
  const failures = a.failures + (a.inflight ? 1 : 0)
  const until = a.lastAttempt + backoffDelay(failures, policy)
  return until > now ? { until, reason: `backoff after ${failures} failed attempt(s)` } : null
}

/**
 * A `list-conns` entry reduced to the fields this module reads (projectListed, isOwnConn): remote addresses, DPD
 * delay, the first local and remote identity, and each child's selectors and DPD action. charon lists some 40
 * fields per connection; kept whole for 10,000 connections that is tens of MB for nothing.
 */
export function compactListed(l: ListedConn, lists?: ListInterner): ListedConn {
  const auth = (prefix: string): Record<string, unknown> => {
    const key = Object.keys(l).find((k) => k.startsWith(`${prefix}-`) && asRecord(l[k]))
    const id = key ? asRecord(l[key])!.id : undefined
    return id === undefined ? {} : { id: keptString(id, lists) }
  }
  const children: Record<string, unknown> = dict()
  for (const [name, c] of Object.entries(asRecord(l.children) ?? {})) {
    const child = asRecord(c) ?? {}
    children[name] = { 'local-ts': keptList(child['local-ts'], lists), 'remote-ts': keptList(child['remote-ts'], lists), dpd_action: keptString(child.dpd_action, lists) }
  }
  const out: ListedConn = { 'local-1': auth('local'), 'remote-1': auth('remote'), children }
  if (l.remote_addrs !== undefined) out.remote_addrs = keptList(l.remote_addrs, lists)
  if (l.dpd_delay !== undefined) out.dpd_delay = keptString(l.dpd_delay, lists)
  return out
}

/**
 * Equal lists of strings and equal strings of one listing, kept once, by their JSON text (a connector's 10,000
 * connections list the same local selectors, the same local identity and DPD actions). Made per listing by the
 * port, so it holds nothing once the listing is replaced.
 */
export type ListInterner = Map<string, unknown>

/** A listed string as it is kept: the listing's equal string (decoded strings are a copy each), else itself. */
function keptString(v: unknown, lists: ListInterner | undefined): unknown {
  if (typeof v !== 'string' || !lists) return v
  const key = JSON.stringify(v)
  const kept = lists.get(key)
  if (kept !== undefined) return kept
  lists.set(key, v)
  return v
}

/**
 * A listed list as it is kept: a copy of exactly its length (the decoder's lists are grown element by element and
 * carry spare capacity: 184 B for a one-element list instead of 56 B), or the listing's equal list of strings.
 * Anything else is kept as it is.
 */
function keptList(v: unknown, lists: ListInterner | undefined): unknown {
  if (!Array.isArray(v)) return v
  if (lists && v.every((x) => typeof x === 'string')) {
    const key = JSON.stringify(v)
    const kept = lists.get(key) as unknown[] | undefined
    if (kept && kept.length === v.length) return kept
    const copy = v.slice()
    lists.set(key, copy)
    return copy
  }
  return v.slice()
}

/** What `list-conns` will show for a section we just loaded (the projection's fields), for the cached listing. */
export function listedFromSection(section: ViciSection): ListedConn {
  const children: Record<string, unknown> = dict()
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
