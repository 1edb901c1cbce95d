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
import { cidrRange, isHostname, parseCidr, parseIp, type Cidr } from './cidr.js'
import { SpanIndex } from './span-index.js'
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
  // Kept by the parser for every peer (ConfigParser's entries): a copy of exactly its length, not the pushed list
  // with its spare capacity (a one-element list: 152 B instead of 24 B of elements).
  return out.slice()
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
 * Every pair of overlapping CIDRs (by tag) in O(n log n + overlaps): sorted by start, each CIDR is compared with
 * the still-open ones before it, which for prefixes (nested or disjoint, never partial) form a chain of at most
 * 33 or 129 containing prefixes.
 */
function overlappingPairs<T>(items: Array<{ cidr: Cidr; tag: T }>): Array<[T, T]> {
  const out: Array<[T, T]> = []
  for (const family of [4, 6] as const) {
    const xs: Array<{ tag: T; r: [number | string, number | string] }> = []
    for (const i of items) if (i.cidr.family === family) xs.push({ tag: i.tag, r: cidrRange(i.cidr) })
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

/** Where the items of a config text are: their texts, the head without them, and their extent in the text. */
export interface Split {
  head: string
  chunks: string[]
  /** Offset of the first item (the block's end when there is none), of the block's end, and the items' indent. */
  start: number
  end: number
  indent: number
}

const DOCUMENT_MARKER = /^(---|\.\.\.)(\s|$)/m

/** Matches (with lastIndex) the newline before the first line that ends a block of items indented by `n`. */
function blockEndPattern(n: number): RegExp {
  return new RegExp(n === 0 ? '\\n(?!-[ \\n])[^ \\n#]' : `\\n(?: {0,${n - 1}}[^ \\n#]| {${n}}(?!-[ \\n]|-$)[^ \\n#])`, 'g')
}

/** The item texts of `text[from, to)`, which starts with an item indented by `n`. */
function cutItems(text: string, from: number, to: number, n: number): string[] {
  const chunks: string[] = []
  const marker = `\n${' '.repeat(n)}-`
  let itemStart = from
  let at = text.indexOf(marker, from)
  while (at !== -1 && at < to) {
    const c = text.charCodeAt(at + marker.length)
    if ((c === 32 || c === 10 || at + marker.length === text.length) && at + 1 > itemStart) {
      chunks.push(text.slice(itemStart, at + 1))
      itemStart = at + 1
    }
    at = text.indexOf(marker, at + 1)
  }
  chunks.push(text.slice(itemStart, to))
  return chunks
}

/**
 * The `peers` block of a config text cut into one text chunk per item, or null when the text is not in the plain
 * block layout the operator writes (then it is parsed whole). `head` is the text without the items; its `peers:`
 * line stays, so the head parses to a map whose `peers` is null.
 */
export function splitPeers(text: string): Split | null {
  // Documents markers change what the text is; tabs and CRs are left to the YAML parser. (Anchors, aliases and tags,
  // which could tie a chunk to text outside it, are checked on the chunks that get parsed: see UNPORTABLE.)
  if (text.includes('\t') || text.includes('\r') || DOCUMENT_MARKER.test(text)) return null
  const none = { head: text, chunks: [], start: text.length, end: text.length, indent: 0 }
  const keys = text.match(/^["']?peers["']?[ ]*:/gm)
  if (keys === null) return none
  if (keys.length !== 1) return null
  const key = /^peers:[ ]*(#.*)?$/m.exec(text)
  if (!key) return null
  const blockStart = key.index + key[0].length + 1
  if (blockStart > text.length) return none
  // The first line with content (not blank, not a comment) starts the first item and gives the items' indent.
  const first = /^( *)-( |$)/my
  let pos = blockStart
  for (;;) {
    const comment = /^ *(#.*)?(\n|$)/y
    comment.lastIndex = pos
    if (pos >= text.length || !comment.test(text)) break
    pos = comment.lastIndex
  }
  if (pos >= text.length) return none
  first.lastIndex = pos
  const m = first.exec(text)
  if (!m) return null
  const n = m[1]!.length
  // The block ends at the first content line indented less than the items, or as much but not an item.
  const end = blockEndPattern(n)
  end.lastIndex = pos
  const e = end.exec(text)
  const blockEnd = e ? e.index + 1 : text.length
  return { head: text.slice(0, blockStart) + text.slice(blockEnd), chunks: cutItems(text, pos, blockEnd, n), start: pos, end: blockEnd, indent: n }
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
  const x = cidrRange(a)
  const y = cidrRange(b)
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
  private prev: ParserState | null = null
  /**
   * The bytes of the text `prev` was read from, with the offset of each item and of the block's end (parseBytes,
   * ASCII files only); while set, `prev.chunks` is null and the chunks are cut from these bytes when needed.
   */
  private bytes: ByteState | null = null
  /** What the last parse did: peers in the file, peers parsed (not reused), whether it parsed the whole text. */
  readonly last = { peers: 0, parsed: 0, whole: false, bytes: false }
  /** The config the last parse returned. */
  private config: TunnelConfig | null = null
  /**
   * The peers the last parse added and removed relative to the config the parse before returned (`from`); null
   * when it could not tell (a whole parse, a reordered file). DesiredBuilder uses it to derive only those peers.
   */
  change: { from: TunnelConfig | null; added: PeerEndpoint[]; removed: PeerEndpoint[] } | null = null
  /** Where the last split found the items (parseBytes keeps their offsets). */
  private lastSplit: Split | null = null

  parse(text: string, file = '<config>'): LoadResult {
    if (this.bytes) {
      if (this.prev && this.prev.chunks === null) this.prev.chunks = chunksOf(this.bytes)
      this.bytes = null
    }
    return this.parseText(text, file)
  }

  /**
   * parse() of a file's bytes. For an ASCII file that differs from the last one only inside the `peers` block (what
   * the operator's rewrite for a one-peer change is), only the items around the differing bytes are cut and
   * compared: the common prefix and suffix are found with memcmp, so nothing else of a 2 MB file is decoded, split
   * or walked. Anything else goes through parse() of the decoded text.
   */
  parseBytes(bytes: Buffer, file = '<config>'): LoadResult {
    const ascii = isAscii(bytes)
    if (ascii && this.bytes !== null && this.prev !== null) {
      const patched = this.patch(bytes, file)
      if (patched) return patched
    }
    const out = this.parseText(ascii ? bytes.toString('latin1') : bytes.toString('utf8'), file)
    const split = this.lastSplit
    this.lastSplit = null
    this.bytes = null
    if (ascii && this.prev !== null && this.prev.chunks !== null && split !== null && this.prev.chunks.length > 0) {
      const chunks = this.prev.chunks
      const starts = new Int32Array(chunks.length + 1)
      let at = split.start
      for (let k = 0; k < chunks.length; k++) {
        starts[k] = at
        at += chunks[k]!.length
      }
      starts[chunks.length] = at
      // The chunks are slices of the text: dropping them lets the 2 MB string go (the bytes stay, off the heap).
      if (at === split.end) {
        this.bytes = { buf: bytes, starts, indent: split.indent }
        this.prev.chunks = null
      }
    }
    return out
  }

  private parseText(text: string, file: string): LoadResult {
    const split = splitPeers(text)
    this.lastSplit = split
    const fast = split ? this.fast(split, file) : null
    this.last.bytes = false
    if (fast) return fast
    this.prev = null
    this.bytes = null
    this.change = null
    this.config = null
    const out = parseConfig(text, file)
    this.config = out.config
    Object.assign(this.last, { peers: out.config.peers.length, parsed: out.config.peers.length, whole: true })
    return out
  }

  /**
   * Builds what the checks of the next change need (checkAdded's index) ahead of it, so the first change after a
   * whole read does not pay for it (about 50 ms at 10,000 peers); the agent calls it once a pass is done.
   */
  prepare(): void {
    const prev = this.prev
    if (prev && !prev.index) prev.index = peerIndex(prev, prev.entries.map((e) => e.raw), new Set())
  }

  /** Forgets every cached peer (the next parse reads the whole text). */
  reset(): void {
    this.prev = null
    this.bytes = null
    this.config = null
    this.change = null
  }

  /**
   * Reads the peers whose chunk is not among `old` (walked side by side, a short look-ahead stepping over inserted
   * and removed peers; a reordered list falls back to a map of the old chunks). Null on anything that needs the
   * whole parse: a chunk that does not read as one clean peer, or the same peer text twice.
   */
  private walk(old: readonly string[], oldEntries: readonly CachedPeer[], chunks: readonly string[], file: string): { entries: CachedPeer[]; added: RawEndpoint[]; removed: CachedPeer[] } | null {
    const entries: CachedPeer[] = []
    const added: RawEndpoint[] = []
    const parsed = new Set<string>()
    const fresh = (chunk: string): CachedPeer | null => {
      // The same item text twice is the same name twice: the whole parse words it.
      if (parsed.has(chunk) || UNPORTABLE.test(chunk)) return null
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
      parsed.add(chunk)
      added.push(raw)
      return { raw }
    }
    // String equality is a memcmp, where a hash lookup would hash every chunk.
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
    // Removed: the old entries walked past and not reused. Exact without the map; with it (entries reused out of
    // order), the difference is taken over all entries, and an old entry used twice is a peer text given twice.
    if (byText === null) return { entries, added, removed: skipped }
    const kept = new Set(entries)
    if (kept.size !== entries.length) return null
    return { entries, added, removed: oldEntries.filter((e) => !kept.has(e)) }
  }

  private fast(split: Split, file: string): LoadResult | null {
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
    const old = prev === null ? [] : prev.chunks ?? (this.bytes ? chunksOf(this.bytes) : null)
    if (old === null) return null
    const walked = this.walk(old, prev?.entries ?? [], chunks, file)
    if (!walked) return null
    const { entries, added } = walked
    const raws = entries.map((e) => e.raw)
    let config: TunnelConfig
    if (sameHead && added.length <= INCREMENTAL_MAX) {
      if (!this.checkAdded(prev, raws, added, walked.removed)) return null
      config = { local: prev.local.endpoint as LocalEndpoint, peers: raws.map((r) => r.endpoint as PeerEndpoint), mediator: this.config?.mediator ?? null }
      this.prev = { ...prev, chunks, entries }
      this.change = { from: this.config, added: added.map((r) => r.endpoint as PeerEndpoint), removed: walked.removed.map((e) => e.raw.endpoint as PeerEndpoint) }
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
      this.prev = { head: split.head, chunks, entries, local, mediator, index: null }
      this.change = null
    }
    Object.assign(this.last, { peers: entries.length, parsed: added.length, whole: false })
    this.config = config
    return { config, warnings: [] }
  }

  /**
   * The byte-level fast path of parseBytes: the old and new bytes share a prefix and a suffix; the items from the
   * one before the first differing byte to the one holding the last are cut from both and walked (walk), the items
   * outside are the old entries, and the offsets after the change shift by the length difference. Null when the
   * difference reaches outside the `peers` block or anything in the re-read bytes could change how the rest reads.
   */
  private patch(buf: Buffer, file: string): LoadResult | null {
    const st = this.bytes!
    const prev = this.prev!
    const old = st.buf
    const starts = st.starts
    const count = starts.length - 1
    const p = commonPrefix(old, buf)
    if (p === old.length && p === buf.length) {
      this.change = { from: this.config, added: [], removed: [] }
      Object.assign(this.last, { peers: count, parsed: 0, whole: false, bytes: true })
      return { config: this.config!, warnings: [] }
    }
    const diffEnd = old.length - commonSuffix(old, buf, Math.min(old.length, buf.length) - p)
    const blockEnd = starts[count]!
    // The head (before the first item, and after the block with the newline that ends the block) must be the same.
    if (p < starts[0]! || diffEnd > blockEnd || (blockEnd < old.length && diffEnd > blockEnd - 1)) return null
    // From the item before the one holding the first difference (its end may have moved) ...
    const a = Math.max(0, Math.min(lastAtMost(starts, p), count - 1) - 1)
    // ... to the first item that starts after the newline that follows the last difference (or the block's end).
    const e = Math.max(a + 1, Math.min(count, lastAtMost(starts, diffEnd) + 1))
    const delta = buf.length - old.length
    const from = starts[a]!
    const to = starts[e]! + delta
    if (to < from || (e < count && starts[e]! - 1 < diffEnd)) return null
    const n = st.indent
    const region = buf.toString('latin1', from, to)
    if (region.includes('\t') || region.includes('\r') || DOCUMENT_MARKER.test(region)) return null
    if (!region.startsWith(`${' '.repeat(n)}-`) || !/^ *-( |\n|$)/.test(region)) return null
    const end = blockEndPattern(n)
    end.lastIndex = 0
    if (end.test(region)) return null
    const chunks = cutItems(region, 0, region.length, n)
    const oldChunks = cutItems(old.toString('latin1', from, starts[e]!), 0, starts[e]! - from, n)
    if (oldChunks.length !== e - a) return null
    const walked = this.walk(oldChunks, prev.entries.slice(a, e), chunks, file)
    if (!walked || walked.added.length > INCREMENTAL_MAX) return null
    const entries = prev.entries.slice(0, a).concat(walked.entries, prev.entries.slice(e))
    const raws = entries.map((x) => x.raw)
    if (!this.checkAdded(prev, raws, walked.added, walked.removed)) return null
    const next = new Int32Array(entries.length + 1)
    next.set(starts.subarray(0, a), 0)
    let at = from
    for (let k = 0; k < chunks.length; k++) {
      next[a + k] = at
      at += chunks[k]!.length
    }
    for (let k = e; k <= count; k++) next[a + chunks.length + k - e] = starts[k]! + delta
    const config: TunnelConfig = { local: prev.local.endpoint as LocalEndpoint, peers: raws.map((r) => r.endpoint as PeerEndpoint), mediator: this.config?.mediator ?? null }
    this.prev = { ...prev, chunks: null, entries }
    this.bytes = { buf, starts: next, indent: n }
    this.change = { from: this.config, added: walked.added.map((r) => r.endpoint as PeerEndpoint), removed: walked.removed.map((x) => x.raw.endpoint as PeerEndpoint) }
    Object.assign(this.last, { peers: entries.length, parsed: walked.added.length, whole: false, bytes: true })
    this.config = config
    return { config, warnings: [] }
  }

  /**
   * The cross-peer checks of validate() for the peers added to a config accepted before with the same head: names
   * (not the node's, not the mediator's, not another peer's), publicAddresses where this node dials, and no overlap
   * with any other endpoint's subnets. False on any issue: the caller then parses the whole text to report it.
   *
   * The names in use and the endpoints' address ranges are kept in an index (PeerIndex) updated by each change, so
   * a one-peer change costs O(log n), not a sweep over every peer. It is built on the first change after a whole
   * read, and dropped whenever a check fails (the whole parse that follows starts over).
   */
  private checkAdded(prev: ParserState, peers: readonly RawEndpoint[], added: readonly RawEndpoint[], removed: readonly CachedPeer[]): boolean {
    if (added.length === 0 && removed.length === 0) return true
    let ix = prev.index
    if (ix) {
      for (const r of removed) {
        const n = ix.names.get(r.raw.endpoint.name) ?? 0
        if (n <= 1) ix.names.delete(r.raw.endpoint.name)
        else ix.names.set(r.raw.endpoint.name, n - 1)
        if (ix.spans && !ix.spans.remove(r.raw, cidrsOf(r.raw))) ix.spans = null
      }
    }
    if (added.length === 0) return true
    if (!ix) ix = prev.index = peerIndex(prev, peers, new Set(added))
    const local = prev.local.endpoint
    const role = local.type
    const ok = ((): boolean => {
      for (const p of added) {
        const e = p.endpoint
        if (e.name === local.name || e.name === MEDIATOR_CONN || ix.names.has(e.name)) return false
        const needsAddr = (role === 'EdgeNode' && !(e.type === 'EdgeNode' && prev.mediator !== null)) || (role === 'Connector' && e.type === 'Connector')
        if (needsAddr && e.publicAddresses.length === 0) return false
        if (ix.spans) {
          if (!ix.spans.add(p, cidrsOf(p))) return false
        } else if (overlapsAny(p, [prev.local, ...(prev.mediator ? [prev.mediator] : []), ...peers], added)) {
          return false
        }
        ix.names.set(e.name, 1)
      }
      return true
    })()
    if (!ok) prev.index = null
    return ok
  }
}

/** What ConfigParser remembers of the last config it accepted without a whole parse. */
interface ParserState {
  head: string
  /** The peers' item texts; null while ConfigParser.bytes holds them. */
  chunks: string[] | null
  entries: CachedPeer[]
  local: RawEndpoint
  mediator: RawEndpoint | null
  /** Names in use and address ranges of the endpoints, for checkAdded; null until the first change needs it. */
  index: PeerIndex | null
}

interface PeerIndex {
  names: Map<string, number>
  /** Null when the endpoints' ranges are not disjoint (the mediator is not checked against the others). */
  spans: SpanIndex | null
}

interface ByteState {
  buf: Buffer
  /** Offset of each item in `buf`, then of the block's end. */
  starts: Int32Array
  indent: number
}

/** The item texts of a byte state. */
function chunksOf(st: ByteState): string[] {
  const out: string[] = []
  for (let k = 0; k + 1 < st.starts.length; k++) out.push(st.buf.toString('latin1', st.starts[k]!, st.starts[k + 1]!))
  return out
}

/** The index of the names and ranges of the node, the mediator and `peers` but `except`. */
function peerIndex(prev: ParserState, peers: readonly RawEndpoint[], except: ReadonlySet<RawEndpoint>): PeerIndex {
  const names = new Map<string, number>()
  const owners: Array<{ owner: object; cidrs: Cidr[] }> = [prev.local, ...(prev.mediator ? [prev.mediator] : [])].map((o) => ({ owner: o, cidrs: cidrsOf(o) }))
  for (const p of peers) {
    if (except.has(p)) continue
    names.set(p.endpoint.name, (names.get(p.endpoint.name) ?? 0) + 1)
    owners.push({ owner: p, cidrs: cidrsOf(p) })
  }
  return { names, spans: SpanIndex.build(owners) }
}

function cidrsOf(r: RawEndpoint): Cidr[] {
  return [...r.subnets.map((l) => l.value), ...r.nodeSubnets.map((l) => l.value)]
}

/** Whether `p` overlaps any of `others` but itself (a pair of two added peers is compared once). */
function overlapsAny(p: RawEndpoint, others: readonly RawEndpoint[], added: readonly RawEndpoint[]): boolean {
  const mine = cidrsOf(p)
  const at = added.indexOf(p)
  for (const o of others) {
    if (o === p) continue
    const k = added.indexOf(o)
    if (k !== -1 && k < at) continue
    for (const x of mine) for (const y of cidrsOf(o)) if (overlaps(x, y)) return true
  }
  return false
}

/** Length of the longest common prefix of two buffers (memcmp halving, no byte loop over what is equal). */
export function commonPrefix(a: Buffer, b: Buffer): number {
  let lo = 0
  let hi = Math.min(a.length, b.length)
  // Invariant: a[0, lo) equals b[0, lo); the first difference, if any, is before hi.
  while (hi - lo > 64) {
    const mid = (lo + hi) >>> 1
    if (a.compare(b, lo, mid, lo, mid) === 0) lo = mid
    else hi = mid
  }
  while (lo < hi && a[lo] === b[lo]) lo++
  return lo
}

/** Length of the longest common suffix of two buffers, at most `max`. */
export function commonSuffix(a: Buffer, b: Buffer, max: number): number {
  let lo = 0
  let hi = Math.max(0, Math.min(max, a.length, b.length))
  while (hi - lo > 64) {
    const mid = (lo + hi) >>> 1
    if (a.compare(b, b.length - mid, b.length - lo, a.length - mid, a.length - lo) === 0) lo = mid
    else hi = mid
  }
  while (lo < hi && a[a.length - 1 - lo] === b[b.length - 1 - lo]) lo++
  return lo
}

/** Index of the last offset at most `at` (starts are increasing), or -1. */
function lastAtMost(starts: Int32Array, at: number): number {
  let lo = 0
  let hi = starts.length
  while (lo < hi) {
    const mid = (lo + hi) >>> 1
    if (starts[mid]! <= at) lo = mid + 1
    else hi = mid
  }
  return lo - 1
}
