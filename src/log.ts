// Structured logging: pino JSON lines, one event per line, stable keys (`peer`, `conn`, `op`, `durationMs`, `err`).
// Key material never reaches a log: anything under a key/secret/PEM-carrying path is redacted.
import { pino, type Logger, type LevelWithSilent } from 'pino'
import { isoTime } from './iso-time.js'

export type { Logger }

export const LOG_LEVELS: readonly LevelWithSilent[] = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']

const REDACT = [
  'key', '*.key', 'privateKey', '*.privateKey', 'secret', '*.secret', 'data', '*.data',
  'certs', '*.certs', '*.*.certs', 'section.local.certs', 'conn.local.certs',
]

export function isLogLevel(v: string): v is LevelWithSilent {
  return (LOG_LEVELS as readonly string[]).includes(v)
}

/** A logger writing JSON lines to `fd` (stderr by default, so command output on stdout stays clean). */
export function createLogger(level: LevelWithSilent = 'info', fd = 2): Logger {
  return pino(
    {
      level,
      base: { name: 'fabtunnel' },
      redact: { paths: REDACT, censor: '[redacted]' },
      // pino.stdTimeFunctions.isoTime's string, without Date's time zone set-up (src/iso-time.ts says why).
      timestamp: () => `,"time":"${isoTime(Date.now())}"`,
    },
    pino.destination({ fd, sync: true }),
  )
}
