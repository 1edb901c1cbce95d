// Reads the settings out of a strongswan.conf (the subset of its syntax the shipped files use: `name = value`
// lines, `name {` ... `}` sections, `#` comments; `include` lines are skipped) into dotted keys such as
// `charon.processor.priority_threads.high`, and renders chosen keys back as lines for the `charon { }` section the
// harness writes. Pure, so the deploy test compares every shipped file key by key and the harness runs exactly
// what ships (test/harness/many-edges.ts). Syntax: strongswan.conf(5) "SYNTAX".

export class StrongswanConfError extends Error {
  override readonly name = 'StrongswanConfError'
  constructor(readonly file: string, readonly line: number, message: string) {
    super(`${file}:${line}: ${message}`)
  }
}

/** The charon settings a connector needs for thousands of edges (docs/scale.md), in the order they are shipped. */
export const SCALE_KEYS = [
  'charon.ikesa_table_size',
  'charon.ikesa_table_segments',
  'charon.threads',
  'charon.processor.priority_threads.high',
  'charon.processor.priority_threads.medium',
  'charon.init_limit_half_open',
  'charon.cookie_threshold',
  'charon.cookie_threshold_ip',
  'charon.block_threshold',
] as const

const NAME = /^[A-Za-z0-9_-]+$/

/** Every setting of the text as dotted key -> value (the last one wins, as in charon). */
export function parseStrongswanConf(text: string, file = 'strongswan.conf'): Map<string, string> {
  const out = new Map<string, string>()
  const stack: string[] = []
  text.split('\n').forEach((raw, i) => {
    const line = raw.replace(/#.*$/, '').trim()
    if (line === '' || /^include\s/.test(line)) return
    if (line === '}') {
      if (stack.pop() === undefined) throw new StrongswanConfError(file, i + 1, 'unbalanced }')
      return
    }
    const section = /^(\S+)\s*\{$/.exec(line)
    if (section) {
      if (!NAME.test(section[1]!)) throw new StrongswanConfError(file, i + 1, `bad section name ${section[1]}`)
      stack.push(section[1]!)
      return
    }
    const setting = /^(\S+)\s*=\s*(.*)$/.exec(line)
    if (!setting || !NAME.test(setting[1]!)) throw new StrongswanConfError(file, i + 1, `cannot read "${line}"`)
    out.set([...stack, setting[1]!].join('.'), setting[2]!.trim())
  })
  if (stack.length) throw new StrongswanConfError(file, text.split('\n').length, `section ${stack.join('.')} not closed`)
  return out
}

/**
 * Lines for inside `charon { }` that set `keys` (all `charon.*`) to their values in `settings`, nested sections
 * rebuilt. Throws when a key is missing, so the harness never silently runs without a shipped setting.
 */
export function renderCharonSettings(settings: ReadonlyMap<string, string>, keys: readonly string[]): string {
  interface Node { values: Array<[string, string]>; sections: Map<string, Node> }
  const root: Node = { values: [], sections: new Map() }
  for (const key of keys) {
    const parts = key.split('.')
    if (parts[0] !== 'charon' || parts.length < 2) throw new Error(`${key} is not a charon setting`)
    const value = settings.get(key)
    if (value === undefined) throw new Error(`${key} is not set`)
    if (!/^[A-Za-z0-9_.%/:-]+$/.test(value)) throw new Error(`${key}: unexpected value ${value}`)
    let node = root
    for (const p of parts.slice(1, -1)) {
      let next = node.sections.get(p)
      if (!next) node.sections.set(p, (next = { values: [], sections: new Map() }))
      node = next
    }
    node.values.push([parts.at(-1)!, value])
  }
  const lines: string[] = []
  const emit = (node: Node, indent: string): void => {
    for (const [k, v] of node.values) lines.push(`${indent}${k} = ${v}`)
    for (const [name, sub] of node.sections) {
      lines.push(`${indent}${name} {`)
      emit(sub, indent + '  ')
      lines.push(`${indent}}`)
    }
  }
  emit(root, '  ')
  return lines.join('\n')
}
