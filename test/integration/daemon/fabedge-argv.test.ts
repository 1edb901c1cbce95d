// FabEdge's edge pod, as root with real charon (kernel-libipsec) in namespaces: the real executable (the package's bin, `dist/cli.cjs`) started with
// the FabEdge operator's exact default argv and no command, inside a private mount namespace where FabEdge's
// default paths are temp dirs: /etc/fabedge (a kubelet ConfigMap dir, `..data` symlink swap), /etc/ipsec.d
// (cacerts/ca.crt, certs/tls.crt, private/tls.key), /var/run (holding the edge charon's VICI socket) and
// /etc/cni/net.d. /etc itself is an overlay in that mount namespace, so nothing is created on the host.
// Shows: the tunnel to the connector comes up, /healthz, net.ipv4.ip_forward set in that network namespace only,
// the conflist written with FabEdge's content only after the tunnels applied, not rewritten on an unrelated config
// change, rewritten on a subnet change; a read-only /proc/sys stops the start; --enable-proxy=true is refused.
import t from 'tap'
import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { copyFile, mkdir, mkdtemp, open, readFile, rm, stat } from 'node:fs/promises'
import { existsSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { CLI, assertBuilt, defaultDriver, waitForValue } from '../../harness/agents.js'
import { renderTunnelsYaml, starTopology, tunnelsView } from '../../harness/addressing.js'
import { execCapture } from '../../harness/exec.js'
import { ping } from '../../harness/matrix.js'
import { Netns, needsRoot } from '../../harness/netns.js'
import { Topology, type Gateway } from '../../harness/topology.js'

const CONN = 'beijing.connector'
const E1 = 'beijing.edge1'
/** FabEdge's operator's default agent args (helm-chart values.yaml → AGENT_ARG_* → buildAgentArgs, sorted, --v last). */
const OPERATOR_ARGV = ['--enable-dns=false', '--enable-proxy=false', '--local-cert=tls.crt', '--masq-outgoing=true', '--v=3']
const GOLDEN = new URL('../../fixtures/cni/fabedge-default.conflist', import.meta.url)
const GOLDEN_SUBNET = '10.234.1.0/24'

// Mount script: positional paths only (never spliced into the script text).
const MOUNTS = [
  'set -e',
  'mount -t overlay overlay -o "lowerdir=/etc,upperdir=$1,workdir=$2" /etc',
  'mkdir -p /etc/fabedge /etc/ipsec.d /etc/cni/net.d',
  'mount --bind "$3" /etc/fabedge',
  'mount --bind "$4" /etc/ipsec.d',
  'mount --bind "$5" /etc/cni/net.d',
  'mount --bind "$6" /var/run',
  'if [ "$7" = ro-proc-sys ]; then mount --bind /proc/sys /proc/sys; mount -o remount,bind,ro /proc/sys; fi',
  'shift 7',
  'exec "$@"',
].join('\n')

interface EdgePod {
  child: ChildProcess
  logPath: string
  cniDir: string
  exited: Promise<unknown>
  stop(): Promise<void>
  log(): Promise<string>
}

async function sysctlIn(g: Gateway): Promise<string> {
  return (await g.ns.run(['cat', '/proc/sys/net/ipv4/ip_forward'])).trim()
}

async function getIn(g: Gateway, path: string): Promise<{ code: number; body: string }> {
  const r = await g.ns.capture(['curl', '-s', '-m', '2', '-w', '\n%{http_code}', `http://127.0.0.1:30306${path}`], { timeoutMs: 4_000 })
  const at = r.stdout.lastIndexOf('\n')
  return { code: Number(r.stdout.slice(at + 1)) || 0, body: r.stdout.slice(0, at) }
}

async function statusOf(g: Gateway): Promise<any> {
  const r = await getIn(g, '/status')
  return r.code === 200 ? JSON.parse(r.body) : null
}

/** Starts the real CLI with `argv` as FabEdge's edge pod would, in g's namespace and a private mount namespace. */
async function startEdgePod(g: Gateway, base: string, argv: string[], opts: { roProcSys?: boolean } = {}): Promise<EdgePod> {
  const dirs = { upper: join(base, 'etc-upper'), work: join(base, 'etc-work'), ipsec: join(base, 'ipsec.d'), cni: join(base, 'cni') }
  for (const d of Object.values(dirs)) await mkdir(d, { recursive: true })
  for (const sub of ['cacerts', 'certs', 'private']) await mkdir(join(dirs.ipsec, sub), { recursive: true })
  await copyFile(g.caPath, join(dirs.ipsec, 'cacerts', 'ca.crt'))
  await copyFile(g.cert.certPath, join(dirs.ipsec, 'certs', 'tls.crt'))
  await copyFile(g.cert.keyPath, join(dirs.ipsec, 'private', 'tls.key'))
  const logPath = join(base, 'agent.log')
  const log = await open(logPath, 'a')
  const child = spawn('ip', [
    'netns', 'exec', g.ns.name, 'unshare', '--mount', '--propagation', 'private', 'sh', '-c', MOUNTS, 'sh',
    dirs.upper, dirs.work, dirname(g.configPath), dirs.ipsec, dirs.cni, dirname(g.charon.socketPath), opts.roProcSys ? 'ro-proc-sys' : '-',
    // As the image runs it: no test-runner preloads; the datapath this kernel has (no ESP: userspace libipsec).
    'env', '-u', 'NODE_OPTIONS', 'FABTUNNEL_DATAPATH=libipsec', process.execPath, CLI, ...argv,
  ], { stdio: ['ignore', log.fd, log.fd] })
  await log.close()
  const exited = once(child, 'exit')
  const stop = async () => {
    if (child.exitCode !== null || child.signalCode !== null) return
    child.kill('SIGTERM')
    const done = await Promise.race([exited.then(() => true), new Promise((r) => setTimeout(() => r(false), 5_000))])
    if (!done) {
      child.kill('SIGKILL')
      await Promise.race([exited, new Promise((r) => setTimeout(r, 5_000))])
    }
  }
  g.ns.onDestroy(stop)
  return { child, logPath, cniDir: dirs.cni, exited, stop, log: () => readFile(logPath, 'utf8').catch(() => '') }
}

t.test('--enable-proxy=true: the real executable exits non-zero naming kube-proxy', async (t) => {
  await assertBuilt()
  const r = await execCapture(['env', '-u', 'NODE_OPTIONS', process.execPath, CLI, '--enable-dns=false', '--enable-proxy=true', '--local-cert=tls.crt', '--masq-outgoing=true', '--v=3'], { timeoutMs: 30_000 })
  t.equal(r.code, 1)
  t.match(r.stderr, /refusing to start: --enable-proxy=true .*kube-proxy/)
  const dns = await execCapture(['env', '-u', 'NODE_OPTIONS', process.execPath, CLI, '--enable-dns=true'], { timeoutMs: 30_000 })
  t.equal(dns.code, 1)
  t.match(dns.stderr, /169\.254\.25\.10/)
})

t.test('FabEdge mode keeps the start-up SIGHUP safety of `run`', { skip: needsRoot, timeout: 60_000 }, async (t) => {
  await assertBuilt()
  const ns = await Netns.create('ffs')
  const dir = await mkdtemp(join(tmpdir(), 'ft-fabedge-hup-'))
  t.teardown(async () => {
    await ns.destroy()
    await rm(dir, { recursive: true, force: true })
  })
  await copyFile(new URL('../../fixtures/config/edge.yaml', import.meta.url), join(dir, 'tunnels.yaml'))
  // No charon: the tunnels never apply, so nothing is written under --cni-conf-path (a temp dir anyway).
  const child = spawn('ip', ['netns', 'exec', ns.name, 'env', '-u', 'NODE_OPTIONS', 'FABTUNNEL_VICI=unix:///nonexistent/charon.vici', 'FABTUNNEL_DATAPATH=libipsec',
    process.execPath, CLI, `--tunnels-conf=${join(dir, 'tunnels.yaml')}`, `--local-cert=${join(dir, 'none.crt')}`, `--cni-conf-path=${join(dir, 'cni')}`, '--v=3'], { stdio: 'ignore' })
  ns.onDestroy(() => { child.kill('SIGKILL') })
  const exited = once(child, 'exit')
  const catches = async (): Promise<boolean> => {
    const m = /^SigCgt:\s*([0-9a-f]+)/m.exec(await readFile(`/proc/${child.pid}/status`, 'utf8').catch(() => ''))
    return m !== null && (BigInt(`0x${m[1]}`) & 1n) === 1n
  }
  const by = Date.now() + 20_000
  while (!(await catches()) && Date.now() < by && child.exitCode === null) await new Promise((r) => setTimeout(r, 1))
  t.ok(await catches(), 'the process catches SIGHUP')
  for (let i = 0; i < 20 && child.exitCode === null; i++) {
    process.kill(child.pid!, 'SIGHUP')
    await new Promise((r) => setTimeout(r, 15))
  }
  t.equal(child.exitCode, null, 'SIGHUPs while the FabEdge flags are translated and the daemon loads did not kill it')
  t.equal(child.signalCode, null)
  const healthy = await waitForValue('/healthz', 15_000, async () => {
    if (child.exitCode !== null) throw new Error(`exited ${child.exitCode}`)
    const r = await ns.capture(['curl', '-s', '-m', '1', 'http://127.0.0.1:30306/healthz'], { timeoutMs: 3_000 })
    return r.stdout.trim() === 'ok'
  })
  t.ok(healthy)
  child.kill('SIGTERM')
  const [code] = (await Promise.race([exited, new Promise((r) => setTimeout(() => r([null]), 10_000))])) as [number | null]
  t.equal(code, 0, 'SIGTERM: clean exit')
  t.notOk(existsSync(join(dir, 'cni', 'fabedge.conflist')), 'no conflist without a tunnel pass')
})

t.test("FabEdge's edge pod argv on a real edge node", { skip: needsRoot, timeout: 240_000 }, async (t) => {
  await assertBuilt()
  const topo = await Topology.create({ spec: starTopology(1) })
  const driver = await defaultDriver()
  const base = await mkdtemp(join(tmpdir(), 'ft-fabedge-pod-'))
  t.teardown(async () => {
    await driver.stopAll()
    await topo.destroy()
    await rm(base, { recursive: true, force: true })
  })
  const conn = topo.gateway(CONN)
  const e1 = topo.gateway(E1)
  const subnet = tunnelsView(topo.plan, e1.plan).local.subnets[0]!
  const expected = (await readFile(GOLDEN, 'utf8')).replace(GOLDEN_SUBNET, subnet)
  t.not(expected, await readFile(GOLDEN, 'utf8'), 'the golden is rewritten for this node\'s subnet')
  await driver.agent(conn).start()
  await driver.waitReady(conn, 30_000)

  // The harness enables forwarding in every node; FabEdge's agent must do it itself.
  await e1.ns.run(['sysctl', '-q', '-w', 'net.ipv4.ip_forward=0'])
  t.equal(await sysctlIn(e1), '0')
  const hostForward = (await readFile('/proc/sys/net/ipv4/ip_forward', 'utf8')).trim()
  t.notOk(await ping(topo.podOf(E1).ns, topo.podOf(CONN).ip, 1_000), 'edge pod cannot reach the connector pod before the agent runs')

  await t.test('a read-only /proc/sys stops the start with a message naming ip_forward', async (t) => {
    const pod = await startEdgePod(e1, join(base, 'ro'), OPERATOR_ARGV, { roProcSys: true })
    const [code] = (await Promise.race([pod.exited, new Promise((r) => setTimeout(() => r([null]), 30_000))])) as [number | null]
    t.equal(code, 1, 'exit 1')
    t.match(await pod.log(), /cannot set \/proc\/sys\/net\/ipv4\/ip_forward to 1: EROFS/)
    t.equal(await sysctlIn(e1), '0', 'still 0')
    t.notOk(existsSync(join(pod.cniDir, 'fabedge.conflist')), 'nothing written')
  })

  // Charon down first: the tunnels cannot apply, so no conflist may appear yet.
  await e1.charon.stop()
  const pod = await startEdgePod(e1, join(base, 'pod'), OPERATOR_ARGV)
  const conflist = join(pod.cniDir, 'fabedge.conflist')
  const running = async () => {
    if (pod.child.exitCode !== null) throw new Error(`agent exited ${pod.child.exitCode}:\n${(await pod.log()).slice(-3000)}`)
  }

  await t.test('started from FabEdge flags alone: /healthz, ip_forward, FabEdge paths, no conflist while tunnels fail', async (t) => {
    const s = await waitForValue('a pass whose tunnels failed', 30_000, async () => {
      await running()
      const st = await statusOf(e1)
      return st?.lastPass?.errors?.tunnels ? st : null
    })
    const h = await getIn(e1, '/healthz')
    t.equal(h.code, 200)
    t.equal(h.body.trim(), 'ok')
    t.equal(await sysctlIn(e1), '1', 'net.ipv4.ip_forward became 1 in the edge namespace')
    t.equal((await readFile('/proc/sys/net/ipv4/ip_forward', 'utf8')).trim(), hostForward, "the host's own setting is untouched")
    t.equal(s.config.path, '/etc/fabedge/tunnels.yaml', "FabEdge's config path")
    t.equal(s.cni.path, '/etc/cni/net.d/fabedge.conflist', "FabEdge's conflist path")
    t.equal(s.ready, false)
    t.notOk(existsSync(conflist), 'no conflist before a pass whose tunnels applied')
    const log = await pod.log()
    t.match(log, /FabEdge agent command line translated to: fabtunnel run --log-level=info --cert=\/etc\/ipsec\.d\/certs\/tls\.crt --key=\/etc\/ipsec\.d\/private\/tls\.key --ip-forward --cni-conf-path=\/etc\/cni\/net\.d/)
    t.match(log, /FabEdge agent flags accepted and not used: --enable-dns=false .*--masq-outgoing=true/)
    t.match(log, /net\.ipv4\.ip_forward set to 1/)
  })

  await t.test('once charon is up: tunnel to the connector, conflist with the golden content, pod traffic forwarded', async (t) => {
    await e1.charon.restart()
    const s = await waitForValue('edge1 up and ready', 60_000, async () => {
      await running()
      const st = await statusOf(e1)
      return st?.ready && st.peers.length === 1 && st.peers.every((p: any) => p.state === 'up' && p.childrenUp === 3) ? st : null
    })
    t.match(s.peers[0], { name: CONN, state: 'up', childrenUp: 3 })
    t.equal(await readFile(conflist, 'utf8'), expected, 'byte for byte the conflist FabEdge writes for this subnet')
    t.equal((await stat(conflist)).mode & 0o777, 0o644)
    t.match(s.cni, { path: '/etc/cni/net.d/fabedge.conflist', subnets: [subnet], writes: 1, error: null })
    t.equal((await getIn(e1, '/readyz')).code, 200)
    t.ok(await ping(topo.podOf(E1).ns, topo.podOf(CONN).ip, 5_000), 'edge pod reaches the connector pod through the tunnel (forwarded)')
  })

  await t.test('an unrelated config change does not rewrite it; a subnet change does', async (t) => {
    const before = await stat(conflist)
    const gen = (await statusOf(e1)).config.generation as number
    await topo.writeConfig(E1, `${topo.tunnelsYaml(e1.plan)}# touched by the operator\n`)
    await waitForValue('the new config generation converged', 30_000, async () => {
      await running()
      const st = await statusOf(e1)
      // The engine's part of the pass that accepted the config starts after the load, in the same millisecond when
      // parse and desired state take less than one (a one-peer edge on a quiet machine): `>=`, or no later pass
      // comes to satisfy the wait.
      return st && st.config.generation === gen + 1 && st.ready && Date.parse(st.lastPass.startedAt) >= Date.parse(st.config.loadedAt)
    })
    const after = await stat(conflist)
    t.equal(after.ino, before.ino, 'same inode')
    t.equal(after.mtimeMs, before.mtimeMs, 'same mtime')
    t.equal((await statusOf(e1)).cni.writes, 1)

    // A second pod CIDR on edge1: the node owns an address in it (libipsec needs one in every local_ts), and the
    // connector's view lists it too, as the operator would write both.
    const extra = subnet.replace(/\.0\/24$/, '.0/25').replace(/^(\d+\.\d+)\.(\d+)/, (_m, ab: string, c: string) => `${ab}.${Number(c) + 100}`)
    await e1.ns.run(['ip', 'addr', 'add', extra.replace(/\.0\/25$/, '.1/25'), 'dev', 'podbr'])
    const edgeView = tunnelsView(topo.plan, e1.plan)
    edgeView.local.subnets.push(extra)
    const connView = tunnelsView(topo.plan, conn.plan)
    connView.peers.find((p) => p.name === E1)!.subnets.push(extra)
    await topo.writeConfig(CONN, renderTunnelsYaml(connView))
    await topo.writeConfig(E1, renderTunnelsYaml(edgeView))
    await waitForValue('the conflist rewritten', 30_000, async () => {
      await running()
      return (await readFile(conflist, 'utf8')).includes(extra)
    })
    const text = await readFile(conflist, 'utf8')
    t.same(JSON.parse(text).plugins[0].ipam.ranges, [[{ subnet }], [{ subnet: extra }]], 'one range set per subnet, in file order')
    t.not((await stat(conflist)).ino, before.ino, 'replaced by rename')
    t.equal((await statusOf(e1)).cni.writes, 2)
  })

  await pod.stop()
  t.equal(pod.child.exitCode, 0, 'SIGTERM: clean exit')
})
