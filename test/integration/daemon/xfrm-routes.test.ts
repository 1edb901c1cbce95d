// The production datapath's route programming (kernel ESP: strongSwan with install_routes = no, the agent owns
// `<peer subnet> via <default gateway> table 220 proto 220`). Packets cannot flow here (no ESP in this kernel),
// but what the agent writes to the kernel can be checked exactly, with `ip` as the oracle.
import t from 'tap'
import { needsRoot } from '../../harness/netns.js'
import { Cluster } from '../../harness/cluster.js'

const peers = (subnets: string[][]) => subnets.map((s, i) => [
  `    - id: C=CN, O=fabedge.io, CN=test.far${i}`,
  `      name: test.far${i}`,
  '      subnets:', ...s.map((c) => `        - ${c}`),
  '      type: EdgeNode',
].join('\n')).join('\n')

t.test('xfrm datapath: table-220 routes via the default gateway, repaired at once, foreign routes untouched', { skip: needsRoot, timeout: 120_000 }, async (t) => {
  const c = await Cluster.create(0)
  t.teardown(() => c.destroy())
  const conn = c.connector
  const gw = conn.underlay.replace(/\.\d+$/, '.1')
  await conn.ns.run(['ip', 'route', 'add', 'default', 'via', gw])
  await conn.ns.run(['ip', 'route', 'add', '10.200.0.0/16', 'via', gw, 'table', '220', 'proto', 'static'])
  const head = c.tunnelsYaml(conn, []).replace(/peers:\n$/, '')
  const write = (subnets: string[][]) => c.writeConfig(conn, `${head}peers:\n${peers(subnets)}\n`)
  const ours = async () => (await conn.ns.run(['ip', 'route', 'show', 'table', '220', 'proto', '220'])).trim().split('\n').filter(Boolean).sort()
  await write([['10.61.0.0/24', '10.62.0.0/24'], ['10.63.0.0/24']])
  Object.assign(conn.agent.opts, { datapath: 'xfrm' })
  conn.agent.start()
  await conn.agent.waitFor('routes programmed', async () => (await ours()).length === 3, 20_000)
  for (const dst of ['10.61.0.0/24', '10.62.0.0/24', '10.63.0.0/24']) {
    t.match((await ours()).find((l) => l.startsWith(`${dst} `)), new RegExp(`^${dst.replace(/\./g, '\\.')} via ${gw.replace(/\./g, '\\.')} dev \\S+`), `${dst} via the default gateway`)
  }
  t.match(await conn.ns.run(['ip', 'rule', 'show', 'priority', '220']), /from all lookup 220/)

  await conn.ns.run(['ip', 'route', 'del', '10.62.0.0/24', 'table', '220'])
  const t0 = Date.now()
  await conn.agent.waitFor('deleted route back', async () => (await ours()).some((l) => l.startsWith('10.62.0.0/24 ')), 5000, 10)
  t.pass(`a route deleted by hand is back after ${Date.now() - t0} ms (netlink event, no resync)`)

  await write([['10.61.0.0/24']])
  await conn.agent.waitFor('removed peer routes gone', async () => (await ours()).length === 1, 10_000)
  t.match((await ours())[0], /^10\.61\.0\.0\/24 via /)
  t.match(await conn.ns.run(['ip', 'route', 'show', 'table', '220']), /10\.200\.0\.0\/16 via .* proto static/, 'a foreign route in table 220 survives every sync')
  const s = await conn.agent.status()
  t.match(s.routes, { ownRoutes: 1, conflicts: 0 })

  await conn.agent.stop()
  const { execCapture } = await import('../../harness/exec.js')
  const root = new URL('../../../', import.meta.url).pathname
  const r = await execCapture(['ip', 'netns', 'exec', conn.ns.name, process.execPath, '--import', 'tsx', `${root}src/cli.ts`, 'cleanup', '--json', '--vici', conn.charon.uri, '--log-level', 'silent'], { cwd: root, timeoutMs: 30_000 })
  t.equal(r.code, 0, r.stderr)
  t.same(JSON.parse(r.stdout).routes, ['10.61.0.0/24'])
  t.same(await ours(), [], 'cleanup removed our route')
  t.match(await conn.ns.run(['ip', 'route', 'show', 'table', '220']), /10\.200\.0\.0\/16/, 'and only ours')
})
