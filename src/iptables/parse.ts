// Parses iptables-save output (and our own restore payloads, which use the same grammar) into
// tables -> chains -> rules, and normalizes each rule to one canonical token list so that what we wrote and what
// iptables prints back compare semantically. Grammar: iptables-save(8) / iptables-restore(8); canonical spellings
// follow what iptables 1.8 prints (`-p udp -m udp --dport 500`, `-s 10.0.0.1/32`, `--ctstate RELATED,ESTABLISHED`).
import type { Family } from '../fabedge.js'
import { parseCidr } from '../config/cidr.js'
import { IptablesError } from './errors.js'

export interface ParsedRule {
  /** The rule as written after `-A CHAIN `, quoting kept, for payloads and messages. */
  readonly text: string
  /** Canonical form: equal keys mean the kernel holds the same rule. */
  readonly key: string
}

/**
 * Normalizes on first use of `key`: a converged pass compares only our chains and the built-in ones, so the
 * thousands of rules kube-proxy keeps in nat are split into lines and never tokenized.
 */
class LazyRule implements ParsedRule {
  private canonical: string | undefined
  constructor(
    readonly text: string,
    private readonly family: Family,
  ) {}
  get key(): string {
    this.canonical ??= tokensJoin(ruleNormalize(lineTokenize(this.text), this.family))
    return this.canonical
  }
}

export interface ParsedChain {
  name: string
  /** `ACCEPT`/`DROP` for built-in chains, `-` for user-defined ones. */
  policy: string
  rules: ParsedRule[]
}

export interface ParsedTable {
  name: string
  /** In the order iptables printed them. */
  chains: Map<string, ParsedChain>
}

export type ParsedRuleset = Map<string, ParsedTable>

/** Splits a line like a shell would for iptables' own quoting: double quotes with backslash escapes, single quotes. */
export function lineTokenize(line: string): string[] {
  const out: string[] = []
  let cur = ''
  let inToken = false
  let quote: '"' | "'" | null = null
  for (let i = 0; i < line.length; i++) {
    const ch = line[i]!
    if (quote) {
      if (ch === quote) quote = null
      else if (ch === '\\' && quote === '"' && i + 1 < line.length) cur += line[++i]
      else cur += ch
    } else if (ch === '"' || ch === "'") {
      quote = ch
      inToken = true
    } else if (ch === ' ' || ch === '\t') {
      if (inToken) out.push(cur)
      cur = ''
      inToken = false
    } else {
      cur += ch
      inToken = true
    }
  }
  if (quote) throw new IptablesError('bad-payload', `unterminated quote in: ${line}`)
  if (inToken) out.push(cur)
  return out
}

const BASE_OPTS: Record<string, string> = {
  '-s': '-s', '--source': '-s', '--src': '-s',
  '-d': '-d', '--destination': '-d', '--dst': '-d',
  '-i': '-i', '--in-interface': '-i',
  '-o': '-o', '--out-interface': '-o',
  '-p': '-p', '--protocol': '-p',
  '-f': '-f', '--fragment': '-f',
}
/** The order iptables-save prints the base (non-extension) options in. */
const BASE_ORDER = ['-s', '-d', '-i', '-o', '-p', '-f']

const PROTO_NAMES: Record<string, string> = {
  '1': 'icmp', '6': 'tcp', '17': 'udp', '47': 'gre', '50': 'esp', '51': 'ah', '132': 'sctp', '136': 'udplite',
  '58': 'ipv6-icmp', icmpv6: 'ipv6-icmp', icmp6: 'ipv6-icmp',
}
/** The extension iptables loads implicitly when a protocol's own options follow `-p`. */
const IMPLICIT_MATCH: Record<string, string> = { 'ipv6-icmp': 'icmp6' }

const OPT_ALIASES: Record<string, string> = {
  '--destination-port': '--dport',
  '--source-port': '--sport',
  '--destination-ports': '--dports',
  '--source-ports': '--sports',
  '--set': '--match-set',
}

const CTSTATE_ORDER = ['INVALID', 'NEW', 'RELATED', 'ESTABLISHED', 'UNTRACKED', 'SNAT', 'DNAT']

interface Opt {
  neg: boolean
  name: string
  values: string[]
}
interface Ext {
  name: string
  opts: Opt[]
}

function optValueNormalize(name: string, values: string[]): string[] {
  if ((name === '--ctstate' || name === '--state') && values.length === 1) {
    const states = values[0]!.toUpperCase().split(',')
    const rank = (s: string): number => {
      const i = CTSTATE_ORDER.indexOf(s)
      return i < 0 ? CTSTATE_ORDER.length : i
    }
    return [[...new Set(states)].sort((a, b) => rank(a) - rank(b) || (a < b ? -1 : a > b ? 1 : 0)).join(',')]
  }
  return values
}

function byName(a: Opt, b: Opt): number {
  return a.name < b.name ? -1 : a.name > b.name ? 1 : 0
}

/**
 * Canonical token list of one rule's arguments (everything after `-A CHAIN`): base options in iptables-save
 * order, addresses as canonical CIDRs, protocol numbers as names, implicit protocol matches made explicit,
 * long option names shortened, each extension's options sorted (their order never matters to the kernel),
 * packet counters dropped. Match order and target are kept: they do matter.
 */
export function ruleNormalize(args: readonly string[], family: Family): string[] {
  const base = new Map<string, { neg: boolean; value: string | null }>()
  const matches: Ext[] = []
  let target: (Ext & { kind: '-j' | '-g' }) | null = null
  let current: Ext | null = null
  let neg = false
  for (let i = 0; i < args.length; i++) {
    const tok = args[i]!
    if (tok === '!') {
      neg = true
      continue
    }
    const baseName = BASE_OPTS[tok]
    if (baseName) {
      const value = baseName === '-f' ? null : (args[++i] ?? '')
      base.set(baseName, { neg, value })
      neg = false
      continue
    }
    if (tok === '-c' || tok === '--set-counters') {
      i += 2
      continue
    }
    if (tok === '-m' || tok === '--match') {
      current = { name: args[++i] ?? '', opts: [] }
      matches.push(current)
      continue
    }
    if (tok === '-j' || tok === '--jump' || tok === '-g' || tok === '--goto') {
      target = { kind: tok === '-g' || tok === '--goto' ? '-g' : '-j', name: args[++i] ?? '', opts: [] }
      current = target
      continue
    }
    const values: string[] = []
    while (i + 1 < args.length && !args[i + 1]!.startsWith('-') && args[i + 1] !== '!') values.push(args[++i]!)
    const name = OPT_ALIASES[tok] ?? tok
    if (!current) {
      const proto = base.get('-p')?.value
      const p = proto ? (PROTO_NAMES[proto.toLowerCase()] ?? proto.toLowerCase()) : ''
      current = { name: IMPLICIT_MATCH[p] ?? p, opts: [] }
      matches.push(current)
    }
    current.opts.push({ neg, name, values: optValueNormalize(name, values) })
    neg = false
  }

  const out: string[] = []
  for (const name of BASE_ORDER) {
    const b = base.get(name)
    if (!b) continue
    let value = b.value
    if (value !== null && (name === '-s' || name === '-d')) {
      const r = parseCidr(value, true)
      if (r.ok && r.cidr.family === family) value = r.cidr.text
      if (!b.neg && (value === '0.0.0.0/0' || value === '::/0')) continue
    } else if (value !== null && name === '-p') {
      value = value.toLowerCase()
      value = PROTO_NAMES[value] ?? value
      if (!b.neg && (value === 'all' || value === '0')) continue
    }
    if (b.neg) out.push('!')
    out.push(name)
    if (value !== null) out.push(value)
  }
  const pushOpts = (opts: Opt[]): void => {
    for (const o of [...opts].sort(byName)) {
      if (o.neg) out.push('!')
      out.push(o.name, ...o.values)
    }
  }
  for (const m of matches) {
    out.push('-m', m.name)
    pushOpts(m.opts)
  }
  if (target) {
    out.push(target.kind, target.name)
    pushOpts(target.opts)
  }
  return out
}

/** Tokens joined back into one line, quoting only what needs it. */
export function tokensJoin(tokens: readonly string[]): string {
  return tokens.map((t) => (t === '' || /[\s"'\\]/.test(t) ? JSON.stringify(t) : t)).join(' ')
}

/** `[pkts:bytes] -A CHAIN rest`: counters optional, the rest kept verbatim. */
const APPEND = /^(?:\[\d+:\d+\]\s+)?(?:-A|--append)\s+(\S+)\s*(.*)$/

/**
 * Parses iptables-save output or a restore payload made only of table headers, chain declarations, `-A` rules
 * and COMMIT. Comments, blank lines and packet counters are ignored. Anything else is a typed error naming the
 * line; with `strict`, a rule that cannot be tokenized is one too (rules are otherwise normalized on first use).
 */
export function rulesetParse(text: string, family: Family, strict = false): ParsedRuleset {
  const tables: ParsedRuleset = new Map()
  let table: ParsedTable | null = null
  const lines = text.split('\n')
  for (let n = 0; n < lines.length; n++) {
    const line = lines[n]!.trim()
    const fail = (why: string): never => {
      throw new IptablesError('bad-payload', `line ${n + 1}: ${why}: ${line}`)
    }
    if (line === '' || line.startsWith('#')) continue
    if (line.startsWith('*')) {
      if (table) fail('table opened before COMMIT')
      const name = line.slice(1)
      table = tables.get(name) ?? { name, chains: new Map() }
      tables.set(name, table)
      continue
    }
    if (!table) fail('outside a table')
    const t = table!
    if (line === 'COMMIT') {
      table = null
      continue
    }
    if (line.startsWith(':')) {
      const [name, policy] = line.slice(1).split(/\s+/)
      if (!name || !policy) fail('bad chain declaration')
      if (!t.chains.has(name!)) t.chains.set(name!, { name: name!, policy: policy!, rules: [] })
      continue
    }
    const m = APPEND.exec(line)
    if (!m) fail('only -A rules are understood here')
    const chain = t.chains.get(m![1]!)
    if (!chain) fail(`rule for undeclared chain ${m![1]!}`)
    const rule = new LazyRule(m![2]!, family)
    if (strict) void rule.key
    chain!.rules.push(rule)
  }
  if (table) throw new IptablesError('bad-payload', `table ${table.name} not committed`)
  return tables
}
