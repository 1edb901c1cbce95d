// Tunnels: (desired connections, what charon reports) -> the VICI operations that make charon match. Pure.
//
// Content, not names, decides whether a loaded connection is current. charon's `list-conns` shows only part of a
// connection (addresses, identities, DPD, children with their selectors and DPD action; not ports, mediation or
// certificates), so two comparisons are combined:
//   1. a projection of the desired section onto exactly what `list-conns` shows, against the live entry: catches
//      out-of-band changes in charon and adopts an already-correct charon after an agent restart without a write;
//   2. a hash of the full section we loaded into this charon instance (kept in memory, forgotten when charon
//      restarts): catches changes to fields `list-conns` does not show.
// Ownership: a connection is ours when it is named `mediator` or all its children carry FabEdge's child names
// (`<conn>-p2p|n2p|p2n`). Connections loaded by anyone else are never unloaded or terminated.
import { createHash } from 'node:crypto'
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

/** Per-connection initiation memory, owned by the engine and passed in: the plan itself stays pure. */
export interface InitiateState {
  /** When the last initiate for this connection was sent (ms since epoch). */
  lastAttempt: number
  /** Consecutive attempts that did not bring every child up. */
  failures: number
}

export interface TunnelPlanInput {
  desired: Pick<Desired, 'conns' | 'initiate' | 'initiateChildren'>
  observed: ObservedTunnels
  /** conn -> hash of the section loaded into the current charon instance. */
  loaded: ReadonlyMap<string, string>
  initiate: ReadonlyMap<string, InitiateState>
  now: number
  backoff?: BackoffPolicy
}

export interface TunnelPlan {
  ops: TunnelOp[]
  /** Connections waiting for their backoff to expire, with the time a pass should run again. */
  waiting: Array<{ conn: string; until: number; reason: string }>
}

export interface BackoffPolicy {
  /** Delay after the first failed attempt. */
  baseMs: number
  maxMs: number
  /** How long an initiate may stay in flight (IKE SA CONNECTING) before another is allowed. */
  inflightMs: number
}

export const DEFAULT_BACKOFF: BackoffPolicy = { baseMs: 500, maxMs: 30_000, inflightMs: 30_000 }

/** Delay before the next attempt after `failures` failed ones: 0, then base, 2*base, ... capped. */
export function backoffDelay(failures: number, p: BackoffPolicy = DEFAULT_BACKOFF): number {
  if (failures <= 0) return 0
  return Math.min(p.maxMs, p.baseMs * 2 ** (failures - 1))
}

// Desired sections are recomputed only when the config changes and listed entries only when re-listed, so
// per-object memos make a pass over 1,000 unchanged connections cost lookups instead of hashing.
const hashMemo = new WeakMap<object, string>()
const projectionMemo = new WeakMap<object, string>()

export function sectionHash(section: ViciSection): string {
  let h = hashMemo.get(section)
  if (h === undefined) {
    h = createHash('sha256').update(stableJson(section)).digest('hex').slice(0, 16)
    hashMemo.set(section, h)
  }
  return h
}

function memoProjection<T extends object>(obj: T, project: (o: T) => Projection): string {
  let p = projectionMemo.get(obj)
  if (p === undefined) {
    p = stableJson(project(obj))
    projectionMemo.set(obj, p)
  }
  return p
}

function stableJson(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(stableJson).join(',')}]`
  if (v !== null && typeof v === 'object') {
    return `{${Object.keys(v as object).sort().map((k) => `${JSON.stringify(k)}:${stableJson((v as Record<string, unknown>)[k])}`).join(',')}}`
  }
  return JSON.stringify(v)
}

const CHILD_SUFFIXES = ['-p2p', '-n2p', '-p2n']

export function isOwnConn(name: string, listed: ListedConn): boolean {
  if (name === MEDIATOR_CONN) return true
  const children = asRecord(listed.children)
  const names = Object.keys(children ?? {})
  return names.length > 0 && names.every((c) => CHILD_SUFFIXES.some((s) => c === `${name}${s}`))
}

/** The same ownership test for an IKE SA whose connection is no longer loaded: judged by its CHILD_SA names. */
export function isOwnSa(sa: ObservedIkeSa): boolean {
  if (sa.name === MEDIATOR_CONN) return true
  return sa.children.length > 0 && sa.children.every((c) => CHILD_SUFFIXES.some((s) => c.name === `${sa.name}${s}`))
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

interface Projection {
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
  const children: Projection['children'] = {}
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
  const children: Projection['children'] = {}
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
    for (const child of sa.children) {
      if (!wanted.has(child.name) || (changed.has(child.name) && observed.conns.has(sa.name))) {
        ops.push({ op: 'terminate-child', conn: sa.name, child: child.name, childId: child.uniqueid })
      }
    }
  }

  const terminated = new Set(ops.filter((o) => o.op === 'terminate-child').map((o) => `${o.conn}/${(o as { child: string }).child}`))
  const mediatorUp = connUp(MEDIATOR_CONN, [], observed.sas)
  for (const conn of desired.initiate) {
    const children = desired.initiateChildren[conn] ?? []
    const section = desired.conns[conn]
    if (!section) continue
    if (section.mediated_by === MEDIATOR_CONN && !mediatorUp) {
      waiting.push({ conn, until: Number.POSITIVE_INFINITY, reason: 'waiting for the mediator' })
      continue
    }
    const sas = observed.sas.filter((s) => s.name === conn)
    const missing = children.length === 0
      ? (sas.some((s) => LIVE_IKE.has(s.state)) ? [] : [''])
      : children.filter((c) => terminated.has(`${conn}/${c}`) || !sas.some((s) => s.children.some((k) => k.name === c && LIVE_CHILD.has(k.state))))
    if (missing.length === 0) continue
    const state = input.initiate.get(conn)
    // An IKE SA still connecting from our last initiate is in flight: do not pile another one on it.
    const connecting = sas.some((s) => s.state === 'CONNECTING')
    if (state && connecting && now - state.lastAttempt < policy.inflightMs) {
      waiting.push({ conn, until: state.lastAttempt + policy.inflightMs, reason: 'initiate in flight' })
      continue
    }
    if (state) {
      const until = state.lastAttempt + backoffDelay(state.failures, policy)
      if (until > now) {
        waiting.push({ conn, until, reason: `backoff after ${state.failures} failed attempt(s)` })
        continue
      }
    }
    if (children.length === 0) ops.push({ op: 'initiate-ike', conn })
    else for (const child of missing) ops.push({ op: 'initiate-child', conn, child })
  }

  // Stale connections last: unload first so nothing re-establishes them, then terminate what is left. SAs of an
  // own connection that is already unloaded (an earlier terminate failed, or charon kept them) are ended too.
  const terminating = new Set<string>()
  for (const [conn, listed] of observed.conns) {
    if (conn in desired.conns || !isOwnConn(conn, listed)) continue
    ops.push({ op: 'unload', conn })
    for (const sa of observed.sas.filter((s) => s.name === conn)) {
      ops.push({ op: 'terminate-ike', conn, ikeId: sa.uniqueid })
      terminating.add(sa.uniqueid)
    }
  }
  for (const sa of observed.sas) {
    if (sa.name in desired.conns || observed.conns.has(sa.name) || terminating.has(sa.uniqueid)) continue
    if (!isOwnSa(sa)) continue
    ops.push({ op: 'terminate-ike', conn: sa.name, ikeId: sa.uniqueid })
  }
  return { ops, waiting }
}
