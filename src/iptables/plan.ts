// Pure planning: (desired restore payload, observed ruleset) -> one iptables-restore payload that makes the
// node match, or null when it already does. Owns the rules for our jumps from built-in chains and for chains with
// the FABEDGE- prefix that the current role does not use. kube-proxy's syncProxyRules is the model: own chains are
// replaced whole with `:CHAIN - [0:0]` under --noflush; stale own chains are flushed and `-X`-deleted.
//
// Jumps are edited in the same payload with `-D`/`-I` lines. iptables-restore commits each table as one
// transaction, so a crash mid-pass leaves every table either before or after, never with two jumps; and a `-D` of
// a rule that vanished since we observed fails the whole table instead of deleting something else.
import { CHAIN, type Family } from '../fabedge.js'
import { IptablesError } from './errors.js'
import { KUBE_POSTROUTING } from './render.js'
import { MSS_CHAIN } from './mss.js'
import { lineTokenize, rulesetParse, type ParsedChain, type ParsedRuleset, type ParsedTable } from './parse.js'

export type Table = 'filter' | 'nat' | 'mangle'
/** The tables we may own chains in: FabEdge's filter and nat, and mangle for our MSS clamp chain (mss.ts). */
export const TABLES: readonly Table[] = ['filter', 'nat', 'mangle']

/** Chains with this prefix in tables filter, nat and mangle are ours (the FabEdge contract); nothing else ever is. */
export const OWN_PREFIX = 'FABEDGE-'

export interface JumpSpec {
  table: Table
  /** Built-in chain holding the jump. */
  from: string
  /** Our chain it jumps to. */
  to: string
  /**
   * Must be rule 1 of `from` (nat POSTROUTING: our ACCEPT/RETURN must run before anyone's MASQUERADE; mangle
   * POSTROUTING: a foreign ACCEPT ahead of the clamp would let SYNs leave unclamped).
   */
  first: boolean
}

/** The jump each of our chains needs, when the desired payload declares that chain. */
export const JUMPS: readonly JumpSpec[] = [
  { table: 'filter', from: 'INPUT', to: CHAIN.input, first: false },
  { table: 'filter', from: 'FORWARD', to: CHAIN.forward, first: false },
  { table: 'nat', from: 'POSTROUTING', to: CHAIN.postrouting, first: true },
  // POSTROUTING, not FORWARD: the node's own connections (host-network pods, node IPs) need the clamp too, and the
  // route, hence the path MTU the clamp reads, is final there.
  { table: 'mangle', from: 'POSTROUTING', to: MSS_CHAIN, first: true },
]

/** `iptables -t <table> -D|-I <chain> [1] -j <target>`; an insert always goes to position 1. */
export interface JumpOp {
  op: 'insert' | 'delete'
  table: Table
  chain: string
  target: string
}

export interface ChainRef {
  table: Table
  chain: string
}

export interface IptablesObserved {
  family: Family
  /** Parsed iptables-save output; a table the kernel does not have is absent. */
  tables: Partial<Record<Table, ParsedTable>>
}

export interface IptablesPlan {
  family: Family
  /** The whole change as one iptables-restore --noflush payload; null when the node already matches. */
  restore: string | null
  /** Jump edits contained in `restore`, in order. */
  jumps: JumpOp[]
  /** Own chains (re)written whole because they were missing or differed. */
  replaced: ChainRef[]
  /** Stale own chains flushed and deleted. */
  deleted: ChainRef[]
  /** Stale own chains that a foreign rule still references: emptied but kept, so their rule stays valid. */
  kept: ChainRef[]
}

const isOwn = (name: string): boolean => name.startsWith(OWN_PREFIX)
const isBuiltin = (c: ParsedChain): boolean => c.policy !== '-'
const bareJumpTarget = (key: string): string | null => {
  const m = /^-j (\S+)$/.exec(key)
  return m ? m[1]! : null
}
const refersTo = (key: string, chain: string): boolean => {
  const t = key.split(' ')
  for (let i = 0; i + 1 < t.length; i++) if ((t[i] === '-j' || t[i] === '-g') && t[i + 1] === chain) return true
  return false
}

/** Parses and checks a desired payload: only tables filter/nat/mangle, only own chains, only `-A` rules. */
export function desiredParse(payload: string, family: Family): ParsedRuleset {
  const parsed = rulesetParse(payload, family, true)
  for (const [name, table] of parsed) {
    if (!TABLES.includes(name as Table)) throw new IptablesError('bad-payload', `desired payload has table ${name}`)
    for (const c of table.chains.values()) {
      if (!isOwn(c.name) || c.policy !== '-') {
        throw new IptablesError('bad-payload', `desired payload declares ${name}/${c.name}, which is not ours`)
      }
    }
  }
  return parsed
}

function sameRules(a: ParsedChain, b: ParsedChain): boolean {
  return a.rules.length === b.rules.length && a.rules.every((r, i) => r.key === b.rules[i]!.key)
}

function tablePlan(
  table: Table,
  desired: ParsedTable | undefined,
  observed: ParsedTable | undefined,
  plan: IptablesPlan,
): string[] {
  const want = desired?.chains ?? new Map<string, ParsedChain>()
  const have = observed?.chains ?? new Map<string, ParsedChain>()
  const replaced = [...want.values()].filter((d) => {
    const o = have.get(d.name)
    return !o || !sameRules(o, d)
  })
  const stale = [...have.values()].filter((c) => isOwn(c.name) && !isBuiltin(c) && !want.has(c.name))
  const staleNames = new Set(stale.map((c) => c.name))

  const deletes: JumpOp[] = []
  const inserts: JumpOp[] = []
  const positions = new Map<string, number[]>()
  for (const chain of have.values()) {
    if (!isBuiltin(chain)) continue
    chain.rules.forEach((r, i) => {
      const target = bareJumpTarget(r.key)
      if (!target || !isOwn(target)) return
      const spec = JUMPS.find((j) => j.table === table && j.from === chain.name && j.to === target)
      if (spec && want.has(target)) {
        const k = `${chain.name} ${target}`
        positions.set(k, [...(positions.get(k) ?? []), i])
      } else if (staleNames.has(target)) {
        deletes.push({ op: 'delete', table, chain: chain.name, target })
      }
    })
  }
  for (const spec of JUMPS) {
    if (spec.table !== table || !want.has(spec.to)) continue
    const at = positions.get(`${spec.from} ${spec.to}`) ?? []
    const jump = { table, chain: spec.from, target: spec.to }
    if (spec.first ? at.length === 1 && at[0] === 0 : at.length === 1) continue
    // `-D` by rule spec removes the first match, never a foreign rule: drop every copy and insert one at the top,
    // where a missing jump goes too (an accept chain after someone's DROP would be useless).
    for (let i = 0; i < at.length; i++) deletes.push({ op: 'delete', ...jump })
    inserts.push({ op: 'insert', ...jump })
  }

  // A stale chain can only be deleted when nothing will refer to it after this payload: count references in
  // the state this payload leaves behind (desired chains as desired, stale chains empty, our bare jumps gone).
  const removedJumps = new Set(deletes.map((d) => `${d.chain} ${d.target}`))
  const referenced = (name: string): boolean => {
    for (const c of have.values()) {
      if (staleNames.has(c.name)) continue
      const rules = want.get(c.name)?.rules ?? c.rules
      for (const r of rules) {
        if (isBuiltin(c) && removedJumps.has(`${c.name} ${bareJumpTarget(r.key) ?? ''}`)) continue
        if (refersTo(r.key, name)) return true
      }
    }
    return false
  }
  const toDelete = stale.filter((c) => !referenced(c.name))
  const toFlush = stale.filter((c) => referenced(c.name))
  for (const c of toDelete) plan.deleted.push({ table, chain: c.name })
  for (const c of toFlush) plan.kept.push({ table, chain: c.name })
  const flushNeeded = toFlush.filter((c) => c.rules.length > 0)
  for (const c of replaced) plan.replaced.push({ table, chain: c.name })
  plan.jumps.push(...deletes, ...inserts)

  if (replaced.length + toDelete.length + flushNeeded.length + deletes.length + inserts.length === 0) return []
  const lines = [`*${table}`]
  for (const c of [...replaced, ...toDelete, ...flushNeeded]) lines.push(`:${c.name} - [0:0]`)
  for (const d of deletes) lines.push(`-D ${d.chain} -j ${d.target}`)
  for (const c of toDelete) lines.push(`-X ${c.name}`)
  for (const c of replaced) for (const r of c.rules) lines.push(`-A ${c.name} ${r.text}`)
  for (const d of inserts) lines.push(`-I ${d.chain} 1 -j ${d.target}`)
  lines.push('COMMIT')
  return lines
}

/**
 * Foreign chains a desired rule may jump to only where they exist: kube-proxy creates KUBE-POSTROUTING on a
 * Kubernetes node, and a node without it (bare metal, a test namespace) gets the ruleset without that rule
 * instead of a restore that fails as a whole. Once kube-proxy creates the chain, the next deep pass adds it.
 */
export const OPTIONAL_TARGETS: ReadonlySet<string> = new Set([KUBE_POSTROUTING])

/** The desired payload without its `-A` rules that jump to an optional foreign chain the observed table lacks. */
export function withoutMissingTargets(payload: string, observed: IptablesObserved): string {
  let table: Table | null = null
  let dropped = false
  const kept = payload.split('\n').filter((line) => {
    if (line.startsWith('*')) table = line.slice(1).trim() as Table
    if (!line.startsWith('-A ')) return true
    const t = lineTokenize(line)
    const j = t.findIndex((x) => x === '-j' || x === '--jump')
    const target = j >= 0 ? t[j + 1] : undefined
    if (target === undefined || !OPTIONAL_TARGETS.has(target)) return true
    const present = table !== null && observed.tables[table]?.chains.has(target) === true
    if (!present) dropped = true
    return present
  })
  return dropped ? kept.join('\n') : payload
}

/**
 * What to write so that the observed ruleset holds exactly the desired own chains, one jump to each (nat
 * POSTROUTING's first), and no other own chain. Foreign chains and rules are never in the payload.
 * `iptables -t T -D/-I/-X` equivalents, applied as one `iptables-restore --noflush`.
 */
export function iptablesPlan(desiredPayload: string, observed: IptablesObserved): IptablesPlan {
  const desired = desiredParse(withoutMissingTargets(desiredPayload, observed), observed.family)
  const plan: IptablesPlan = { family: observed.family, restore: null, jumps: [], replaced: [], deleted: [], kept: [] }
  const lines: string[] = []
  for (const table of TABLES) lines.push(...tablePlan(table, desired.get(table), observed.tables[table], plan))
  plan.restore = lines.length ? lines.join('\n') + '\n' : null
  return plan
}

/** Removes every own chain and our jumps to them: the plan for an empty desired ruleset. */
export function iptablesCleanupPlan(observed: IptablesObserved): IptablesPlan {
  return iptablesPlan('', observed)
}
