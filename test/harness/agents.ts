// Runs the tunnel agent of each gateway of a Topology, behind one driver interface:
// - DaemonDriver: the real `fabtunnel run` from dist/cli.js inside the gateway's namespace (logs in the node's dir,
//   readiness via GET /readyz from inside the namespace, status via `fabtunnel status`). It refuses a dist/ that is
//   missing or older than src/, so a test never passes against code other than what it claims to test. Namespace
//   tests drive one agent through `agent(g)`: an AgentHandle with start/stop/kill/restart, HTTP get, status(),
//   waitFor() (bounded, log tail on timeout) and the log;
// - ViciDriver: the benchmark's in-process reference: loads the very desired state
//   `fabtunnel plan --offline --json --datapath libipsec` prints (same functions, in process) through src/vici:
//   credentials, load-conn, asynchronous initiates, re-initiating what is not up. It has no watch, no netlink and
//   no iptables.
// Plus driver-independent observation straight from charon (saSnapshot, tunnelsUp) for no-flap checks.
import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { mkdir, open, readFile, readdir, stat } from 'node:fs/promises'
import { readFileSync } from 'node:fs'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { loadConfig } from '../../src/config/load.js'
import { desiredState } from '../../src/desired/index.js'
import type { Desired, ViciSection } from '../../src/desired/types.js'
import { Vici, type IkeSa } from '../../src/vici/index.js'
import type { ExecResult } from './exec.js'
import { CloudNode, type Gateway, type Topology } from './topology.js'

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..')
/** The package's bin (dist/cli.cjs), as the image's entrypoint and the systemd unit run it. */
export const CLI = join(ROOT, (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { bin: { fabtunnel: string } }).bin.fabtunnel)

export interface AgentDriver {
  readonly kind: 'daemon' | 'vici'
  /** Starts the agent of a gateway; resolves once it is running (not necessarily converged). */
  start(g: Gateway): Promise<void>
  /** Graceful stop (SIGTERM for the daemon): the data plane stays up. */
  stop(g: Gateway): Promise<void>
  /** kill -9. */
  kill(g: Gateway): Promise<void>
  /** Bounded wait until the agent reports convergence; resolves with the milliseconds waited. */
  waitReady(g: Gateway, timeoutMs: number): Promise<number>
  /** The human `fabtunnel status`-style table of the node. */
  statusText(g: Gateway): Promise<string>
  /** Process id of the agent, when it is a process of its own. */
  pid(g: Gateway): number | undefined
  /** Stops every agent (teardown). */
  stopAll(): Promise<void>
}

/**
 * The driver of the demo, the e2e suite and the daemon tests: the real daemon. Throws when dist/ is missing or stale
 * (there is no silent fallback to something else).
 */
export async function defaultDriver(opts: DaemonOptions = {}): Promise<DaemonDriver> {
  await assertBuilt()
  return new DaemonDriver(opts)
}

async function newestMtime(dir: string): Promise<{ path: string; ms: number }> {
  let best = { path: dir, ms: 0 }
  for (const e of await readdir(dir, { withFileTypes: true })) {
    const p = join(dir, e.name)
    const cand = e.isDirectory() ? await newestMtime(p) : { path: p, ms: (await stat(p)).mtimeMs }
    if (cand.ms > best.ms) best = cand
  }
  return best
}

/** Rejects unless the bin exists and is at least as new as every file under src/. */
export async function assertBuilt(): Promise<void> {
  const built = await stat(CLI).catch(() => null)
  if (!built) throw new Error(`${CLI} does not exist: build first (npm run build)`)
  const src = await newestMtime(join(ROOT, 'src'))
  if (src.ms > built.mtimeMs) throw new Error(`${src.path} is newer than ${CLI}: rebuild (npm run build)`)
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms))

/** Thrown by a waitFor probe to stop waiting at once (e.g. the process being waited for has exited). */
export class WaitAborted extends Error {
  override readonly name = 'WaitAborted'
}

/**
 * Polls `probe` until it resolves a truthy value and resolves with that value; rejects after timeoutMs with what
 * was awaited and the probe's last error. A probe that throws counts as "not yet", unless it throws WaitAborted.
 */
export async function waitForValue<T>(what: string, timeoutMs: number, probe: () => Promise<T | undefined | null | false>, everyMs = 100): Promise<T> {
  const t0 = performance.now()
  let last: unknown
  for (;;) {
    const v = await probe().catch((e: unknown) => {
      if (e instanceof WaitAborted) throw e
      last = e
      return undefined
    })
    if (v) return v
    if (performance.now() - t0 > timeoutMs) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last instanceof Error ? ` (last error: ${last.message})` : ''}`)
    }
    await sleep(everyMs)
  }
}

/** Like waitForValue for a boolean probe; resolves with the elapsed ms. */
export async function waitFor(what: string, timeoutMs: number, probe: () => Promise<boolean>, everyMs = 100): Promise<number> {
  const t0 = performance.now()
  await waitForValue(what, timeoutMs, probe, everyMs)
  return performance.now() - t0
}

// ---------------------------------------------------------------------------------------------------------------

/** A node the DaemonDriver runs `fabtunnel run` on: a gateway (connector, edge) or a cloud node (--role cloud). */
export type AgentNode = Gateway | CloudNode

/** Where a node's agent writes its log (stdout and stderr, appended across restarts). */
export function agentLog(g: AgentNode): string {
  return join(g.dir, 'agent.log')
}

export interface DaemonOptions {
  /** `--log-level`. Default info. */
  logLevel?: string
  /**
   * `--resync-interval` (e.g. `5s`). Default: the daemon's own (60s). Hand-deleted ipset members and iptables
   * jumps raise no event, so tests that delete them shorten the safety-net resync.
   */
  resyncInterval?: string
  /** `--datapath`. Default libipsec (the only one whose packets flow in these namespaces). */
  datapath?: 'libipsec' | 'xfrm'
  /** More `fabtunnel run` flags for some gateways (e.g. `--leader-election vip --vip ADDR` on a connector). */
  extraArgs?: (g: Gateway) => string[]
}

export class DaemonDriver implements AgentDriver {
  readonly kind = 'daemon'
  private readonly procs = new Map<string, ChildProcess>()

  constructor(private readonly opts: DaemonOptions = {}) {
    if (opts.resyncInterval !== undefined && !/^\d+(ms|s|m)$/.test(opts.resyncInterval)) throw new Error(`bad resyncInterval ${opts.resyncInterval}`)
    if (opts.logLevel !== undefined && !/^[a-z]+$/.test(opts.logLevel)) throw new Error(`bad logLevel ${opts.logLevel}`)
  }

  /** The handle of one gateway's agent (not started by this call). */
  agent(g: AgentNode): AgentHandle {
    return new AgentHandle(this, g)
  }

  argv(g: AgentNode): string[] {
    // `env -u NODE_OPTIONS`: a test runner's preload hooks (tap's process-info, with signal-exit) must not ride
    // along into the agent: it runs as in production. `env` execs too, so the pid stays the daemon's.
    const exec = ['ip', 'netns', 'exec', g.ns.name, 'env', '-u', 'NODE_OPTIONS', process.execPath, CLI, 'run']
    const common = [
      '--listen', g.listen,
      '--log-level', this.opts.logLevel ?? 'info',
      ...(this.opts.resyncInterval ? ['--resync-interval', this.opts.resyncInterval] : []),
    ]
    // A cloud node: no charon, no credentials; the connector's config and its address.
    if (g instanceof CloudNode) return [...exec, '--role', 'cloud', '--connector-address', g.connectorAddress, '--config', g.configPath, ...common]
    return [
      ...exec,
      '--config', g.configPath,
      '--vici', g.charon.uri,
      '--cert', g.cert.certPath,
      '--key', g.cert.keyPath,
      '--ca', g.caPath,
      '--listen', g.listen,
      '--datapath', this.opts.datapath ?? 'libipsec',
      ...common,
      ...(this.opts.extraArgs?.(g) ?? []),
    ]
  }

  async start(g: AgentNode): Promise<void> {
    if (this.procs.has(g.name)) throw new Error(`agent of ${g.name} already running`)
    await assertBuilt()
    await mkdir(g.dir, { recursive: true })
    const log = await open(agentLog(g), 'a')
    const [cmd, ...args] = this.argv(g)
    // `ip netns exec` execs the daemon, so the child's pid is the daemon's and kill -9 reaches it directly.
    const child = spawn(cmd!, args, { stdio: ['ignore', log.fd, log.fd] })
    await log.close()
    this.procs.set(g.name, child)
    // A spawn failure (e.g. no `ip`) must not crash the harness: the agent simply is not running.
    child.once('error', () => this.procs.delete(g.name))
    child.once('exit', () => {
      if (this.procs.get(g.name) === child) this.procs.delete(g.name)
    })
    g.ns.onDestroy(() => this.kill(g))
  }

  async stop(g: AgentNode): Promise<void> {
    await this.signal(g.name, 'SIGTERM', 5_000)
  }

  async kill(g: AgentNode): Promise<void> {
    await this.signal(g.name, 'SIGKILL', 5_000)
  }

  /** Sends sig; SIGKILL when the agent is still there after graceMs. */
  async signal(name: string, sig: NodeJS.Signals, graceMs: number): Promise<void> {
    const child = this.procs.get(name)
    if (!child || child.exitCode !== null || child.signalCode !== null) return
    const exited = once(child, 'exit')
    child.kill(sig)
    const done = await Promise.race([exited.then(() => true), sleep(graceMs).then(() => false)])
    if (!done) {
      child.kill('SIGKILL')
      await Promise.race([exited, sleep(5_000)])
    }
    this.procs.delete(name)
  }

  async waitReady(g: AgentNode, timeoutMs: number): Promise<number> {
    return waitFor(`/readyz of ${g.name}`, timeoutMs, async () => {
      await this.assertRunning(g)
      const r = await g.ns.capture(['curl', '-sf', '-o', '/dev/null', '-m', '1', `http://${g.listen}/readyz`], { timeoutMs: 3_000 })
      return r.code === 0
    }, 150)
  }

  /** Throws WaitAborted (ends any wait at once) with the log tail when the agent of g is not running. */
  async assertRunning(g: AgentNode): Promise<void> {
    if (this.procs.has(g.name)) return
    throw new WaitAborted(`agent of ${g.name} is not running; last log lines:\n${await logTail(g, 5)}`)
  }

  /** GET /status inside the namespace, parsed. */
  async statusJson(g: AgentNode): Promise<unknown> {
    const r = await g.ns.capture(['curl', '-s', '-m', '2', `http://${g.listen}/status`], { timeoutMs: 4_000 })
    if (r.code !== 0) throw new Error(`GET /status of ${g.name} failed: ${r.stderr.trim() || `curl exit ${r.code}`}`)
    return JSON.parse(r.stdout) as unknown
  }

  async statusText(g: AgentNode): Promise<string> {
    const r = await g.ns.capture([process.execPath, CLI, 'status', '--listen', g.listen], { timeoutMs: 10_000 })
    return (r.stdout + (r.code === 0 ? '' : r.stderr)).trimEnd()
  }

  pid(g: AgentNode): number | undefined {
    return this.procs.get(g.name)?.pid
  }

  async stopAll(): Promise<void> {
    await Promise.all([...this.procs.keys()].map((name) => this.signal(name, 'SIGTERM', 3_000)))
  }
}

/** The last `lines` lines of a gateway's agent log. */
export async function logTail(g: AgentNode, lines = 40): Promise<string> {
  return (await readFile(agentLog(g), 'utf8').catch(() => '')).trimEnd().split('\n').slice(-lines).join('\n')
}

/** Runs `fabtunnel <args>` (dist/cli.js) inside the gateway's namespace; resolves whatever the exit code. */
export async function fabtunnel(g: Pick<AgentNode, 'ns'>, args: readonly string[], timeoutMs = 30_000): Promise<ExecResult> {
  await assertBuilt()
  return g.ns.capture([process.execPath, CLI, ...args], { timeoutMs })
}

/**
 * One gateway's daemon for namespace tests (from DaemonDriver.agent(g)): lifecycle, its HTTP endpoints from inside
 * the namespace, bounded waits that end at once (with the log tail) when the agent died, and its log.
 */
export class AgentHandle {
  constructor(readonly driver: DaemonDriver, readonly g: AgentNode) {}

  get pid(): number | undefined {
    return this.driver.pid(this.g)
  }

  start(): Promise<void> {
    return this.driver.start(this.g)
  }

  /** SIGTERM (SIGKILL after 5 s); the data plane stays up. */
  stop(): Promise<void> {
    return this.driver.stop(this.g)
  }

  kill(sig: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    return this.driver.signal(this.g.name, sig, 5_000)
  }

  async restart(): Promise<void> {
    await this.stop()
    await this.start()
  }

  /** Sends a signal without waiting for anything (e.g. SIGHUP for a full pass). */
  signal(sig: NodeJS.Signals): void {
    const pid = this.pid
    if (pid === undefined) throw new Error(`agent of ${this.g.name} is not running`)
    process.kill(pid, sig)
  }

  /** GET a path of the agent's HTTP server from inside the namespace; status 0 when it could not be reached. */
  async get(path: string, timeoutMs = 3_000): Promise<{ status: number; body: string }> {
    const url = `http://${this.g.listen}${path}`
    const r = await this.g.ns.capture(['curl', '-s', '-m', String(Math.ceil(timeoutMs / 1000)), '-w', '\n%{http_code}', url], { timeoutMs: timeoutMs + 3_000 })
    if (r.code !== 0) return { status: 0, body: r.stderr.trim() || `curl exit ${r.code}` }
    const cut = r.stdout.lastIndexOf('\n')
    return { status: Number(r.stdout.slice(cut + 1)), body: r.stdout.slice(0, cut) }
  }

  /** GET /status, parsed (the daemon's JSON shape). */
  async status(): Promise<any> {
    const r = await this.get('/status')
    if (r.status !== 200) throw new Error(`/status of ${this.g.name} answered ${r.status}: ${r.body}`)
    return JSON.parse(r.body)
  }

  /** Polls `check` until it returns a truthy value (resolved); bounded, aborts at once if the agent exited. */
  async waitFor<T>(what: string, check: () => Promise<T | undefined | null | false>, timeoutMs = 20_000, everyMs = 50): Promise<T> {
    try {
      return await waitForValue(`${what} (${this.g.name})`, timeoutMs, async () => {
        await this.driver.assertRunning(this.g)
        return check()
      }, everyMs)
    } catch (e) {
      if (e instanceof WaitAborted) throw e
      throw new Error(`${(e as Error).message}\n--- agent log tail ---\n${await this.logTail()}`)
    }
  }

  logTail(lines = 40): Promise<string> {
    return logTail(this.g, lines)
  }
}

// ---------------------------------------------------------------------------------------------------------------

/** The desired state of a gateway from its tunnels.yaml, exactly as `fabtunnel plan --offline --json` computes it. */
export async function desiredOf(g: Gateway): Promise<Desired> {
  const { config } = await loadConfig(g.configPath)
  return desiredState(config, { datapath: 'libipsec', certPem: g.cert.certPem })
}

interface ViciAgent {
  vici: Vici
  desired: Desired
  timer: NodeJS.Timeout | null
  stopped: boolean
}

/** How often the fallback agent re-initiates what is down (an initiate that met an unready peer fails for good). */
const VICI_RETRY_MS = 500

export class ViciDriver implements AgentDriver {
  readonly kind = 'vici'
  private readonly agents = new Map<string, ViciAgent>()

  async start(g: Gateway): Promise<void> {
    if (this.agents.has(g.name)) throw new Error(`agent of ${g.name} already running`)
    const vici = new Vici({ uri: g.charon.uri, reconnect: false, timeoutMs: 10_000 })
    await vici.connect()
    try {
      const desired = await desiredOf(g)
      await loadCredentials(vici, g)
      for (const [name, conn] of Object.entries(desired.conns)) await vici.loadConn(name, conn)
      const agent: ViciAgent = { vici, desired, timer: null, stopped: false }
      this.agents.set(g.name, agent)
      await initiateMissing(vici, desired)
      this.schedule(agent, new Set())
    } catch (e) {
      this.agents.delete(g.name)
      await vici.close()
      throw e
    }
  }

  /** Like an agent's resync: every VICI_RETRY_MS, initiate what is down; one round at a time. */
  private schedule(a: ViciAgent, stuck: Set<string>): void {
    a.timer = setTimeout(() => {
      void (async () => {
        try {
          const sas = await a.vici.listSas()
          if (missingChildren(a.desired, sas).length) await initiateMissing(a.vici, a.desired, sas, stuck)
        } catch {
          // charon gone or busy: the next round tries again; this driver has no reconnect (the daemon does)
        }
        if (!a.stopped) this.schedule(a, stuck)
      })()
    }, VICI_RETRY_MS)
    a.timer.unref()
  }

  private async close(a: ViciAgent | undefined): Promise<void> {
    if (!a) return
    a.stopped = true
    if (a.timer) clearTimeout(a.timer)
    await a.vici.close()
  }

  async stop(g: Gateway): Promise<void> {
    const a = this.agents.get(g.name)
    this.agents.delete(g.name)
    await this.close(a)
  }

  kill(g: Gateway): Promise<void> {
    return this.stop(g)
  }

  async waitReady(g: Gateway, timeoutMs: number): Promise<number> {
    const a = this.agents.get(g.name)
    if (!a) throw new Error(`agent of ${g.name} not running`)
    return waitFor(`tunnels of ${g.name}`, timeoutMs, async () => missingChildren(a.desired, await a.vici.listSas()).length === 0, 50)
  }

  async statusText(g: Gateway): Promise<string> {
    const a = this.agents.get(g.name)
    if (!a) return `${g.name}: agent not running`
    return renderSaTable(g.name, a.desired, await a.vici.listSas())
  }

  pid(): number | undefined {
    return undefined
  }

  async stopAll(): Promise<void> {
    const all = [...this.agents.values()]
    this.agents.clear()
    await Promise.all(all.map((a) => this.close(a)))
  }
}

/** Loads the node's key, certificate and the CA into charon (what FabEdge mounts under /etc/ipsec.d). */
export async function loadCredentials(vici: Vici, g: Gateway): Promise<void> {
  await vici.loadKey({ type: 'any', data: g.cert.keyPem })
  await vici.loadCert({ data: g.cert.certPem })
  await vici.loadCert({ data: await readFile(g.caPath), flag: 'CA' })
}

/** Children of initiated connections that are not INSTALLED, as [conn, child]. */
export function missingChildren(desired: Desired, sas: IkeSa[]): Array<[string, string]> {
  const out: Array<[string, string]> = []
  for (const conn of desired.initiate) {
    const installed = new Set(
      sas.filter((s) => s.name === conn && s.state === 'ESTABLISHED').flatMap((s) => s.children.filter((c) => c.state === 'INSTALLED').map((c) => c.name)),
    )
    for (const child of desired.initiateChildren[conn] ?? []) if (!installed.has(child)) out.push([conn, child])
  }
  return out
}

/**
 * Initiates every initiated child that is not up. An IKE_SA that was already not ESTABLISHED at the previous
 * call (`stuck`) is terminated first: a mediated connection whose peer was not yet registered with the mediator
 * ("peer is not online") stays in CREATED forever instead of failing.
 */
async function initiateMissing(vici: Vici, desired: Desired, known?: IkeSa[], stuck?: Set<string>): Promise<void> {
  const sas = known ?? (await vici.listSas())
  const pending = sas.filter((s) => s.state !== 'ESTABLISHED')
  const busy = new Set<string>()
  for (const s of pending) {
    if (stuck?.has(s.uniqueid)) await vici.terminate({ ikeId: s.uniqueid, force: true })
    else busy.add(s.name)
  }
  if (stuck) {
    stuck.clear()
    for (const s of pending) if (busy.has(s.name)) stuck.add(s.uniqueid)
  }
  for (const conn of desired.initiate) {
    if (busy.has(conn)) continue
    const kids = desired.initiateChildren[conn] ?? []
    const established = sas.some((s) => s.name === conn && s.state === 'ESTABLISHED')
    // A conn without children (the mediator) is brought up through its IKE_SA alone.
    if (kids.length === 0) {
      if (!established) await vici.initiate({ ike: conn })
      continue
    }
    const missing = missingChildren({ ...desired, initiate: [conn] }, sas)
    // Without an IKE_SA, one initiate creates it; the other children follow once it is up (next call), so
    // parallel initiates never race to create several IKE_SAs (or mediation requests) for one peer.
    for (const [, child] of established ? missing : missing.slice(0, 1)) await vici.initiate({ ike: conn, child })
  }
}

/** A per-peer table like `fabtunnel status` prints, from charon's SAs. */
export function renderSaTable(node: string, desired: Desired, sas: IkeSa[]): string {
  const rows: string[][] = [['PEER', 'ROLE', 'IKE', 'CHILDREN', 'REMOTE']]
  for (const [conn, section] of Object.entries(desired.conns)) {
    const kids = Object.keys((section.children ?? {}) as ViciSection)
    const ike = sas.filter((s) => s.name === conn)
    const est = ike.find((s) => s.state === 'ESTABLISHED')
    const up = new Set(ike.flatMap((s) => s.children.filter((c) => c.state === 'INSTALLED').map((c) => c.name)))
    const role = desired.initiate.includes(conn) ? 'initiator' : 'responder'
    rows.push([conn, role, est ? 'up' : ike[0]?.state.toLowerCase() ?? 'down', kids.length ? `${kids.filter((k) => up.has(k)).length}/${kids.length}` : '-', est?.remoteHost ?? '-'])
  }
  return `${node}\n${table(rows)}`
}

export function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)))
  return rows.map((r) => '  ' + r.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd()).join('\n')
}

// ---------------------------------------------------------------------------------------------------------------

export interface SaIds {
  /** conn -> IKE_SA unique id (ESTABLISHED ones only). */
  ike: Record<string, string>
  /** `conn/child` -> CHILD_SA unique id (INSTALLED ones only). */
  child: Record<string, string>
}

/** The unique ids of a gateway's live SAs, read from charon directly (independent of the agent). */
export async function saSnapshot(g: Gateway): Promise<SaIds> {
  const vici = new Vici({ uri: g.charon.uri, reconnect: false, timeoutMs: 5_000 })
  try {
    await vici.connect()
    const out: SaIds = { ike: {}, child: {} }
    for (const s of await vici.listSas()) {
      if (s.state !== 'ESTABLISHED') continue
      out.ike[s.name] = s.uniqueid
      for (const c of s.children) if (c.state === 'INSTALLED') out.child[`${s.name}/${c.name}`] = c.uniqueid
    }
    return out
  } finally {
    await vici.close()
  }
}

/** Whether every initiated child of every active gateway is INSTALLED (and there is one), judged from charon alone. */
export async function tunnelsUp(topo: Topology): Promise<boolean> {
  let expected = 0
  const results = await Promise.all(
    topo.activeGateways().map(async (g) => {
      const desired = await desiredOf(g)
      const vici = new Vici({ uri: g.charon.uri, reconnect: false, timeoutMs: 5_000 })
      try {
        await vici.connect()
        expected += desired.initiate.reduce((n, conn) => n + (desired.initiateChildren[conn]?.length ?? 0), 0)
        return missingChildren(desired, await vici.listSas()).length === 0
      } finally {
        await vici.close()
      }
    }),
  )
  // No initiated child anywhere would make every gateway "up" without a single tunnel.
  return expected > 0 && results.every(Boolean)
}

/**
 * Starts the agents of every active gateway: connectors first (their responder connections must exist before
 * edges dial), then edges in parallel; resolves with the ms until every agent reported ready.
 */
export async function startAgents(topo: Topology, driver: AgentDriver, timeoutMs = 30_000): Promise<number> {
  const t0 = performance.now()
  const gws = topo.activeGateways()
  const connectors = gws.filter((g) => g.plan.role === 'connector')
  const edges = gws.filter((g) => g.plan.role !== 'connector')
  await Promise.all(connectors.map((g) => driver.start(g)))
  await Promise.all(edges.map((g) => driver.start(g)))
  const left = (): number => Math.max(1, timeoutMs - (performance.now() - t0))
  await Promise.all(gws.map((g) => driver.waitReady(g, left())))
  return performance.now() - t0
}
