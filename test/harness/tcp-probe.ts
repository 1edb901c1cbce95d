// TCP probes between namespaces for the MTU/MSS proof (test/e2e/mss.test.ts): a bulk transfer of N bytes with a
// bounded wait that reports how far it got, and a capture of the MSS option of handshake packets as they arrive.
// Both run real sockets and a real tcpdump inside the namespaces; every process is bounded and killed at the end.
import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import type { Netns } from './netns.js'

/** Bound on a helper process starting (node or tcpdump) and connecting: tens of seconds on a loaded machine. */
const START_MS = 60_000

// Counts what arrives; on the client's end of stream answers with the count. SIGTERM prints the count so far (a
// stalled transfer). Its own timer only reaps an orphan.
const SINK = `let n=0;const s=require('net').createServer(c=>{c.on('data',d=>{n+=d.length});c.on('end',()=>c.end(String(n)))});
process.on('SIGTERM',()=>{console.log('received '+n);process.exit(0)});
s.listen(+process.argv[1],()=>console.log('ready'));setTimeout(()=>process.exit(2),+process.argv[2]).unref()`
// Connects (bounded on its own), prints "connected", sends N bytes, half-closes, waits for the sink's count; the
// transfer's bound starts at the connect, so a slow process start never eats into it. Exit 0 with "<count> <ms>",
// 3 with "timeout" when connected but not done in time, 1 with "error <code>".
const SOURCE = `let t;const c=require('net').connect({host:process.argv[1],port:+process.argv[2]},()=>{t=process.hrtime.bigint();
console.log('connected');setTimeout(()=>{console.log('timeout');process.exit(3)},+process.argv[4]);c.end(Buffer.alloc(+process.argv[3],120))});
let r='';c.on('data',d=>{r+=d});c.on('end',()=>{console.log(r+' '+Number(process.hrtime.bigint()-t)/1e6);process.exit(0)});
setTimeout(()=>{console.log('error connect-timeout');process.exit(1)},+process.argv[5]).unref();
c.on('error',e=>{console.log('error '+(e.code||e.message));process.exit(1)})`

export interface TransferResult {
  /** The sink answered with the full count within the bound. */
  ok: boolean
  /** The source's connection was established (the handshake completed): a stall after it is a real stall. */
  connected: boolean
  /** Bytes the sink had received when the transfer ended or was given up. */
  received: number
  /** Wall time of a completed transfer, ms. */
  ms: number | null
  /** What went wrong: `timeout` (connected, not done in time), `error <code>`, a sink that did not start. */
  error: string | null
}

function waitLine(child: ChildProcess, stream: 'stdout' | 'stderr', re: RegExp, ms: number): Promise<string | null> {
  return new Promise((resolve) => {
    let buf = ''
    const timer = setTimeout(() => resolve(null), ms)
    child[stream]!.on('data', (b: Buffer) => {
      buf += b.toString('utf8')
      const m = re.exec(buf)
      if (m) {
        clearTimeout(timer)
        resolve(m[0])
      }
    })
    // 'close', not 'exit': the process's last output arrives before its streams close, not before it exits.
    child.once('close', () => {
      clearTimeout(timer)
      resolve(re.exec(buf)?.[0] ?? null)
    })
  })
}

/** Sends `bytes` from `from` to a sink in `to` listening on `ip:port`, giving up after `timeoutMs`. */
export async function tcpTransfer(from: Netns, to: Netns, ip: string, port: number, bytes: number, timeoutMs: number): Promise<TransferResult> {
  const sink = spawn('ip', ['netns', 'exec', to.name, process.execPath, '-e', SINK, String(port), String(timeoutMs + START_MS * 3)], { stdio: ['ignore', 'pipe', 'pipe'] })
  try {
    if ((await waitLine(sink, 'stdout', /ready/, START_MS)) === null) return { ok: false, connected: false, received: 0, ms: null, error: 'the sink did not start' }
    const source = spawn('ip', ['netns', 'exec', from.name, process.execPath, '-e', SOURCE, ip, String(port), String(bytes), String(timeoutMs), String(START_MS)], { stdio: ['ignore', 'pipe', 'pipe'] })
    let out = ''
    source.stdout.on('data', (b: Buffer) => (out += b.toString('utf8')))
    const guard = setTimeout(() => source.kill('SIGKILL'), timeoutMs + START_MS * 2)
    await once(source, 'close')
    clearTimeout(guard)
    const lines = out.trim().split('\n')
    const connected = lines[0] === 'connected'
    const line = lines.at(-1) ?? ''
    const done = /^(\d+) ([\d.]+)$/.exec(line)
    if (connected && done && Number(done[1]) === bytes) return { ok: true, connected, received: bytes, ms: Number(done[2]), error: null }
    const counted = waitLine(sink, 'stdout', /received \d+/, 5_000)
    sink.kill('SIGTERM')
    const received = Number(/\d+/.exec((await counted) ?? '')?.[0] ?? (done ? done[1] : 0))
    return { ok: false, connected, received, ms: null, error: (connected ? lines.slice(1) : lines).join(' ') || 'the source printed nothing' }
  } finally {
    sink.kill('SIGKILL')
  }
}

export interface MssCapture {
  /** Resolves with the MSS option of the first matching packet, or null when none came before stop(). */
  mss: Promise<number | null>
  stop(): void
  /** After the traffic: the MSS once tcpdump printed it (up to `graceMs`), then tcpdump stopped. */
  settle(graceMs?: number): Promise<number | null>
}

/**
 * tcpdump inside `ns` for the first packet matching `filter` (a pcap filter, e.g. a SYN to a port) that carries an
 * MSS option; resolves when tcpdump listens. The caller stops it (also bounded by `timeoutMs`).
 */
export async function captureMss(ns: Netns, filter: string, timeoutMs: number): Promise<MssCapture> {
  const dump = spawn('ip', ['netns', 'exec', ns.name, 'tcpdump', '-i', 'any', '-n', '-l', '-v', '-c', '1', filter], { stdio: ['ignore', 'pipe', 'pipe'] })
  const listening = await waitLine(dump, 'stderr', /listening on/, START_MS)
  if (listening === null) {
    dump.kill('SIGKILL')
    throw new Error(`tcpdump in ${ns.name} did not start`)
  }
  const guard = setTimeout(() => dump.kill('SIGKILL'), timeoutMs)
  const mss = waitLine(dump, 'stdout', /mss (\d+)/, timeoutMs).then((m) => (m === null ? null : Number(/\d+/.exec(m)![0])))
  void mss.finally(() => {
    clearTimeout(guard)
    dump.kill('SIGKILL')
  })
  return {
    mss,
    stop: () => dump.kill('SIGKILL'),
    // The transfer is over, but tcpdump may not have printed (or we not read) the SYN yet: give it `graceMs`, then
    // stop it. Killing it at once lost the line under load (the reading came back empty though the SYN had passed).
    settle: async (graceMs = 3_000) => {
      let timer: NodeJS.Timeout | undefined
      const got = await Promise.race([mss, new Promise<null>((r) => { timer = setTimeout(() => r(null), graceMs) })])
      clearTimeout(timer)
      dump.kill('SIGKILL')
      return got
    },
  }
}
