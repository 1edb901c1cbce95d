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
import { isAscii } from 'node:buffer'
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

/**
 * Address range of a CIDR as [first, last], comparable with < and >: numbers for IPv4, fixed-width hex strings for
 * IPv6. Memoized per Cidr: the incremental parser keeps unchanged peers' CIDR objects, so only new ones are computed.
 */
const rangeMemo = new WeakMap<Cidr, [number, number] | [string, string]>()
function range(c: Cidr): [number, number] | [string, string] {
  let r = rangeMemo.get(c)
  if (r) return r
  if (c.bytes.length === 4) {
    const start = ((c.bytes[0]! << 24) >>> 0) + (c.bytes[1]! << 16) + (c.bytes[2]! << 8) + c.bytes[3]!
    r = [start, start + 2 ** (32 - c.prefix) - 1]
  } else {
    const bits = Array.from(c.bytes, (b) => b.toString(2).padStart(8, '0')).join('')
    const net = bits.slice(0, c.prefix)
    const hex = (b: string): string => Array.from({ length: 32 }, (_, i) => parseInt(b.slice(i * 4, i * 4 + 4), 2).toString(16)).join('')
    r = [hex(net.padEnd(128, '0')), hex(net.padEnd(128, '1'))]
  }
  rangeMemo.set(c, r)
  return r
}

/**
 * Every pair of overlapping CIDRs (by tag) in O(n log n + overlaps): sorted by start, each CIDR is compared with
 * the still-open ones before it, which for prefixes (nested or disjoint, never partial) form a chain of at most
 * 33 or 129 containing prefixes.
 */
function overlappingPairs<T>(items: Array<{ cidr: Cidr; tag: T }>): Array<[T, T]> {
  const out: Array<[T, T]> = []
  for (const family of [4, 6] as const) {
    const xs: Array<{ tag: T; r: [number | string, number | string] }> = []
    for (const i of items) if (i.cidr.family === family) xs.push({ tag: i.tag, r: range(i.cidr) })
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

/** Reads one `peers` item (readEndpoint + requireFields); the incremental parser supplies cached results. */
type PeerReader = (c: Collector, index: number, item: unknown) => RawEndpoint | null

function readPeer(c: Collector, index: number, item: unknown): RawEndpoint | null {
  const raw = readEndpoint(c, ['peers', index], item, ENDPOINT_KEYS)
  if (raw) requireFields(c, raw, ['id', 'name', 'type'])
  return raw
}

function validate(c: Collector, root: unknown, peerReader: PeerReader = readPeer, endpoints?: (local: RawEndpoint, mediator: RawEndpoint | null) => void): TunnelConfig | null {
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
        const raw = peerReader(c, i, item)
        if (raw) peers.push(raw)
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
  const seen = new Map<string, RawEndpoint>()
  for (const p of peers) {
    const n = p.endpoint.name
    if (n === '') continue
    if (n === local.endpoint.name) c.error([...p.path, 'name'], `peer "${n}" has the same name as this node`)
    else if (n === MEDIATOR_CONN) c.error([...p.path, 'name'], `"${MEDIATOR_CONN}" is reserved for the mediator connection`)
    const first = seen.get(n)
    if (first !== undefined) c.error([...p.path, 'name'], `duplicate peer name "${n}" (first at ${formatPath(first.path)}.name)`)
    else seen.set(n, p)
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
  endpoints?.(local, mediator)
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

/**
 * The `peers` block of a config text cut into one text chunk per item, or null when the text is not in the plain
 * block layout the operator writes (then it is parsed whole). `head` is the text without the items; its `peers:`
 * line stays, so the head parses to a map whose `peers` is null.
 */
export function splitPeers(text: string): { head: string; chunks: string[] } | null {
  // Documents markers change what the text is; tabs and CRs are left to the YAML parser. (Anchors, aliases and tags,
  // which could tie a chunk to text outside it, are checked on the chunks that get parsed: see UNPORTABLE.)
  if (text.includes('\t') || text.includes('\r') || /^(---|\.\.\.)(\s|$)/m.test(text)) return null
  const keys = text.match(/^["']?peers["']?[ ]*:/gm)
  if (keys === null) return { head: text, chunks: [] }
  if (keys.length !== 1) return null
  const key = /^peers:[ ]*(#.*)?$/m.exec(text)
  if (!key) return null
  const blockStart = key.index + key[0].length + 1
  if (blockStart > text.length) return { head: text, chunks: [] }
  // The first line with content (not blank, not a comment) starts the first item and gives the items' indent.
  const first = /^( *)-( |$)/my
  let pos = blockStart
  for (;;) {
    const comment = /^ *(#.*)?(\n|$)/y
    comment.lastIndex = pos
    if (pos >= text.length || !comment.test(text)) break
    pos = comment.lastIndex
  }
  if (pos >= text.length) return { head: text, chunks: [] }
  first.lastIndex = pos
  const m = first.exec(text)
  if (!m) return null
  const n = m[1]!.length
  // The block ends at the first content line indented less than the items, or as much but not an item.
  const end = new RegExp(n === 0 ? '\\n(?!-[ \\n])[^ \\n#]' : `\\n(?: {0,${n - 1}}[^ \\n#]| {${n}}(?!-[ \\n]|-$)[^ \\n#])`, 'g')
  end.lastIndex = pos
  const e = end.exec(text)
  const blockEnd = e ? e.index + 1 : text.length
  const chunks: string[] = []
  const marker = `\n${' '.repeat(n)}-`
  let itemStart = pos
  let at = text.indexOf(marker, pos)
  while (at !== -1 && at < blockEnd) {
    const c = text.charCodeAt(at + marker.length)
    if ((c === 32 || c === 10 || at + marker.length === text.length) && at + 1 > itemStart) {
      chunks.push(text.slice(itemStart, at + 1))
      itemStart = at + 1
    }
    at = text.indexOf(marker, at + 1)
  }
  chunks.push(text.slice(itemStart, blockEnd))
  return { head: text.slice(0, blockStart) + text.slice(blockEnd), chunks }
}

/**
 * The text of a config file's bytes. A file that is all ASCII (what the operator writes) is copied byte for byte,
 * several times faster than UTF-8 decoding a 2 MB file; anything else is decoded as UTF-8, as readFile does.
 */
export function decodeConfig(bytes: Buffer): string {
  return isAscii(bytes) ? bytes.toString('latin1') : bytes.toString('utf8')
}

const NO_PATH: Path = []

/** Anchors, aliases and tags: a chunk holding one may depend on text outside it. */
const UNPORTABLE = /(^|[\s,[{])[&*!]\S/m

interface CachedPeer {
  /** Its validated endpoint; `path` is where it was first read (only used in messages, which take the full path). */
  raw: RawEndpoint
}

/** Whether two CIDRs overlap (prefixes are nested or disjoint). */
function overlaps(a: Cidr, b: Cidr): boolean {
  if (a.family !== b.family) return false
  const x = range(a)
  const y = range(b)
  return x[0] <= y[1] && y[0] <= x[1]
}

/** More new peers than this in one change: validated as a whole (one sweep) rather than one by one. */
const INCREMENTAL_MAX = 64

/**
 * Parses config texts in succession, re-reading only the peers whose text changed. The operator rewrites the whole
 * file for every change; with 10,000 peers (2 MB) a full parse and validation takes 0.3-0.8 s, while one changed
 * peer needs one chunk parsed and checked against the others. Unchanged peers come back as the same objects, so
 * what is derived from them (connection sections, routes, set members) can be kept by identity.
 *
 * The result is the one parseConfig gives: text that is not in the plain block layout, a peer with any warning or
 * error, and any cross-peer issue all go through parseConfig on the whole text (issues then carry exact lines).
 * The cross-peer checks of a change that keeps the head (the local endpoint and the mediator) and adds a few peers
 * only look at the new peers: every pair of unchanged peers passed them in the config accepted before.
 */
export class ConfigParser {
  private prev: { head: string; chunks: string[]; entries: CachedPeer[]; local: RawEndpoint; mediator: RawEndpoint | null } | null = null
  /** What the last parse did: peers in the file, peers parsed (not reused), whether it parsed the whole text. */
  readonly last = { peers: 0, parsed: 0, whole: false }
  /** The config the last parse returned. */
  private config: TunnelConfig | null = null
  /**
   * The peers the last parse added and removed relative to the config the parse before returned (`from`); null
   * when it could not tell (a whole parse, a reordered file). DesiredBuilder uses it to derive only those peers.
   */
  change: { from: TunnelConfig | null; added: PeerEndpoint[]; removed: PeerEndpoint[] } | null = null

  parse(text: string, file = '<config>'): LoadResult {
    const split = splitPeers(text)
    const fast = split ? this.fast(split, file) : null
    if (fast) return fast
    this.prev = null
    this.change = null
    this.config = null
    const out = parseConfig(text, file)
    this.config = out.config
    Object.assign(this.last, { peers: out.config.peers.length, parsed: out.config.peers.length, whole: true })
    return out
  }

  /** Forgets every cached peer (the next parse reads the whole text). */
  reset(): void {
    this.prev = null
    this.config = null
    this.change = null
  }

  private fast(split: { head: string; chunks: string[] }, file: string): LoadResult | null {
    const prev = this.prev
    const sameHead = prev !== null && prev.head === split.head
    let root: Record<string, Json> | null = null
    if (!sameHead) {
      if (UNPORTABLE.test(split.head)) return null
      let value: unknown
      try {
        value = jsyaml.load(split.head, { schema: jsyaml.CORE_SCHEMA, filename: file })
      } catch {
        return null
      }
      if (!isObject(value) || (split.chunks.length > 0 && value.peers !== null)) return null
      root = value
    }
    const chunks = split.chunks
    const entries: CachedPeer[] = []
    const added: RawEndpoint[] = []
    const parsed = new Map<string, CachedPeer>()
    const fresh = (chunk: string): CachedPeer | null => {
      const known = parsed.get(chunk)
      if (known) return known
      if (UNPORTABLE.test(chunk)) return null
      let value: unknown
      try {
        value = detachStrings(jsyaml.load(chunk, { schema: jsyaml.CORE_SCHEMA, filename: file }))
      } catch {
        return null
      }
      if (!Array.isArray(value) || value.length !== 1) return null
      const c = new Collector()
      const raw = readPeer(c, entries.length, value[0])
      if (!raw || c.pending.length) return null
      // Field paths only word messages, and a peer with any issue goes through the whole parse: not kept.
      for (const l of raw.subnets) l.path = NO_PATH
      for (const l of raw.nodeSubnets) l.path = NO_PATH
      const entry = { raw }
      parsed.set(chunk, entry)
      added.push(raw)
      return entry
    }
    // Unchanged chunks are found by walking the old and new lists side by side (string equality is a memcmp, where
    // a hash lookup would hash all 2 MB); a short look-ahead steps over inserted and removed peers, and only a
    // reordered file falls back to a map of the old chunks.
    const old = prev?.chunks ?? []
    const oldEntries = prev?.entries ?? []
    let byText: Map<string, CachedPeer> | null = null
    const WINDOW = 8
    let j = 0
    const skipped: CachedPeer[] = []
    for (let i = 0; i < chunks.length; i++) {
      const chunk = chunks[i]!
      let entry: CachedPeer | null | undefined
      if (j < old.length && chunk === old[j]) {
        entry = oldEntries[j++]
      } else {
        let k = 1
        while (k <= WINDOW && j + k < old.length && chunk !== old[j + k]) k++
        if (k <= WINDOW && j + k < old.length) {
          for (let x = j; x < j + k; x++) skipped.push(oldEntries[x]!)
          j += k
          entry = oldEntries[j++]
        } else {
          if (old.length > 0 && byText === null && chunks.length - i > WINDOW) {
            // Many changes ahead may be a reorder: index the old chunks once.
            byText = new Map(old.map((o, x) => [o, oldEntries[x]!]))
          }
          entry = byText?.get(chunk) ?? fresh(chunk)
          if (j < old.length && i + 1 < chunks.length && chunks[i + 1] !== old[j]) skipped.push(oldEntries[j++]!)
        }
      }
      if (!entry) return null
      entries.push(entry)
    }
    for (; j < old.length; j++) skipped.push(oldEntries[j]!)
    const raws = entries.map((e) => e.raw)
    // Removed: the old entries walked past and not reused. Exact without the map; with it (entries reused out of
    // order), the difference is taken over all entries.
    let removedEntries: CachedPeer[]
    if (byText === null) removedEntries = skipped
    else {
      const kept = new Set(entries)
      removedEntries = oldEntries.filter((e) => !kept.has(e))
    }
    let config: TunnelConfig
    if (sameHead && added.length <= INCREMENTAL_MAX) {
      if (!this.checkAdded(prev, raws, added)) return null
      config = { local: prev.local.endpoint as LocalEndpoint, peers: raws.map((r) => r.endpoint as PeerEndpoint), mediator: this.config?.mediator ?? null }
      this.prev = { ...prev, chunks, entries }
      this.change = { from: this.config, added: added.map((r) => r.endpoint as PeerEndpoint), removed: removedEntries.map((e) => e.raw.endpoint as PeerEndpoint) }
    } else {
      if (!root) {
        try {
          root = jsyaml.load(split.head, { schema: jsyaml.CORE_SCHEMA, filename: file }) as Record<string, Json>
        } catch {
          return null
        }
      }
      // The items themselves are not kept (memory): validate reads each peer through the reader, and only looks at
      // an item to word an error, which sends the text through the whole parse anyway.
      if (chunks.length) root.peers = new Array<Json>(chunks.length).fill(null)
      const c = new Collector()
      let local: RawEndpoint | null = null
      let mediator: RawEndpoint | null = null
      const validated = validate(c, root, (_c, i) => raws[i]!, (l, m) => { local = l; mediator = m })
      if (!validated || c.pending.length || !local) return null
      config = validated
      this.prev = { head: split.head, chunks, entries, local, mediator }
      this.change = null
    }
    Object.assign(this.last, { peers: entries.length, parsed: added.length, whole: false })
    this.config = config
    return { config, warnings: [] }
  }

  /**
   * The cross-peer checks of validate() for the peers added to a config accepted before with the same head: names
   * (not the node's, not the mediator's, not another peer's), publicAddresses where this node dials, and no overlap
   * with any other endpoint's subnets. False on any issue: the caller then parses the whole text to report it.
   */
  private checkAdded(prev: NonNullable<ConfigParser['prev']>, peers: RawEndpoint[], added: RawEndpoint[]): boolean {
    if (added.length === 0) return true
    const local = prev.local.endpoint
    const names = new Set<string>()
    for (const p of peers) {
      if (names.has(p.endpoint.name)) return false
      names.add(p.endpoint.name)
    }
    const role = local.type
    const isNew = new Set(added)
    for (const p of added) {
      const e = p.endpoint
      if (e.name === local.name || e.name === MEDIATOR_CONN) return false
      const needsAddr = (role === 'EdgeNode' && !(e.type === 'EdgeNode' && prev.mediator !== null)) || (role === 'Connector' && e.type === 'Connector')
      if (needsAddr && e.publicAddresses.length === 0) return false
      const mine = [...p.subnets, ...p.nodeSubnets]
      const others = [prev.local, ...(prev.mediator ? [prev.mediator] : []), ...peers]
      for (const o of others) {
        if (o === p) continue
        // A pair of two new peers is seen from both sides; once is enough.
        if (isNew.has(o) && added.indexOf(o) < added.indexOf(p)) continue
        for (const x of mine) {
          for (const y of o.subnets) if (overlaps(x.value, y.value)) return false
          for (const y of o.nodeSubnets) if (overlaps(x.value, y.value)) return false
        }
      }
    }
    return true
  }
}
