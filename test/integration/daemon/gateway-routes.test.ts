// Issue 12 defect 6, against the real daemon (`node dist/cli.js run --datapath xfrm`) in a throwaway namespace,
// with `ip` as the oracle. charon is deliberately absent: the tunnels subsystem fails every pass, which the routes
// subsystem must not care about, and the resync timer is off, so only events and the error backoff start passes.
// - A dual-stack config on a v4-only uplink gets its IPv4 routes in table 220, and /status names IPv6 as the
//   family it cannot route.
// - A default route appearing, or changing, in the main table is an event (`netlink:gateway`): the table-220
//   routes follow it within a bounded wait, and the log shows the pass that did it.
import t from 'tap'
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { mkdtempSync, openSync, closeSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { CLI, waitFor, WaitAborted } from '../../harness/agents.js'
import { Netns, needsRoot } from '../../harness/netns.js'

const LISTEN = '127.0.0.1:30306'
const CONFIG = `id: C=CN, O=fabedge.io, CN=test.edge1
name: test.edge1
publicAddresses:
    - 10.9.0.1
subnets:
    - 10.234.1.0/24
    - fd00:234:1::/64
nodeSubnets:
    - 10.9.0.1
type: EdgeNode
peers:
    - id: C=CN, O=fabedge.io, CN=test.connector
      name: test.connector
      publicAddresses:
        - 10.9.0.100
      subnets:
        - 10.233.0.0/18
        - fd00:233::/64
      nodeSubnets:
        - 10.9.0.100
      type: Connector
    - id: C=CN, O=fabedge.io, CN=test.edge2
      name: test.edge2
      publicAddresses:
        - 10.9.0.102
      subnets:
        - 10.234.2.0/24
        - fd00:234:2::/64
      nodeSubnets:
        - 10.9.0.102
      type: EdgeNode
`
const V4 = ['10.233.0.0/18', '10.234.2.0/24']
const V6 = ['fd00:233::/64', 'fd00:234:2::/64']

interface IpRoute { dst: string; gateway?: string }

t.test('xfrm routes: v4 programmed on a v4-only uplink, IPv6 reported; gateways followed on netlink events', { skip: needsRoot, timeout: 120_000 }, async (t) => {
  const ns = await Netns.create('gw')
  t.teardown(() => ns.destroy())
  const dir = mkdtempSync(join(tmpdir(), 'ft-gw-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  await ns.run(['ip', 'link', 'add', 'up0', 'type', 'veth', 'peer', 'name', 'up1'])
  await ns.run(['ip', 'link', 'set', 'up0', 'up'])
  await ns.run(['ip', 'link', 'set', 'up1', 'up'])
  await ns.run(['ip', 'addr', 'add', '10.9.0.1/24', 'dev', 'up0'])
  await ns.run(['ip', '-6', 'addr', 'add', '2001:db8::1/64', 'dev', 'up0', 'nodad'])
  await ns.run(['ip', 'route', 'add', 'default', 'via', '10.9.0.254'])
  const config = join(dir, 'tunnels.yaml')
  writeFileSync(config, CONFIG)
  const logPath = join(dir, 'agent.log')
  const fd = openSync(logPath, 'a')
  const child = spawn('ip', [
    'netns', 'exec', ns.name, process.execPath, CLI, 'run', '--datapath', 'xfrm', '--config', config,
    '--vici', `unix://${join(dir, 'no-charon.vici')}`, '--cert', join(dir, 'tls.crt'), '--key', join(dir, 'tls.key'),
    '--ca', join(dir, 'ca.crt'), '--listen', LISTEN, '--resync-interval', '0', '--log-level', 'info',
  ], { stdio: ['ignore', fd, fd] })
  closeSync(fd)
  const exited = once(child, 'exit')
  ns.onDestroy(async () => {
    if (child.exitCode !== null || child.signalCode !== null) return
    child.kill('SIGKILL')
    await Promise.race([exited, new Promise((r) => setTimeout(r, 5_000))])
  })
  const alive = (): void => {
    if (child.exitCode !== null || child.signalCode !== null) throw new WaitAborted(`agent exited:\n${readFileSync(logPath, 'utf8').slice(-2000)}`)
  }
  const table = async (family: 4 | 6): Promise<IpRoute[]> =>
    JSON.parse(await ns.run(['ip', '-j', `-${family}`, 'route', 'show', 'table', '220', 'proto', '220'])) as IpRoute[]
  const vias = async (family: 4 | 6): Promise<string[]> => (await table(family)).map((r) => `${r.dst} via ${r.gateway ?? '-'}`).sort()
  const gatewayPasses = (): Array<{ reasons: string[]; writes: Record<string, number> }> =>
    readFileSync(logPath, 'utf8').split('\n').filter((l) => l.includes('"pass done"')).map((l) => JSON.parse(l) as { reasons: string[]; writes: Record<string, number> })
      .filter((p) => p.reasons.includes('netlink:gateway'))

  // 1. Dual-stack config, v4-only uplink: the IPv4 routes are there, IPv6 is reported by name.
  await waitFor('IPv4 routes in table 220', 20_000, async () => {
    alive()
    return (await vias(4)).length === V4.length
  })
  t.same(await vias(4), V4.map((d) => `${d} via 10.9.0.254`), 'every IPv4 peer subnet via the IPv4 default gateway')
  t.same(await table(6), [], 'no IPv6 route without an IPv6 gateway')
  const status = JSON.parse(await ns.run(['curl', '-sf', '-m', '2', `http://${LISTEN}/status`])) as { lastPass: { errors: Record<string, string> } }
  t.match(status.lastPass.errors.routes, /no IPv6 default gateway in the main table: 2 route\(s\) in table 220 not programmed: fd00:233::\/64, fd00:234:2::\/64/)
  t.match(await ns.run(['ip', '-6', 'rule', 'show', 'priority', '220']), /from all lookup 220/, 'the IPv6 rule is in place regardless')

  // 2. An IPv6 default route appears: an event, and the IPv6 routes follow.
  await ns.run(['ip', '-6', 'route', 'add', 'default', 'via', '2001:db8::fe'])
  await waitFor('IPv6 routes after the IPv6 default route appeared', 5_000, async () => {
    alive()
    return (await vias(6)).length === V6.length
  }, 50)
  t.same(await vias(6), V6.map((d) => `${d} via 2001:db8::fe`))

  // 3. The IPv4 default gateway changes: table-220 `via` follows.
  const before = gatewayPasses().length
  await ns.run(['ip', 'route', 'replace', 'default', 'via', '10.9.0.253'])
  await waitFor('IPv4 routes via the new gateway', 5_000, async () => {
    alive()
    return (await vias(4)).every((l) => l.endsWith(' via 10.9.0.253'))
  }, 50)
  t.same(await vias(4), V4.map((d) => `${d} via 10.9.0.253`), 'every IPv4 route moved to the new gateway')
  t.same(await vias(6), V6.map((d) => `${d} via 2001:db8::fe`), 'IPv6 untouched')
  // The error backoff (charon is absent) also runs deep passes that re-read the gateways: the log must show that
  // the event itself started a pass.
  await waitFor('a pass started by netlink:gateway', 5_000, async () => gatewayPasses().length > before, 50)
  t.pass(`passes started by netlink:gateway after the change: ${JSON.stringify(gatewayPasses().slice(before))}`)

  child.kill('SIGTERM')
  await Promise.race([exited, new Promise((r) => setTimeout(r, 5_000))])
})
