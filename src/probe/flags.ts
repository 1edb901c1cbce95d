// `fabtunnel run` flags of the datapath probes (docs/probes.md), each with its FABTUNNEL_* twin.
import { parseDuration, UsageError, type FlagSpec, type Parsed } from '../options.js'
import type { ProberOptions } from './prober.js'

export const PROBE_FLAGS: Record<string, FlagSpec> = {
  'probe-interval': { type: 'string', arg: 'DURATION', default: '1s', help: 'probe every peer through its tunnel (ICMP echo) this often; 0 or off disables probing (and repair)' },
  'probe-down-after': { type: 'string', arg: 'N', default: '5', help: 'consecutive lost probes that mark a peer\'s datapath down' },
  'probe-rate': { type: 'string', arg: 'N', default: '500', help: 'most probes per second over all peers; with more peers than interval x rate, each peer is probed less often' },
  'probe-repair': { type: 'string', arg: 'on|off', default: 'on', help: 'on an initiator, re-establish the SAs of a peer whose datapath is down while IKE says up (with backoff and a cap per 10 s)' },
}

const ON = new Set(['on', 'true', 'yes', '1'])
const OFF = new Set(['off', 'false', 'no', '0'])

function positiveInt(p: Parsed, flag: string, max: number): number {
  const text = String(p.values[flag]).trim()
  const n = Number(text)
  if (!/^\d+$/.test(text) || n < 1 || n > max) throw new UsageError(`--${flag} must be a whole number from 1 to ${max}, got "${text}"`)
  return n
}

/** The prober's options, or null when probing is off. */
export function probeOptionsOf(p: Parsed): Omit<ProberOptions, 'policy' | 'tickMs'> | null {
  const interval = String(p.values['probe-interval']).trim().toLowerCase()
  if (OFF.has(interval)) return null
  const intervalMs = parseDuration(interval, '--probe-interval')
  if (intervalMs === 0) return null
  if (intervalMs < 100 || intervalMs > 3_600_000) throw new UsageError(`--probe-interval must be between 100ms and 1h (or 0/off), got "${interval}"`)
  const repair = String(p.values['probe-repair']).trim().toLowerCase()
  if (!ON.has(repair) && !OFF.has(repair)) throw new UsageError(`--probe-repair must be on or off, got "${repair}"`)
  return {
    intervalMs,
    downAfter: positiveInt(p, 'probe-down-after', 1000),
    maxRate: positiveInt(p, 'probe-rate', 100_000),
    repair: ON.has(repair),
  }
}
