// A bounded tcpdump inside one namespace while something runs: every line it printed, or a thrown error (never an
// empty "clean" capture from a tcpdump that did not start). Used to show where a tunnel's packets flow (the
// mediation e2e: ESP between the two NATs, none through the connector). Output comes over a pipe, like
// matrix.ts captureUnderlay.
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import type { Netns } from './netns.js'

export interface Capture {
  lines: string[]
  /** tcpdump's own "N packets captured". */
  captured: number | null
}

const IFACE = /^[A-Za-z0-9._-]{1,15}$/

/** Captures UDP on `iface` (default every interface) of `ns` while `during` runs. */
export async function captureUdp(ns: Netns, during: () => Promise<unknown>, iface = 'any', maxPackets = 5_000): Promise<Capture> {
  if (!IFACE.test(iface)) throw new Error(`bad interface name ${iface}`)
  const dump = spawn('ip', ['netns', 'exec', ns.name, 'tcpdump', '-i', iface, '-n', '-l', '-p', '-c', String(maxPackets), 'udp'], { stdio: ['ignore', 'pipe', 'pipe'] })
  let out = ''
  let err = ''
  dump.stdout.on('data', (b: Buffer) => (out += b.toString('utf8')))
  const exited = once(dump, 'exit') as Promise<[number | null, NodeJS.Signals | null]>
  let code: number | null = null
  try {
    const listening = await Promise.race([
      new Promise<boolean>((resolve) => dump.stderr.on('data', (b: Buffer) => {
        err += b.toString('utf8')
        if (err.includes('listening on')) resolve(true)
      })),
      exited.then(() => false),
      new Promise<boolean>((r) => setTimeout(() => r(false), 5_000)),
    ])
    if (!listening) throw new Error(`tcpdump in ${ns.name} did not start: ${err.trim() || 'no output'}`)
    await during()
    await new Promise((r) => setTimeout(r, 300))
  } finally {
    if (dump.exitCode === null) dump.kill('SIGINT')
    const done = await Promise.race([exited, new Promise<null>((r) => setTimeout(() => r(null), 3_000))])
    if (done === null) dump.kill('SIGKILL')
    else code = done[0]
  }
  if (code !== 0) throw new Error(`tcpdump in ${ns.name} ended with ${code ?? 'a kill'}: ${err.trim()}`)
  const m = /(\d+) packets? captured/.exec(err)
  return { lines: out.split('\n').filter((l) => l.trim() !== ''), captured: m ? Number(m[1]) : null }
}

/** ESP-in-UDP lines between two addresses (either direction), from tcpdump -n text. */
export function espBetween(lines: readonly string[], a: string, b: string): string[] {
  const esc = (s: string): string => s.replace(/\./g, '\\.')
  const re = new RegExp(`IP (${esc(a)}|${esc(b)})\\.\\d+ > (${esc(a)}|${esc(b)})\\.\\d+: UDP-encap: ESP`)
  return lines.filter((l) => {
    const m = re.exec(l)
    return m !== null && m[1] !== m[2]
  })
}

/** Every ESP-in-UDP line. */
export function espLines(lines: readonly string[]): string[] {
  return lines.filter((l) => /UDP-encap: ESP/.test(l))
}
