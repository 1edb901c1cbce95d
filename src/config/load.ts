// Loads and validates a FabEdge `tunnels.yaml` exactly as the FabEdge operator writes it
// (../shared/fabedge-compat.md §1). Every problem carries file, line, column and field path, and all problems
// are collected before failing. Unknown keys are ignored like FabEdge does, but reported as warnings.
//
// Parsing is two-speed. The document is read with js-yaml (YAML 1.2 core schema) and validated as plain values
// with field paths; only when there is something to report is it parsed again with `yaml`, whose syntax tree
// gives each path its line and column. Measured on 1,000 peers (200 KB): js-yaml ~10-25 ms, yaml's
// parseDocument ~150-400 ms, and the agent re-reads the file on every config change.
//
// Decisions (documented in README "Configuration"):
// - Overlapping `subnets` between two endpoints (own vs peer, peer vs peer) is an ERROR: tunnel selectors,
//   table-220 routes and NAT exemptions would be ambiguous, and FabEdge requires non-overlapping address spaces
//   across clusters. A node subnet overlapping another endpoint's pod subnet is an error for the same reason.
//   Overlaps inside one endpoint's own list, equal node IPs on two endpoints, host bits set and duplicates are
//   warnings: the canonical result is unambiguous.
// - `id`, `name` and `type` are required on the local endpoint and every peer (`type` decides responder vs
//   initiator); the mediator needs `id` and `name`. `publicAddresses` is required wherever this node must dial:
//   every peer of an edge node except edge peers reached through a mediator, a remote connector of a connector,
//   and the mediator of an edge node.
import { readFile, stat } from 'node:fs/promises'
import { createRequire } from 'node:module'
import jsyaml from 'js-yaml'
import type { Node } from 'yaml'
import { MEDIATOR_CONN } from '../fabedge.js'
import { isHostname, parseCidr, parseIp, type Cidr } from './cidr.js'
import { detachStrings } from './detach.js'
import { ConfigError, type ConfigIssue, type Severity } from './errors.js'
import type { Endpoint, EndpointType, LocalEndpoint, PeerEndpoint, TunnelConfig } from './schema.js'

/** Largest config accepted; a ConfigMap is at most 1 MiB, so anything near this is a mistake. */
export const MAX_CONFIG_BYTES = 8 * 1024 * 1024

const ENDPOINT_KEYS = new Set(['id', 'name', 'publicAddresses', 'subnets', 'nodeSubnets', 'type', 'port'])
const TOP_KEYS = new Set([...ENDPOINT_KEYS, 'peers', 'mediator'])
// 251: the child names add `-p2p` and charon refuses VICI keys longer than 255 bytes.
const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,250}$/
// Control characters would corrupt a VICI message or a log line; a DN never contains them.
const CONTROL_RE = /[\u0000-\u001f\u007f]/

export interface LoadResult {
  config: TunnelConfig
  warnings: ConfigIssue[]
}

/** A field path as segments: `['peers', 1, 'name']` is `peers[1].name`. */
type Path = Array<string | number>

/** Where an issue points: the value at the path, the key of the last segment, or the enclosing map. */
type Anchor = 'value' | 'key' | 'parent'

interface PendingIssue {
  severity: Severity
  path: Path
  anchor: Anchor
  message: string
}

export function formatPath(path: Path): string {
  let out = ''
  for (const seg of path) out += typeof seg === 'number' ? `[${seg}]` : out ? `.${seg}` : seg
  return out
}

class Collector {
  readonly pending: PendingIssue[] = []
  error(path: Path, message: string, anchor: Anchor = 'value'): void {
    this.pending.push({ severity: 'error', path, anchor, message })
  }
  warn(path: Path, message: string, anchor: Anchor = 'value'): void {
    this.pending.push({ severity: 'warning', path, anchor, message })
  }
  get hasErrors(): boolean {
    return this.pending.some((i) => i.severity === 'error')
  }
  hasErrorAt(prefix: string): boolean {
    return this.pending.some((i) => i.severity === 'error' && formatPath(i.path).startsWith(prefix))
  }
}

interface Located<T> {
  value: T
  path: Path
}

interface RawEndpoint {
  endpoint: Endpoint
  path: Path
  subnets: Located<Cidr>[]
  nodeSubnets: Located<Cidr>[]
}

type Json = null | boolean | number | string | Json[] | { [k: string]: Json }

function isObject(v: unknown): v is Record<string, Json> {
  return v !== null && typeof v === 'object' && !Array.isArray(v)
}

function describe(v: unknown): string {
  if (v === undefined) return 'nothing'
  if (v === null) return 'null'
  if (Array.isArray(v)) return 'a list'
  if (isObject(v)) return 'a map'
  return `${typeof v} ${JSON.stringify(v)}`
}

function readString(c: Collector, path: Path, v: unknown): string | null {
  if (v === undefined || v === null) return null
  if (typeof v !== 'string') {
    c.error(path, `must be a string, got ${describe(v)}`)
    return null
  }
  if (CONTROL_RE.test(v)) {
    c.error(path, 'must not contain control characters')
    return null
  }
  return v
}

function readStringList(c: Collector, path: Path, v: unknown): Located<string>[] {
  if (v === undefined || v === null) return []
  if (!Array.isArray(v)) {
    c.error(path, `must be a list, got ${describe(v)}`)
    return []
  }
  const out: Located<string>[] = []
  v.forEach((item, i) => {
    const s = readString(c, [...path, i], item)
    if (s !== null) out.push({ value: s.trim(), path: [...path, i] })
  })
  return out
}

function readCidrs(c: Collector, path: Path, v: unknown, allowBareIp: boolean): Located<Cidr>[] {
  const out: Located<Cidr>[] = []
  const seen = new Map<string, string>()
  for (const item of readStringList(c, path, v)) {
    const r = parseCidr(item.value, allowBareIp)
    if (!r.ok) {
      c.error(item.path, r.message)
      continue
    }
    if (r.cidr.hadHostBits) c.warn(item.path, `"${item.value}" has host bits set; using ${r.cidr.text}`)
    const first = seen.get(r.cidr.text)
    if (first !== undefined) {
      c.warn(item.path, `${r.cidr.text} is listed twice (first at ${first}); the duplicate is ignored`)
      continue
    }
    seen.set(r.cidr.text, formatPath(item.path))
    out.push({ value: r.cidr, path: item.path })
  }
  for (const [a, b] of overlappingPairs(out.map((x, i) => ({ cidr: x.value, tag: i })))) {
    const [x, y] = a < b ? [out[a]!, out[b]!] : [out[b]!, out[a]!]
    c.warn(y.path, `${y.value.text} overlaps ${x.value.text} (${formatPath(x.path)}) of the same endpoint`)
  }
  return out
}

function readEndpoint(c: Collector, path: Path, v: unknown, allowed: Set<string>): RawEndpoint | null {
  if (!isObject(v)) {
    c.error(path, `must be a map of endpoint fields, got ${describe(v)}`)
    return null
  }
  for (const key of Object.keys(v)) {
    if (!allowed.has(key)) c.warn([...path, key], `unknown key "${key}" is ignored`, 'key')
  }
  const id = readString(c, [...path, 'id'], v.id)
  const name = readString(c, [...path, 'name'], v.name)
  if (name !== null && !NAME_RE.test(name)) {
    c.error([...path, 'name'], `"${name}" is not a valid name (letters, digits, ".", "_", "-"; at most 251: charon limits child names to 255 bytes)`)
  }
  const publicAddresses: string[] = []
  for (const a of readStringList(c, [...path, 'publicAddresses'], v.publicAddresses)) {
    const ip = parseIp(a.value)
    if (ip) publicAddresses.push(ip.toString())
    else if (isHostname(a.value)) publicAddresses.push(a.value.toLowerCase())
    else c.error(a.path, `"${a.value}" is neither an IP address nor a DNS name`)
  }
  const subnets = readCidrs(c, [...path, 'subnets'], v.subnets, false)
  const nodeSubnets = readCidrs(c, [...path, 'nodeSubnets'], v.nodeSubnets, true)
  let type: EndpointType | null = null
  const typeText = readString(c, [...path, 'type'], v.type)
  if (typeText !== null) {
    if (typeText === 'Connector' || typeText === 'EdgeNode') type = typeText
    else c.error([...path, 'type'], `must be "Connector" or "EdgeNode", got "${typeText}"`)
  }
  let port: number | null = null
  if (v.port !== undefined && v.port !== null) {
    if (typeof v.port === 'number' && Number.isInteger(v.port) && v.port >= 1 && v.port <= 65535) port = v.port
    else c.error([...path, 'port'], `must be an integer port 1-65535, got ${describe(v.port)}`)
  }
  return {
    endpoint: { id: id ?? '', name: name ?? '', publicAddresses: [...new Set(publicAddresses)], subnets: subnets.map((s) => s.value.text), nodeSubnets: nodeSubnets.map((s) => s.value.text), type, port },
    path,
    subnets,
    nodeSubnets,
  }
}

function requireFields(c: Collector, raw: RawEndpoint, keys: Array<'id' | 'name' | 'type'>): void {
  for (const k of keys) {
    const missing = k === 'type' ? raw.endpoint.type === null : raw.endpoint[k] === ''
    // Only report "missing" when no other error already explains the field.
    if (missing && !c.hasErrorAt(formatPath([...raw.path, k]))) c.error([...raw.path, k], `required field "${k}" is missing`, 'parent')
  }
}

/** Address range of a CIDR as [first, last] big integers, for overlap sweeps. */
function range(c: Cidr): [bigint, bigint] {
  let start = 0n
  for (const b of c.bytes) start = (start << 8n) | BigInt(b)
  const hostBits = BigInt(c.bytes.length * 8 - c.prefix)
  return [start, start + (1n << hostBits) - 1n]
}

/**
 * Every pair of overlapping CIDRs (by tag) in O(n log n + overlaps): sorted by start, each CIDR is compared with
 * the still-open ones before it, which for prefixes (nested or disjoint, never partial) form a chain of at most
 * 33 or 129 containing prefixes.
 */
function overlappingPairs<T>(items: Array<{ cidr: Cidr; tag: T }>): Array<[T, T]> {
  const out: Array<[T, T]> = []
  for (const family of [4, 6] as const) {
    const xs = items.filter((i) => i.cidr.family === family).map((i) => ({ tag: i.tag, r: range(i.cidr) }))
    xs.sort((a, b) => (a.r[0] < b.r[0] ? -1 : a.r[0] > b.r[0] ? 1 : a.r[1] > b.r[1] ? -1 : a.r[1] < b.r[1] ? 1 : 0))
    const open: typeof xs = []
    for (const x of xs) {
      while (open.length && open[open.length - 1]!.r[1] < x.r[0]) open.pop()
      for (const o of open) out.push([o.tag, x.tag])
      open.push(x)
    }
  }
  return out
}

function checkOverlaps(c: Collector, endpoints: RawEndpoint[]): void {
  type Tag = { ep: number; kind: 'subnet' | 'node'; item: Located<Cidr> }
  const items: Array<{ cidr: Cidr; tag: Tag }> = []
  endpoints.forEach((e, ep) => {
    for (const s of e.subnets) items.push({ cidr: s.value, tag: { ep, kind: 'subnet', item: s } })
    for (const s of e.nodeSubnets) items.push({ cidr: s.value, tag: { ep, kind: 'node', item: s } })
  })
  for (const [p, q] of overlappingPairs(items)) {
    if (p.ep === q.ep) continue
    // Report on the endpoint that comes later in the file, naming the earlier one.
    const [a, b] = p.ep < q.ep ? [p, q] : [q, p]
    const an = endpoints[a.ep]!.endpoint.name
    const bn = endpoints[b.ep]!.endpoint.name
    if (a.kind === 'node' && b.kind === 'node') {
      c.warn(b.item.path, `node subnet ${b.item.value.text} of "${bn}" overlaps ${a.item.value.text} of "${an}" (${formatPath(a.item.path)})`)
    } else {
      c.error(b.item.path, `${b.item.value.text} of "${bn}" overlaps ${a.item.value.text} of "${an}" (${formatPath(a.item.path)}); address spaces of endpoints must not overlap`)
    }
  }
}

function validate(c: Collector, root: unknown): TunnelConfig | null {
  if (root === undefined || root === null) {
    c.error([], 'config is empty: expected the local endpoint (id, name, subnets, ...) and peers', 'parent')
    return null
  }
  if (!isObject(root)) {
    c.error([], `top level must be a map of endpoint fields and "peers", got ${describe(root)}`)
    return null
  }
  const local = readEndpoint(c, [], root, TOP_KEYS)!
  requireFields(c, local, ['id', 'name', 'type'])
  const peers: RawEndpoint[] = []
  if (root.peers !== undefined && root.peers !== null) {
    if (!Array.isArray(root.peers)) c.error(['peers'], `must be a list of endpoints, got ${describe(root.peers)}`)
    else {
      root.peers.forEach((item, i) => {
        const raw = readEndpoint(c, ['peers', i], item, ENDPOINT_KEYS)
        if (raw) {
          requireFields(c, raw, ['id', 'name', 'type'])
          peers.push(raw)
        }
      })
    }
  }
  let mediator: RawEndpoint | null = null
  if (root.mediator !== undefined && root.mediator !== null) {
    mediator = readEndpoint(c, ['mediator'], root.mediator, ENDPOINT_KEYS)
    if (mediator) {
      requireFields(c, mediator, ['id', 'name'])
      if (mediator.endpoint.name !== '' && mediator.endpoint.name !== MEDIATOR_CONN) {
        c.warn(['mediator', 'name'], `the mediator connection is always named "${MEDIATOR_CONN}"; "${mediator.endpoint.name}" is ignored`)
      }
    }
  }
  const seen = new Map<string, string>()
  for (const p of peers) {
    const n = p.endpoint.name
    if (n === '') continue
    const path = [...p.path, 'name']
    if (n === local.endpoint.name) c.error(path, `peer "${n}" has the same name as this node`)
    else if (n === MEDIATOR_CONN) c.error(path, `"${MEDIATOR_CONN}" is reserved for the mediator connection`)
    const first = seen.get(n)
    if (first !== undefined) c.error(path, `duplicate peer name "${n}" (first at ${first}.name)`)
    else seen.set(n, formatPath(p.path))
  }
  const role = local.endpoint.type
  const mediated = mediator !== null
  for (const p of peers) {
    const needsAddr = (role === 'EdgeNode' && !(p.endpoint.type === 'EdgeNode' && mediated)) || (role === 'Connector' && p.endpoint.type === 'Connector')
    const at = [...p.path, 'publicAddresses']
    if (needsAddr && p.endpoint.publicAddresses.length === 0 && !c.hasErrorAt(formatPath(at))) {
      c.error(at, `peer "${p.endpoint.name}" must have publicAddresses: this node initiates the tunnel to it`, (root.peers as Json[])[p.path[1] as number] && isObject((root.peers as Json[])[p.path[1] as number]) && 'publicAddresses' in ((root.peers as Json[])[p.path[1] as number] as object) ? 'value' : 'parent')
    }
  }
  if (mediator && role === 'EdgeNode' && mediator.endpoint.publicAddresses.length === 0) {
    c.error(['mediator', 'publicAddresses'], 'the mediator must have publicAddresses: edge nodes dial it', isObject(root.mediator) && 'publicAddresses' in root.mediator ? 'value' : 'parent')
  }
  checkOverlaps(c, [local, ...peers])
  if (c.hasErrors) return null
  return {
    local: local.endpoint as LocalEndpoint,
    peers: peers.map((p) => p.endpoint as PeerEndpoint),
    mediator: mediator ? { ...mediator.endpoint, name: MEDIATOR_CONN } : null,
  }
}

// `yaml` is loaded on first use: a valid config never needs it, and loading it is a sizeable part of the agent's
// start-up CPU (issue 13). A plain require, so the executable's bundle (scripts/bundle.mjs) leaves it to
// node_modules too.
let yamlLib: typeof import('yaml') | undefined
const yaml = (): typeof import('yaml') => (yamlLib ??= createRequire(import.meta.url)('yaml') as typeof import('yaml'))

/** Resolves issue paths to line and column with `yaml`'s syntax tree (only called when there are issues). */
function locate(text: string, pending: PendingIssue[]): ConfigIssue[] {
  const { isMap, isScalar, isSeq, LineCounter, parseDocument } = yaml()
  const lines = new LineCounter()
  const doc = parseDocument(text, { lineCounter: lines, uniqueKeys: false })
  const pos = (node: Node | null | undefined): { line: number | null; column: number | null } => {
    const r = node?.range
    if (!r) return { line: null, column: null }
    const p = lines.linePos(r[0])
    return { line: p.line, column: p.col }
  }
  const nodeAt = (path: Path): Node | null => {
    let cur: unknown = doc.contents
    for (const seg of path) {
      if (isMap(cur)) cur = cur.items.find((i) => isScalar(i.key) && String(i.key.value) === String(seg))?.value ?? null
      else if (isSeq(cur) && typeof seg === 'number') cur = cur.items[seg] ?? null
      else return null
    }
    return (cur ?? null) as Node | null
  }
  const keyAt = (path: Path): Node | null => {
    const parent = nodeAt(path.slice(0, -1))
    const last = path[path.length - 1]
    if (!isMap(parent)) return null
    return (parent.items.find((i) => isScalar(i.key) && String(i.key.value) === String(last))?.key ?? null) as Node | null
  }
  const out = pending.map((i) => {
    let node: Node | null
    if (i.anchor === 'key') node = keyAt(i.path)
    else if (i.anchor === 'parent') node = i.path.length ? nodeAt(i.path.slice(0, -1)) : (doc.contents as Node | null)
    else node = nodeAt(i.path) ?? keyAt(i.path)
    if (i.path.length === 0 && i.anchor === 'parent' && (doc.contents === null || (isScalar(doc.contents) && doc.contents.value === null))) node = null
    return { severity: i.severity, path: formatPath(i.path), ...pos(node), message: i.message }
  })
  return out.sort((a, b) => (a.line ?? 0) - (b.line ?? 0) || (a.column ?? 0) - (b.column ?? 0))
}

/** Parses and validates config text. Throws ConfigError listing every error (and the warnings) at once. */
export function parseConfig(text: string, file = '<config>'): LoadResult {
  let root: unknown
  try {
    root = detachStrings(jsyaml.load(text, { schema: jsyaml.CORE_SCHEMA, filename: file }))
  } catch (err) {
    const e = err as { reason?: string; message: string; mark?: { line: number; column: number } }
    const issue: ConfigIssue = {
      severity: 'error', path: '', line: e.mark ? e.mark.line + 1 : null, column: e.mark ? e.mark.column + 1 : null,
      message: `YAML syntax: ${e.reason ?? e.message.split('\n')[0]}`,
    }
    throw new ConfigError('EINVALID', file, [issue], { cause: err })
  }
  const c = new Collector()
  const config = validate(c, root)
  const issues = c.pending.length ? locate(text, c.pending) : []
  if (!config) throw new ConfigError('EINVALID', file, issues)
  return { config, warnings: issues.filter((i) => i.severity === 'warning') }
}

/** Reads and validates a config file; file-system failures become ConfigError with a precise code. */
export async function loadConfig(file: string): Promise<LoadResult & { text: string }> {
  let text: string
  try {
    const st = await stat(file)
    if (!st.isFile()) {
      throw new ConfigError('EREAD', file, [{ severity: 'error', path: '', line: null, column: null, message: 'not a regular file' }])
    }
    if (st.size > MAX_CONFIG_BYTES) {
      throw new ConfigError('ETOOBIG', file, [{ severity: 'error', path: '', line: null, column: null, message: `file is ${st.size} bytes, more than the ${MAX_CONFIG_BYTES}-byte limit` }])
    }
    text = await readFile(file, 'utf8')
  } catch (err) {
    if (err instanceof ConfigError) throw err
    const code = (err as NodeJS.ErrnoException).code
    const mapped = code === 'ENOENT' ? 'ENOENT' : code === 'EACCES' ? 'EACCES' : 'EREAD'
    throw new ConfigError(mapped, file, [{ severity: 'error', path: '', line: null, column: null, message: `cannot read: ${(err as Error).message}` }], { cause: err })
  }
  if (Buffer.byteLength(text) > MAX_CONFIG_BYTES) {
    throw new ConfigError('ETOOBIG', file, [{ severity: 'error', path: '', line: null, column: null, message: `file is larger than the ${MAX_CONFIG_BYTES}-byte limit` }])
  }
  return { ...parseConfig(text, file), text }
}
