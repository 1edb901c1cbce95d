// The one error class of the VICI module. `code` separates "the transport broke" (the connection, the framing or
// the bytes are unusable; retrying on a fresh connection may help) from "the daemon said no" (charon understood
// the request and refused it; retrying the same request will not help).

/** Codes for failures of the connection or of the bytes on it. */
export type ViciTransportCode =
  | 'ECONNREFUSED' // nobody listens on the socket (charon not running)
  | 'ENOENT' // the socket path does not exist
  | 'EACCES' // no permission to open the socket
  | 'connect' // any other connect failure (see `cause`)
  | 'closed' // the connection went away (or the client was closed) before the answer arrived
  | 'timeout' // no answer within the caller's timeout
  | 'frame-too-large' // a frame exceeds the configured maximum (in either direction)
  | 'malformed' // bytes that are not valid VICI (truncated, unknown element, unbalanced sections, too deep)
  | 'protocol' // valid VICI in the wrong place (a response nobody asked for)

/** Codes for requests charon received and refused. */
export type ViciDaemonCode =
  | 'CMD_UNKNOWN' // charon has no handler for the command
  | 'EVENT_UNKNOWN' // charon has no event source of that name
  | 'failed' // the response said `success = no`; `message` carries `errmsg`

/** Codes for messages we refuse to encode: caller bugs, never sent. */
export type ViciUsageCode = 'invalid'

export type ViciErrorCode = ViciTransportCode | ViciDaemonCode | ViciUsageCode

const DAEMON_CODES: ReadonlySet<ViciErrorCode> = new Set(['CMD_UNKNOWN', 'EVENT_UNKNOWN', 'failed'])

export class ViciError extends Error {
  override readonly name = 'ViciError'
  constructor(
    readonly code: ViciErrorCode,
    message: string,
    opts: {
      cause?: unknown
      /** The command or event name the failure belongs to, when there is one. */
      command?: string
      /** The full decoded response for `failed`, so callers can read more than `errmsg`. */
      response?: Record<string, unknown>
    } = {},
  ) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause })
    this.command = opts.command
    this.response = opts.response
  }

  readonly command: string | undefined
  readonly response: Record<string, unknown> | undefined

  /** True when charon answered and refused; false when the connection or the bytes failed. */
  get isDaemonRefusal(): boolean {
    return DAEMON_CODES.has(this.code)
  }

  /** True when the connection, framing or bytes failed (a retry on a new connection may succeed). */
  get isTransport(): boolean {
    return !DAEMON_CODES.has(this.code) && this.code !== 'invalid'
  }
}
