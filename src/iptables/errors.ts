// The iptables module's one error class. `code` says what went wrong in terms a caller can act on:
// ENOENT (binary missing), restore-failed (iptables-restore rejected the payload: kernel/tool said no),
// save-failed, exec-failed (the process could not run or was killed: transport broke), timeout, bad-payload,
// bad-input (a value that would otherwise reach a command).

export type IptablesErrorCode =
  | 'ENOENT'
  | 'restore-failed'
  | 'save-failed'
  | 'exec-failed'
  | 'timeout'
  | 'bad-payload'
  | 'bad-input'

export interface RestoreFailure {
  /** 1-based line of the payload iptables-restore named, when it named one. */
  line?: number
  /** The failing line with up to two lines before and after, each prefixed by its number (`>` marks it). */
  context?: string
  stderr: string
}

export class IptablesError extends Error {
  override readonly name = 'IptablesError'
  readonly code: IptablesErrorCode
  readonly restore?: RestoreFailure

  constructor(code: IptablesErrorCode, message: string, opts: { cause?: unknown; restore?: RestoreFailure } = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause })
    this.code = code
    if (opts.restore) this.restore = opts.restore
  }
}
