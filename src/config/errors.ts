// Config errors: every problem names the file, the line and the field path (`peers[1].name`), and all problems
// of a file are reported at once.

export type Severity = 'error' | 'warning'

export interface ConfigIssue {
  severity: Severity
  /** Field path in the document, e.g. `peers[1].subnets[0]`; empty for the whole document. */
  path: string
  /** 1-based line, or null when the problem has no position (e.g. an empty file). */
  line: number | null
  /** 1-based column, or null. */
  column: number | null
  message: string
}

export type ConfigErrorCode = 'ENOENT' | 'EACCES' | 'EREAD' | 'ETOOBIG' | 'EINVALID'

export class ConfigError extends Error {
  override readonly name = 'ConfigError'
  constructor(
    readonly code: ConfigErrorCode,
    readonly file: string,
    readonly issues: ConfigIssue[],
    options?: { cause?: unknown },
  ) {
    super(ConfigError.summarize(file, issues), options)
  }

  get errors(): ConfigIssue[] {
    return this.issues.filter((i) => i.severity === 'error')
  }

  get warnings(): ConfigIssue[] {
    return this.issues.filter((i) => i.severity === 'warning')
  }

  static summarize(file: string, issues: ConfigIssue[]): string {
    const errors = issues.filter((i) => i.severity === 'error')
    const head = `${file}: ${errors.length} error${errors.length === 1 ? '' : 's'}`
    return [head, ...errors.map((i) => `  ${formatIssue(file, i)}`)].join('\n')
  }
}

/** `file:line:col: path: message`, the shape editors and CI logs link to. */
export function formatIssue(file: string, i: ConfigIssue): string {
  const pos = i.line === null ? file : `${file}:${i.line}${i.column === null ? '' : `:${i.column}`}`
  return `${pos}: ${i.severity}: ${i.path ? `${i.path}: ` : ''}${i.message}`
}
