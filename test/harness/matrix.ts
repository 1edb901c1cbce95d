// The connectivity matrix of a Topology, modelled on FabEdge's own e2e tags (e2c, c2e, p2n, n2p, e2e, and the
// multi-cluster pod and service cases): every cell is a real ping or TCP exchange between two of our namespaces,
// with its latency. Plus the underlay capture check: tcpdump in the hub namespace while the matrix runs must see
// UDP-encapsulated ESP (at least one packet: a capture of nothing proves nothing) and IKE between underlay
// addresses, never a plaintext pod/node/service packet.
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import type { Netns } from './netns.js'
import type { Topology } from './topology.js'
import { table } from './agents.js'

export type Proto = 'icmp' | 'tcp'

export interface Check {
  /** FabEdge-style tag: e2c, c2e, p2n, n2p, e2e, mc-pod, mc-svc. */
  tag: string
  from: { label: string; ns: Netns; src?: string }
  to: { label: string; ip: string }
  proto: Proto
}

export interface CellResult {
  check: Check
  ok: boolean
  /** Round trip (icmp) or connect + echo (tcp) in ms, when ok. */
  ms: number | null
  error?: string
}

export interface MatrixResult {
  cells: CellResult[]
  ok: boolean
  durationMs: number
}

const TCP_PORT = 8080

/** The default matrix for the active part of a topology. */
export function defaultChecks(topo: Topology): Check[] {
  const checks: Check[] = []
  const firstPod = (node: string): { label: string; ns: Netns; ip: string } | undefined => {
    const p = [...topo.pods.values()].find((x) => x.node.fullName === node)
    return p && { label: p.name, ns: p.ns, ip: p.ip }
  }
  for (const c of topo.plan.clusters) {
    const edges = c.nodes.filter((n) => n.role === 'edge' && topo.isActive(n.fullName))
    const clouds = c.nodes.filter((n) => n.role === 'cloud')
    const cloudPod = clouds.map((n) => firstPod(n.fullName)).find((p) => p !== undefined)
    const connector = c.connector
    const cns = topo.node(connector.fullName)
    for (const e of edges) {
      const ep = firstPod(e.fullName)
      if (!ep) continue
      if (cloudPod) {
        checks.push({ tag: 'e2c', from: ep, to: cloudPod, proto: 'icmp' })
        checks.push({ tag: 'c2e', from: cloudPod, to: ep, proto: 'icmp' })
      }
      checks.push({ tag: 'p2n', from: ep, to: { label: `${connector.fullName} (node ${connector.nodeIp})`, ip: connector.nodeIp }, proto: 'icmp' })
      checks.push({ tag: 'n2p', from: { label: connector.fullName, ns: cns, src: connector.nodeIp }, to: ep, proto: 'icmp' })
    }
    if (edges.length && cloudPod) {
      const ep = firstPod(edges[0]!.fullName)
      if (ep) checks.push({ tag: 'e2c', from: ep, to: cloudPod, proto: 'tcp' })
    }
    if (topo.plan.edgeMesh !== 'none') {
      for (let i = 0; i + 1 < edges.length; i++) {
        const a = firstPod(edges[i]!.fullName)
        const b = firstPod(edges[i + 1]!.fullName)
        if (a && b) {
          checks.push({ tag: 'e2e', from: a, to: b, proto: 'icmp' })
          checks.push({ tag: 'e2e', from: b, to: a, proto: 'icmp' })
        }
      }
    }
    for (const other of [...(topo.plan.communityOf.get(c.name) ?? [])].sort()) {
      const oc = topo.plan.clusters.find((x) => x.name === other)!
      const from = cloudPod ?? firstPod(connector.fullName)
      const remotePod = oc.nodes.map((n) => firstPod(n.fullName)).find((p) => p !== undefined)
      if (!from) continue
      if (remotePod) checks.push({ tag: 'mc-pod', from, to: remotePod, proto: 'icmp' })
      const svc = { label: `${other} service ${oc.serviceIp}`, ip: oc.serviceIp }
      checks.push({ tag: 'mc-svc', from, to: svc, proto: 'icmp' })
      checks.push({ tag: 'mc-svc', from, to: svc, proto: 'tcp' })
    }
  }
  return checks
}

/** Namespace that answers TCP for an address of the topology (the pod, or the node holding the address). */
function nsOwning(topo: Topology, ip: string): Netns {
  const pod = [...topo.pods.values()].find((p) => p.ip === ip)
  if (pod) return pod.ns
  for (const c of topo.plan.clusters) {
    if (c.serviceIp === ip) return topo.node(c.connector.fullName)
    for (const n of c.nodes) if (n.nodeIp === ip) return topo.node(n.fullName)
  }
  throw new Error(`no namespace owns ${ip}`)
}

const RTT = /time=([\d.]+) ms/

async function pingCell(c: Check, timeoutMs: number): Promise<CellResult> {
  const waitS = String(Math.max(1, Math.round(timeoutMs / 1000)))
  // -w: keep sending (every 0.2 s) until one reply or the deadline, so a first packet lost to SA setup is retried.
  const argv = ['ping', '-n', '-c', '1', '-i', '0.2', '-w', waitS, ...(c.from.src ? ['-I', c.from.src] : []), c.to.ip]
  const r = await c.from.ns.capture(argv, { timeoutMs: timeoutMs + 3_000 })
  const m = RTT.exec(r.stdout)
  if (r.code === 0 && m) return { check: c, ok: true, ms: Number(m[1]) }
  return { check: c, ok: false, ms: null, error: (r.stderr.trim() || 'no reply').split('\n')[0] }
}

/**
 * One bounded ping between namespaces (retried every 0.2 s until a reply or `timeoutMs`): whether a reply came.
 * As a negative check (the path must NOT work) pass a short timeout.
 */
export async function ping(from: Netns, to: string, timeoutMs = 3_000, src?: string): Promise<boolean> {
  const r = await pingCell({ tag: 'ping', from: { label: from.name, ns: from, ...(src ? { src } : {}) }, to: { label: to, ip: to }, proto: 'icmp' }, timeoutMs)
  return r.ok
}

/** Bound on a helper `node -e` process starting: seconds on a loaded machine (2 cores shared with other test runs). */
const NODE_START_MS = 15_000

// One connection, echo, exit: small enough to pass as `node -e` and bounded by its own timer.
const SERVER = `const s=require('net').createServer(c=>{c.on('data',d=>{c.end(d);s.close()})});
s.listen(+process.argv[1],()=>console.log('ready'));setTimeout(()=>process.exit(2),+process.argv[2]).unref()`
const CLIENT = `const t=process.hrtime.bigint();const c=require('net').connect({host:process.argv[1],port:+process.argv[2],
localAddress:process.argv[4]||undefined},()=>c.write('fabtunnel'));c.setTimeout(+process.argv[3],()=>{console.error('timeout');process.exit(1)});
c.on('data',d=>{if(String(d)==='fabtunnel'){console.log(Number(process.hrtime.bigint()-t)/1e6);process.exit(0)}});
c.on('error',e=>{console.error(e.code||e.message);process.exit(1)})`

async function tcpCell(topo: Topology, c: Check, timeoutMs: number, port: number): Promise<CellResult> {
  const serverNs = nsOwning(topo, c.to.ip)
  // The server's own exit timer only reaps an orphan (the finally below kills it): it must outlive the client's
  // start-up, which takes seconds on a loaded machine. A server that had already timed out refused the late client
  // (ECONNREFUSED cells in the e2e suite under load).
  const server = spawn('ip', ['netns', 'exec', serverNs.name, process.execPath, '-e', SERVER, String(port), String(timeoutMs + NODE_START_MS * 2)], {
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  try {
    let serverErr = ''
    server.stderr.on('data', (b: Buffer) => (serverErr = (serverErr + b.toString('utf8')).slice(-2_000)))
    const ready = await Promise.race([
      new Promise<true>((resolve) => server.stdout.on('data', (b: Buffer) => { if (b.toString().includes('ready')) resolve(true) })),
      once(server, 'exit').then(([code]) => `exited (${code ?? 'signal'})`),
      new Promise<string>((r) => setTimeout(() => r(`no "ready" within ${NODE_START_MS} ms`), NODE_START_MS).unref()),
    ])
    if (ready !== true) {
      const why = serverErr.trim().split('\n').find((l) => /Error|EADDR/.test(l)) ?? serverErr.trim().split('\n')[0] ?? ''
      return { check: c, ok: false, ms: null, error: `test server on ${serverNs.name}:${port} did not start: ${ready}${why ? `: ${why}` : ''}` }
    }
    const r = await c.from.ns.capture([process.execPath, '-e', CLIENT, c.to.ip, String(port), String(timeoutMs), c.from.src ?? ''], { timeoutMs: timeoutMs + NODE_START_MS })
    if (r.code === 0) return { check: c, ok: true, ms: Number(r.stdout.trim()) }
    return { check: c, ok: false, ms: null, error: r.stderr.trim().split('\n')[0] || `exit ${r.code}` }
  } finally {
    server.kill('SIGKILL')
  }
}

export interface MatrixOptions {
  /** Per cell bound. Default 3000 ms. */
  cellTimeoutMs?: number
  /** Cells in flight at once. Default 4. */
  concurrency?: number
}

/** Runs every check once. */
export async function runMatrix(topo: Topology, checks: Check[] = defaultChecks(topo), opts: MatrixOptions = {}): Promise<MatrixResult> {
  const t0 = performance.now()
  const timeout = opts.cellTimeoutMs ?? 3_000
  const cells: CellResult[] = new Array(checks.length)
  let next = 0
  let port = TCP_PORT
  const worker = async (): Promise<void> => {
    while (next < checks.length) {
      const i = next++
      const c = checks[i]!
      cells[i] = c.proto === 'icmp' ? await pingCell(c, timeout) : await tcpCell(topo, c, timeout, port++)
    }
  }
  await Promise.all(Array.from({ length: Math.min(opts.concurrency ?? 4, checks.length) }, worker))
  // An empty matrix checked nothing: never "ok".
  return { cells, ok: cells.length > 0 && cells.every((c) => c.ok), durationMs: performance.now() - t0 }
}

/**
 * The matrix's negative control, run before any agent: a cell that passes without tunnels (a direct underlay route,
 * an address in the wrong namespace) would prove nothing about them. Resolves with the cells that worked anyway;
 * every caller requires none.
 */
export async function pathsWithoutTunnels(topo: Topology, checks: Check[] = defaultChecks(topo)): Promise<CellResult[]> {
  if (checks.length === 0) throw new Error('pathsWithoutTunnels: the matrix has no checks')
  return (await runMatrix(topo, checks, { cellTimeoutMs: 1_000 })).cells.filter((c) => c.ok)
}

export function cellLabel(c: CellResult): string {
  return `${c.check.tag} ${c.check.from.label} -> ${c.check.to.label} ${c.check.proto}`
}

/** Re-runs the matrix until every cell passes; resolves with the last result and the ms it took. */
export async function waitMatrix(topo: Topology, timeoutMs: number, checks?: Check[]): Promise<{ result: MatrixResult; ms: number }> {
  const t0 = performance.now()
  const cells = checks ?? defaultChecks(topo)
  if (cells.length === 0) throw new Error('waitMatrix: the matrix has no checks (nothing would be proven)')
  for (;;) {
    const left = timeoutMs - (performance.now() - t0)
    const result = await runMatrix(topo, cells, { cellTimeoutMs: Math.max(1_000, Math.min(3_000, left)) })
    if (result.ok) return { result, ms: performance.now() - t0 }
    if (performance.now() - t0 > timeoutMs) {
      const bad = result.cells.filter((c) => !c.ok).map((c) => `${c.check.tag} ${c.check.from.label} -> ${c.check.to.label}: ${c.error}`)
      throw new Error(`matrix did not pass within ${timeoutMs} ms:\n  ${bad.join('\n  ')}`)
    }
    await new Promise((r) => setTimeout(r, 200))
  }
}

export function renderMatrix(result: MatrixResult): string {
  const rows = [['TAG', 'FROM', 'TO', 'PROTO', 'RESULT', 'LATENCY']]
  for (const c of result.cells) {
    rows.push([
      c.check.tag,
      c.check.from.label,
      `${c.check.to.label}${c.check.to.label.includes(c.check.to.ip) ? '' : ` (${c.check.to.ip})`}`,
      c.check.proto,
      c.ok ? 'ok' : `FAIL ${c.error ?? ''}`.trim(),
      c.ms === null ? '-' : `${c.ms.toFixed(2)} ms`,
    ])
  }
  return table(rows)
}

export interface CaptureReport {
  /** Packets seen on the underlay (lines tcpdump printed). */
  packets: number
  /** UDP-encapsulated ESP packets. */
  esp: number
  /** IKE packets (UDP 500/4500, non-ESP marker). */
  ike: number
  /** Lines that are neither: plaintext leaking onto the underlay. */
  plaintext: string[]
  /** tcpdump's own account at exit ("N packets captured", "N packets dropped by kernel"); null when it gave none. */
  captured: number | null
  dropped: number | null
  /** Whether tcpdump stopped at its packet limit: then the capture is cut short and proves nothing about the rest. */
  truncated: boolean
}

export interface CaptureVerdict {
  ok: boolean
  /** Why the capture does not prove "only ESP on the underlay" (empty when ok). */
  problems: string[]
}

/**
 * Judges a capture: it proves that pod traffic crosses the underlay encrypted only if it saw ESP at all (a capture
 * of nothing, or of the wrong place, would otherwise "prove" it), saw no plaintext, and is complete (tcpdump
 * printed every packet it captured, dropped none, and did not stop at its limit).
 */
export function captureVerdict(r: CaptureReport): CaptureVerdict {
  const problems: string[] = []
  if (r.esp === 0) problems.push(`no UDP-encapsulated ESP seen (${r.packets} packets): the capture proves nothing`)
  if (r.plaintext.length) problems.push(`${r.plaintext.length} plaintext packets on the underlay`)
  if (r.captured === null) problems.push('tcpdump gave no packet count at exit')
  else if (r.captured !== r.packets) problems.push(`tcpdump captured ${r.captured} packets but printed ${r.packets}`)
  if (r.dropped) problems.push(`the kernel dropped ${r.dropped} packets before tcpdump saw them`)
  if (r.truncated) problems.push('tcpdump stopped at its packet limit before the traffic ended')
  return { ok: problems.length === 0, problems }
}

/** One line for the demo and tests: the counts and, first, the verdict. */
export function describeCapture(r: CaptureReport): string {
  const v = captureVerdict(r)
  const counts = `${r.packets} packets, ${r.esp} UDP-encapsulated ESP, ${r.ike} IKE, ${r.plaintext.length} plaintext`
  return v.ok
    ? `ok: ${counts} (pod traffic crossed the underlay, encrypted only)`
    : `FAILED: ${counts}; ${v.problems.join('; ')}`
}

/**
 * Captures on every interface of the hub namespace (each port of the underlay bridge) while `during` runs, then
 * classifies each packet. tcpdump prints to a pipe we read, never to a file: a pcap file written after tcpdump drops
 * to its own user (into our root-only temp dir) and read back by a second tcpdump whose failure went unnoticed was
 * a way to get an empty, "clean" capture. Every failure here throws or shows in the report. Bounded: tcpdump stops
 * after `maxPackets` or when `during` settles (plus a short drain), whichever comes first.
 */
export async function captureUnderlay(topo: Topology, during: () => Promise<unknown>, maxPackets = 20_000): Promise<CaptureReport> {
  const dump = spawn('ip', ['netns', 'exec', topo.hub.name, 'tcpdump', '-i', 'any', '-n', '-l', '-p', '-c', String(maxPackets)], {
    stdio: ['ignore', 'pipe', 'pipe'],
  })
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
    if (!listening) throw new Error(`tcpdump in the hub namespace did not start: ${err.trim() || 'no output'}`)
    await during()
    await new Promise((r) => setTimeout(r, 300))
  } finally {
    if (dump.exitCode === null) dump.kill('SIGINT')
    const done = await Promise.race([exited, new Promise<null>((r) => setTimeout(() => r(null), 3_000))])
    if (done === null) dump.kill('SIGKILL')
    else code = done[0]
  }
  if (code !== 0) throw new Error(`tcpdump in the hub namespace ended with ${code ?? 'a kill'}: ${err.trim()}`)
  const report = classifyCapture(out)
  report.captured = count(err, /(\d+) packets? captured/)
  report.dropped = count(err, /(\d+) packets? dropped by kernel/)
  report.truncated = report.captured !== null && report.captured >= maxPackets
  return report
}

function count(text: string, re: RegExp): number | null {
  const m = re.exec(text)
  return m ? Number(m[1]) : null
}

const UNDERLAY_PAIR = /IP (10\.77\.\d+\.\d+)\.(\d+) > (10\.77\.\d+\.\d+)\.(\d+): /

/** Pure classification of `tcpdump -n -r` text lines (exported for unit tests). */
export function classifyCapture(text: string): CaptureReport {
  const report: CaptureReport = { packets: 0, esp: 0, ike: 0, plaintext: [], captured: null, dropped: null, truncated: false }
  for (const line of text.split('\n')) {
    if (!line.trim()) continue
    report.packets++
    const m = UNDERLAY_PAIR.exec(line)
    const ports = m ? [m[2], m[4]] : []
    if (m && ports.every((p) => p === '500' || p === '4500')) {
      if (/UDP-encap: ESP/.test(line)) report.esp++
      else report.ike++
      continue
    }
    // Link-layer chatter carries no payload from pods (ARP, IPv6 neighbour discovery of the veths).
    if (/ ARP,|ICMP6|IP6 /.test(line)) continue
    report.plaintext.push(line)
  }
  return report
}
