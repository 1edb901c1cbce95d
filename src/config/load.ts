// Loads and validates a FabEdge `tunnels.yaml` exactly as the FabEdge operator writes it
// (../shared/fabedge-compat.md §1). Every problem carries file, line, column and field path, and all problems
// are collected before failing. Unknown keys are ignored like FabEdge does, but reported as warnings.
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
import { isMap, isScalar, isSeq, LineCounter, parseDocument, type Node, type Pair, type YAMLMap } from 'yaml'
import { MEDIATOR_CONN } from '../fabedge.js'
import { cidrOverlaps, isHostname, parseCidr, parseIp, type Cidr } from './cidr.js'
import { ConfigError, type ConfigIssue, type Severity } from './errors.js'
import type { Endpoint, EndpointType, LocalEndpoint, PeerEndpoint, TunnelConfig } from './schema.js'

/** Largest config accepted; a ConfigMap is at most 1 MiB, so anything near this is a mistake. */
export const MAX_CONFIG_BYTES = 8 * 1024 * 1024

const ENDPOINT_KEYS = new Set(['id', 'name', 'publicAddresses', 'subnets', 'nodeSubnets', 'type', 'port'])
const TOP_KEYS = new Set([...ENDPOINT_KEYS, 'peers', 'mediator'])
const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$/
// Control characters would corrupt a VICI message or a log line; a DN never contains them.
const CONTROL_RE = /[\u0000-\u001f\u007f]/

export interface LoadResult {
  config: TunnelConfig
  warnings: ConfigIssue[]
}

class Collector {
  readonly issues: ConfigIssue[] = []
  constructor(private readonly lines: LineCounter) {}

  add(severity: Severity, path: string, node: Node | Pair | null | undefined, message: string): void {
    let line: number | null = null
    let column: number | null = null
    const range = node && 'range' in node ? node.range : node && 'key' in node && isScalar(node.key) ? node.key.range : undefined
    if (range) {
      const pos = this.lines.linePos(range[0])
      line = pos.line
      column = pos.col
    }
    this.issues.push({ severity, path, line, column, message })
  }

  error(path: string, node: Node | Pair | null | undefined, message: string): void {
    this.add('error', path, node, message)
  }

  warn(path: string, node: Node | Pair | null | undefined, message: string): void {
    this.add('warning', path, node, message)
  }
}

interface Located<T> {
  value: T
  node: Node
  path: string
}

interface RawEndpoint {
  endpoint: Endpoint
  node: Node
  path: string
  nameNode: Node | null
  subnets: Located<Cidr>[]
  nodeSubnets: Located<Cidr>[]
  typeNode: Node | null
  publicAddressesNode: Node | null
}

function join(base: string, key: string): string {
  return base ? `${base}.${key}` : key
}

function entries(map: YAMLMap): Array<{ key: string; keyNode: Node; value: Node | null; pair: Pair }> {
  const out: Array<{ key: string; keyNode: Node; value: Node | null; pair: Pair }> = []
  for (const pair of map.items as Pair[]) {
    const keyNode = pair.key as Node
    const key = isScalar(keyNode) ? String(keyNode.value) : String(keyNode)
    const value = (pair.value ?? null) as Node | null
    out.push({ key, keyNode, value, pair })
  }
  return out
}

/** A YAML value that is absent, `~` or empty is treated as not set, as Go's yaml decoding does. */
function isNullish(node: Node | null): boolean {
  return node === null || (isScalar(node) && node.value === null)
}

function readString(c: Collector, path: string, node: Node | null): string | null {
  if (isNullish(node)) return null
  if (!isScalar(node) || typeof node.value !== 'string') {
    c.error(path, node, `must be a string, got ${describe(node)}`)
    return null
  }
  if (CONTROL_RE.test(node.value)) {
    c.error(path, node, 'must not contain control characters')
    return null
  }
  return node.value
}

function readStringList(c: Collector, path: string, node: Node | null): Array<Located<string>> | null {
  if (isNullish(node)) return null
  if (!isSeq(node)) {
    c.error(path, node, `must be a list, got ${describe(node)}`)
    return null
  }
  const out: Array<Located<string>> = []
  node.items.forEach((item, i) => {
    const p = `${path}[${i}]`
    const v = readString(c, p, item as Node)
    if (v !== null) out.push({ value: v.trim(), node: item as Node, path: p })
  })
  return out
}

function describe(node: Node | null): string {
  if (node === null) return 'nothing'
  if (isMap(node)) return 'a map'
  if (isSeq(node)) return 'a list'
  if (isScalar(node)) return node.value === null ? 'null' : `${typeof node.value} ${JSON.stringify(node.value)}`
  return 'an unsupported YAML node'
}

function readCidrs(c: Collector, path: string, node: Node | null, allowBareIp: boolean): Located<Cidr>[] {
  const list = readStringList(c, path, node) ?? []
  const out: Located<Cidr>[] = []
  const seen = new Map<string, string>()
  for (const item of list) {
    const r = parseCidr(item.value, allowBareIp)
    if (!r.ok) {
      c.error(item.path, item.node, r.message)
      continue
    }
    if (r.cidr.hadHostBits) {
      c.warn(item.path, item.node, `"${item.value}" has host bits set; using ${r.cidr.text}`)
    }
    const first = seen.get(r.cidr.text)
    if (first !== undefined) {
      c.warn(item.path, item.node, `${r.cidr.text} is listed twice (first at ${first}); the duplicate is ignored`)
      continue
    }
    for (const other of out) {
      if (cidrOverlaps(other.value, r.cidr)) {
        c.warn(item.path, item.node, `${r.cidr.text} overlaps ${other.value.text} (${other.path}) of the same endpoint`)
      }
    }
    seen.set(r.cidr.text, item.path)
    out.push({ value: r.cidr, node: item.node, path: item.path })
  }
  return out
}

function readEndpoint(c: Collector, path: string, node: Node, allowed: Set<string>): RawEndpoint | null {
  if (!isMap(node)) {
    c.error(path, node, `must be a map of endpoint fields, got ${describe(node)}`)
    return null
  }
  const fields = new Map<string, { value: Node | null; keyNode: Node }>()
  for (const e of entries(node)) {
    if (!allowed.has(e.key)) {
      c.warn(join(path, e.key), e.keyNode, `unknown key "${e.key}" is ignored`)
      continue
    }
    fields.set(e.key, { value: e.value, keyNode: e.keyNode })
  }
  const get = (k: string): Node | null => fields.get(k)?.value ?? null

  const id = readString(c, join(path, 'id'), get('id'))
  const name = readString(c, join(path, 'name'), get('name'))
  if (name !== null && !NAME_RE.test(name)) {
    c.error(join(path, 'name'), get('name'), `"${name}" is not a valid name (letters, digits, ".", "_", "-"; at most 253)`)
  }

  const publicAddresses: string[] = []
  for (const a of readStringList(c, join(path, 'publicAddresses'), get('publicAddresses')) ?? []) {
    const ip = parseIp(a.value)
    if (ip) publicAddresses.push(ip.toString())
    else if (isHostname(a.value)) publicAddresses.push(a.value.toLowerCase())
    else c.error(a.path, a.node, `"${a.value}" is neither an IP address nor a DNS name`)
  }

  const subnets = readCidrs(c, join(path, 'subnets'), get('subnets'), false)
  const nodeSubnets = readCidrs(c, join(path, 'nodeSubnets'), get('nodeSubnets'), true)

  let type: EndpointType | null = null
  const typeNode = get('type')
  const typeText = readString(c, join(path, 'type'), typeNode)
  if (typeText !== null) {
    if (typeText === 'Connector' || typeText === 'EdgeNode') type = typeText
    else c.error(join(path, 'type'), typeNode, `must be "Connector" or "EdgeNode", got "${typeText}"`)
  }

  let port: number | null = null
  const portNode = get('port')
  if (!isNullish(portNode)) {
    if (isScalar(portNode) && typeof portNode.value === 'number' && Number.isInteger(portNode.value) && portNode.value >= 1 && portNode.value <= 65535) {
      port = portNode.value
    } else {
      c.error(join(path, 'port'), portNode, `must be an integer port 1-65535, got ${describe(portNode)}`)
    }
  }

  return {
    endpoint: {
      id: id ?? '',
      name: name ?? '',
      publicAddresses: [...new Set(publicAddresses)],
      subnets: subnets.map((s) => s.value.text),
      nodeSubnets: nodeSubnets.map((s) => s.value.text),
      type,
      port,
    },
    node,
    path,
    nameNode: get('name'),
    subnets,
    nodeSubnets,
    typeNode,
    publicAddressesNode: get('publicAddresses'),
  }
}

function requireFields(c: Collector, raw: RawEndpoint, keys: Array<'id' | 'name' | 'type'>): void {
  for (const k of keys) {
    const missing = k === 'type' ? raw.endpoint.type === null : raw.endpoint[k] === ''
    // Only report "missing" when no other error already explains the field.
    const already = c.issues.some((i) => i.severity === 'error' && i.path === join(raw.path, k))
    if (missing && !already) c.error(join(raw.path, k), raw.node, `required field "${k}" is missing`)
  }
}

function checkOverlaps(c: Collector, endpoints: RawEndpoint[]): void {
  for (let i = 0; i < endpoints.length; i++) {
    for (let j = i + 1; j < endpoints.length; j++) {
      const a = endpoints[i]!
      const b = endpoints[j]!
      const pairs: Array<[Located<Cidr>[], Located<Cidr>[]]> = [
        [a.subnets, b.subnets],
        [a.subnets, b.nodeSubnets],
        [a.nodeSubnets, b.subnets],
      ]
      for (const [xs, ys] of pairs) {
        for (const x of xs) {
          for (const y of ys) {
            if (cidrOverlaps(x.value, y.value)) {
              c.error(y.path, y.node, `${y.value.text} of "${b.endpoint.name}" overlaps ${x.value.text} of "${a.endpoint.name}" (${x.path}); address spaces of endpoints must not overlap`)
            }
          }
        }
      }
      for (const x of a.nodeSubnets) {
        for (const y of b.nodeSubnets) {
          if (cidrOverlaps(x.value, y.value)) {
            c.warn(y.path, y.node, `node subnet ${y.value.text} of "${b.endpoint.name}" overlaps ${x.value.text} of "${a.endpoint.name}" (${x.path})`)
          }
        }
      }
    }
  }
}

/** Parses and validates config text. Throws ConfigError listing every error (and the warnings) at once. */
export function parseConfig(text: string, file = '<config>'): LoadResult {
  const lines = new LineCounter()
  const c = new Collector(lines)
  const doc = parseDocument(text, { lineCounter: lines, prettyErrors: false, uniqueKeys: true, strict: true })
  for (const e of doc.errors) {
    const pos = e.linePos?.[0] ?? lines.linePos(e.pos[0])
    c.issues.push({ severity: 'error', path: '', line: pos?.line ?? null, column: pos?.col ?? null, message: `YAML syntax: ${e.message.split('\n')[0]}` })
  }
  if (doc.errors.length) throw new ConfigError('EINVALID', file, c.issues)
  for (const w of doc.warnings) {
    const pos = w.linePos?.[0] ?? lines.linePos(w.pos[0])
    c.issues.push({ severity: 'warning', path: '', line: pos?.line ?? null, column: pos?.col ?? null, message: `YAML: ${w.message.split('\n')[0]}` })
  }

  const root = doc.contents as Node | null
  if (isNullish(root)) {
    c.error('', null, 'config is empty: expected the local endpoint (id, name, subnets, ...) and peers')
    throw new ConfigError('EINVALID', file, c.issues)
  }
  if (!isMap(root)) {
    c.error('', root, `top level must be a map of endpoint fields and "peers", got ${describe(root)}`)
    throw new ConfigError('EINVALID', file, c.issues)
  }

  const local = readEndpoint(c, '', root, TOP_KEYS)!
  requireFields(c, local, ['id', 'name', 'type'])

  const peers: RawEndpoint[] = []
  const peersNode = root.get('peers', true) as Node | undefined
  if (peersNode !== undefined && !isNullish(peersNode)) {
    if (!isSeq(peersNode)) {
      c.error('peers', peersNode, `must be a list of endpoints, got ${describe(peersNode)}`)
    } else {
      peersNode.items.forEach((item, i) => {
        const raw = readEndpoint(c, `peers[${i}]`, item as Node, ENDPOINT_KEYS)
        if (raw) {
          requireFields(c, raw, ['id', 'name', 'type'])
          peers.push(raw)
        }
      })
    }
  }

  let mediator: RawEndpoint | null = null
  const mediatorNode = root.get('mediator', true) as Node | undefined
  if (mediatorNode !== undefined && !isNullish(mediatorNode)) {
    mediator = readEndpoint(c, 'mediator', mediatorNode, ENDPOINT_KEYS)
    if (mediator) {
      requireFields(c, mediator, ['id', 'name'])
      if (mediator.endpoint.name !== '' && mediator.endpoint.name !== MEDIATOR_CONN) {
        c.warn('mediator.name', mediator.nameNode, `the mediator connection is always named "${MEDIATOR_CONN}"; "${mediator.endpoint.name}" is ignored`)
      }
    }
  }

  const seen = new Map<string, string>()
  for (const p of peers) {
    const n = p.endpoint.name
    if (n === '') continue
    const path = `${p.path}.name`
    if (n === local.endpoint.name) c.error(path, p.nameNode, `peer "${n}" has the same name as this node`)
    else if (n === MEDIATOR_CONN) c.error(path, p.nameNode, `"${MEDIATOR_CONN}" is reserved for the mediator connection`)
    const first = seen.get(n)
    if (first !== undefined) c.error(path, p.nameNode, `duplicate peer name "${n}" (first at ${first}.name)`)
    else seen.set(n, p.path)
  }

  const role = local.endpoint.type
  const mediated = mediator !== null
  for (const p of peers) {
    const needsAddr =
      (role === 'EdgeNode' && !(p.endpoint.type === 'EdgeNode' && mediated)) ||
      (role === 'Connector' && p.endpoint.type === 'Connector')
    if (needsAddr && p.endpoint.publicAddresses.length === 0 && !c.issues.some((i) => i.severity === 'error' && i.path.startsWith(`${p.path}.publicAddresses`))) {
      c.error(`${p.path}.publicAddresses`, p.publicAddressesNode ?? p.node, `peer "${p.endpoint.name}" must have publicAddresses: this node initiates the tunnel to it`)
    }
  }
  if (mediator && role === 'EdgeNode' && mediator.endpoint.publicAddresses.length === 0) {
    c.error('mediator.publicAddresses', mediator.publicAddressesNode ?? mediator.node, 'the mediator must have publicAddresses: edge nodes dial it')
  }

  checkOverlaps(c, [local, ...peers])

  c.issues.sort((a, b) => (a.line ?? 0) - (b.line ?? 0) || (a.column ?? 0) - (b.column ?? 0))
  if (c.issues.some((i) => i.severity === 'error')) throw new ConfigError('EINVALID', file, c.issues)

  const config: TunnelConfig = {
    local: local.endpoint as LocalEndpoint,
    peers: peers.map((p) => p.endpoint as PeerEndpoint),
    mediator: mediator ? { ...mediator.endpoint, name: MEDIATOR_CONN } : null,
  }
  return { config, warnings: c.issues.filter((i) => i.severity === 'warning') }
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
