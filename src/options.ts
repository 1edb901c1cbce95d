// Command-line flags and their environment twins. Precedence: flag, then environment variable, then default.
// Every flag `--foo-bar` has the twin `FABTUNNEL_FOO_BAR`.
import { parseArgs } from 'node:util'

export interface FlagSpec {
  type: 'string' | 'boolean'
  short?: string
  default?: string | boolean
  /** Placeholder shown in --help, e.g. FILE. */
  arg?: string
  help: string
}

export class UsageError extends Error {
  override readonly name = 'UsageError'
}

export function envName(flag: string): string {
  return `FABTUNNEL_${flag.replace(/-/g, '_').toUpperCase()}`
}

const TRUE = new Set(['1', 'true', 'yes', 'on'])
const FALSE = new Set(['0', 'false', 'no', 'off', ''])

export interface Parsed {
  values: Record<string, string | boolean | undefined>
  /** Where each value came from, for messages like "--cert (from FABTUNNEL_CERT)". */
  sources: Record<string, 'flag' | 'env' | 'default'>
  positionals: string[]
}

export function parseFlags(argv: string[], specs: Record<string, FlagSpec>, env: NodeJS.ProcessEnv = process.env): Parsed {
  let parsed
  try {
    parsed = parseArgs({
      args: argv,
      options: Object.fromEntries(
        Object.entries(specs).map(([name, s]) => [name, s.short ? { type: s.type, short: s.short } : { type: s.type }]),
      ),
      allowPositionals: true,
      strict: true,
    })
  } catch (err) {
    throw new UsageError((err as Error).message)
  }
  const values: Parsed['values'] = {}
  const sources: Parsed['sources'] = {}
  for (const [name, spec] of Object.entries(specs)) {
    const v = (parsed.values as Record<string, string | boolean | undefined>)[name]
    if (v !== undefined) {
      values[name] = v
      sources[name] = 'flag'
      continue
    }
    const e = env[envName(name)]
    if (e !== undefined) {
      if (spec.type === 'boolean') {
        const lower = e.trim().toLowerCase()
        if (!TRUE.has(lower) && !FALSE.has(lower)) throw new UsageError(`${envName(name)}="${e}" is not a boolean (use true/false)`)
        values[name] = TRUE.has(lower)
      } else {
        values[name] = e
      }
      sources[name] = 'env'
      continue
    }
    values[name] = spec.default
    sources[name] = 'default'
  }
  return { values, sources, positionals: parsed.positionals }
}

export function formatFlags(specs: Record<string, FlagSpec>): string {
  const rows = Object.entries(specs).map(([name, s]) => {
    const left = `${s.short ? `-${s.short}, ` : '    '}--${name}${s.arg ? ` ${s.arg}` : ''}`
    const def = s.default !== undefined && s.default !== false ? ` (default: ${s.default})` : ''
    return [left, `${s.help}${def} [${envName(name)}]`] as const
  })
  const width = Math.max(...rows.map((r) => r[0].length)) + 2
  return rows.map(([l, r]) => `  ${l.padEnd(width)}${r}`).join('\n')
}

/** `500ms`, `10s`, `5m`, `1h`, or a plain number of seconds; returns milliseconds. */
export function parseDuration(text: string, flag: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(text.trim())
  if (!m) throw new UsageError(`${flag} must be a duration like 500ms, 30s, 5m or 1h, got "${text}"`)
  const mult = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[(m[2] ?? 's') as 'ms' | 's' | 'm' | 'h']
  return Math.round(Number(m[1]) * mult)
}
