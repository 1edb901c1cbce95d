// The edge node's own duties in `fabtunnel run` (startDaemon on a node built from fakes): net.ipv4.ip_forward at
// start, and the CNI conflist after each pass whose tunnels applied: when it is (not) written, what a write error
// does to readiness and /status. The real /proc/sys and real files: test/integration/daemon/fabedge-argv.test.ts.
import t, { type Test } from 'tap'
import { EventEmitter } from 'node:events'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { join } from 'node:path'
import { tmpdir } from 'node:os'
import { startDaemon, type RouteMonitor } from '../../../src/daemon/run.js'
import { CNI_DEFAULTS, type CniFs, type CniOptions } from '../../../src/daemon/cni.js'
import { SysctlError, type SysctlFs } from '../../../src/daemon/sysctl.js'
import { FakeCharon } from '../../harness/charon-fake.js'
import { ConfigMapDir } from '../../harness/configmap.js'
import { fakeNode, memoryLogger, until, type FakeNode } from '../../harness/fake-node.js'

const FIX = new URL('../../fixtures/config/', import.meta.url).pathname
const EDGE = readFileSync(join(FIX, 'edge.yaml'), 'utf8')
const GOLDEN = readFileSync(new URL('../../fixtures/cni/fabedge-default.conflist', import.meta.url), 'utf8')
const CNI: CniOptions = { confDir: '/etc/cni/net.d', ...CNI_DEFAULTS }
const PATH = '/etc/cni/net.d/fabedge.conflist'

function memFs() {
  const files = new Map<string, string>()
  const writes: string[] = []
  let failWrite: Error | null = null
  const fs: CniFs = {
    read: async (p) => files.get(p) ?? null,
    writeAtomic: async (p, content) => {
      if (failWrite) throw failWrite
      writes.push(p)
      files.set(p, content)
    },
  }
  return { fs, files, writes, failWrites: (e: Error | null) => { failWrite = e } }
}

function memSysctl(value: string, fail?: NodeJS.ErrnoException) {
  const state = { value, reads: 0, writes: 0 }
  const fs: SysctlFs = {
    read: async () => { state.reads++; return `${state.value}\n` },
    write: async (_p, v) => {
      if (fail) throw fail
      state.writes++
      state.value = v.trim()
    },
  }
  return { fs, state }
}

async function rig(t: Test, o: { cni?: CniOptions | null; cniFs?: CniFs; ipForward?: boolean; sysctl?: SysctlFs; charon?: FakeCharon } = {}) {
  const dir = mkdtempSync(join(tmpdir(), 'ftduty-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const config = await ConfigMapDir.create(join(dir, 'config'), { 'tunnels.yaml': EDGE })
  const { log, lines } = await memoryLogger()
  let fake: FakeNode | undefined
  let builds = 0
  const monitor = Object.assign(new EventEmitter(), { close() {} })
  const charon = o.charon ?? new FakeCharon()
  const running = await startDaemon(
    {
      config: config.path('tunnels.yaml'), vici: 'unix:///nonexistent', cert: join(dir, 'c'), key: join(dir, 'k'), ca: join(dir, 'ca'),
      listen: { host: '127.0.0.1', port: 0 }, datapath: 'libipsec', resyncMs: 0, log,
      ...(o.ipForward !== undefined ? { ipForward: o.ipForward } : {}), ...(o.cni !== undefined ? { cni: o.cni } : {}),
    },
    {
      buildNode: async (n) => {
        builds++
        fake = fakeNode({ config: n.config, cert: n.cert, key: n.key, ca: n.ca, log: n.log, charon, ...(n.cni ? { cni: n.cni } : {}), ...(n.cniFs ? { cniFs: n.cniFs } : {}) })
        return fake.parts
      },
      openMonitor: () => monitor as unknown as RouteMonitor,
      ...(o.sysctl ? { sysctl: o.sysctl } : {}),
      ...(o.cniFs ? { cniFs: o.cniFs } : {}),
    },
  )
  t.teardown(() => running.stop())
  const status = async () => (await (await fetch(`http://127.0.0.1:${running.httpAddress.port}/status`)).json()) as Record<string, any>
  return { running, fake: fake!, config, lines, charon, status, builds: () => builds }
}

t.test('ip_forward: set at start when 0, left alone when 1, untouched without --ip-forward', async (t) => {
  const off = memSysctl('0')
  const r = await rig(t, { ipForward: true, sysctl: off.fs })
  t.equal(off.state.value, '1')
  t.equal(off.state.writes, 1)
  t.ok(r.lines.some((l) => l.msg === 'net.ipv4.ip_forward set to 1' && l.from === '0'), 'the change is logged')
  const on = memSysctl('1')
  const r2 = await rig(t, { ipForward: true, sysctl: on.fs })
  t.equal(on.state.writes, 0)
  t.ok(r2.lines.some((l) => l.msg === 'net.ipv4.ip_forward already 1'))
  const untouched = memSysctl('0')
  await rig(t, { sysctl: untouched.fs })
  t.same(untouched.state, { value: '0', reads: 0, writes: 0 }, 'plain run does not touch /proc/sys')
})

t.test('ip_forward that cannot be set stops the start with a typed error, before anything else', async (t) => {
  const ro = memSysctl('0', Object.assign(new Error('EROFS: read-only file system'), { code: 'EROFS' }))
  let built = false
  const err = await startDaemon(
    {
      config: '/nonexistent/t.yaml', vici: 'unix:///nonexistent', cert: '/c', key: '/k', ca: '/ca', listen: { host: '127.0.0.1', port: 0 },
      datapath: 'libipsec', resyncMs: 0, log: (await memoryLogger()).log, ipForward: true,
    },
    { buildNode: async () => { built = true; throw new Error('not reached') }, openMonitor: () => { throw new Error('not reached') }, sysctl: ro.fs },
  ).catch((e: unknown) => e)
  t.ok(err instanceof SysctlError)
  t.match((err as Error).message, /EROFS.*privileged/)
  t.notOk(built, 'no node was built, no HTTP port opened')
})

t.test('the conflist is written after the first pass whose tunnels applied, with the golden content', async (t) => {
  const mem = memFs()
  const charon = new FakeCharon()
  charon.fail('listConns')
  const r = await rig(t, { cni: CNI, cniFs: mem.fs, charon })
  t.ok(await until(() => (r.fake.parts.agent.lastPass?.errors.tunnels ?? '') !== ''), 'a pass with failing tunnels ran')
  t.same(mem.writes, [], 'no conflist while the tunnels fail (FabEdge: not before ensureConnections succeeds)')
  t.equal(r.fake.parts.agent.ready, false)
  charon.heal()
  t.ok(await until(() => r.fake.parts.agent.ready), 'converged once charon answers (retry with backoff)')
  t.same(mem.writes, [PATH])
  t.equal(mem.files.get(PATH), GOLDEN)
  const status = await r.status()
  t.match(status.cni, { path: PATH, subnets: ['10.234.1.0/24'], writes: 1, error: null })
  t.type(status.cni.writtenAt, 'string')
  t.ok(r.lines.some((l) => l.msg === 'CNI conflist written' && l.path === PATH))

  // An unrelated config change (a peer's address) does not rewrite it; a subnet change does.
  await r.config.update({ 'tunnels.yaml': EDGE.replace('10.22.53.117', '10.22.53.118') })
  t.ok(await until(() => r.fake.parts.agent.configState.generation === 2 && r.fake.parts.agent.ready))
  await r.fake.parts.agent.idle()
  t.same(mem.writes, [PATH], 'not rewritten')
  await r.config.update({ 'tunnels.yaml': EDGE.replace('- 10.234.1.0/24', '- 10.234.1.0/24\n    - fd00:234:1::/64') })
  t.ok(await until(() => mem.writes.length === 2), 'rewritten for the new subnets')
  t.match(mem.files.get(PATH), /"subnet": "fd00:234:1::\/64"/)
})

t.test('a conflist that cannot be written: not ready, the error in /status and the logs, retried until it works', async (t) => {
  const mem = memFs()
  mem.failWrites(Object.assign(new Error('EROFS: read-only file system'), { code: 'EROFS' }))
  const r = await rig(t, { cni: CNI, cniFs: mem.fs })
  t.ok(await until(() => r.fake.parts.agent.lastPass?.duties?.cni !== undefined), 'the pass records the duty failure')
  t.equal(r.fake.parts.agent.ready, false, 'not ready: pods on this node could get no address')
  t.match((await r.status()).cni.error, /cannot write \/etc\/cni\/net\.d\/fabedge\.conflist: EROFS/)
  t.match((await r.status()).lastPass.duties, { cni: /EROFS/ })
  t.ok(r.lines.some((l) => l.msg === 'node duty failed; not ready until it succeeds' && l.duty === 'cni'))
  t.match(await (await r.fake.parts.metrics.registry.getSingleMetricAsString('fabtunnel_subsystem_errors_total')), /subsystem="cni"/)
  mem.failWrites(null)
  t.ok(await until(() => r.fake.parts.agent.ready, 15_000), 'the retry wrote it and the node became ready')
  t.equal(mem.files.get(PATH), GOLDEN)
  t.equal((await r.status()).cni.error, null)
})

t.test('without --cni-conf-path nothing is written and /status says null', async (t) => {
  const mem = memFs()
  const r = await rig(t, { cni: null, cniFs: mem.fs })
  t.ok(await until(() => r.fake.parts.agent.ready))
  t.same(mem.writes, [])
  t.equal((await r.status()).cni, null)
})
