// src/log.ts against pino 10 itself (a devDependency for this test only), configured as src/log.ts used to
// configure it: the same calls give the same lines, byte for byte (the time fixed). Then what pino does not
// prove: redaction of planted key material at every path without touching the caller's objects, level
// filtering, values that cannot be serialized, and writes to a pipe whose reader is gone, full or slow.
import t, { type Test } from 'tap'
import { pino } from 'pino'
import { execFileSync, spawn } from 'node:child_process'
import { closeSync, constants, mkdtempSync, openSync, readFileSync, readSync, rmSync, writeSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createLogger, logWriteFailures, REDACT_PATHS, type LevelWithSilent, type Logger } from '../../src/log.js'
import { isoTime } from '../../src/iso-time.js'
import { Metrics } from '../../src/daemon/metrics.js'

const NOW = Date.UTC(2026, 11, 2, 21, 6, 37, 123)

function ours(level: LevelWithSilent, lines: string[]): Logger {
  return createLogger(level, { write: (l) => void lines.push(l) }, { now: () => NOW })
}

function theirs(level: LevelWithSilent, lines: string[]): Logger {
  return pino({
    level,
    base: { name: 'fabtunnel' },
    redact: { paths: [...REDACT_PATHS], censor: '[redacted]' },
    timestamp: () => `,"time":"${isoTime(NOW)}"`,
  }, { write: (l: string) => void lines.push(l) }) as unknown as Logger
}

/** The lines both loggers write for `calls`: equal bytes, and each a JSON object on one line. */
function same(t: Test, name: string, calls: (log: Logger) => void, level: LevelWithSilent = 'trace'): string[] {
  const a: string[] = []
  const b: string[] = []
  calls(ours(level, a))
  calls(theirs(level, b))
  t.strictSame(a, b, `${name}: the lines pino writes`)
  for (const l of a) {
    t.ok(l.endsWith('}\n') && l.indexOf('\n') === l.length - 1, `${name}: one line`)
    JSON.parse(l)
  }
  return a
}

class TypedError extends Error {
  code = 'EX'
  errno = -17
  file = '/etc/fabedge/tunnels.yaml'
  errors = [{ path: 'peers[0].name', message: 'bad' }]
  constructor(msg: string, opts?: ErrorOptions) {
    super(msg, opts)
    this.name = 'TypedError'
  }
}

t.test('lines as pino writes them: levels, messages, fields, value types', async (t) => {
  const lines = same(t, 'basic', (log) => {
    log.trace('trace'); log.debug('debug'); log.info('info'); log.warn('warn'); log.error('error'); log.fatal('fatal')
    log.info({ peer: 'edge1', op: 'pass', durationMs: 12.5 }, 'pass done')
    log.info({ op: 'no message' })
    log.info({})
    log.info({ msg: 'in the fields' })
    log.info({ msg: 'in the fields' }, 'and given')
    log.warn({ n: 0, neg: -3, negZero: -0, big: 1e21, small: 5e-7, nan: NaN, inf: Infinity, ninf: -Infinity }, 'numbers')
    log.info({ yes: true, no: false, nul: null, undef: undefined, fn: () => 1, sym: Symbol('s') }, 'other types')
    log.info({ nested: { a: { b: { c: [1, 'two', null, undefined, () => 3, { d: true }] } } }, list: [], empty: {} }, 'nested')
    log.info({ date: new Date(NOW), nested: { date: new Date(0) } }, 'dates')
    log.info({
      quote: 'say "hi"', backslash: 'C:\\path', newline: 'a\nb', tab: '\t', nul: '\u0000', us: '\u001f', del: '\u007f',
      ls: 'line\u2028sep', ps: 'para\u2029sep', emoji: 'ok \u{1F600}', han: '\u4e2d\u6587',
      long: `${'"quoted" \\ '.repeat(20)}end`, longCtl: `${'x'.repeat(150)}\n`, '"key\n"': 'odd key',
    }, 'strings "escaped"\n\u2028 and \u0001')
    log.info('')
  })
  t.equal(lines[0], `{"level":10,"time":"2026-12-02T21:06:37.123Z","name":"fabtunnel","msg":"trace"}\n`, 'the exact shape')
  t.notOk('msg' in JSON.parse(lines[7]!), 'no msg without a message')
})

t.test('errors under err as pino-std-serializers writes them', async (t) => {
  const root = new Error('root cause')
  const mid = new TypeError('middle', { cause: root })
  const top = new TypedError('config invalid', { cause: mid })
  const withData = Object.assign(new Error('vici said no'), { data: '-----BEGIN PRIVATE KEY-----\nMIIE', key: 'k', inner: new RangeError('nested'), deeper: { local: { certs: ['not on a redact path'] } } })
  const circular = new Error('a')
  const other = new Error('b', { cause: circular })
  ;(circular as { cause?: unknown }).cause = other
  const selfRef = Object.assign(new Error('self'), {}) as Error & { me?: unknown }
  selfRef.me = selfRef
  const inner = new Error('inner')
  const vError = Object.assign(new Error('outer'), { cause: () => inner })
  // Made once: both loggers must see the same stacks.
  const plain = new Error('plain')
  const aggregate = new AggregateError([new Error('one'), 'two'], 'many')
  const notErr = new Error('not under err')
  const first = new TypedError('first argument')
  const firstNoMsg = new TypedError('first argument, no message')
  const inBindings = new Error('in bindings')
  const lines = same(t, 'errors', (log) => {
    log.error({ err: plain }, 'failed')
    log.error({ err: top, peer: 'edge1' }, 'with causes')
    log.error({ err: top })
    log.warn({ err: 'terminate failed: no such SA' }, 'a string err')
    log.warn({ err: 'a string err and no message' })
    log.error({ err: withData }, 'own props, nested error, redacted')
    log.error({ err: circular }, 'circular causes')
    log.error({ err: selfRef }, 'self reference')
    log.error({ err: vError }, 'VError-style cause')
    log.error({ err: aggregate }, 'aggregate')
    log.error({ err: { message: 'error-like', code: 3 } }, 'error-like object')
    log.error({ err: null, error: notErr }, 'other keys')
    log.error(first, 'an Error in place of fields')
    log.error(firstNoMsg)
    log.child({ err: inBindings }).info('child with err')
  })
  const o = JSON.parse(lines[1]!) as Record<string, Record<string, unknown>>
  t.equal(o.err!.type, 'TypedError')
  t.equal(o.err!.message, 'config invalid: middle: root cause', 'causes appended to the message')
  t.match(o.err!.stack, /caused by: TypeError: middle[\s\S]*caused by: Error: root cause/)
  t.equal(o.err!.code, 'EX')
  t.equal(JSON.parse(lines[2]!).msg, 'config invalid', "the err's own message when there is none")
  t.notOk(Object.getOwnPropertySymbols(top).length, 'the caller error is not tagged')
})

t.test('child bindings, child of child', async (t) => {
  same(t, 'children', (log) => {
    const c = log.child({ subsystem: 'tunnels', n: 1, nested: { a: [1] }, u: undefined, level: 'ignored', fn: () => 1 })
    c.info({ peer: 'p' }, 'child')
    const cc = c.child({ peer: 'edge2', subsystem: 'again' })
    cc.warn({ op: 'x' }, 'grandchild')
    cc.child({ name: 'renamed' }).error('great-grandchild')
    log.info('parent unchanged')
  })
})

/** Key material planted at every redact path (REDACT_PATHS' shapes), in fields, nested objects, lists and bindings. */
const PEM = '-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----'
function planted(): Record<string, unknown> {
  const second = (n: string) => ({ key: `${PEM}${n}`, privateKey: `${PEM}${n}`, secret: { pem: PEM }, data: [PEM], certs: [PEM], ok: n })
  return {
    key: PEM, privateKey: { pem: PEM }, secret: [PEM], data: Buffer.from(PEM), certs: [PEM],
    conn: { local: { certs: [PEM], auth: 'pubkey', id: 'C=CN' }, remote: { certs: [PEM] }, ...second('conn') },
    section: { local: { certs: [PEM] }, ...second('section') },
    peer: { ...second('peer'), child: { certs: [PEM], ok: 'child' } },
    list: [{ certs: [PEM], ok: 0 }, 'plain', { x: 1 }],
    n: 5,
  }
}

t.test('redaction at every path: as pino, caller objects unchanged, no key material out', async (t) => {
  const fields = planted()
  const before = JSON.stringify(fields)
  const nestedRef = (fields.conn as { local: unknown }).local
  const loadKey = Object.assign(new Error('load-key failed'), { data: PEM, key: PEM, section: { certs: [PEM] }, x: { certs: PEM } })
  const lines = same(t, 'redaction', (log) => {
    log.info(fields, 'fields')
    log.child(planted()).info('bindings')
    log.child({ peer: { name: 'p' } }).child({ conn: { local: { certs: [PEM] } } }).info({ section: { local: { certs: [PEM] } } }, 'nested children')
    log.error({ err: loadKey }, 'err props')
  })
  t.equal(JSON.stringify(fields), before, 'the caller object is unchanged')
  t.equal((fields.conn as { local: unknown }).local, nestedRef, 'and its nested objects are the same objects')
  const out = lines.join('')
  t.notOk(out.includes('BEGIN PRIVATE KEY'), 'no key material in the output')
  t.notOk(out.includes('MIIEvQ'), 'not even its base64')
  const o = JSON.parse(lines[0]!) as Record<string, any>
  for (const k of ['key', 'privateKey', 'secret', 'data', 'certs']) {
    t.equal(o[k], '[redacted]', k)
    t.equal(o.peer[k], '[redacted]', `*.${k}`)
  }
  t.strictSame(o.conn.local, { certs: '[redacted]', auth: 'pubkey', id: 'C=CN' }, 'conn.local.certs, the rest kept')
  t.equal(o.conn.remote.certs, '[redacted]', '*.*.certs')
  t.equal(o.section.local.certs, '[redacted]', 'section.local.certs')
  t.strictSame(o.peer.child, { certs: '[redacted]', ok: 'child' })
  t.strictSame(o.list, [{ certs: '[redacted]', ok: 0 }, 'plain', { x: 1 }], '*.*.certs inside a list')
  t.equal(o.n, 5, 'other fields kept')
  t.equal(JSON.parse(lines[1]!).conn.local.certs, '[redacted]', 'bindings are redacted too')
})

t.test('level filtering: below the level and silent write nothing', async (t) => {
  same(t, 'warn', (log) => { log.info('no'); log.debug({ a: 1 }, 'no'); log.warn('yes'); log.child({ c: 1 }).info('no') }, 'warn')
  const lines: string[] = []
  const log = ours('silent', lines)
  log.fatal('no'); log.error({ err: new Error('x') }); log.child({ a: 1 }).fatal('no')
  t.strictSame(lines, [], 'silent writes nothing')
  t.equal(log.level, 'silent')
})

t.test('values JSON.stringify refuses: BigInt, throwing toJSON (as pino), circular (no throw)', async (t) => {
  const lines = same(t, 'unserializable', (log) => {
    log.info({ n: 10n, nested: { n: 2n ** 70n, s: 'x' } }, 'bigint')
    log.info({ bad: { toJSON() { throw new Error('no') } }, ok: true }, 'throwing toJSON')
    log.info({ peer: { bad: { toJSON() { throw new Error('no') } }, certs: [PEM] } }, 'throwing toJSON and redacted')
  })
  t.equal(JSON.parse(lines[0]!).n, 10)
  t.equal(JSON.parse(lines[1]!).bad, '[unable to serialize, circular reference is too complex to analyze]')

  // pino writes a cycle as "[Circular]" too, but one level later than here: its redaction copies the top two
  // levels first, so the first repeat it sees is of the copy's original. The same marker, the cycle cut sooner.
  const cyc: Record<string, unknown> = { a: 1, z: 2, b: { c: 3 } }
  cyc.self = cyc
  ;(cyc.b as Record<string, unknown>).up = cyc
  const out: string[] = []
  const log = ours('info', out)
  log.info({ cyc, ok: 1 }, 'circular')
  log.child({ cyc }).info('circular binding')
  log.info({ peer: { cyc, certs: [PEM] } }, 'circular and redacted')
  const expected = '"cyc":{"a":1,"b":{"c":3,"up":"[Circular]"},"self":"[Circular]","z":2}'
  t.equal(out[0], `{"level":30,"time":"2026-12-02T21:06:37.123Z","name":"fabtunnel",${expected},"ok":1,"msg":"circular"}\n`)
  t.equal(out[1], `{"level":30,"time":"2026-12-02T21:06:37.123Z","name":"fabtunnel",${expected},"msg":"circular binding"}\n`)
  t.equal(out[2], `{"level":30,"time":"2026-12-02T21:06:37.123Z","name":"fabtunnel","peer":{"certs":"[redacted]",${expected}},"msg":"circular and redacted"}\n`)
  t.notOk(out.join('').includes('BEGIN PRIVATE'))
})

t.test('a field that throws when read: a line anyway, nothing thrown into the caller', async (t) => {
  const lines: string[] = []
  const log = ours('info', lines)
  const evil = { get x(): never { throw new Error('getter') } }
  t.doesNotThrow(() => log.info(evil, 'evil'))
  t.equal(lines.length, 1)
  t.match(JSON.parse(lines[0]!), { level: 30, name: 'fabtunnel', msg: /not serializable: getter/ })
})

t.test('writes to a file descriptor: the lines, byte for byte', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ft-log-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const fd = openSync(join(dir, 'out'), 'w')
  const log = createLogger('info', fd, { now: () => NOW })
  log.info({ peer: 'e' }, 'to a file \u{1F600}')
  log.child({ subsystem: 's' }).warn('second')
  closeSync(fd)
  const expected: string[] = []
  const log2 = ours('info', expected)
  log2.info({ peer: 'e' }, 'to a file \u{1F600}')
  log2.child({ subsystem: 's' }).warn('second')
  t.equal(readFileSync(join(dir, 'out'), 'utf8'), expected.join(''))
})

/** A FIFO in a fresh directory, with a non-blocking read end (kept by the caller) and write end. */
function fifo(t: Test): { path: string; rd: number; wr: number } {
  const dir = mkdtempSync(join(tmpdir(), 'ft-log-'))
  const path = join(dir, 'fifo')
  execFileSync('mkfifo', [path])
  const rd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK)
  const wr = openSync(path, constants.O_WRONLY | constants.O_NONBLOCK)
  t.teardown(() => {
    for (const fd of [rd, wr]) try { closeSync(fd) } catch { /* closed by the test */ }
    rmSync(dir, { recursive: true, force: true })
  })
  return { path, rd, wr }
}

t.test('EPIPE (the reader gone) and a closed fd: nothing thrown, the lines counted as lost', async (t) => {
  const f = fifo(t)
  closeSync(f.rd)
  const log = createLogger('info', f.wr)
  const before = logWriteFailures.lines
  t.doesNotThrow(() => { log.info('nobody reads'); log.error({ err: new Error('x') }, 'still nobody') })
  t.equal(logWriteFailures.lines - before, 2)
  t.equal(logWriteFailures.lastCode, 'EPIPE')

  const dir = mkdtempSync(join(tmpdir(), 'ft-log-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const fd = openSync(join(dir, 'f'), 'w')
  closeSync(fd)
  const closed = createLogger('info', fd)
  t.doesNotThrow(() => closed.info('to a closed fd'))
  t.equal(logWriteFailures.lastCode, 'EBADF')
  t.equal(logWriteFailures.lines - before, 3)
  const metrics = await new Metrics({ processMetrics: false }).registry.metrics()
  t.match(metrics, new RegExp(`^fabtunnel_log_lines_dropped_total ${logWriteFailures.lines}$`, 'm'), 'counted in /metrics')
  t.ok(logWriteFailures.lines >= 3)
})

/** Writes into a non-blocking pipe until it is full (EAGAIN). */
function fillPipe(fd: number): void {
  const chunk = Buffer.alloc(4096, 'x')
  for (;;) {
    try { writeSync(fd, chunk) } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EAGAIN') return
      throw err
    }
  }
}

t.test('a full pipe nobody drains (EAGAIN): bounded wait, the line dropped, nothing thrown', async (t) => {
  const f = fifo(t)
  fillPipe(f.wr)
  const log = createLogger('info', f.wr)
  const before = logWriteFailures.lines
  const start = process.hrtime.bigint()
  t.doesNotThrow(() => log.info('the pipe is full'))
  const ms = Number(process.hrtime.bigint() - start) / 1e6
  t.ok(ms < 2000, `returned after ${ms.toFixed(0)} ms (bounded)`)
  t.equal(logWriteFailures.lines - before, 1)
  t.equal(logWriteFailures.lastCode, 'EAGAIN')
})

t.test('a line cut by a full pipe: the next line still starts on its own line', async (t) => {
  const f = fifo(t)
  fillPipe(f.wr)
  const drain = (): Buffer => {
    const parts: Buffer[] = []
    const b = Buffer.alloc(65536)
    for (;;) {
      try {
        const n = readSync(f.rd, b)
        if (n === 0) break
        parts.push(Buffer.from(b.subarray(0, n)))
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'EAGAIN') break
        throw err
      }
    }
    return Buffer.concat(parts)
  }
  readSync(f.rd, Buffer.alloc(4096)) // room for part of the next line only
  const log = createLogger('info', f.wr, { now: () => NOW })
  const before = logWriteFailures.lines
  log.info({ blob: 'z'.repeat(20_000) }, 'cut')
  t.equal(logWriteFailures.lines - before, 1, 'the cut line counted')
  const fragment = drain().toString('latin1').replace(/^x+/, '')
  t.ok(fragment.length > 0 && fragment.startsWith('{"level":30'), `part of the line was written (${fragment.length} bytes)`)
  log.info('after')
  const next = drain().toString()
  const expected: string[] = []
  ours('info', expected).info('after')
  t.equal(next, `\n${expected[0]}`, 'a newline ends the fragment, then the whole next line')
  log.info('and then')
  t.equal(drain().toString().split('\n').length, 2, 'no extra newline once a line went through whole')
})

t.test('a slow reader: a line larger than the pipe arrives whole (partial writes and EAGAIN retried)', async (t) => {
  const f = fifo(t)
  const dir = mkdtempSync(join(tmpdir(), 'ft-log-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const outPath = join(dir, 'out')
  const out = openSync(outPath, 'w')
  // `cat` drains the FIFO into a file while this process writes synchronously (and sleeps on EAGAIN).
  const cat = spawn('cat', [f.path], { stdio: ['ignore', out, 'inherit'] })
  closeSync(out)
  await new Promise((r) => setTimeout(r, 100))
  const lines: string[] = []
  const big = { blob: 'y'.repeat(300_000), tail: '\u4e2d' }
  ours('info', lines).info(big, 'big')
  const before = logWriteFailures.lines
  createLogger('info', f.wr, { now: () => NOW }).info(big, 'big')
  t.equal(logWriteFailures.lines, before, 'nothing dropped')
  closeSync(f.rd)
  closeSync(f.wr)
  const exited = await Promise.race([new Promise((r) => cat.on('exit', () => r(true))), new Promise((r) => setTimeout(() => r(false), 5000))])
  if (!exited) cat.kill()
  t.ok(exited, 'cat saw the end of the FIFO')
  t.equal(readFileSync(outPath, 'utf8'), lines[0], 'the whole line, byte for byte')
})
