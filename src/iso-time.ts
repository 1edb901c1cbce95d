// UTC timestamps as `Date.prototype.toISOString` and `toUTCString` write them, from milliseconds since the epoch,
// by arithmetic alone.
//
// Why not Date's methods: V8's first use of any Date method but the constructor and getTime sets up its date cache,
// which loads ICU's time zone data, though these strings are UTC. In the agent that is ~0.8 MiB of the node binary's
// pages kept resident for good (scripts/bench/binary-pages.ts shows where; docs/footprint.md), on an edge whose
// whole budget is 50 MB. Every log line carries an ISO time (src/log.ts), /status several, and every HTTP response
// a Date header (src/daemon/http.ts; Node's own uses toUTCString).

const pad2 = (n: number): string => (n < 10 ? `0${n}` : `${n}`)
const pad3 = (n: number): string => (n < 10 ? `00${n}` : n < 100 ? `0${n}` : `${n}`)

function year(y: number): string {
  if (y >= 0 && y <= 9999) return `${y}`.padStart(4, '0')
  return `${y < 0 ? '-' : '+'}${`${Math.abs(y)}`.padStart(6, '0')}`
}

/**
 * `new Date(ms).toISOString()`: 'YYYY-MM-DDTHH:mm:ss.sssZ' (years outside 0-9999 as +/-YYYYYY), the same string
 * for every time value Date accepts; a RangeError, as Date's, for any other.
 */
export function isoTime(ms: number): string {
  const { y, m, d, h, min, s, milli } = utcParts(ms)
  return `${year(y)}-${pad2(m)}-${pad2(d)}T${pad2(h)}:${pad2(min)}:${pad2(s)}.${pad3(milli)}Z`
}

const WEEKDAYS = ['Thu', 'Fri', 'Sat', 'Sun', 'Mon', 'Tue', 'Wed'] // 1970-01-01 was a Thursday
const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec']

/**
 * `new Date(ms).toUTCString()`: the IMF-fixdate of HTTP's Date header (RFC 9110 §5.6.7), 'Wed, 02 Dec 2026
 * 16:05:11 GMT', for years 0-9999 (an HTTP date has four digits; a RangeError outside them, and for what Date
 * rejects).
 */
export function httpDate(ms: number): string {
  const { y, m, d, h, min, s, days } = utcParts(ms)
  if (y < 0 || y > 9999) throw new RangeError(`HTTP date out of range: year ${y}`)
  const wd = WEEKDAYS[((days % 7) + 7) % 7]!
  return `${wd}, ${pad2(d)} ${MONTHS[m - 1]!} ${year(y)} ${pad2(h)}:${pad2(min)}:${pad2(s)} GMT`
}

function utcParts(ms: number): { y: number; m: number; d: number; h: number; min: number; s: number; milli: number; days: number } {
  // Date's TimeClip: finite, within 8.64e15 ms of the epoch, truncated towards zero.
  if (!Number.isFinite(ms) || Math.abs(ms) > 8.64e15) throw new RangeError('Invalid time value')
  const t = Math.trunc(ms) + 0
  const days = Math.floor(t / 86_400_000)
  const inDay = t - days * 86_400_000
  // Civil date from days since 1970-01-01 (proleptic Gregorian; H. Hinnant's days_from_civil inverted).
  const z = days + 719_468
  const era = Math.floor(z / 146_097)
  const doe = z - era * 146_097
  const yoe = Math.floor((doe - Math.floor(doe / 1460) + Math.floor(doe / 36_524) - Math.floor(doe / 146_096)) / 365)
  const doy = doe - (365 * yoe + Math.floor(yoe / 4) - Math.floor(yoe / 100))
  const mp = Math.floor((5 * doy + 2) / 153)
  const d = doy - Math.floor((153 * mp + 2) / 5) + 1
  const m = mp < 10 ? mp + 3 : mp - 9
  const y = yoe + era * 400 + (m <= 2 ? 1 : 0)
  const h = Math.floor(inDay / 3_600_000)
  const min = Math.floor((inDay % 3_600_000) / 60_000)
  const s = Math.floor((inDay % 60_000) / 1000)
  return { y, m, d, h, min, s, milli: inDay % 1000, days }
}
