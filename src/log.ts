// Structured logging: JSON lines, one event per line, stable keys (`peer`, `conn`, `op`, `durationMs`, `err`).
// Key material never reaches a log: anything under a key/secret/PEM-carrying path is redacted.
//
// The lines are pino's (v10, as `pino({ level, base: { name: 'fabtunnel' }, redact, timestamp: isoTime })` with a
// synchronous destination wrote them), so operators' tooling (pino-pretty, log shippers) and the tests that parse
// lines keep working:
//
//   {"level":30,"time":"2026-12-02T21:06:37.123Z","name":"fabtunnel",<child bindings>,<fields>,"msg":"..."}\n
//
// levels trace 10 ... fatal 60; `msg` only when there is a message (or, as pino, the `err` field's message); an
// Error under `err` as pino-std-serializers writes it (type, message and stack with their causes, own enumerable
// properties, nested errors); undefined and function values left out, non-finite numbers as null; circular
// references as "[Circular]" and BigInts as numbers; a value whose toJSON throws as pino's "[unable to serialize,
// ...]" string; the same redaction (REDACT_PATHS below, in fields and in child bindings). test/unit/log.test.ts proves
// it against pino itself.
//
// Why not pino (issue 13, the 50 MB edge): pino and its dependencies (sonic-boom, safe-stable-stringify, redact,
// std-serializers, ...) were ~80 KB of the bundle, ~0.3 MiB of RSS 30 s after ready, for features fabtunnel never
// used (transports, asynchronous destinations, custom levels, printf formatting, serializers, hooks).
import { writeSync } from 'node:fs'
import { isoTime } from './iso-time.js'

export type LogLevel = 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace'
export type LevelWithSilent = LogLevel | 'silent'

/** One log method: `log.info({ peer, op }, 'message')`, `log.info({ op })` or `log.info('message')`. */
export interface LogFn {
  (fields: object, msg?: string): void
  (msg: string): void
}

export interface Logger {
  readonly level: LevelWithSilent
  readonly fatal: LogFn
  readonly error: LogFn
  readonly warn: LogFn
  readonly info: LogFn
  readonly debug: LogFn
  readonly trace: LogFn
  /** A logger whose lines carry `bindings` after the parent's (redacted as fields are). */
  child(bindings: object): Logger
}

/** Where lines go: a file descriptor (written synchronously), or anything with `write(line)` (tests). */
export type LogDestination = number | { write(line: string): void }

export const LOG_LEVELS: readonly LevelWithSilent[] = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']

const LEVEL_VALUES: Readonly<Record<LevelWithSilent, number>> = { trace: 10, debug: 20, info: 30, warn: 40, error: 50, fatal: 60, silent: Infinity }

// The redact paths pino was given, with @pinojs/redact's meaning: a top-level name (`key`) is censored whatever
// its value; `*.key` is `key` of an object that is a field's value; `*.*.certs` is `certs` of an object one level
// further, inside a field's object or array; an exact path (`section.local.certs`) needs its `*.*.` form in the
// list, which covers it. Fields and child bindings alike. The caller's objects are never changed: what is
// censored is copied first.
export const REDACT_PATHS: readonly string[] = [
  'key', '*.key', 'privateKey', '*.privateKey', 'secret', '*.secret', 'data', '*.data',
  'certs', '*.certs', '*.*.certs', 'section.local.certs', 'conn.local.certs',
]
const CENSOR = '"[redacted]"'
const TOP = new Set<string>()
const SECOND: string[] = []
const THIRD: string[] = []
for (const p of REDACT_PATHS) {
  const [a, b, c, ...more] = p.split('.')
  if (b === undefined && a !== '*') TOP.add(a!)
  else if (a === '*' && b !== '*' && c === undefined) SECOND.push(b!)
  else if (a === '*' && b === '*' && c !== '*' && c !== undefined && !more.length) THIRD.push(c)
  // An exact path `a.b.c` is `*.*.c` restricted: only sound when `*.*.c` is in the list.
  else if (!p.includes('*') && c !== undefined && !more.length && REDACT_PATHS.includes(`*.*.${c}`)) continue
  else throw new Error(`log redaction path ${p}: not a shape src/log.ts applies`)
}

export function isLogLevel(v: string): v is LevelWithSilent {
  return (LOG_LEVELS as readonly string[]).includes(v)
}

/** Lines the logger could not write (the reader of stderr gone, or the pipe full for too long). */
export const logWriteFailures = { lines: 0, lastCode: '' }

/**
 * A logger writing JSON lines to `dest` (stderr by default, so command output on stdout stays clean). `now` is
 * the clock of the `time` field (tests).
 */
export function createLogger(level: LevelWithSilent = 'info', dest: LogDestination = 2, opts: { now?: () => number } = {}): Logger {
  const write = typeof dest === 'number' ? fdWriter(dest) : (line: string) => dest.write(line)
  return makeLogger({ threshold: LEVEL_VALUES[level], level, write, now: opts.now ?? Date.now }, bindingsJson({ name: 'fabtunnel' }))
}

interface Shared { threshold: number; level: LevelWithSilent; write: (line: string) => void; now: () => number }

function makeLogger(s: Shared, chindings: string): Logger {
  const method = (num: number): LogFn => {
    if (num < s.threshold) return noop
    const head = `{"level":${num}`
    return (a: object | string, b?: string) => {
      let line: string
      try {
        line = head + `,"time":"${isoTime(s.now())}"` + chindings + (typeof a === 'object' && a !== null ? fieldsJson(a, b) : msgJson(a)) + '}\n'
      } catch (err) {
        // Never into the caller: a line saying what could not be logged (a getter that threw, a clock gone wrong).
        line = `${head}${chindings},"msg":${JSON.stringify(`log line not serializable: ${String((err as Error)?.message ?? err)}`)}}\n`
      }
      s.write(line)
    }
  }
  return {
    level: s.level,
    fatal: method(60), error: method(50), warn: method(40), info: method(30), debug: method(20), trace: method(10),
    child: (bindings) => makeLogger(s, chindings + bindingsJson(bindings)),
  }
}

function noop(): void {}

function msgJson(msg: unknown): string {
  if (msg === undefined || typeof msg === 'function') return ''
  return `,"msg":${typeof msg === 'string' ? JSON.stringify(msg) : valueJson(msg) ?? 'null'}`
}

function fieldsJson(fields: object, msg: unknown): string {
  let obj = fields as Record<string, unknown>
  if (fields instanceof Error) {
    // pino: an Error in place of the fields is logged under `err`, its message the default message.
    obj = { err: fields }
    if (msg === undefined) msg = fields.message
  } else if (msg === undefined && obj.msg === undefined && obj.err) {
    msg = (obj.err as { message?: unknown }).message
  }
  let out = ''
  for (const k in obj) {
    if (Object.prototype.hasOwnProperty.call(obj, k)) out += field(k, obj[k])
  }
  return out + msgJson(msg)
}

/** `,"k":v` of one field or binding: the error serializer on `err`, then redaction; '' when left out. */
function field(k: string, v: unknown): string {
  if (v === undefined || typeof v === 'function') return ''
  if (k === 'err') v = serializeErr(v)
  const json = TOP.has(k) ? CENSOR : valueJson(redacted(v))
  return json === undefined ? '' : `,${JSON.stringify(k)}:${json}`
}

function bindingsJson(bindings: object): string {
  let out = ''
  for (const k in bindings) {
    // pino's asChindings leaves these option names out.
    if (k === 'level' || k === 'serializers' || k === 'formatters' || k === 'customLevels') continue
    if (Object.prototype.hasOwnProperty.call(bindings, k)) out += field(k, (bindings as Record<string, unknown>)[k])
  }
  return out
}

/** JSON of a value: JSON.stringify, else the safe form (cycles, BigInt), else pino's last-resort string. */
function valueJson(v: unknown): string | undefined {
  if (typeof v === 'number') return Number.isFinite(v) ? `${v}` : 'null'
  try {
    return JSON.stringify(v)
  } catch {
    try {
      return safeJson('', { '': v }, [])
    } catch {
      return '"[unable to serialize, circular reference is too complex to analyze]"'
    }
  }
}

/** safe-stable-stringify as pino configures it: keys sorted, a cycle as "[Circular]", a BigInt as a number. */
function safeJson(key: string, holder: Record<string, unknown>, stack: unknown[]): string | undefined {
  let v = holder[key]
  if (typeof v === 'object' && v !== null && typeof (v as { toJSON?: unknown }).toJSON === 'function') v = (v as { toJSON(k: string): unknown }).toJSON(key)
  switch (typeof v) {
    case 'string': return JSON.stringify(v)
    case 'number': return Number.isFinite(v) ? `${v}` : 'null'
    case 'boolean': case 'bigint': return `${v}`
    case 'object': {
      if (v === null) return 'null'
      if (stack.includes(v)) return '"[Circular]"'
      stack.push(v)
      let out: string
      if (Array.isArray(v)) {
        out = `[${v.map((_, i) => safeJson(String(i), v as unknown as Record<string, unknown>, stack) ?? 'null').join(',')}]`
      } else {
        const parts: string[] = []
        for (const k of Object.keys(v).sort()) {
          const j = safeJson(k, v as Record<string, unknown>, stack)
          if (j !== undefined) parts.push(`${JSON.stringify(k)}:${j}`)
        }
        out = `{${parts.join(',')}}`
      }
      stack.pop()
      return out
    }
    default: return undefined
  }
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null
const own = (o: object, k: string): boolean => Object.prototype.hasOwnProperty.call(o, k)

/** A copy of an object (its prototype kept, own enumerable properties) or an array, to censor without mutating. */
function copy<T extends object>(o: T): T {
  return (Array.isArray(o) ? o.slice() : Object.assign(Object.create(Object.getPrototypeOf(o) as object) as object, o)) as T
}

/**
 * The value of a top-level field with SECOND (`*.x`) and THIRD (`*.*.x`) censored; the same object when nothing
 * is, so the common case copies nothing. A censored property is a string marker replaced in the output.
 */
function redacted(v: unknown): unknown {
  if (!isObject(v)) return v
  let out: Record<string, unknown> | undefined
  if (!Array.isArray(v)) {
    for (const k of SECOND) {
      if (own(v, k)) (out ??= copy(v))[k] = REDACTED
    }
  }
  for (const k in v) {
    const child = v[k]
    if (!isObject(child) || Array.isArray(child) || !own(v, k)) continue
    let c: Record<string, unknown> | undefined
    for (const k3 of THIRD) {
      if (own(child, k3)) (c ??= copy(child))[k3] = REDACTED
    }
    if (c) (out ??= copy(v))[k] = c
  }
  return out ?? v
}

/** Stands for a censored value: JSON.stringify writes it as the censor string. */
const REDACTED = { toJSON: () => '[redacted]' }

// pino-std-serializers' err serializer (lib/err.js, err-helpers.js), without its temporary tag on the caller's error.
const isErrorLike = (e: unknown): e is Error => isObject(e) && typeof e.message === 'string'

function errorCause(e: Error): Error | undefined {
  const c = (e as { cause?: unknown }).cause
  const cause = typeof c === 'function' ? (c as () => unknown).call(e) : c
  return isErrorLike(cause) ? cause : undefined
}

function stackWithCauses(e: Error, seen: Set<Error>): string {
  const stack = e.stack || ''
  if (seen.has(e)) return `${stack}\ncauses have become circular...`
  const cause = errorCause(e)
  if (!cause) return stack
  seen.add(e)
  return `${stack}\ncaused by: ${stackWithCauses(cause, seen)}`
}

function messageWithCauses(e: Error, seen: Set<Error>, skip = false): string {
  const message = skip ? '' : e.message || ''
  if (seen.has(e)) return `${message}: ...`
  const cause = errorCause(e)
  if (!cause) return message
  seen.add(e)
  const vErrorStyle = typeof (e as { cause?: unknown }).cause === 'function'
  return message + (vErrorStyle ? '' : ': ') + messageWithCauses(cause, seen, vErrorStyle)
}

function serializeErr(e: unknown, inProgress: Set<object> = new Set()): unknown {
  if (!isErrorLike(e)) return e
  inProgress.add(e)
  const ctor = (e as { constructor?: unknown }).constructor
  const out: Record<string, unknown> = {
    type: typeof ctor === 'function' ? ctor.name : e.name,
    message: messageWithCauses(e, new Set()),
    stack: stackWithCauses(e, new Set()),
  }
  const errors = (e as { errors?: unknown }).errors
  if (Array.isArray(errors)) out.aggregateErrors = errors.map((x: unknown) => serializeErr(x, inProgress))
  for (const k in e) {
    // pino keeps a property named `raw` for the original error (not written): an own `raw` is left out too.
    if (out[k] !== undefined || k === 'raw') continue
    const v = (e as unknown as Record<string, unknown>)[k]
    if (isErrorLike(v)) {
      // Causes are in the message and stack already; an error being serialized is a cycle.
      if (k !== 'cause' && !inProgress.has(v)) out[k] = serializeErr(v, inProgress)
    } else out[k] = v
  }
  inProgress.delete(e)
  return out
}

/**
 * Synchronous writes to a file descriptor that never throw into the caller. A full non-blocking pipe (EAGAIN)
 * is retried, sleeping, for up to ~100 ms without progress, then the rest of the line is dropped (the next line
 * starts on a new line); a reader gone (EPIPE) stops writing for good; anything else drops the line. Failures
 * are counted in `logWriteFailures`.
 */
function fdWriter(fd: number): (line: string) => void {
  let closed = false
  let cut = false // a line was dropped after part of it was written: the next one starts on a new line
  let sleeper: Int32Array | undefined
  return (line) => {
    if (closed) {
      logWriteFailures.lines++
      return
    }
    const buf = Buffer.from(cut ? `\n${line}` : line)
    let waitedMs = 0
    let off = 0
    while (off < buf.length) {
      try {
        // A partial write (a pipe with less room than the line) goes on with the rest.
        off += writeSync(fd, buf, off)
        waitedMs = 0
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code ?? 'unknown'
        if (code === 'EAGAIN' && waitedMs < 100) {
          const ms = Math.min(10, 1 + waitedMs)
          Atomics.wait((sleeper ??= new Int32Array(new SharedArrayBuffer(4))), 0, 0, ms)
          waitedMs += ms
          continue
        }
        if (code === 'EPIPE') closed = true
        if (off > 0) cut = true
        logWriteFailures.lines++
        logWriteFailures.lastCode = code
        return
      }
    }
    cut = false
  }
}
