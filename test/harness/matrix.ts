// The connectivity matrix of a Topology, modelled on FabEdge's own e2e tags (e2c, c2e, p2n, n2p, e2e, and the
// multi-cluster pod and service cases): every cell is a real ping or TCP exchange between two of our namespaces,
// with its latency. Plus the underlay capture check: tcpdump in the hub namespace while the matrix runs must see
// only IKE and UDP-encapsulated ESP between underlay addresses, never a plaintext pod/node/service packet.
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { join } from 'node:path'
import { execCapture } from './exec.js'
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

// One connection, echo, exit: small enough to pass as `node -e` and bounded by its own timer.
const SERVER = `const s=require('net').createServer(c=>{c.on('data',d=>{c.end(d);s.close()})});
s.listen(+process.argv[1],()=>console.log('ready'));setTimeout(()=>process.exit(2),+process.argv[2]).unref()`
const CLIENT = `const t=process.hrtime.bigint();const c=require('net').connect({host:process.argv[1],port:+process.argv[2],
localAddress:process.argv[4]||undefined},()=>c.write('fabtunnel'));c.setTimeout(+process.argv[3],()=>{console.error('timeout');process.exit(1)});
c.on('data',d=>{if(String(d)==='fabtunnel'){console.log(Number(process.hrtime.bigint()-t)/1e6);process.exit(0)}});
c.on('error',e=>{console.error(e.code||e.message);process.exit(1)})`

async function tcpCell(topo: Topology, c: Check, timeoutMs: number, port: number): Promise<CellResult> {
  const serverNs = nsOwning(topo, c.to.ip)
  const server = spawn('ip', ['netns', 'exec', serverNs.name, process.execPath, '-e', SERVER, String(port), String(timeoutMs + 2_000)], {
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  try {
    const ready = await Promise.race([
      new Promise<boolean>((resolve) => server.stdout.on('data', (b: Buffer) => { if (b.toString().includes('ready')) resolve(true) })),
      once(server, 'exit').then(() => false),
      new Promise<boolean>((r) => setTimeout(() => r(false), 5_000)),
    ])
    if (!ready) return { check: c, ok: false, ms: null, error: 'test server did not start' }
    const r = await c.from.ns.capture([process.execPath, '-e', CLIENT, c.to.ip, String(port), String(timeoutMs), c.from.src ?? ''], { timeoutMs: timeoutMs + 5_000 })
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
  return { cells, ok: cells.every((c) => c.ok), durationMs: performance.now() - t0 }
}

/** Re-runs the matrix until every cell passes; resolves with the last result and the ms it took. */
export async function waitMatrix(topo: Topology, timeoutMs: number, checks?: Check[]): Promise<{ result: MatrixResult; ms: number }> {
  const t0 = performance.now()
  for (;;) {
    const left = timeoutMs - (performance.now() - t0)
    const result = await runMatrix(topo, checks ?? defaultChecks(topo), { cellTimeoutMs: Math.max(1_000, Math.min(3_000, left)) })
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
  /** Packets seen on the underlay. */
  packets: number
  /** UDP-encapsulated ESP packets. */
  esp: number
  /** IKE packets (UDP 500/4500, non-ESP marker). */
  ike: number
  /** Lines that are neither: plaintext leaking onto the underlay. */
  plaintext: string[]
}

/**
 * Captures on every port of the hub bridge while `during` runs, then classifies each packet. Bounded: tcpdump
 * stops after `maxPackets` or when `during` settles (plus a short drain), whichever comes first.
 */
export async function captureUnderlay(topo: Topology, during: () => Promise<unknown>, maxPackets = 5_000): Promise<CaptureReport> {
  const file = join(topo.dir, `underlay-${Date.now()}.pcap`)
  const dump = spawn('ip', ['netns', 'exec', topo.hub.name, 'tcpdump', '-i', 'any', '-n', '-p', '-U', '-c', String(maxPackets), '-w', file], {
    stdio: ['ignore', 'ignore', 'pipe'],
  })
  const exited = once(dump, 'exit')
  try {
    const listening = await Promise.race([
      new Promise<boolean>((resolve) => dump.stderr.on('data', (b: Buffer) => { if (b.toString().includes('listening on')) resolve(true) })),
      exited.then(() => false),
      new Promise<boolean>((r) => setTimeout(() => r(false), 5_000)),
    ])
    if (!listening) throw new Error('tcpdump in the hub namespace did not start')
    await during()
    await new Promise((r) => setTimeout(r, 300))
  } finally {
    dump.kill('SIGINT')
    await Promise.race([exited, new Promise((r) => setTimeout(r, 3_000))])
    if (dump.exitCode === null) dump.kill('SIGKILL')
  }
  const read = await execCapture(['tcpdump', '-n', '-r', file], { timeoutMs: 20_000 })
  return classifyCapture(read.stdout)
}

const UNDERLAY_PAIR = /IP (10\.77\.\d+\.\d+)\.(\d+) > (10\.77\.\d+\.\d+)\.(\d+): /

/** Pure classification of `tcpdump -n -r` text lines (exported for unit tests). */
export function classifyCapture(text: string): CaptureReport {
  const report: CaptureReport = { packets: 0, esp: 0, ike: 0, plaintext: [] }
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
