// Scans of src/ for calls the agent must not make (each test says why): code lines only, comments skipped.
import { readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'

/** `line: text` of each code line of `source` that `pattern` matches (`//` comments and ` * ` doc lines skipped). */
export function offendingLines(source: string, pattern: RegExp): string[] {
  const out: string[] = []
  for (const [i, raw] of source.split('\n').entries()) {
    const code = raw.replace(/\/\/.*$/, '').replace(/^\s*\*.*$/, '')
    if (pattern.test(code)) out.push(`${i + 1}: ${raw.trim()}`)
  }
  return out
}

/** Every .ts file under src/ (but `except`) with the lines `pattern` matches, as `src/<file>:<line>: <text>`. */
export function scanSrc(pattern: RegExp, except: readonly string[] = []): { files: number; found: string[] } {
  const root = new URL('../../src/', import.meta.url).pathname
  const files = (readdirSync(root, { recursive: true }) as string[]).filter((f) => f.endsWith('.ts') && !except.includes(f))
  return { files: files.length, found: files.flatMap((f) => offendingLines(readFileSync(join(root, f), 'utf8'), pattern).map((l) => `src/${f}:${l}`)) }
}
