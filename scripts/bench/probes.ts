// CPU of the agent probing 1,000 peers every second, against the same agent with probes off, in the same run.
//
// The agent is the real `fabtunnel run` (dist/ must be built) on a harness connector with its real charon, whose
// tunnels.yaml gets 1,000 extra edge peers (pod subnets 10.128.0.0/24 ... 10.131.231.0/24; their connections are
// loaded into charon, where the connector only responds). The peers' probe targets (each subnet's .1) live on a
// port-less bridge in one "targets" namespace reached over a veth WITHOUT a tunnel: only the probing is measured,
// not ESP. Each phase samples the agent's utime+stime from /proc over a window after a settle time; the probed
// phase also reports how many peers were up, so an unanswered run cannot pass for a cheap one.
//
//   npm run build && node --import tsx scripts/bench/probes.ts [--peers 1000] [--window 30] [--rate 1000]
import { readFile } from 'node:fs/promises'
import { parseArgs } from 'node:util'
import { parse, stringify } from 'yaml'
import { defaultDriver, startAgents } from '../../test/harness/agents.js'
import { starTopology } from '../../test/harness/addressing.js'
import { isRoot, Netns, teardownOnSignals, vethPair } from '../../test/harness/netns.js'
import { Topology } from '../../test/harness/topology.js'

const { values } = parseArgs({ options: { peers: { type: 'string', default: '1000' }, window: { type: 'string', default: '30' }, rate: { type: 'string', default: '1000' } } })
const PEERS = Number(values.peers)
const WINDOW_S = Number(values.window)
const RATE = Number(values.rate)
const CLK_TCK = 100

if (!isRoot) {
  console.error('needs root (network namespaces)')
  process.exit(1)
}
teardownOnSignals()

const subnetOf = (i: number): string => `10.${128 + Math.floor(i / 256)}.${i % 256}.0/24`
const targetOf = (i: number): string => `10.${128 + Math.floor(i / 256)}.${i % 256}.1`

async function cpuTicks(pid: number): Promise<number> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8')
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  return Number(f[11]) + Number(f[12])
}

async function rssKiB(pid: number): Promise<number> {
  const s = await readFile(`/proc/${pid}/status`, 'utf8')
  return Number(/VmRSS:\s+(\d+)/.exec(s)![1])
}

let probeArgs: string[] = ['--probe-interval', '0']
const driver = await defaultDriver({ logLevel: 'warn', extraArgs: () => probeArgs })
const topo = await Topology.create({ spec: starTopology(1) })
const targets = await Netns.create('ptg')
try {
  await startAgents(topo, driver)
  const cg = topo.gateway('beijing.connector')
  // The targets: every peer's .1 on a bridge, answered by the kernel.
  const [inC, inT] = await vethPair(cg.ns, targets, 'vpt')
  await cg.ns.run(['ip', 'addr', 'add', '192.0.2.1/30', 'dev', inC])
  await targets.run(['ip', 'addr', 'add', '192.0.2.2/30', 'dev', inT])
  await targets.run(['ip', 'link', 'add', 'tgt', 'type', 'bridge'])
  await targets.run(['ip', 'link', 'set', 'tgt', 'up'])
  const batch = Array.from({ length: PEERS }, (_, i) => `addr add ${targetOf(i)}/24 dev tgt`).join('\n') + '\n'
  await targets.run(['ip', '-batch', '-'], { input: batch })
  await targets.run(['ip', 'route', 'add', '10.81.0.0/16', 'via', '192.0.2.1'])
  await cg.ns.run(['ip', 'route', 'add', '10.128.0.0/12', 'via', '192.0.2.2'])

  const config = parse(await readFile(cg.configPath, 'utf8')) as { peers: Array<Record<string, unknown>> }
  for (let i = 0; i < PEERS; i++) {
    config.peers.push({
      id: `C=CN, O=fabedge.io, CN=bench.edge${i}`, name: `bench.edge${i}`, publicAddresses: [`172.20.${Math.floor(i / 256)}.${i % 256}`],
      subnets: [subnetOf(i)], nodeSubnets: [`172.21.${Math.floor(i / 256)}.${i % 256}`], type: 'EdgeNode',
    })
  }
  await topo.writeConfig(cg.name, stringify(config))
  const agent = driver.agent(cg)

  const measure = async (label: string, args: string[]): Promise<{ cpu: number; rss: number; up: number }> => {
    probeArgs = args
    await agent.restart()
    await agent.waitFor('ready with every peer loaded', async () => {
      const s = await agent.status().catch(() => null)
      return s?.ready === true && s.peers.length === PEERS + 1
    }, 120_000, 500)
    // Settle: the first passes, and with probes every peer answered once.
    await new Promise((r) => setTimeout(r, 10_000))
    const pid = agent.pid!
    const t0 = performance.now()
    const c0 = await cpuTicks(pid)
    await new Promise((r) => setTimeout(r, WINDOW_S * 1000))
    const c1 = await cpuTicks(pid)
    const secs = (performance.now() - t0) / 1000
    const s = await agent.status()
    const up = s.probes?.enabled ? s.probes.peers.filter((p: { datapath: string }) => p.datapath === 'up').length : 0
    const r = { cpu: ((c1 - c0) / CLK_TCK / secs) * 100, rss: await rssKiB(pid), up }
    console.log(`${label}: agent CPU ${r.cpu.toFixed(2)} % of one core over ${secs.toFixed(0)} s, RSS ${(r.rss / 1024).toFixed(0)} MiB${s.probes?.enabled ? `, ${up}/${PEERS + 1} peers up, period ${s.probes.periodMs} ms` : ''}`)
    return r
  }
  const off = await measure('probes off', ['--probe-interval', '0'])
  const on = await measure(`probes on (${PEERS} peers, 1 s, rate cap ${RATE}/s)`, ['--probe-interval', '1s', '--probe-rate', String(RATE), '--probe-repair', 'off'])
  console.log(`\nprobing ${PEERS} peers every second costs ${(on.cpu - off.cpu).toFixed(2)} percentage points of one core (${on.cpu.toFixed(2)} % vs ${off.cpu.toFixed(2)} % idle), RSS +${((on.rss - off.rss) / 1024).toFixed(1)} MiB; ${on.up} of ${PEERS} bench peers answered`)
} finally {
  await driver.stopAll()
  await targets.destroy()
  await topo.destroy()
}
