import t from 'tap'
import {
  certPaths, FABEDGE_FLAGS, FabedgeRefusal, logLevelOfKlog, parseFabedgeArgv, parseGoDuration, selectComponent, translateFabedgeArgv,
  type FabedgeInvocation,
} from '../../../src/compat/fabedge-argv.js'
import { UsageError } from '../../../src/options.js'

// Everything `fabtunnel run` will know once the leader (other part) and node-duty flags are merged.
const FULL_RUN = new Set([
  'config', 'vici', 'cert', 'key', 'ca', 'datapath', 'listen', 'resync-interval', 'log-level', 'help', 'ip-forward',
  'cni-conf-path', 'cni-network-name', 'cni-bridge-name', 'cni-version', 'network-plugin-mtu', 'enable-hairpinmode',
  'leader-election', 'leader-lock-name', 'leader-lease-duration', 'leader-renew-deadline', 'leader-retry-period',
])

function run(argv: string[], env: NodeJS.ProcessEnv = {}, runFlags: ReadonlySet<string> = FULL_RUN) {
  const inv = translateFabedgeArgv(argv, { runFlags, env })
  if (inv.kind !== 'run') throw new Error(`expected run, got ${inv.kind}`)
  return inv
}

function refusal(argv: string[]): FabedgeRefusal {
  try {
    translateFabedgeArgv(argv, { runFlags: FULL_RUN, env: {} })
  } catch (err) {
    if (err instanceof FabedgeRefusal) return err
    throw err
  }
  throw new Error(`no refusal for ${argv.join(' ')}`)
}

t.test("the operator's default agent argv becomes a run with FabEdge's paths, ip_forward and the CNI conflist", async (t) => {
  const inv = run(['--enable-dns=false', '--enable-proxy=false', '--local-cert=tls.crt', '--masq-outgoing=true', '--v=3'])
  t.equal(inv.component, 'agent')
  t.same(inv.runArgv, [
    '--log-level=info',
    '--cert=/etc/ipsec.d/certs/tls.crt',
    '--key=/etc/ipsec.d/private/tls.key',
    '--ip-forward',
    '--cni-conf-path=/etc/cni/net.d',
  ])
  const unused = inv.notes.find((n) => n.msg.includes('accepted and not used'))!
  t.ok(unused, 'one info line lists the harmless flags')
  t.equal(unused.level, 'info')
  t.same(unused.fields?.unused, ['enable-dns', 'enable-proxy', 'masq-outgoing'])
  t.match(unused.msg, /--masq-outgoing=true \(MASQUERADE .* unconditional/)
  t.notOk(inv.notes.some((n) => n.level === 'warn'), 'nothing to warn about in the default argv')
})

t.test('the KubeEdge quickstart argv is refused, naming kube-proxy and DNS', async (t) => {
  const proxy = refusal(['--enable-dns=false', '--enable-proxy=true', '--local-cert=tls.crt', '--proxy-cluster-cidr=10.233.64.0/18', '--v=3'])
  t.equal(proxy.feature, 'kube-proxy')
  t.match(proxy.message, /kube-proxy/)
  const dns = refusal(['--enable-dns=true', '--local-cert=tls.crt'])
  t.equal(dns.feature, 'DNS')
  t.match(dns.message, /169\.254\.25\.10/)
  t.match(refusal(['--enable-dns']).feature, 'DNS', 'a bare bool flag means true')
  t.match(refusal(['--auto-networking=T']).message, /multicast/)
  t.match(refusal(['--component=cloud-agent']).message, /fabtunnel run --role cloud/)
  t.match(refusal(['--connector-node-addresses=10.0.0.1', '-v=3']).message, /cloud DaemonSet/, "the cloud-agent DaemonSet's argv")
  t.match(refusal(['--component=operator']).message, /not FabEdge's operator/)
  t.match(refusal(['--local-cert=a.crt,b.crt']).message, /exactly one local certificate/)
  t.match(refusal(['--local-cert=a.crt', '--local-cert=b.crt']).message, /2 certificates/, 'slices accumulate like pflag')
  // Off is fine, in every spelling pflag accepts.
  for (const off of ['false', 'False', 'FALSE', 'f', 'F', '0']) t.equal(run([`--enable-proxy=${off}`]).component, 'agent')
})

t.test('pflag syntax: --f=v, --f v, bools only with =, -v forms, --, positionals, unknown flags', async (t) => {
  const p = parseFabedgeArgv(['--tunnels-conf', '/x/t.yaml', '-v', '4', '--masq-outgoing', '--network-plugin-mtu=1300'])
  t.equal(p.flags.get('tunnels-conf')?.value, '/x/t.yaml')
  t.equal(p.flags.get('v')?.value, '4')
  t.equal(p.flags.get('masq-outgoing')?.value, 'true')
  t.same(p.order, ['tunnels-conf', 'v', 'masq-outgoing', 'network-plugin-mtu'])
  for (const form of [['-v=5'], ['-v', '5'], ['-v5'], ['--v=5'], ['--v', '5']]) t.equal(parseFabedgeArgv(form).flags.get('v')?.value, '5', form.join(' '))
  // pflag does not take a separate value for a bool: the next word is a positional, which FabEdge never passes.
  t.throws(() => parseFabedgeArgv(['--enable-dns', 'true']), /unexpected argument "true"/)
  t.throws(() => parseFabedgeArgv(['--enable-dns=yes']), /invalid argument "yes" for "--enable-dns"/)
  t.throws(() => parseFabedgeArgv(['--frobnicate=1']), /unknown flag: --frobnicate/)
  t.throws(() => parseFabedgeArgv(['-x']), /unknown shorthand flag: 'x'/)
  t.throws(() => parseFabedgeArgv(['---v=1']), /bad flag syntax/)
  t.throws(() => parseFabedgeArgv(['--tunnels-conf']), /flag needs an argument: --tunnels-conf/)
  t.throws(() => parseFabedgeArgv(['--v=high']), /invalid argument "high" for "--v"/)
  t.throws(() => parseFabedgeArgv(['--tunnel-init-timeout=-1']), /ParseUint/)
  t.throws(() => parseFabedgeArgv(['--sync-period=30']), /invalid duration "30"/, 'Go durations need a unit')
  t.throws(() => parseFabedgeArgv(['--', 'x']), /unexpected argument "x"/)
  t.same(parseFabedgeArgv(['--v=1', '--']).order, ['v'])
  t.equal(parseFabedgeArgv(['--tunnels-conf', '--v=3']).flags.get('tunnels-conf')?.value, '--v=3', 'pflag takes the next word as the value, whatever it is')
  t.equal(parseFabedgeArgv(['--v=1', '--v=2']).flags.get('v')?.value, '2', 'last one wins')
  let thrown: unknown
  try {
    parseFabedgeArgv(['--nope'])
  } catch (err) {
    thrown = err
  }
  t.ok(thrown instanceof UsageError, 'unknown flags are usage errors (exit 2)')
})

t.test('Go durations', async (t) => {
  t.equal(parseGoDuration('1m'), 60_000)
  t.equal(parseGoDuration('1m30s'), 90_000)
  t.equal(parseGoDuration('1.5h'), 5_400_000)
  t.equal(parseGoDuration('300ms'), 300)
  t.equal(parseGoDuration('2us'), 0.002)
  t.equal(parseGoDuration('-2s'), -2000)
  t.equal(parseGoDuration('0'), 0)
  for (const bad of ['', '5', 's', '1x', '1m30', '--1s', '1 s']) t.equal(parseGoDuration(bad), null, bad)
})

t.test('mode selection', async (t) => {
  const sel = (argv: string[]) => selectComponent(parseFabedgeArgv(argv))
  t.equal(sel([]), 'agent')
  t.equal(sel(['--v=3']), 'agent')
  t.equal(sel(['--sync-period=1m']), 'agent', 'a flag of both binaries selects nothing')
  t.equal(sel(['--cni-type=calico', '--connector-node-addresses=10.0.0.1', '--sync-period=1m', '-v=3']), 'connector', "the chart's connector argv")
  t.equal(sel(['--connector-node-addresses=10.0.0.1', '-v=3']), 'cloud-agent')
  t.equal(sel(['--component=connector', '--enable-dns=true']), 'connector', '--component wins (cmd/node registers every flag)')
  t.equal(sel(['--component=agent', '--cni-type=flannel']), 'agent')
  t.throws(() => sel(['--local-cert=tls.crt', '--cert-file=/x']), /both FabEdge's agent \(--local-cert\) and connector \(--cert-file\)/)
  t.throws(() => sel(['--component=edge']), /--component must be agent, connector or cloud-agent/)
  // Every flag of the table is accepted by the parser (a table typo would make a FabEdge argv fail).
  for (const [name, def] of Object.entries(FABEDGE_FLAGS)) {
    const value = def.kind === 'duration' ? '1s' : def.kind === 'bool' ? 'false' : def.kind === 'strings' || def.kind === 'string' ? 'x' : '1'
    t.equal(parseFabedgeArgv([`--${name}=${value}`]).flags.get(name)?.value, value, name)
  }
})

t.test('agent flags that map', async (t) => {
  const inv = run([
    '--tunnels-conf=/cfg/tunnels.yaml', '--local-cert=/pki/node.pem', '--sync-period=2m', '--cni-conf-path=/cni',
    '--cni-network-name=edge', '--cni-bridge-name=br0', '--cni-version=1.0.0', '--network-plugin-mtu=1350',
    '--enable-hairpinmode=false', '--debounce=2s', '--tunnel-init-timeout=5', '-v=6',
  ])
  t.same(inv.runArgv, [
    '--resync-interval=120000ms', '--log-level=trace', '--config=/cfg/tunnels.yaml', '--cert=/pki/node.pem', '--key=/pki/node.key',
    '--ip-forward', '--cni-conf-path=/cni', '--cni-network-name=edge', '--cni-bridge-name=br0', '--cni-version=1.0.0',
    '--network-plugin-mtu=1350', '--enable-hairpinmode=false',
  ])
  const unused = inv.notes.find((n) => n.msg.includes('not used'))!
  t.same(unused.fields?.unused, ['debounce', 'tunnel-init-timeout'])
  t.match(unused.msg, /--debounce=2s \(not needed: fabtunnel is event-driven/)
  t.same(run(['--local-cert=tls.crt'], { FABTUNNEL_KEY: '/k/tls.key' }).runArgv, ['--cert=/etc/ipsec.d/certs/tls.crt', '--ip-forward', '--cni-conf-path=/etc/cni/net.d'], 'FABTUNNEL_KEY wins over the derived key')
  t.throws(() => run(['--sync-period=500ms']), /at least 1s/)
  t.same(run(['--enable-hairpinmode']).runArgv.at(-1), '--enable-hairpinmode=true')
})

t.test('certificate and key paths', async (t) => {
  t.same(certPaths('tls.crt'), { cert: '/etc/ipsec.d/certs/tls.crt', key: '/etc/ipsec.d/private/tls.key' })
  t.same(certPaths('edgecert.pem'), { cert: '/etc/ipsec.d/certs/edgecert.pem', key: '/etc/ipsec.d/private/edgecert.key' })
  t.same(certPaths('sub/node.crt'), { cert: '/etc/ipsec.d/certs/sub/node.crt', key: '/etc/ipsec.d/certs/sub/node.key' })
  t.same(certPaths('/etc/ipsec.d/certs/tls.crt'), { cert: '/etc/ipsec.d/certs/tls.crt', key: '/etc/ipsec.d/private/tls.key' })
  t.same(certPaths('/srv/pki/cert'), { cert: '/srv/pki/cert', key: '/srv/pki/cert.key' })
})

t.test('klog levels', async (t) => {
  t.same([0, 1, 2, 3, 4, 5, 6, 10, -1].map(logLevelOfKlog), ['info', 'info', 'info', 'info', 'debug', 'debug', 'trace', 'trace', 'info'])
})

t.test("the chart's connector argv: Lease election always, memberlist seeds warned about", async (t) => {
  const inv = run(['--cni-type=flannel', '--connector-node-addresses=10.0.0.1,10.0.0.2', '--sync-period=1m', '-v=3'])
  t.equal(inv.component, 'connector')
  t.same(inv.runArgv, [
    '--resync-interval=60000ms', '--log-level=info', '--ip-forward', '--leader-election=lease', '--leader-lock-name=connector',
    '--leader-lease-duration=15000ms', '--leader-renew-deadline=10000ms', '--leader-retry-period=2000ms',
  ])
  const warn = inv.notes.find((n) => n.level === 'warn')!
  t.match(warn.msg, /WARNING: .*memberlist.*fabedge-cloud-agent DaemonSet gets no routes.*fabtunnel run --role cloud/)
  t.same(warn.fields?.seeds, ['10.0.0.1', '10.0.0.2'])
  t.match(inv.notes.find((n) => n.msg.includes('not used'))!.msg, /--cni-type=flannel/)

  const full = run([
    '--tunnel-config=/c/t.yaml', '--cert-file=/etc/ipsec.d/certs/tls.crt', '--vici-socket=/run/x.vici', '--listen-address=127.0.0.1:30307',
    '--leader-lock-name=c2', '--leader-lease-duration=30s', '--leader-renew-deadline=20s', '--leader-retry-period=1s', '--debounce-duration=5s',
  ])
  t.same(full.runArgv, [
    '--config=/c/t.yaml', '--cert=/etc/ipsec.d/certs/tls.crt', '--key=/etc/ipsec.d/private/tls.key', '--vici=unix:///run/x.vici',
    '--listen=127.0.0.1:30307', '--ip-forward', '--leader-election=lease', '--leader-lock-name=c2', '--leader-lease-duration=30000ms',
    '--leader-renew-deadline=20000ms', '--leader-retry-period=1000ms',
  ])
  t.equal(run(['--vici-socket=unix:///a.vici']).runArgv.find((a) => a.startsWith('--vici='))!, '--vici=unix:///a.vici')
  // Under --component=connector the agent's switches are another binary's flags: accepted, logged, not refused.
  const mixed = run(['--component=connector', '--enable-dns=true'])
  t.match(mixed.notes.find((n) => n.msg.includes('not used'))!.msg, /--enable-dns=true \(a FabEdge agent flag, not the connector's\)/)
})

t.test('flags this build of `run` lacks are not emitted, and a warning names them', async (t) => {
  const runFlags = new Set(['config', 'cert', 'key', 'log-level', 'resync-interval', 'listen'])
  const inv = run(['--cni-type=flannel', '-v=3'], {}, runFlags)
  t.same(inv.runArgv, ['--log-level=info'])
  const warn = inv.notes.find((n) => n.fields?.missing)!
  t.same(warn.fields?.missing, ['ip-forward', 'leader-election', 'leader-lock-name', 'leader-lease-duration', 'leader-renew-deadline', 'leader-retry-period'])
  t.equal(warn.level, 'warn')
})

t.test('help and version', async (t) => {
  const kind = (argv: string[]): FabedgeInvocation['kind'] => translateFabedgeArgv(argv, { runFlags: FULL_RUN, env: {} }).kind
  t.equal(kind(['--show-version']), 'version')
  t.equal(kind(['--v=3', '--version']), 'version', "v1.0's spelling")
  t.equal(kind(['--enable-proxy=true', '--show-version']), 'version', 'version wins over a refusal, as in FabEdge')
  t.equal(kind(['-h']), 'help')
  t.equal(kind(['--help']), 'help')
  t.equal(kind(['--show-version=false']), 'run')
})
