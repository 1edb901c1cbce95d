import t, { type Test } from 'tap'
import { join } from 'node:path'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { main } from '../../src/commands.js'
import { startHttp } from '../../src/daemon/http.js'
import { Registry } from 'prom-client'
import { execCapture } from '../harness/exec.js'

const FIX = new URL('../fixtures/config/', import.meta.url).pathname
const ROOT = new URL('../../', import.meta.url).pathname

async function cli(argv: string[], env: NodeJS.ProcessEnv = {}) {
  const out: string[] = []
  const err: string[] = []
  const code = await main(argv, { out: (s) => out.push(s), err: (s) => err.push(s), env: { FABTUNNEL_LOG_LEVEL: 'silent', ...env } })
  return { code, out: out.join('\n'), err: err.join('\n') }
}

t.test('help, version, usage errors', async (t) => {
  const h = await cli(['--help'])
  t.equal(h.code, 0)
  t.match(h.out, /Usage: fabtunnel <command>/)
  t.match(h.out, /validate/)
  t.match(h.out, /plan/)
  t.match((await cli(['-V'])).out, /^\d+\.\d+\.\d+$/)
  t.equal((await cli([])).code, 2, 'no command is a usage error')
  const unknown = await cli(['frobnicate'])
  t.equal(unknown.code, 2)
  t.match(unknown.err, /unknown command "frobnicate"/)
  const badFlag = await cli(['validate', '--nope'])
  t.equal(badFlag.code, 2)
  t.match(badFlag.err, /Unknown option '--nope'/)
  const ph = await cli(['plan', '--help'])
  t.equal(ph.code, 0)
  t.match(ph.out, /--datapath KIND.*\[FABTUNNEL_DATAPATH\]/)
  t.match(ph.out, /--config FILE.*default: \/etc\/fabedge\/tunnels\.yaml/)
  t.equal((await cli(['plan', '--offline', '--datapath', 'gre', '--config', join(FIX, 'edge.yaml')])).code, 2)
  t.equal((await cli(['validate', '--log-level', 'loud'])).code, 2)
})

t.test('validate: valid fixtures exit 0, invalid ones exit 1 naming line and field', async (t) => {
  const ok = await cli(['validate', '--config', join(FIX, 'connector.yaml')])
  t.equal(ok.code, 0)
  t.match(ok.out, /valid \(Connector beijing\.connector, 3 peers, mediator\)/)
  const bad = await cli(['validate', '--config', join(FIX, 'invalid-cidr.yaml')])
  t.equal(bad.code, 1)
  t.match(bad.err, /invalid-cidr\.yaml:4:7: error: subnets\[0\]: "10\.233\.0\.0\/33"/)
  const json = await cli(['validate', '--json', '--config', join(FIX, 'invalid-duplicate-peer.yaml')])
  t.equal(json.code, 1)
  t.same(JSON.parse(json.out), {
    valid: false,
    file: join(FIX, 'invalid-duplicate-peer.yaml'),
    errors: [{ line: 13, column: 13, path: 'peers[1].name', message: 'duplicate peer name "beijing.edge1" (first at peers[0].name)' }],
    warnings: [],
  })
  const missing = await cli(['validate', '--json', '--config', '/nonexistent/tunnels.yaml'])
  t.equal(missing.code, 1)
  t.match(JSON.parse(missing.out), { valid: false, errors: [{ line: null, message: /cannot read/ }] })
})

t.test('flags come from environment twins', async (t) => {
  const r = await cli(['validate'], { FABTUNNEL_CONFIG: join(FIX, 'edge.yaml') })
  t.equal(r.code, 0)
  t.match(r.out, /edge\.yaml: valid \(EdgeNode beijing\.edge1/)
  t.equal((await cli(['validate'], { FABTUNNEL_CONFIG: join(FIX, 'edge.yaml'), FABTUNNEL_JSON: 'maybe' })).code, 2, 'a non-boolean env value is a usage error')
})

t.test('plan --offline --json on connector.yaml: the desired state', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ftcli-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const cert = join(dir, 'tls.crt')
  // A bundle that (wrongly) also holds a key: only the certificate may ever be sent.
  writeFileSync(cert, '-----BEGIN PRIVATE KEY-----\nSECRETKEYDATA\n-----END PRIVATE KEY-----\n-----BEGIN CERTIFICATE-----\nMIIBcert\n-----END CERTIFICATE-----\n')
  const r = await cli(['plan', '--offline', '--json', '--config', join(FIX, 'connector.yaml'), '--cert', cert])
  t.equal(r.code, 0, r.err)
  t.notMatch(r.out, /SECRETKEYDATA/, 'private key material never leaves')
  const plan = JSON.parse(r.out)
  t.same(Object.keys(plan), ['role', 'conns', 'initiate', 'initiateChildren', 'routes', 'rules', 'ipsets', 'iptables'])
  t.equal(plan.role, 'connector')
  const p2p = plan.conns['beijing.edge1'].children['beijing.edge1-p2p']
  t.same(p2p.local_ts, ['10.233.0.0/18', '10.233.64.0/24', '10.233.65.0/24'])
  t.same(p2p.remote_ts, ['10.234.1.0/24'])
  t.same(plan.conns['beijing.edge1'].local.certs, ['-----BEGIN CERTIFICATE-----\nMIIBcert\n-----END CERTIFICATE-----\n'])
  t.same(plan.conns['shanghai.connector'].remote_addrs, ['10.50.0.9'])
  t.same(plan.initiate, ['shanghai.connector'])
  t.same(plan.ipsets['FABEDGE-LOCAL-POD-CIDR'].members, ['10.233.0.0/18', '10.233.64.0/24', '10.233.65.0/24'])
  t.same(plan.ipsets['FABEDGE-REMOTE-POD-CIDR6'].members, ['fd00:234:2::/64'])
  t.match(plan.routes[0], { dst: '10.96.0.0/12', table: 220 })
  t.match(plan.iptables.ipv4, /^\*filter\n:FABEDGE-INPUT - \[0:0\]/)
  t.match(plan.iptables.ipv6, /FABEDGE-REMOTE-POD-CIDR6/)
  const libipsec = JSON.parse((await cli(['plan', '--offline', '--json', '--datapath', 'libipsec', '--config', join(FIX, 'connector.yaml'), '--cert', cert])).out)
  t.same(libipsec.routes, [])
})

t.test('plan: errors are clear', async (t) => {
  const badDatapath = await cli(['plan', '--datapath', 'gre', '--config', join(FIX, 'connector.yaml')])
  t.equal(badDatapath.code, 2, 'usage errors come before touching the live node')
  t.match(badDatapath.err, /--datapath must be xfrm or libipsec/)
  const badCert = await cli(['plan', '--offline', '--config', join(FIX, 'connector.yaml'), '--cert', '/nonexistent.crt'])
  t.equal(badCert.code, 1, 'an explicitly named certificate must exist')
  t.match(badCert.err, /nonexistent\.crt: cannot read certificate/)
  const invalid = await cli(['plan', '--offline', '--config', join(FIX, 'invalid-cidr.yaml')])
  t.equal(invalid.code, 1)
  t.match(invalid.err, /invalid-cidr\.yaml:4:7/)
  const human = await cli(['plan', '--offline', '--config', join(FIX, 'edge.yaml'), '--cert', '/dev/null'], {})
  t.equal(human.code, 1, '/dev/null holds no certificate')
  t.match(human.err, /no PEM CERTIFICATE block/)
})

t.test('the bin entry runs as a process', async (t) => {
  const r = await execCapture([process.execPath, '--import', 'tsx', join(ROOT, 'src/cli.ts'), 'validate', '--config', join(FIX, 'invalid-cidr.yaml')], { cwd: ROOT, timeoutMs: 30_000 })
  t.equal(r.code, 1)
  t.match(r.stderr, /invalid-cidr\.yaml:4:7: error/)
})

async function statusServer(t: Test, status: () => unknown) {
  const server = await startHttp({ host: '127.0.0.1', port: 0 }, { healthy: () => true, ready: () => true, leader: () => true, status, registry: new Registry() })
  t.teardown(() => server.close())
  return server.address.port
}

t.test('status: prints the per-peer table from the agent\'s /status, or the raw JSON', async (t) => {
  const doc = {
    version: '0.4.0', node: { name: 'beijing.edge1', type: 'EdgeNode' }, ready: true, datapath: 'xfrm',
    peers: [{ name: 'beijing.connector', type: 'Peer', state: 'up', since: new Date().toISOString(), childrenUp: 1, childrenDesired: 1, initiator: true, lastError: null, waiting: null, path: 'direct' }],
  }
  const port = await statusServer(t, () => doc)
  const table = await cli(['status', '--listen', `127.0.0.1:${port}`])
  t.equal(table.code, 0, table.err)
  t.match(table.out, /^node beijing\.edge1 \(EdgeNode\)  ready=yes  datapath=xfrm/)
  t.match(table.out, /^beijing\.connector  Peer  initiator  up     \d+s +1\/1 +direct$/m)
  const json = await cli(['status', '--json', '--listen', `:${port}`])
  t.equal(json.code, 0, 'an all-interfaces --listen (the agent\'s own flag value) is read over loopback')
  t.same(JSON.parse(json.out), doc)
})

t.test('status: a bad --listen is a usage error; an agent that is down or failing is exit 1 with the URL', async (t) => {
  const bad = await cli(['status', '--listen', 'localhost'])
  t.equal(bad.code, 2)
  t.match(bad.err, /^fabtunnel status: --listen must be host:port or \[ipv6\]:port, got "localhost"/)
  const failing = await statusServer(t, () => { throw new Error('boom') })
  const r500 = await cli(['status', '--listen', `127.0.0.1:${failing}`])
  t.equal(r500.code, 1)
  t.match(r500.err, `cannot read http://127.0.0.1:${failing}/status: HTTP 500`)
  // A port that was just free: nothing listens there now.
  const gone = await startHttp({ host: '127.0.0.1', port: 0 }, { healthy: () => true, ready: () => true, leader: () => true, status: () => ({}), registry: new Registry() })
  await gone.close()
  const down = await cli(['status', '--listen', `127.0.0.1:${gone.address.port}`])
  t.equal(down.code, 1)
  t.match(down.err, `fabtunnel status: cannot read http://127.0.0.1:${gone.address.port}/status: fetch failed (is \`fabtunnel run\` running with this --listen?)`)
})

t.test('--dpd-delay (and FABTUNNEL_DPD_DELAY) sets dpd_delay of the connections the node initiates', async (t) => {
  const edge = join(FIX, 'edge.yaml')
  const dpd = async (args: string[], env: NodeJS.ProcessEnv = {}): Promise<unknown> => {
    const r = await cli(['plan', '--offline', '--json', '--config', edge, ...args], env)
    t.equal(r.code, 0, r.err)
    return JSON.parse(r.out).conns['beijing.connector'].dpd_delay
  }
  t.equal(await dpd([]), '3s', 'default')
  t.equal(await dpd(['--dpd-delay', '10s']), '10s', 'FabEdge\'s value')
  t.equal(await dpd([], { FABTUNNEL_DPD_DELAY: '5' }), '5s', 'the environment twin, plain seconds')
  t.equal(await dpd(['--dpd-delay', '2000ms']), '2s')
  t.equal(await dpd(['--dpd-delay', '0']), undefined, '0 disables DPD')
  for (const bad of ['1500ms', '2h', 'soon']) {
    const r = (await cli(['plan', '--offline', '--config', edge, '--dpd-delay', bad]))
    t.equal(r.code, 2, `${bad}: usage error`)
    t.match(r.err, /--dpd-delay must be/)
  }
  const run = await cli(['run', '--listen', '127.0.0.1:0', '--dpd-delay', '0.5s'])
  t.equal(run.code, 2, 'run rejects it before anything starts')
  t.match(run.err, /--dpd-delay must be whole seconds between 0s and 1h, got "0.5s"/)
  t.match((await cli(['run', '--help'])).out, /--dpd-delay DURATION\s+dead-peer detection interval .* \(default: 3s\) \[FABTUNNEL_DPD_DELAY\]/)
})

t.test('--tcp-mss (and FABTUNNEL_TCP_MSS): the MSS clamp chain in the plan, pmtu by default', async (t) => {
  const edge = join(FIX, 'edge.yaml')
  const mangle = async (args: string[], env: NodeJS.ProcessEnv = {}): Promise<[string | undefined, string | undefined]> => {
    const r = await cli(['plan', '--offline', '--json', '--config', edge, ...args], env)
    t.equal(r.code, 0, r.err)
    const ipt = JSON.parse(r.out).iptables
    const of = (payload: string): string | undefined => /\*mangle\n[^]*?COMMIT\n/.exec(payload)?.[0]
    return [of(ipt.ipv4), of(ipt.ipv6)]
  }
  const [v4, v6] = await mangle([])
  t.match(v4, /-A FABEDGE-MSS -p tcp -m set --match-set FABEDGE-REMOTE-CIDR dst -m tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu/, 'default: pmtu')
  t.match(v6, /--match-set FABEDGE-REMOTE-CIDR6 src -m tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu/)
  const [f4, f6] = await mangle(['--tcp-mss', '1300'])
  t.match(f4, /-j TCPMSS --set-mss 1300\n/)
  t.match(f6, /-j TCPMSS --set-mss 1300\n/)
  t.match((await mangle([], { FABTUNNEL_TCP_MSS: '1380' }))[0], /--set-mss 1380/, 'the environment twin')
  t.same(await mangle(['--tcp-mss', 'off']), [undefined, undefined], 'off: no mangle table at all')
  for (const bad of ['100', 'auto', '1400.5']) {
    const r = await cli(['plan', '--offline', '--config', edge, '--tcp-mss', bad])
    t.equal(r.code, 2, `${bad}: usage error`)
    t.match(r.err, `--tcp-mss must be pmtu, off or a number of bytes from 536 to 9000, got "${bad}"`)
  }
  const run = await cli(['run', '--listen', '127.0.0.1:0', '--tcp-mss', '20000'])
  t.equal(run.code, 2, 'run rejects it before anything starts')
  t.match((await cli(['run', '--help'])).out, /--tcp-mss pmtu\|off\|N\s+clamp the MSS of TCP SYNs .* \(default: pmtu\) \[FABTUNNEL_TCP_MSS\]/)
  t.match((await cli(['plan', '--help'])).out, /--tcp-mss pmtu\|off\|N/)
})

t.test('run: a bad --listen or --resync-interval is a usage error before anything starts', async (t) => {
  const signals = ['SIGTERM', 'SIGINT', 'SIGHUP'].map((s) => process.listenerCount(s))
  const listen = await cli(['run', '--listen', '127.0.0.1:70000'])
  t.equal(listen.code, 2)
  t.match(listen.err, /^fabtunnel run: --listen port out of range: 70000/)
  const resync = await cli(['run', '--listen', '127.0.0.1:0', '--resync-interval', 'often'])
  t.equal(resync.code, 2)
  t.match(resync.err, /--resync-interval must be a duration like 500ms, 30s, 5m or 1h, got "often"/)
  t.same(['SIGTERM', 'SIGINT', 'SIGHUP'].map((s) => process.listenerCount(s)), signals, 'its signal handlers are removed again')
})

t.test('FabEdge mode: a first argument that is a flag runs the FabEdge translation', async (t) => {
  const h = await cli(['--help'])
  t.match(h.out, /FabEdge mode/, 'the main help mentions the FabEdge mode')
  const proxy = await cli(['--enable-dns=false', '--enable-proxy=true', '--local-cert=tls.crt', '--masq-outgoing=true', '--v=3'])
  t.equal(proxy.code, 1)
  t.match(proxy.err, /refusing to start: --enable-proxy=true .*kube-proxy/)
  const unknown = await cli(['--enable-dns=false', '--frobnicate'])
  t.equal(unknown.code, 2)
  t.match(unknown.err, /unknown flag: --frobnicate/)
  t.match((await cli(['--show-version'])).out, /^\d+\.\d+\.\d+$/)
  t.match((await cli(['fabedge', '--help'])).out, /--component=agent\|connector/)
  t.equal((await cli(['fabedge', '--enable-dns=true'])).code, 1, '`fabtunnel fabedge` is the explicit alias')
  // The translated argv goes through `run`'s own checks: a bad listen address is run's usage error.
  const bad = await cli(['--component=connector', '--listen-address=nowhere'])
  t.equal(bad.code, 2)
  t.match(bad.err, /fabtunnel run: --listen must be host:port/)
})

t.test('FabEdge mode: the real executable refuses --enable-proxy=true naming kube-proxy', async (t) => {
  const r = await execCapture([process.execPath, '--import', 'tsx', join(ROOT, 'src/cli.ts'), '--enable-dns=false', '--enable-proxy=true', '--local-cert=tls.crt', '--v=3'], { cwd: ROOT, timeoutMs: 30_000 })
  t.equal(r.code, 1)
  t.match(r.stderr, /kube-proxy/)
  t.equal(r.stdout, '')
})

t.test('--role cloud: flags checked together, plan --offline shows the cloud node', async (t) => {
  const cfg = join(FIX, 'connector.yaml')
  const r = await cli(['plan', '--offline', '--role', 'cloud', '--connector-address', '192.168.1.5', '--config', cfg])
  t.equal(r.code, 0, r.err)
  t.match(r.out, /^role: cloud/)
  t.match(r.out, /\(none: a cloud node runs no tunnels; it routes through the connector\)/)
  t.match(r.out, /  10\.234\.1\.0\/24 via 192\.168\.1\.5 table 220 proto 220/)
  t.match(r.out, /  10\.22\.53\.116\/32 via 192\.168\.1\.5 table 220 proto 220/)
  t.match(r.out, /  fd00:234:2::\/64 via <no IPv6 --connector-address> table 220 proto 220/)
  t.notMatch(r.out, /10\.233\.0\.0\/18 via/, 'never the connector\'s own pod CIDR')
  t.match(r.out, /FABEDGE-REMOTE-POD-CIDR \(inet\): 10\.22\.53\.116\/32/)
  const json = JSON.parse((await cli(['plan', '--offline', '--json', '--config', cfg], { FABTUNNEL_ROLE: 'cloud', FABTUNNEL_CONNECTOR_ADDRESS: '192.168.1.5,fd00::5' })).out)
  t.equal(json.role, 'cloud', 'from the environment twins')
  t.same(json.conns, {})
  t.equal(json.routes.find((x: { dst: string }) => x.dst === 'fd00:234:2::/64').via, 'fd00::5')

  const usage: Array<[string[], RegExp]> = [
    [['--role', 'cloud'], /--role cloud needs --connector-address/],
    [['--connector-address', '192.168.1.5'], /--connector-address is only used with --role cloud/],
    [['--role', 'connector', '--connector-address', '192.168.1.5'], /only used with --role cloud/],
    [['--role', 'gateway'], /--role must be connector, edge or cloud, got "gateway"/],
    [['--role', 'cloud', '--connector-address', '192.168.1.0/24'], /not an IP address \(give the address, not a prefix\)/],
    [['--role', 'cloud', '--connector-address', '10.0.0.1,10.0.0.2'], /two IPv4 addresses/],
  ]
  for (const [flags, re] of usage) {
    const u = await cli(['plan', '--offline', '--config', cfg, ...flags])
    t.equal(u.code, 2, flags.join(' '))
    t.match(u.err, re, flags.join(' '))
  }
  const edgeAsCloud = await cli(['plan', '--offline', '--role', 'cloud', '--connector-address', '10.0.0.1', '--config', join(FIX, 'edge.yaml')])
  t.equal(edgeAsCloud.code, 1)
  t.match(edgeAsCloud.err, /--role cloud needs the connector's tunnels.yaml \(local type Connector\), got local type EdgeNode/)
  const mismatch = await cli(['plan', '--offline', '--role', 'connector', '--config', join(FIX, 'edge.yaml')])
  t.equal(mismatch.code, 1)
  t.match(mismatch.err, /--role connector but the config's local endpoint/)
  t.equal((await cli(['plan', '--offline', '--role', 'edge', '--config', join(FIX, 'edge.yaml')])).code, 0, 'an explicit role that agrees')
  const rh = await cli(['run', '--help'])
  t.match(rh.out, /--role ROLE .*connector\|edge\|cloud.*\[FABTUNNEL_ROLE\]/)
  t.match(rh.out, /--connector-address ADDR\[,ADDR\] .*\[FABTUNNEL_CONNECTOR_ADDRESS\]/)
  t.match((await cli(['cleanup', '--help'])).out, /--role ROLE .*cloud/)
  t.equal((await cli(['run', '--role', 'cloud', '--listen', '127.0.0.1:0'])).code, 2, 'run refuses cloud without an address before starting anything')
})

t.test('run: the node-duty flags are validated before anything starts', async (t) => {
  const cases: Array<[string[], RegExp]> = [
    [['--cni-conf-path', 'relative/dir'], /--cni-conf-path: must be an absolute directory/],
    [['--cni-conf-path', '/tmp/x', '--cni-network-name', '../evil'], /--cni-network-name/],
    [['--cni-conf-path', '/tmp/x', '--network-plugin-mtu', '1400x'], /--network-plugin-mtu/],
    [['--cni-conf-path', '/tmp/x', '--enable-hairpinmode', 'maybe'], /--enable-hairpinmode must be true or false/],
    [['--cni-conf-path', '/tmp/x', '--role', 'cloud', '--connector-address', '10.0.0.1'], /--cni-conf-path is for edge nodes/],
  ]
  for (const [argv, re] of cases) {
    const r = await cli(['run', '--listen', '127.0.0.1:0', ...argv])
    t.equal(r.code, 2, argv.join(' '))
    t.match(r.err, re)
  }
  const help = await cli(['run', '--help'])
  for (const flag of ['--ip-forward', '--cni-conf-path DIR', '--cni-network-name NAME', '--cni-bridge-name IFNAME', '--cni-version VERSION', '--network-plugin-mtu MTU', '--enable-hairpinmode BOOL']) t.match(help.out, flag)
})

t.test('the executable keeps its early signal handlers for command lines that may run the daemon', async (t) => {
  const { mayRunDaemon } = await import('../../src/commands.js')
  for (const argv of [['run'], ['fabedge', '--v=3'], ['--enable-dns=false'], ['-v=3'], ['--component=connector']]) t.ok(mayRunDaemon(argv), argv.join(' '))
  for (const argv of [[], ['--help'], ['-h'], ['--version'], ['-V'], ['plan'], ['status'], ['validate', '--json']]) t.notOk(mayRunDaemon(argv), argv.join(' ') || '(none)')
})
