// The agent and strongSwan images, built for real and run the way FabEdge's operator runs them. scripts/image/build
// builds both with `buildah bud --isolation chroot` FROM cached stand-in bases (scripts/image/standin-bases: no
// registry is reachable here). Then, in the namespace harness (starTopology(1): beijing.connector runs the host's
// charon and `fabtunnel run`; beijing.edge1 runs neither), the edge's pod is made of the images, each container a
// `buildah run` inside the edge's network namespace (hostNetwork) with the edge pod's exact volume layout
// (research/fabedge-dropin.md §1.2):
//   netconf      ConfigMap dir with kubelet's `..data` swap    -> /etc/fabedge (tunnels.yaml)
//   ipsec-d      Secret items cacerts/ca.crt certs/tls.crt private/tls.key, also a `..data` dir -> /etc/ipsec.d (ro)
//   ipsec-secrets  the Secret's ipsec.secrets file (subPath)    -> /etc/ipsec.secrets (ro)
//   var-run      one host dir for both containers (VICI socket) -> /var/run
//   cni-config, cni-bin, cni-cache  host dirs                  -> /etc/cni/net.d, /opt/cni/bin, /var/lib/cni/cache
//   lib-modules  /lib/modules (ro); agent-workdir              -> /var/lib/fabedge
// The init container runs `/plugins/env_prepare.sh` (operator HEAD) and `env_prepare.sh` from PATH (v1.0.0), the
// agent container gets FabEdge's default operator args after the image's ENTRYPOINT, the strongSwan container its
// image's default command. Two deviations, both forced by this machine and nothing the images can change: the
// kernel has no ESP, so charon uses its libipsec config (STRONGSWAN_CONF) and the agent `--datapath libipsec`
// (FABTUNNEL_DATAPATH; the operator passes no env); and `privileged` is the capability list of containers.ts.
import t from 'tap'
import { existsSync } from 'node:fs'
import { chmod, mkdir, readFile, readdir, rm, stat, symlink, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { defaultDriver, waitFor, waitForValue, ROOT, WaitAborted } from '../harness/agents.js'
import { starTopology, tunnelsView } from '../harness/addressing.js'
import { Container, killNamespacePids, removeStaleContainers, type Mount } from '../harness/containers.js'
import { exec, execCapture } from '../harness/exec.js'
import { ping } from '../harness/matrix.js'
import { needsRoot } from '../harness/netns.js'
import { Topology } from '../harness/topology.js'

const AGENT_IMAGE = 'localhost/fabtunnel:test'
const STRONGSWAN_IMAGE = 'localhost/fabtunnel-strongswan:test'
/** The edge agent's args under the chart's default values (research/fabedge-dropin.md §1.3), in the operator's order. */
const OPERATOR_ARGS = ['--enable-dns=false', '--enable-proxy=false', '--local-cert=tls.crt', '--masq-outgoing=true', '--v=3']
const PLUGINS = ['bridge', 'host-local', 'loopback', 'portmap', 'bandwidth']
const BUILD_TIMEOUT_MS = 20 * 60_000

// A cold build (debootstrap, apt, npm ci) takes minutes: more than tap's per-file default.
t.setTimeout(BUILD_TIMEOUT_MS + 5 * 60_000)

/** Builds both images (cached); the build's own report goes to the test log. */
async function buildImages(): Promise<string> {
  const t0 = performance.now()
  const r = await execCapture([join(ROOT, 'scripts', 'image', 'build')], {
    timeoutMs: BUILD_TIMEOUT_MS,
    env: { ...process.env, FABTUNNEL_AGENT_IMAGE: AGENT_IMAGE, FABTUNNEL_STRONGSWAN_IMAGE: STRONGSWAN_IMAGE },
  })
  if (r.code !== 0) throw new Error(`scripts/image/build failed (${r.code ?? r.signal}):\n${r.stderr.slice(-4000)}`)
  return `${r.stdout.trim()}\nscripts/image/build took ${((performance.now() - t0) / 1000).toFixed(1)} s\n${r.stderr.split('\n').filter((l) => l.startsWith('standin-bases:')).join('\n')}`
}

/** A kubelet-style atomic-writer directory: `..<ts>/<items>`, `..data` -> it, and a top-level symlink per entry. */
async function secretDir(dir: string, items: Record<string, string>): Promise<void> {
  const data = '..2026_01_01_00_00_00.000000001'
  for (const [path, text] of Object.entries(items)) {
    await mkdir(join(dir, data, path, '..'), { recursive: true })
    await writeFile(join(dir, data, path), text, { mode: 0o644 })
  }
  await symlink(data, join(dir, '..data'))
  for (const top of new Set(Object.keys(items).map((p) => p.split('/')[0]!))) await symlink(join('..data', top), join(dir, top))
}

t.test('agent and strongSwan images: built, then run as FabEdge edge pod against a connector', { skip: needsRoot }, async (t) => {
  t.comment(await buildImages())
  const stale = await removeStaleContainers()
  if (stale.length) t.comment(`removed working containers of killed runs: ${stale.join(' ')}`)

  const topo = await Topology.create({ spec: starTopology(1) })
  const driver = await defaultDriver()
  t.teardown(async () => {
    await driver.stopAll()
    const edgeNs = topo.gateways.get('beijing.edge1')?.ns
    // Containers go with the namespace (Container.create registers its removal); anything left is killed first.
    if (edgeNs) await killNamespacePids(edgeNs)
    await topo.destroy()
  })
  const connector = topo.gateway('beijing.connector')
  const edge = topo.gateway('beijing.edge1')
  const edgePod = topo.podOf('beijing.edge1')
  const connectorPod = topo.podOf('beijing.connector')
  // The edge's charon comes from the image, not from the host.
  await edge.charon.stop()
  await driver.start(connector)
  await driver.waitReady(connector, 30_000)

  // The node's host paths and the pod's volumes.
  const host = join(edge.dir, 'node')
  const d = {
    varRun: join(host, 'pod', 'var-run'),
    workdir: join(host, 'pod', 'agent-workdir'),
    ipsecD: join(host, 'pod', 'ipsec-d'),
    ipsecSecrets: join(host, 'pod', 'ipsec-secrets'),
    cniConf: join(host, 'etc', 'cni', 'net.d'),
    cniBin: join(host, 'opt', 'cni', 'bin'),
    cniCache: join(host, 'var', 'lib', 'cni', 'cache'),
  }
  for (const dir of Object.values(d)) await mkdir(dir, { recursive: true })
  const [caPem, certPem, keyPem] = await Promise.all([readFile(edge.caPath, 'utf8'), readFile(edge.cert.certPath, 'utf8'), readFile(edge.cert.keyPath, 'utf8')])
  await secretDir(d.ipsecD, { 'cacerts/ca.crt': caPem, 'certs/tls.crt': certPem, 'private/tls.key': keyPem })
  await secretDir(d.ipsecSecrets, { 'ipsec.secrets': ': RSA tls.key\n' })
  const cni: Mount[] = [
    { host: d.cniBin, container: '/opt/cni/bin' },
    { host: d.cniCache, container: '/var/lib/cni/cache' },
    { host: d.cniConf, container: '/etc/cni/net.d' },
  ]

  await t.test('init container: env_prepare.sh at both paths, FabEdge semantics without the nat flush', async (t) => {
    const init = await Container.create(AGENT_IMAGE, edge.ns, 'init')
    t.equal(init.config.user, 'root', "the image's user is root (the operator's pod sets none)")
    // What flannel leaves on a node FabEdge takes over, and what belongs to others.
    const nat = [
      '*nat',
      ':FLANNEL-POSTRTG - [0:0]',
      '-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG',
      '-A POSTROUTING -s 10.99.0.0/16 -m comment --comment "not flannel" -j MASQUERADE',
      '-A FLANNEL-POSTRTG -s 10.244.0.0/16 -d 10.244.0.0/16 -m comment --comment "flanneld masq" -j RETURN',
      'COMMIT',
      '',
    ].join('\n')
    for (const [cmd, dir] of [['/plugins/env_prepare.sh', 'HEAD'], ['env_prepare.sh', 'v1.0.0']] as const) {
      await rm(d.cniBin, { recursive: true, force: true })
      await mkdir(d.cniBin)
      await writeFile(join(d.cniConf, '10-flannel.conflist'), '{"name":"cbr0"}\n')
      await writeFile(join(d.cniConf, 'fabedge.conflist'), '{"name":"fabedge"}\n')
      await exec(['ip', '-n', edge.ns.name, '-batch', '-'], {
        // flannel-wg's route outlives the link deletions: the route step itself has to remove it.
        input: 'link add cni0 type bridge\nlink add flannel.1 type bridge\nlink set flannel.1 up\nroute add 10.244.7.0/24 dev flannel.1\n' +
          'link add flannel-wg type bridge\nlink set flannel-wg up\nroute add 10.244.8.0/24 dev flannel-wg\n',
      })
      await edge.ns.run(['iptables-restore', '--noflush'], { input: nat })

      const r = await init.run({ command: [cmd], mounts: cni })
      t.equal(r.code, 0, `${cmd} (operator ${dir}) exits 0`)
      t.match(r.stderr, /removed CNI config \/etc\/cni\/net.d\/10-flannel.conflist/, `${cmd}: each step logs`)
      t.same((await readdir(d.cniConf)).sort(), ['fabedge.conflist'], `${cmd}: foreign CNI config removed, fabedge.conflist kept`)
      t.equal(await readFile(join(d.cniConf, 'fabedge.conflist'), 'utf8'), '{"name":"fabedge"}\n')
      t.same((await readdir(d.cniBin)).sort(), [...PLUGINS].sort(), `${cmd}: the five plugins are on the host`)
      for (const p of PLUGINS) {
        t.ok((await stat(join(d.cniBin, p))).mode & 0o100, `${p} executable`)
        // A CNI plugin answers VERSION without a network: proof the copied binary runs on the node.
        const v = await execCapture([join(d.cniBin, p)], { env: { CNI_COMMAND: 'VERSION' }, timeoutMs: 10_000 })
        t.match(v.stdout, /"supportedVersions"/, `${p} runs (CNI VERSION)`)
      }
      const links = await edge.ns.run(['ip', '-o', 'link', 'show'])
      t.notMatch(links, /\bcni0\b|flannel\.1/, `${cmd}: cni0 and flannel.1 deleted`)
      t.notMatch(await edge.ns.run(['ip', 'route', 'show', 'table', 'main']), /flannel/, `${cmd}: no main-table route mentions flannel`)
      t.match(r.stderr, /deleted route 10\.244\.8\.0\/24 dev flannel-wg/, `${cmd}: the route step deleted flannel-wg's route`)
      await edge.ns.run(['ip', 'link', 'del', 'flannel-wg'])
      const saved = await edge.ns.run(['iptables-save', '-t', 'nat'])
      t.match(saved, /-A POSTROUTING -s 10\.99\.0\.0\/16 -m comment --comment "not flannel" -j MASQUERADE/, `${cmd}: the foreign nat POSTROUTING rule is untouched`)
      t.notMatch(saved, /flanneld masq|FLANNEL-POSTRTG/, `${cmd}: flannel's nat rules and chain are gone`)
      // the foreign rule again, so the next round starts from the same state
      await edge.ns.run(['iptables', '-t', 'nat', '-D', 'POSTROUTING', '-s', '10.99.0.0/16', '-m', 'comment', '--comment', 'not flannel', '-j', 'MASQUERADE'])
    }
    await writeFile(join(d.cniConf, 'fabedge.conflist'), '{"name":"left by the init test"}\n')
    await chmod(join(d.cniConf, 'fabedge.conflist'), 0o644)
    await init.remove()
  })

  await t.test("agent with the operator's argv and the strongSwan image's charon: tunnel up, /healthz, conflist", async (t) => {
    t.notOk(await ping(edgePod.ns, connectorPod.ip, 2_000), 'without the agent and charon, the edge pod cannot reach the connector pod')

    const strongswan = await Container.create(STRONGSWAN_IMAGE, edge.ns, 'strongswan')
    const charon = await strongswan.start({
      env: ['STRONGSWAN_CONF=/etc/strongswan-libipsec.conf'],
      mounts: [
        { host: d.varRun, container: '/var/run' },
        { host: d.ipsecD, container: '/etc/ipsec.d', readOnly: true },
        { host: join(d.ipsecSecrets, 'ipsec.secrets'), container: '/etc/ipsec.secrets', readOnly: true },
      ],
    }, join(edge.dir, 'strongswan-container.log'))
    await waitFor('the VICI socket of the image charon', 60_000, async () => {
      if (charon.exitCode !== null) throw new WaitAborted(`strongswan container exited ${charon.exitCode}: ${await readFile(join(edge.dir, 'strongswan-container.log'), 'utf8')}`)
      return (await stat(join(d.varRun, 'charon.vici')).catch(() => null))?.isSocket() ?? false
    }, 200)

    const agent = await Container.create(AGENT_IMAGE, edge.ns, 'agent')
    t.same(agent.argv({ args: OPERATOR_ARGS }), ['fabtunnel', ...OPERATOR_ARGS], "the image's ENTRYPOINT gets the operator's args, no subcommand")
    const agentLog = join(edge.dir, 'agent-container.log')
    const proc = await agent.start({
      args: OPERATOR_ARGS,
      env: ['FABTUNNEL_DATAPATH=libipsec'],
      mounts: [
        { host: edge.config.dir, container: '/etc/fabedge' },
        { host: d.cniConf, container: '/etc/cni/net.d' },
        { host: d.varRun, container: '/var/run' },
        // hostPath /lib/modules when the machine has it (this test VM's kernel has no module tree)
        ...(existsSync('/lib/modules') ? [{ host: '/lib/modules', container: '/lib/modules', readOnly: true }] : []),
        { host: d.ipsecD, container: '/etc/ipsec.d', readOnly: true },
        { host: d.workdir, container: '/var/lib/fabedge' },
      ],
    }, agentLog)
    const logText = (): Promise<string> => readFile(agentLog, 'utf8').catch(() => '')
    const alive = async (): Promise<void> => {
      if (proc.exitCode !== null || proc.signalCode !== null) throw new WaitAborted(`agent container exited (${proc.exitCode ?? proc.signalCode}):\n${(await logText()).slice(-3000)}`)
    }

    const healthz = await waitForValue('/healthz of the agent container', 60_000, async () => {
      await alive()
      const r = await edge.ns.capture(['curl', '-s', '-m', '2', '-w', '\n%{http_code}', 'http://127.0.0.1:30306/healthz'], { timeoutMs: 5_000 })
      return r.code === 0 && r.stdout.endsWith('\n200') ? r.stdout : undefined
    }, 250)
    t.pass(`/healthz answers 200 (${healthz.split('\n')[0]!.slice(0, 80)})`)
    await waitFor('/readyz of the agent container', 60_000, async () => {
      await alive()
      const r = await edge.ns.capture(['curl', '-sf', '-o', '/dev/null', '-m', '2', 'http://127.0.0.1:30306/readyz'], { timeoutMs: 5_000 })
      return r.code === 0
    }, 250)
    t.match(await logText(), /FabEdge agent command line translated to: fabtunnel run /, 'the FabEdge mode ran (no subcommand)')
    t.match(await logText(), /"codeCache":"accepted"/, "the image's entrypoint compiled the commands from the code cache its build stage wrote")
    const upMs = await waitFor('a ping from the edge pod to the connector pod through the tunnel', 60_000, async () => {
      await alive()
      return ping(edgePod.ns, connectorPod.ip, 2_000)
    }, 250)
    t.pass(`edge pod -> connector pod ping passes through the tunnel (${(upMs / 1000).toFixed(1)} s after ready)`)
    const sas = await exec(['swanctl', '--list-sas', '--uri', connector.charon.uri])
    t.match(sas, /beijing\.edge1|CN=beijing\.edge1/, "the connector's charon holds the edge's SA")

    // FabEdge's conflist for this edge's subnet: the golden generated from FabEdge's Go structs
    // (test/fixtures/cni/generate.go), with the edge's pod subnet in place of the golden's.
    const subnet = tunnelsView(topo.plan, edge.plan).local.subnets[0]!
    const golden = await readFile(new URL('../fixtures/cni/fabedge-default.conflist', import.meta.url), 'utf8')
    const expected = golden.replace('10.234.1.0/24', subnet)
    t.not(expected, golden, "the golden is rewritten for this node's subnet")
    const conflist = await waitForValue('the agent writes /etc/cni/net.d/fabedge.conflist (host dir)', 30_000, async () => {
      await alive()
      const text = await readFile(join(d.cniConf, 'fabedge.conflist'), 'utf8').catch(() => '')
      return text === expected ? text : undefined
    }, 250).catch((err: unknown) => { t.fail(String(err)); return '' })
    t.equal(conflist, expected, "the conflist is FabEdge's, byte for byte, for this edge's subnet")

    // Stopping the pod's containers: SIGTERM through buildah run reaches the agent and charon.
    await agent.remove()
    await strongswan.remove()
  })

  await t.test('--enable-proxy=true: the image exits non-zero naming kube-proxy', async (t) => {
    const c = await Container.create(AGENT_IMAGE, edge.ns, 'proxy')
    const args = OPERATOR_ARGS.map((a) => (a === '--enable-proxy=false' ? '--enable-proxy=true' : a))
    const r = await c.run({ args: [...args.slice(0, -1), '--proxy-cluster-cidr=10.233.64.0/18', args.at(-1)!] })
    t.not(r.code, 0, `exit ${r.code}`)
    t.match(r.stderr, /kube-proxy/, 'the message names kube-proxy')
    await c.remove()
  })
})
