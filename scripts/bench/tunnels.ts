// Benchmark (issue 13, "charon at scale"): N real tunnels to one connector, in namespaces (test/harness/many-edges.ts:
// one connector with real charon and the real agent, one edge charon carrying N edge identities).
// Run as root after a build: node --import tsx scripts/bench/tunnels.ts [--edges 200] [--addressing shared|distinct]
//   [--samples 5] [--default-charon]
// Reported, next to a floor measured in the same run on a fresh pair of namespaces (the same N connections loaded
// into the connector's charon straight over VICI, no agent; the same edge-side initiation):
// - time to all N established (IKE_SA + 3 CHILD_SAs each, counted on the connector's charon), from agent start;
// - the agent's pass times with them up: no-op (an unchanged tunnels.yaml swapped in, as kubelet does) and deep
//   (SIGHUP), median and max of --samples, with their writes;
// - RSS of the agent and of the connector's charon with them up; 3 sample pings through the tunnels.
// --default-charon runs the connector's charon with strongSwan's defaults instead of the shipped scale settings.
import { readFile } from 'node:fs/promises'
import { parseArgs } from 'node:util'
import { defaultDriver, table, waitForValue, type AgentHandle } from '../../test/harness/agents.js'
import { ManyEdges } from '../../test/harness/many-edges.js'
import { isRoot, teardownOnSignals } from '../../test/harness/netns.js'

const { values: args } = parseArgs({
  options: {
    edges: { type: 'string', default: '200' },
    addressing: { type: 'string', default: 'shared' },
    samples: { type: 'string', default: '5' },
    'default-charon': { type: 'boolean', default: false },
  },
})
const EDGES = Number(args.edges)
const SAMPLES = Number(args.samples)
const ADDRESSING = args.addressing === 'distinct' ? 'distinct' : 'shared'
const CHARON = args['default-charon'] ? 'default' : 'shipped'
if (!isRoot) throw new Error('run as root (network namespaces)')
if (!Number.isInteger(EDGES) || EDGES < 1 || !Number.isInteger(SAMPLES) || SAMPLES < 1) throw new Error('--edges and --samples must be positive integers')
teardownOnSignals()

async function rssMiB(pid: number | undefined): Promise<number> {
  if (pid === undefined) return NaN
  const m = /VmRSS:\s+(\d+) kB/.exec(await readFile(`/proc/${pid}/status`, 'utf8'))
  return m ? Number(m[1]) / 1024 : NaN
}

interface PassSample {
  ms: number
  writes: Record<string, number>
}

/** Triggers one pass with `kick` and resolves with the pass it caused (identified by its reason). */
async function onePass(agent: AgentHandle, reason: RegExp, kick: () => Promise<void> | void): Promise<PassSample> {
  const before = (await agent.status()).lastPass?.startedAt
  await kick()
  const pass = await waitForValue('the triggered pass', 30_000, async () => {
    const p = (await agent.status()).lastPass
    return p && p.startedAt !== before && p.reasons.some((r: string) => reason.test(r)) ? p : null
  }, 50)
  return { ms: pass.durationMs, writes: pass.writes }
}

/** Passes so far and their summed duration, from the agent's /metrics. */
async function passTotals(agent: AgentHandle): Promise<{ passes: number; seconds: number; cpu: number }> {
  const text = (await agent.get('/metrics')).body
  const sum = (re: RegExp): number => [...text.matchAll(re)].reduce((n, m) => n + Number(m[1]), 0)
  return {
    passes: sum(/^fabtunnel_passes_total\{[^}]*\} (\S+)$/gm),
    seconds: sum(/^fabtunnel_pass_duration_seconds_sum (\S+)$/gm),
    cpu: sum(/^fabtunnel_process_cpu_seconds_total (\S+)$/gm),
  }
}

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!
const fmt = (ms: number): string => (ms >= 1000 ? `${(ms / 1000).toFixed(2)} s` : `${ms.toFixed(1)} ms`)

interface RunResult {
  readyMs: number | null
  /** From agent start (or, for the floor, from the first load-conn) to all N up on the connector. */
  establishedMs: number
  /** From the connector's conns being loaded (agent ready) to all N up: the edges' part. */
  edgesMs: number
  passes?: { noop: PassSample[]; deep: PassSample[] }
  /** The agent's passes while the edges came up: how many, their summed duration, the agent's CPU seconds. */
  duringBringUp?: { passes: number; seconds: number; cpu: number }
  agentRss?: number
  charonRss: number
  pings: boolean[]
  ike: number
  children: number
  ids: number
  ignored: number
}

/** One run on fresh namespaces: `agent` true runs the daemon, false loads the same conns straight over VICI. */
async function run(agent: boolean): Promise<RunResult> {
  const m = await ManyEdges.create({ edges: EDGES, addressing: ADDRESSING, connectorCharon: CHARON })
  const driver = await defaultDriver({ logLevel: 'info' })
  try {
    const t0 = performance.now()
    let readyMs: number | null = null
    if (agent) {
      await driver.start(m.connector)
      readyMs = await driver.waitReady(m.connector, 120_000)
    } else {
      await m.loadConnectorDirect()
    }
    const before = agent ? await passTotals(driver.agent(m.connector)) : null
    const edgesMs = await m.bringUp(300_000)
    const after = agent ? await passTotals(driver.agent(m.connector)) : null
    const establishedMs = performance.now() - t0
    const sas = await m.connectorSas()
    const ignored = await m.connectorIgnoredInits()
    const pings = await Promise.all([0, Math.floor(EDGES / 2), EDGES - 1].map((i) => m.ping(i, 5_000)))
    const out: RunResult = { readyMs, establishedMs, edgesMs, charonRss: await rssMiB(m.connector.charon.pid), pings, ike: sas.ike, children: sas.children, ids: sas.fullyUp.size, ignored }
    if (agent) {
      const a = driver.agent(m.connector)
      // Let the passes the SA events caused settle first.
      await a.waitFor('a converged pass', async () => (await a.status()).lastPass?.converged === true, 60_000)
      const yaml = await readFile(m.connector.configPath, 'utf8')
      const noop: PassSample[] = []
      const deep: PassSample[] = []
      for (let i = 0; i < SAMPLES; i++) {
        noop.push(await onePass(a, /^config/, () => m.connector.config.update({ 'tunnels.yaml': yaml })))
        deep.push(await onePass(a, /^sighup$/, () => a.signal('SIGHUP')))
      }
      out.passes = { noop, deep }
      out.duringBringUp = { passes: after!.passes - before!.passes, seconds: after!.seconds - before!.seconds, cpu: after!.cpu - before!.cpu }
      out.agentRss = await rssMiB(a.pid)
    }
    return out
  } finally {
    await driver.stopAll()
    await m.destroy()
  }
}

console.log(`${EDGES} edge identities on one edge charon (addressing ${ADDRESSING}) -> one connector (charon settings: ${CHARON})`)
const ours = await run(true)
const floor = await run(false)
const writes = (xs: PassSample[]): string => JSON.stringify(xs.reduce<Record<string, number>>((acc, x) => {
  for (const [k, v] of Object.entries(x.writes)) acc[k] = (acc[k] ?? 0) + v
  return acc
}, {}))
const rows = [
  ['', 'fabtunnel agent', 'floor: conns loaded over VICI, no agent'],
  ['connector ready (agent start -> /readyz)', ours.readyMs === null ? '-' : fmt(ours.readyMs), '-'],
  [`all ${EDGES} established (IKE + 3 CHILD each)`, fmt(ours.establishedMs), fmt(floor.establishedMs)],
  ['  of which: conns loaded -> all established', fmt(ours.edgesMs), fmt(floor.edgesMs)],
  ['  agent passes meanwhile: count / summed duration / agent CPU', `${ours.duringBringUp!.passes} / ${fmt(ours.duringBringUp!.seconds * 1000)} / ${fmt(ours.duringBringUp!.cpu * 1000)}`, '-'],
  ['ESTABLISHED IKE_SAs / INSTALLED CHILD_SAs / distinct ids', `${ours.ike} / ${ours.children} / ${ours.ids}`, `${floor.ike} / ${floor.children} / ${floor.ids}`],
  ['IKE_SA_INITs the connector ignored (charon log)', String(ours.ignored), String(floor.ignored)],
  ['sample pings (first, middle, last edge)', ours.pings.map((p) => (p ? 'ok' : 'FAIL')).join(' '), floor.pings.map((p) => (p ? 'ok' : 'FAIL')).join(' ')],
  [`no-op pass (config swap), median / max of ${SAMPLES}`, `${fmt(median(ours.passes!.noop.map((p) => p.ms)))} / ${fmt(Math.max(...ours.passes!.noop.map((p) => p.ms)))}, writes ${writes(ours.passes!.noop)}`, '-'],
  [`deep pass (SIGHUP), median / max of ${SAMPLES}`, `${fmt(median(ours.passes!.deep.map((p) => p.ms)))} / ${fmt(Math.max(...ours.passes!.deep.map((p) => p.ms)))}, writes ${writes(ours.passes!.deep)}`, '-'],
  ['RSS agent', `${ours.agentRss!.toFixed(1)} MiB`, '-'],
  ['RSS connector charon', `${ours.charonRss.toFixed(1)} MiB`, `${floor.charonRss.toFixed(1)} MiB`],
]
console.log(table(rows))
console.log(`ratio: established ${(ours.establishedMs / floor.establishedMs).toFixed(2)}x the floor`)
