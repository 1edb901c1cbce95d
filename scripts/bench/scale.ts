// Scaling benchmark (issue 13): the agent as users run it, measured from outside, next to floors measured in the
// same run. Run as root after `npm run build`:
//   node --import tsx scripts/bench/scale.ts [--peers 100,1000,5000,10000] [--repeat 5] [--edge] [--json]
//
// Per size N, in a fresh network namespace (a veth pair inside it carries the default gateway, so the xfrm datapath
// writes its table-220 routes) with a fresh real charon (test/harness/charon.ts):
// - floor: one `swanctl --load-conns` of the same N connections + `ip -batch` of the N routes + `ipset restore` of
//   the sets; then charon restarted (forgets them), routes flushed, sets destroyed;
// - cold start: `node dist/cli.cjs run --datapath xfrm ...` (the package's bin) spawned with no NODE_OPTIONS and no node flags, until
//   /readyz answers 200 and charon holds N connections (get-conns), table 220 holds N proto-220 routes (netlink
//   monitor) and the pod/node sets hold N members each (netlink ipset);
// - one-peer add / remove / subnet change, --repeat samples each: from the kubelet-style `..data` rename until the
//   route and the ipset member are in the kernel (or gone) and charon lists the connection with the new subnet (or
//   no longer lists it); floor: parseConfig of the N-peer file alone, in this process (median);
// - no-op pass (the same file swapped in again) and deep resync (SIGHUP): pass times and writes from /metrics;
// - RSS (VmRSS, VmHWM, RssAnon) from /proc: at ready, after the deep resyncs, 2 s later (the verdict's figure), at
//   the end (its VmHWM is the peak) and of the restarted agent; CPU (utime+stime of the agent's process tree) at ready.
// FT_BENCH_CLI=/path/to/dist/cli.js measures another build (before/after in one session).
// --edge adds one edge with one peer (its connector unreachable): CPU to ready and RSS, next to `node -e 0`.
// Nothing here asserts timings; the table gives a verdict per issue-13 target.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, renameSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { Charon } from '../../test/harness/charon.js'
import { Netns } from '../../test/harness/netns.js'
import { TestPki } from '../../test/harness/pki.js'
import { IPSET, ROUTE_TABLE, RTPROT_FABTUNNEL } from '../../src/fabedge.js'
import { connectorSets, connectorYaml, edgeYaml, firstPeers, ipsetRestore, MAX_PEER_INDEX, peerName, peerNodeIp, peerSubnet, routeBatch, swanctlConf, type PeerSpec } from './scale/gen.js'
import {
  CHANGE_OPS, childCpuTicksFromStat, cpuTicksFromStat, heapFromMetrics, median, memFromStatus, passCounters, passDelta, scaleTable,
  type ChangeOp, type EdgeResult, type MemSample, type PassCounters, type SizeResult,
} from './scale/report.js'

const ROOT = fileURLToPath(new URL('../../', import.meta.url))
// The package's bin (dist/cli.cjs), as the image's entrypoint and the systemd unit run it. FT_BENCH_CLI: another
// build's executable (e.g. an older commit's dist/cli.js), for a before/after in one session (the observers stay
// this tree's).
const OTHER_CLI = process.env.FT_BENCH_CLI
const CLI = OTHER_CLI ?? join(ROOT, (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { bin: { fabtunnel: string } }).bin.fabtunnel)
const dist = (p: string): string => new URL(`../../dist/${p}`, import.meta.url).href
// The agent's own code, compiled, for the observers (netlink, VICI) and the parse floor.
const netlink = (await import(dist('netlink/index.js'))) as typeof import('../../src/netlink/index.js')
const vici = (await import(dist('vici/index.js'))) as typeof import('../../src/vici/index.js')
const { parseConfig } = (await import(dist('config/load.js'))) as typeof import('../../src/config/load.js')
const { nodeDesired } = (await import(dist('desired/index.js'))) as typeof import('../../src/desired/index.js')

const USAGE = `usage: node --import tsx scripts/bench/scale.ts [--peers LIST] [--repeat N] [--edge] [--json]
  --peers LIST   comma-separated peer counts, each in its own namespace (default 1000), e.g. 100,1000,5000,10000;
                 empty ('') with --edge measures the edge alone
  --repeat N     samples per one-peer operation, no-op pass and deep resync (default 5)
  --edge         also measure one edge with one peer: CPU to ready and RSS, against node -e 0
  --json         print the results as JSON instead of the markdown table
  --from FILES   print the table from earlier --json outputs (comma-separated files; sizes merged) and exit
  --keep         keep each run's work dir (agent.log, generated configs, floor inputs) and print its path`

const GATEWAY = '172.19.0.254'
/** How long idle CPU is sampled after the measurements (no triggers, resync timer off). */
const IDLE_MS = 10_000
const LISTEN = '127.0.0.1:30306'
const HTTP = `http://${LISTEN}`
const CLK_TCK = Number(spawnSync('getconf', ['CLK_TCK']).stdout?.toString().trim()) || 100

/** --keep: leave each size's work dir (agent.log, configs, floor inputs) in place and say where. */
let keep = false

/** The end of a failed run's agent log, then the work dir removed unless --keep. */
function finish(dir: string, failed: boolean): void {
  if (failed) {
    const tail = readFileSync(join(dir, 'agent.log'), 'utf8').split('\n').slice(-15).join('\n')
    log(`agent log (last lines):\n${tail}`)
  }
  if (keep) log(`work dir kept: ${dir}`)
  else rmSync(dir, { recursive: true, force: true })
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms))
const log = (msg: string): void => {
  process.stderr.write(`[scale ${new Date().toISOString().slice(11, 23)}] ${msg}\n`)
}
const mbs = (bytes: number): string => (bytes / 1e6).toFixed(1)
const loadavg = (): string => readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ')

/** Polls `cond` (each call bounded by the overall deadline) every `everyMs`; the time at which it first held. */
async function until(what: string, cond: () => boolean | Promise<boolean>, timeoutMs: number, everyMs = 1): Promise<number> {
  const deadline = performance.now() + timeoutMs
  for (;;) {
    if (await cond()) return performance.now()
    if (performance.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)
    await sleep(everyMs)
  }
}

/** Runs argv to completion; its wall time in ms. A non-zero exit throws with stderr. */
async function timed(argv: string[]): Promise<{ ms: number; stdout: string }> {
  const t0 = performance.now()
  const child = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] })
  let out = ''
  let err = ''
  child.stdout.on('data', (b: Buffer) => { out += b.toString() })
  child.stderr.on('data', (b: Buffer) => { err += b.toString() })
  const code = await new Promise<number | null>((r) => child.once('exit', (c) => r(c)))
  const ms = performance.now() - t0
  if (code !== 0) throw new Error(`${argv.join(' ')} exited ${code}: ${err.slice(-500)}`)
  return { ms, stdout: out }
}

function run(argv: string[]): string {
  const r = spawnSync(argv[0]!, argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'], timeout: 60_000 })
  if (r.status !== 0) throw new Error(`${argv.join(' ')} exited ${r.status}: ${r.stderr?.toString().slice(-500)}`)
  return r.stdout.toString()
}

/** The pid and every descendant (a wrapper that re-executes node with flags is counted with its child). */
function processTree(pid: number): number[] {
  const out = [pid]
  for (let i = 0; i < out.length; i++) {
    const p = out[i]!
    let tasks: string[] = []
    try {
      tasks = readdirSync(`/proc/${p}/task`)
    } catch {
      continue
    }
    for (const t of tasks) {
      try {
        out.push(...readFileSync(`/proc/${p}/task/${t}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number))
      } catch {
        // the task ended meanwhile
      }
    }
  }
  return out
}

function treeCpuSeconds(pid: number): number {
  let ticks = 0
  for (const p of processTree(pid)) {
    try {
      ticks += cpuTicksFromStat(readFileSync(`/proc/${p}/stat`, 'utf8'))
    } catch {
      // ended meanwhile
    }
  }
  return ticks / CLK_TCK
}

/** CPU of the tree's reaped children (iptables-restore and the like the agent ran), seconds. */
function treeChildCpuSeconds(pid: number): number {
  let ticks = 0
  for (const p of processTree(pid)) {
    try {
      ticks += childCpuTicksFromStat(readFileSync(`/proc/${p}/stat`, 'utf8'))
    } catch {
      // ended meanwhile
    }
  }
  return ticks / CLK_TCK
}

/**
 * Memory of the agent: the deepest node process of the tree (the one that runs the daemon, whatever wraps it;
 * not an iptables-restore it happens to be running).
 */
function agentMem(pid: number): MemSample {
  const nodes = processTree(pid).filter((p) => {
    try {
      return readFileSync(`/proc/${p}/comm`, 'utf8').trim() === 'node'
    } catch {
      return false
    }
  })
  return memFromStatus(readFileSync(`/proc/${nodes.at(-1) ?? pid}/status`, 'utf8'))
}

/** agentMem plus V8's heap figures from the agent's /metrics (read first, so the RSS includes serving it). */
async function agentMemFull(pid: number): Promise<MemSample> {
  const heap = heapFromMetrics((await http('/metrics')).text)
  return { ...agentMem(pid), ...heap }
}

/** Requests made to the agent: each costs it CPU (about 1 ms on a loaded 2-core VM), reported with the CPU figures. */
let httpRequests = 0

async function http(path: string): Promise<{ status: number; text: string }> {
  for (let attempt = 1; ; attempt++) {
    httpRequests++
    try {
      const r = await fetch(`${HTTP}${path}`, { signal: AbortSignal.timeout(30_000) })
      return { status: r.status, text: await r.text() }
    } catch (e) {
      // A kept-alive socket the agent closed after 5 s idle (its keepAliveTimeout) while this request was on its
      // way fails with "other side closed": a GET is safe to send again, on a new connection.
      if (attempt >= 3) throw e
    }
  }
}

const ready = async (): Promise<boolean> => (await http('/readyz').catch(() => ({ status: 0 }))).status === 200
const counters = async (): Promise<PassCounters> => passCounters((await http('/metrics')).text)

/**
 * Waits until at least `minPasses` passes ended since `from` (a pass in progress shows nowhere: the counters move at
 * its end, so the quiet window alone could end in the middle of a long pass), then until the agent is ready and ran
 * no pass for `quietMs`. A writing pass is always followed by a verify pass: 2 for a change, 1 for a trigger that
 * writes nothing. Returns the counters at that point.
 */
async function settle(from: PassCounters | null, minPasses: number, quietMs = 400, timeoutMs = 600_000): Promise<PassCounters> {
  const deadline = performance.now() + timeoutMs
  const base = from?.passes ?? 0
  let last = await counters()
  let since = performance.now()
  for (;;) {
    await sleep(100)
    const now = await counters()
    if (now.passes !== last.passes) {
      last = now
      since = performance.now()
    } else if (now.passes - base >= minPasses && performance.now() - since >= quietMs && (await ready())) {
      return now
    }
    if (performance.now() > deadline) throw new Error(`agent did not settle within ${timeoutMs} ms`)
  }
}

/** kubelet's ConfigMap update: new version dir, `..data_tmp` symlink, atomic rename over `..data`. */
class ConfigDir {
  private version = 0
  constructor(readonly dir: string) {
    mkdirSync(dir, { recursive: true })
  }

  get file(): string {
    return join(this.dir, 'tunnels.yaml')
  }

  /** Returns performance.now() right before the rename (the instant the new config exists for the agent). */
  swap(text: string): number {
    const v = `..bench_${this.version++}`
    mkdirSync(join(this.dir, v))
    writeFileSync(join(this.dir, v, 'tunnels.yaml'), text)
    symlinkSync(v, join(this.dir, '..data_tmp'))
    const t = performance.now()
    renameSync(join(this.dir, '..data_tmp'), join(this.dir, '..data'))
    if (!existsSync(this.file)) symlinkSync('..data/tunnels.yaml', this.file)
    // kubelet removes the old version dir after the swap; so do we (not timed).
    if (this.version > 1) rmSync(join(this.dir, `..bench_${this.version - 2}`), { recursive: true, force: true })
    return t
  }
}

/** A veth pair inside the namespace: 172.19.0.1/24 and a default route via GATEWAY (nobody answers there). */
function underlay(): void {
  run(['ip', 'link', 'add', 'ftsc0', 'type', 'veth', 'peer', 'name', 'ftsc1'])
  run(['ip', 'addr', 'add', '172.19.0.1/24', 'dev', 'ftsc0'])
  run(['ip', 'link', 'set', 'ftsc0', 'up'])
  run(['ip', 'link', 'set', 'ftsc1', 'up'])
  run(['ip', 'route', 'add', 'default', 'via', GATEWAY])
}

/** The agent as users run it: the package's bin under plain node, no NODE_OPTIONS, log to a file. */
function startAgent(args: string[], logPath: string): ChildProcess {
  const env = { ...process.env }
  delete env.NODE_OPTIONS
  const fd = openSync(logPath, 'a')
  try {
    // FT_BENCH_AGENT_NODE_FLAGS: node flags for diagnosis only (e.g. --cpu-prof); never set for the figures.
    const diag = (process.env.FT_BENCH_AGENT_NODE_FLAGS ?? '').split(' ').filter(Boolean)
    return spawn(process.execPath, [...diag, CLI, 'run', ...args], { env, stdio: ['ignore', fd, fd] })
  } finally {
    closeSync(fd)
  }
}

async function stopAgent(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return
  const exited = new Promise((r) => child.once('exit', r))
  child.kill('SIGTERM')
  if (await Promise.race([exited.then(() => true), sleep(10_000).then(() => false)])) return
  child.kill('SIGKILL')
  await Promise.race([exited, sleep(5_000)])
}

interface Observers {
  routes: Set<string>
  sock: import('../../src/netlink/index.js').NetlinkSocket
  rsock: import('../../src/netlink/index.js').NetlinkSocket
  vici: import('../../src/vici/index.js').Vici
  close(): Promise<void>
}

/** Table-220 proto-220 routes kept current from the netlink monitor (seeded by one dump), ipsets and charon on demand. */
async function observe(uri: string): Promise<Observers> {
  const routes = new Set<string>()
  const monitor = netlink.Monitor.open({ groups: [netlink.RTNLGRP.IPV4_ROUTE], ref: false })
  const rsock = netlink.openRoute()
  const reseed = async (): Promise<void> => {
    const all = await netlink.routeList(rsock, { table: ROUTE_TABLE, protocol: RTPROT_FABTUNNEL })
    routes.clear()
    for (const r of all) routes.add(r.dst)
  }
  monitor.on('route', (action, r) => {
    if (r.table !== ROUTE_TABLE || r.protocol !== RTPROT_FABTUNNEL) return
    if (action === 'new') routes.add(r.dst)
    else routes.delete(r.dst)
  })
  monitor.on('resync', () => {
    log('route monitor overrun: re-reading table 220')
    void reseed()
  })
  await reseed()
  const sock = netlink.openNetfilter()
  const v = new vici.Vici({ uri })
  return {
    routes, sock, rsock, vici: v,
    close: async () => {
      monitor.close()
      rsock.close()
      sock.close()
      await v.client.close()
    },
  }
}

/** The remote_ts of the connection's p2p child as charon lists it, or null when charon has no such connection. */
async function connSubnet(o: Observers, i: number): Promise<string | null> {
  const name = peerName(i)
  const conns = await o.vici.listConns({ ike: name })
  const c = conns.find((x) => x.name === name)
  if (!c) return null
  const kids = c.raw.children as Record<string, Record<string, unknown>> | undefined
  const ts = kids?.[`${name}-p2p`]?.['remote-ts']
  return Array.isArray(ts) ? String(ts[0]) : null
}

/** Polls the kernel (cheap) until it matches, then charon; the instant both matched. */
async function waitPeer(o: Observers, i: number, want: { subnet: string | null; gone?: string }): Promise<number> {
  const kernel = async (): Promise<boolean> => {
    if (want.gone && (o.routes.has(want.gone) || (await netlink.ipsetTest(o.sock, IPSET.remotePodCidr, want.gone)))) return false
    if (want.subnet === null) return true
    return o.routes.has(want.subnet) && (await netlink.ipsetTest(o.sock, IPSET.remotePodCidr, want.subnet))
  }
  return until(`peer ${i} -> ${want.subnet ?? 'gone'}`, async () => (await kernel()) && (await connSubnet(o, i)) === want.subnet && (await kernel()), 120_000)
}

/**
 * The floor of a one-peer add: its writes made straight, with no agent (which would undo them), each peer a fresh
 * one: VICI load-conn of the connection section the agent derives for it, its table-220 route, its two set members
 * (what the agent writes for an add). Undone after each sample. Milliseconds per sample.
 */
async function changeFloor(o: Observers, first: number, runs: number): Promise<number[]> {
  const out: number[] = []
  for (let k = 0; k < runs; k++) {
    const i = first + k
    const name = peerName(i)
    const { config } = parseConfig(connectorYaml([{ index: i }]), 'floor.yaml')
    const d = nodeDesired(config, undefined, { datapath: 'xfrm', gateways: { 4: GATEWAY } })
    const section = d.conns[name]
    const route = d.routes.find((r) => r.dst === peerSubnet(i))
    const node = [...(d.ipsets[IPSET.remoteNodeCidr]?.members ?? [])].find((m) => m.startsWith(`${peerNodeIp(i)}/`))
    if (!section || !route || !node) throw new Error(`floor: no connection, route or node member derived for ${name}`)
    const spec = { dst: route.dst, via: route.via!, table: route.table, protocol: route.protocol }
    const t0 = performance.now()
    await o.vici.loadConn(name, section)
    await netlink.routeReplace(o.rsock, spec)
    await netlink.ipsetAdd(o.sock, IPSET.remotePodCidr, route.dst)
    await netlink.ipsetAdd(o.sock, IPSET.remoteNodeCidr, node)
    out.push(performance.now() - t0)
    await o.vici.unloadConn(name)
    await netlink.routeDel(o.rsock, spec)
    await netlink.ipsetDel(o.sock, IPSET.remotePodCidr, route.dst)
    await netlink.ipsetDel(o.sock, IPSET.remoteNodeCidr, node)
  }
  return out
}

async function parseFloor(text: string, runs: number): Promise<number> {
  parseConfig(text, 'tunnels.yaml')
  const xs: number[] = []
  for (let k = 0; k < runs; k++) {
    const t0 = performance.now()
    // Throws a ConfigError on a bad file: a floor over a failed parse would measure nothing.
    const r = parseConfig(text, 'tunnels.yaml')
    xs.push(performance.now() - t0)
    if (r.config.peers.length === 0) throw new Error('generated config has no peers')
  }
  return median(xs)
}

/** Everything for one size, inside its namespace (this process runs there). */
async function measureSize(nsName: string, n: number, repeat: number): Promise<SizeResult> {
  if (n + repeat - 1 > MAX_PEER_INDEX) throw new Error(`--peers ${n} with --repeat ${repeat} exceeds the address plan (${MAX_PEER_INDEX + 1} peers)`)
  const result: Partial<SizeResult> = { peers: n, load: loadavg() }
  const ns = Netns.adopt(nsName)
  const dir = mkdtempSync(join(tmpdir(), 'ft-bench-scale-'))
  const pki = await TestPki.create()
  let agent: ChildProcess | null = null
  let obs: Observers | null = null
  let failed = true
  const onSignal = (): void => {
    if (agent) agent.kill('SIGKILL')
    void ns.destroy().finally(() => process.exit(130))
  }
  process.once('SIGTERM', onSignal)
  process.once('SIGINT', onSignal)
  try {
    underlay()
    const cert = await pki.issue('bench', 'connector')
    const charon = await Charon.start(ns)
    const peers = firstPeers(n)

    // Floor: the same end state through the stock tools, against this fresh charon.
    log(`${n} peers: floor (swanctl --load-conns, ip -batch, ipset restore)`)
    writeFileSync(join(dir, 'swanctl.conf'), swanctlConf(peers, cert.certPath))
    writeFileSync(join(dir, 'routes.batch'), routeBatch(peers, GATEWAY))
    writeFileSync(join(dir, 'sets.restore'), ipsetRestore(peers))
    const sw = await timed(['swanctl', '--load-conns', '--file', join(dir, 'swanctl.conf'), '--uri', charon.uri])
    const loaded = Number(/successfully loaded (\d+) connections/.exec(sw.stdout)?.[1])
    if (loaded !== n) throw new Error(`swanctl loaded ${loaded} of ${n} connections: ${sw.stdout.slice(-300)}`)
    const ipb = await timed(['ip', '-batch', join(dir, 'routes.batch')])
    const ips = await timed(['ipset', '-file', join(dir, 'sets.restore'), 'restore'])
    const floorRoutes = run(['ip', 'route', 'show', 'table', String(ROUTE_TABLE), 'proto', String(RTPROT_FABTUNNEL)]).trim().split('\n').length
    if (floorRoutes !== n) throw new Error(`ip -batch left ${floorRoutes} routes, not ${n}`)
    result.coldFloor = { ms: sw.ms + ipb.ms + ips.ms, swanctlMs: sw.ms, ipBatchMs: ipb.ms, ipsetMs: ips.ms }
    await charon.restart()
    run(['ip', 'route', 'flush', 'table', String(ROUTE_TABLE)])
    for (const name of Object.keys(connectorSets(peers))) run(['ipset', 'destroy', name])

    obs = await observe(charon.uri)
    const o = obs
    const cfg = new ConfigDir(join(dir, 'config'))
    const text = connectorYaml(peers)
    cfg.swap(text)

    log(`${n} peers: cold start`)
    const t0 = performance.now()
    const agentArgs = ['--config', cfg.file, '--vici', charon.uri, '--cert', cert.certPath, '--key', cert.keyPath, '--ca', pki.caCertPath,
      '--datapath', 'xfrm', '--resync-interval', '0', '--listen', LISTEN]
    agent = startAgent(agentArgs, join(dir, 'agent.log'))
    const pid = agent.pid!
    // Polled every 50 ms: each request costs the agent CPU, so polling faster would inflate what is measured.
    const readyAt = await until('agent ready', ready, 1_800_000, 50)
    const cpuS = treeCpuSeconds(pid)
    const members = async (set: string): Promise<number> => (await netlink.ipsetList(o.sock, set))?.members.length ?? 0
    let conns = 0
    // Each check takes a while at 10,000 (get-conns, two set dumps): the instant counted is the start of the check
    // that found everything in place (what it found was there at the latest by its end).
    let checkStart = 0
    await until('all conns, routes and members in place', async () => {
      checkStart = performance.now()
      conns = (await o.vici.getConns()).length
      return conns === n && o.routes.size === n && (await members(IPSET.remotePodCidr)) === n && (await members(IPSET.remoteNodeCidr)) === n
    }, 300_000, 20)
    const inPlace = checkStart
    if (inPlace - readyAt > 50) log(`NOTE: ready ${Math.round(inPlace - readyAt)} ms before everything was in place`)
    // The cold pass and its verify pass.
    const afterCold = await settle(null, 2)
    result.cold = {
      ms: Math.max(readyAt, inPlace) - t0, readyMs: readyAt - t0, cpuS, conns, routes: o.routes.size, members: await members(IPSET.remotePodCidr),
      writes: Object.values(afterCold.writes).reduce((a, b) => a + b, 0),
    }
    const memReady = await agentMemFull(pid)
    log(`${n} peers: cold start ${Math.round(result.cold.ms)} ms (ready at ${Math.round(result.cold.readyMs)} ms), floor ${Math.round(result.coldFloor.ms)} ms`)

    result.parseFloorMs = await parseFloor(text, Math.max(5, repeat))

    // One-peer changes. Each sample adds a fresh peer, removes it, then moves peer s to its other subnet.
    const change = Object.fromEntries(CHANGE_OPS.map((op) => [op, { samples: [] as number[], writes: [] as number[] }])) as SizeResult['change']
    const current: PeerSpec[] = peers.map((p) => ({ ...p }))
    const measure = async (op: ChangeOp, specs: PeerSpec[], i: number, want: { subnet: string | null; gone?: string }): Promise<void> => {
      const before = await counters()
      const t = cfg.swap(connectorYaml(specs))
      const swappedAt = Date.now()
      const done = await waitPeer(o, i, want)
      // With --keep, each sample's swap instant (wall clock, as in agent.log) lines up with the agent's own timings.
      if (keep) log(`${op} peer ${i}: swapped at ${new Date(swappedAt).toISOString().slice(11, 23)}, in place after ${(done - t).toFixed(1)} ms`)
      const after = await settle(before, 2)
      change[op].samples.push(done - t)
      change[op].writes.push(passDelta(before, after).totalWrites)
    }
    for (let s = 0; s < repeat; s++) {
      const extra = n + s
      await measure('add', [...current, { index: extra }], extra, { subnet: peerSubnet(extra) })
      await measure('remove', current, extra, { subnet: null, gone: peerSubnet(extra) })
      const p = current[s % n]!
      const from = peerSubnet(p.index, p.alt)
      p.alt = !p.alt
      await measure('subnet', current, p.index, { subnet: peerSubnet(p.index, p.alt), gone: from })
    }
    result.change = change
    log(`${n} peers: one-peer medians ${CHANGE_OPS.map((op) => `${op} ${median(change[op].samples).toFixed(1)} ms`).join(', ')}`)
    const finalText = connectorYaml(current)

    // No-op: the same content swapped in again; deep resync: SIGHUP.
    const passesOf = async (trigger: () => void, what: string): Promise<{ ms: number[]; writes: number; passes: number }> => {
      const out = { ms: [] as number[], writes: 0, passes: 0 }
      for (let k = 0; k < repeat; k++) {
        const before = await counters()
        trigger()
        // A trigger that runs no pass at all is a finding too: wait a bounded while (a deep pass at 10,000 peers
        // under load takes many seconds), then record none. 100 ms between requests: a request handled in the
        // middle of the pass lengthens it (~1 ms each).
        const ran = await until(`a pass after ${what}`, async () => (await counters()).passes > before.passes, 120_000, 100).then(() => true, () => false)
        const after = ran ? await settle(before, 1) : await counters()
        const d = passDelta(before, after)
        if (d.passes > 0) out.ms.push(d.ms / d.passes)
        out.passes += d.passes
        out.writes += d.totalWrites
      }
      return out
    }
    result.noop = await passesOf(() => cfg.swap(finalText), 'the same config')
    result.deep = await passesOf(() => process.kill(pid, 'SIGHUP'), 'SIGHUP')
    const memDeep = await agentMemFull(pid)
    log(`${n} peers: no-op ${result.noop.ms.map((x) => x.toFixed(1)).join('/')} ms (${result.noop.writes} writes), deep ${result.deep.ms.map((x) => x.toFixed(0)).join('/')} ms (${result.deep.writes} writes)`)

    await sleep(2_000)
    result.mem = agentMem(pid)
    const idle0 = treeCpuSeconds(pid)
    const w0 = performance.now()
    await sleep(IDLE_MS)
    result.idleCpuPct = ((treeCpuSeconds(pid) - idle0) * 1000 * 100) / (performance.now() - w0)
    const memEnd = await agentMemFull(pid)
    const heap = (m: MemSample): string => `${mbs(m.rss)} (heap ${mbs(m.heapUsed ?? 0)}/${mbs(m.heapTotal ?? 0)}, anon ${mbs(m.anon ?? 0)})`
    log(`${n} peers: RSS MB ready ${heap(memReady)}, after deep ${heap(memDeep)}, +2 s ${mbs(result.mem.rss)}, end ${heap(memEnd)}, peak ${mbs(memEnd.hwm)}`)

    // Restart onto the converged node: the agent must adopt what is there (0 writes) and be ready.
    log(`${n} peers: restart onto the converged node`)
    await stopAgent(agent)
    const r0 = performance.now()
    agent = startAgent(agentArgs, join(dir, 'agent.log'))
    const rReady = await until('restarted agent ready', ready, 1_800_000, 50)
    const afterRestart = await settle(null, 1)
    result.restart = { ms: rReady - r0, writes: Object.values(afterRestart.writes).reduce((a, b) => a + b, 0) }
    result.memAt = { ready: memReady, deep: memDeep, end: memEnd, restarted: await agentMemFull(agent.pid!) }
    // The one-peer change's write floor, on the same node with the agent stopped.
    await stopAgent(agent)
    agent = null
    result.changeFloorMs = await changeFloor(o, n + repeat, Math.max(5, repeat))
    log(`${n} peers: one-peer add written straight (load-conn, route, 2 members): median ${median(result.changeFloorMs).toFixed(1)} ms`)
    failed = false
    return result as SizeResult
  } finally {
    if (agent) await stopAgent(agent)
    await obs?.close().catch(() => undefined)
    await ns.destroy()
    await pki.destroy()
    finish(dir, failed && existsSync(join(dir, 'agent.log')))
    process.off('SIGTERM', onSignal)
    process.off('SIGINT', onSignal)
  }
}

/** One edge, one peer (the connector, unreachable): CPU and time to ready, RSS; floor `node -e 0`. */
async function measureEdge(nsName: string, repeat: number): Promise<EdgeResult> {
  const ns = Netns.adopt(nsName)
  const dir = mkdtempSync(join(tmpdir(), 'ft-bench-edge-'))
  const pki = await TestPki.create()
  let agent: ChildProcess | null = null
  let failed = true
  try {
    underlay()
    const load = loadavg()
    const cert = await pki.issue('bench', 'e0')
    const charon = await Charon.start(ns)
    const cfg = new ConfigDir(join(dir, 'config'))
    cfg.swap(edgeYaml(GATEWAY))
    const t0 = performance.now()
    agent = startAgent(['--config', cfg.file, '--vici', charon.uri, '--cert', cert.certPath, '--key', cert.keyPath, '--ca', pki.caCertPath,
      '--datapath', 'xfrm', '--listen', LISTEN], join(dir, 'agent.log'))
    const polls0 = httpRequests
    const readyAt = await until('edge agent ready', ready, 60_000, 25)
    const cpuS = treeCpuSeconds(agent.pid!)
    const childCpuS = treeChildCpuSeconds(agent.pid!)
    const polls = httpRequests - polls0
    await settle(null, 1)
    await sleep(2_000)
    const mem = agentMem(agent.pid!)
    // What one /readyz costs the agent, to state the observer's share of the CPU to ready.
    const c0 = treeCpuSeconds(agent.pid!)
    for (let k = 0; k < 200; k++) await ready()
    const perPollS = (treeCpuSeconds(agent.pid!) - c0) / 200
    // Floor: `node -e 0` run by a shell that then reports its reaped children's CPU (cutime + cstime).
    const cpu: number[] = []
    const rss: number[] = []
    for (let k = 0; k < Math.max(5, repeat); k++) {
      cpu.push(childCpuTicksFromStat(run(['sh', '-c', '"$0" -e 0 && cat /proc/$$/stat', process.execPath])) / CLK_TCK)
      rss.push(Number(run([process.execPath, '-e', 'process.stdout.write(String(process.resourceUsage().maxRSS))'])) * 1024)
    }
    failed = false
    return { load, cpuS, childCpuS, readyMs: readyAt - t0, polls, pollCpuS: polls * perPollS, mem, floor: { cpuS: median(cpu), maxRss: median(rss) } }
  } finally {
    if (agent) await stopAgent(agent)
    await ns.destroy()
    await pki.destroy()
    finish(dir, failed && existsSync(join(dir, 'agent.log')))
  }
}

/** Runs this script inside a fresh namespace for one size; its result comes back through a file. */
async function inNamespace<T>(what: string[], repeat: number): Promise<T> {
  const ns = await Netns.create('ftsc')
  const out = join(mkdtempSync(join(tmpdir(), 'ft-bench-out-')), 'result.json')
  let child: ChildProcess | null = null
  const forward = (sig: NodeJS.Signals): void => {
    child?.kill(sig)
  }
  process.on('SIGINT', forward)
  process.on('SIGTERM', forward)
  try {
    child = spawn('ip', ['netns', 'exec', ns.name, process.execPath, '--import', 'tsx', fileURLToPath(import.meta.url),
      '--inside', ns.name, '--out', out, '--repeat', String(repeat), ...(keep ? ['--keep'] : []), ...what], { stdio: ['ignore', 'inherit', 'inherit'] })
    const c = child
    // Bounded: an inner run that hangs is stopped after an hour (its own teardown runs on SIGTERM).
    const timer = setTimeout(() => c.kill('SIGTERM'), 3_600_000)
    const code = await new Promise<number | null>((r) => c.once('exit', (x) => r(x)))
    clearTimeout(timer)
    if (code !== 0) throw new Error(`measurement of ${what.join(' ')} failed (exit ${code})`)
    return JSON.parse(readFileSync(out, 'utf8')) as T
  } finally {
    process.off('SIGINT', forward)
    process.off('SIGTERM', forward)
    // Whatever the inner run left in the namespace (it was created for this run alone) goes with it.
    for (const pid of (spawnSync('ip', ['netns', 'pids', ns.name]).stdout?.toString() ?? '').split(/\s+/).filter(Boolean)) {
      try {
        process.kill(Number(pid), 'SIGKILL')
      } catch {
        // already gone
      }
    }
    await ns.destroy()
    rmSync(join(out, '..'), { recursive: true, force: true })
  }
}

function distIsFresh(): void {
  if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run \`npm run build\` first`)
  if (OTHER_CLI) return
  const newest = (d: string): number => Math.max(0, ...readdirSync(d, { withFileTypes: true }).map((e) => (e.isDirectory() ? newest(join(d, e.name)) : statSync(join(d, e.name)).mtimeMs)))
  if (newest(join(ROOT, 'src')) > statSync(CLI).mtimeMs) log(`WARNING: src/ is newer than ${CLI}; the agent measured is the compiled one (npm run build)`)
}

const { values } = parseArgs({
  options: {
    peers: { type: 'string', default: '1000' },
    repeat: { type: 'string', default: '5' },
    edge: { type: 'boolean', default: false },
    json: { type: 'boolean', default: false },
    keep: { type: 'boolean', default: false },
    from: { type: 'string' },
    help: { type: 'boolean', short: 'h', default: false },
    inside: { type: 'string' },
    out: { type: 'string' },
    size: { type: 'string' },
    'edge-only': { type: 'boolean', default: false },
  },
})
if (values.help) {
  console.log(USAGE)
  process.exit(0)
}
keep = values.keep === true
const repeat = Number(values.repeat)
// `--peers ''` with --edge: the edge alone.
const sizes = values.peers === '' ? [] : values.peers!.split(',').map((x) => Number(x.trim().replace(/_/g, '')))
if (!Number.isInteger(repeat) || repeat < 1 || sizes.some((x) => !Number.isInteger(x) || x < 1)) {
  console.error(USAGE)
  process.exit(2)
}

if (values.from) {
  // Sizes measured by separate runs (e.g. one size per run on a busy machine), merged into one table.
  const runs = values.from.split(',').map((f) => JSON.parse(readFileSync(f, 'utf8')) as { sizes: SizeResult[]; edge: EdgeResult | null })
  const bySize = new Map(runs.flatMap((r) => r.sizes).map((x) => [x.peers, x]))
  console.log(scaleTable([...bySize.values()], runs.map((r) => r.edge).filter((e) => e !== null).at(-1) ?? null))
} else if (values.inside) {
  const r = values['edge-only'] ? await measureEdge(values.inside, repeat) : await measureSize(values.inside, Number(values.size), repeat)
  writeFileSync(values.out!, JSON.stringify(r))
  process.exit(0)
} else {
  if (process.getuid?.() !== 0) {
    console.error('scale benchmark: needs root (network namespaces, charon)')
    process.exit(1)
  }
  distIsFresh()
  const results: SizeResult[] = []
  let edge: EdgeResult | null = null
  if (values.edge) edge = await inNamespace<EdgeResult>(['--edge-only'], repeat)
  for (const n of sizes) results.push(await inNamespace<SizeResult>(['--size', String(n)], repeat))
  if (values.json) console.log(JSON.stringify({ node: process.version, clkTck: CLK_TCK, repeat, cli: CLI, sizes: results, edge }, null, 2))
  else {
    console.log(`fabtunnel scaling benchmark: node ${process.version}, ${repeat} samples per operation, load at end ${loadavg()}\n`)
    console.log(scaleTable(results, edge))
  }
}
