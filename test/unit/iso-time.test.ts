import t from 'tap'
import { httpDate, isoTime } from '../../src/iso-time.js'
import { offendingLines, scanSrc } from '../harness/source-scan.js'

const MAX = 8.64e15

t.test('the same string as Date.prototype.toISOString', async (t) => {
  const cases = [
    0, -0, 1, -1, 0.9, -0.9, 1.7, -1.7, 999, 1000, 86_399_999, 86_400_000, -86_400_000, -86_400_001,
    Date.UTC(2000, 1, 29, 23, 59, 59, 999), Date.UTC(1900, 1, 28), Date.UTC(1900, 2, 1), Date.UTC(2100, 1, 28, 12),
    Date.UTC(2024, 1, 29), Date.UTC(1969, 11, 31, 23, 59, 59, 999), Date.UTC(9999, 11, 31, 23, 59, 59, 999),
    Date.UTC(10000, 0, 1), Date.UTC(0, 0, 1) - 1, Date.UTC(-1, 0, 1), MAX, -MAX, MAX - 1, -MAX + 1,
    1_764_686_400_123, // 2025-12-02T14:40:00.123Z
  ]
  // Date.UTC(0, ...) means 1900; year 0 itself:
  const y0 = new Date(0)
  y0.setUTCFullYear(0, 0, 1)
  cases.push(y0.getTime(), y0.getTime() - 1, y0.getTime() + 86_400_000 * 59)
  for (const ms of cases) t.equal(isoTime(ms), new Date(ms).toISOString(), `${ms}`)
  // Random times across Date's whole range, and densely around today (days, month ends, leap days).
  let seed = 42
  const rnd = (): number => ((seed = (seed * 1_103_515_245 + 12_345) % 2 ** 31) / 2 ** 31)
  let mismatches = 0
  let n = 0
  for (let i = 0; i < 20_000; i++) {
    const wide = (rnd() * 2 - 1) * MAX
    const near = 1.7e12 + rnd() * 4e11
    for (const ms of [wide, near]) {
      n++
      if (isoTime(ms) !== new Date(ms).toISOString()) mismatches++
    }
  }
  t.equal(n, 40_000)
  t.equal(mismatches, 0, 'no mismatch over 40,000 random times')
})

t.test('httpDate: the same string as Date.prototype.toUTCString for years 0-9999', async (t) => {
  const lo = -62_167_219_200_000 // 0000-01-01T00:00:00.000Z
  const hi = 253_402_300_799_999 // 9999-12-31T23:59:59.999Z
  for (const ms of [0, -1, lo, hi, 1_764_686_400_123, Date.UTC(2000, 1, 29), Date.UTC(1969, 11, 28, 5)]) t.equal(httpDate(ms), new Date(ms).toUTCString(), `${ms}`)
  let seed = 7
  const rnd = (): number => ((seed = (seed * 1_103_515_245 + 12_345) % 2 ** 31) / 2 ** 31)
  let mismatches = 0
  for (let i = 0; i < 20_000; i++) {
    const ms = lo + rnd() * (hi - lo)
    if (httpDate(ms) !== new Date(ms).toUTCString()) mismatches++
  }
  t.equal(mismatches, 0, 'no mismatch over 20,000 random times')
  t.throws(() => httpDate(lo - 1), RangeError, 'year -1')
  t.throws(() => httpDate(hi + 1), RangeError, 'year 10000')
  t.throws(() => httpDate(NaN), RangeError)
})

t.test('a RangeError for what Date rejects', async (t) => {
  for (const ms of [NaN, Infinity, -Infinity, MAX + 1, -MAX - 1]) {
    t.throws(() => new Date(ms).toISOString(), RangeError)
    t.throws(() => isoTime(ms), { name: 'RangeError', message: 'Invalid time value' }, `${ms}`)
  }
})

// The agent never calls what loads ICU data at run time (src/iso-time.ts says why): Date's formatting and
// calendar methods (which need its date cache; getTime, Date.now and Date.parse of an ISO time do not), locale
// comparison, Intl.
const ICU_CALL = /new Date\([^)]*\)\s*\.(?!getTime\(|valueOf\()\w+\(|\.(toISOString|toUTCString|toLocale\w*|getTimezoneOffset|localeCompare)\(|\bIntl\.|\bsendDate\s*=\s*true/

const offending = (source: string): string[] => offendingLines(source, ICU_CALL)

t.test('src/ calls nothing that loads ICU time zone or collation data', async (t) => {
  const { files, found } = scanSrc(ICU_CALL, ['iso-time.ts'])
  t.ok(files > 50, `scanned ${files} source files`)
  t.same(found, [], 'no Date formatting, localeCompare or Intl in src/ (isoTime and plain comparisons instead)')
  // The check finds what it looks for, and lets through what is harmless.
  const sample = ['x = new Date(ms).toISOString()', 'y = a.localeCompare(b)', 'z = Intl.DateTimeFormat()', 'w = d.toLocaleString()',
    'ok = new Date(s).getTime()', 'ok2 = Date.parse(iso)', '// new Date().toISOString()', ' * a.localeCompare(b) in a doc comment']
  t.same(offending(sample.join('\n')).map((l) => l.split(':')[0]), ['1', '2', '3', '4'])
})
