// The `fabtunnel` commands (the executable is cli.ts). Exit codes: 0 ok, 1 invalid input or failure, 2 usage error.
import { takeEarlySignals } from './early-signals.js'
import { DEFAULTS } from './fabedge.js'
import { VERSION } from './version.js'
import { loadConfig } from './config/load.js'
import { ConfigError, formatIssue, type ConfigIssue } from './config/errors.js'
import { DesiredError, EDGE_DPD_DELAY, FABEDGE_DPD_DELAY, nodeDesired, parseConnectorAddresses, type Datapath, type Desired, type Role } from './desired/index.js'
import { CertError, readCertPem } from './cert.js'
import { createLogger, isLogLevel, type Logger } from './log.js'
import { formatFlags, parseDuration, parseFlags, UsageError, type FlagSpec, type Parsed } from './options.js'
import { parseListen } from './daemon/http.js'
import { formatStatus } from './daemon/status-format.js'
import { CNI_DEFAULTS, CniError, validateCniOptions, type CniOptions } from './daemon/cni.js'
import { SysctlError } from './daemon/sysctl.js'
import { fabedgeHelp, FabedgeRefusal, translateFabedgeArgv, type FabedgeInvocation } from './compat/fabedge-argv.js'
import { canonicalVip } from './daemon/leader.js'
import { parseTcpMss, TCP_MSS_DEFAULT, TCP_MSS_MAX, TCP_MSS_MIN, type TcpMss } from './iptables/mss.js'
import { checkLeaseTimings } from './daemon/lease.js'
import type { ElectionOptions } from './daemon/run.js'
import { PROBE_FLAGS, probeOptionsOf } from './probe/flags.js'
import { readFileSync } from 'node:fs'
import { hostname } from 'node:os'

export interface Io {
  out: (text: string) => void
  err: (text: string) => void
  env: NodeJS.ProcessEnv
}

const COMMON: Record<string, FlagSpec> = {
  help: { type: 'boolean', short: 'h', help: 'show help' },
  'log-level': { type: 'string', arg: 'LEVEL', default: 'info', help: 'fatal|error|warn|info|debug|trace|silent' },
}

const CONFIG: FlagSpec = { type: 'string', arg: 'FILE', default: DEFAULTS.config, help: 'FabEdge tunnels.yaml' }
const DATAPATH: FlagSpec = { type: 'string', arg: 'KIND', default: 'xfrm', help: 'xfrm (kernel ESP, agent owns table-220 routes) or libipsec (charon routes via ipsec0)' }
const LIVE: Record<string, FlagSpec> = {
  config: CONFIG,
  vici: { type: 'string', arg: 'URI', default: DEFAULTS.vici, help: "charon's VICI socket" },
  cert: { type: 'string', arg: 'FILE', default: DEFAULTS.cert, help: 'local certificate PEM' },
  key: { type: 'string', arg: 'FILE', default: DEFAULTS.key, help: 'private key PEM (sent to charon only, never logged)' },
  ca: { type: 'string', arg: 'FILE', default: DEFAULTS.ca, help: 'CA certificate PEM' },
  datapath: DATAPATH,
}

/** Mediated edge-to-edge recovery (src/mediation, docs/mediation.md). */
const MEDIATION_FLAGS: Record<string, FlagSpec> = {
  'mediation-takeover': { type: 'string', arg: 'DURATION', default: '8s', help: 'a mediated edge peer initiated by the other side (lower name) and still down this long with our mediation SA up: initiate it from here too; 0 disables' },
  'mediation-restart-after': { type: 'string', arg: 'DURATION', default: '20s', help: 'a mediated peer whose mediation request was made under an earlier mediation SA and is still down this long: restart charon (needs --charon-pidfile); 0 disables' },
  'mediation-restart-interval': { type: 'string', arg: 'DURATION', default: '5m', help: 'at most one such charon restart per interval' },
  'charon-pidfile': { type: 'string', arg: 'FILE', default: '', help: 'charon\'s pid file (e.g. /var/run/charon.pid): lets mediation recovery restart charon (SIGTERM; systemd or the kubelet starts it again; a sidecar needs shareProcessNamespace); empty: never restart' },
}

/** --mediation-* and --charon-pidfile as the daemon takes them. */
export function mediationOf(p: Parsed): { policy: { takeoverMs: number; restartAfterMs: number; restartIntervalMs: number }; charonPidfile: string | null } {
  const pidfile = String(p.values['charon-pidfile'] ?? '')
  if (pidfile !== '' && !pidfile.startsWith('/')) throw new UsageError(`--charon-pidfile must be an absolute path, got "${pidfile}"`)
  return {
    policy: {
      takeoverMs: parseDuration(String(p.values['mediation-takeover']), '--mediation-takeover'),
      restartAfterMs: parseDuration(String(p.values['mediation-restart-after']), '--mediation-restart-after'),
      restartIntervalMs: parseDuration(String(p.values['mediation-restart-interval']), '--mediation-restart-interval'),
    },
    charonPidfile: pidfile === '' ? null : pidfile,
  }
}

const DPD_DELAY: FlagSpec = {
  type: 'string', arg: 'DURATION', default: EDGE_DPD_DELAY,
  help: `dead-peer detection interval of the connections this node initiates (edges: to the connector), whole seconds; 0 disables; FabEdge uses ${FABEDGE_DPD_DELAY}`,
}

/** --dpd-delay as charon takes it: whole seconds (charon has no sub-second DPD), at most an hour. */
export function dpdDelayOf(p: Parsed): string {
  const ms = parseDuration(String(p.values['dpd-delay']), '--dpd-delay')
  if (ms % 1000 !== 0 || ms > 3_600_000) throw new UsageError(`--dpd-delay must be whole seconds between 0s and 1h, got "${String(p.values['dpd-delay'])}"`)
  return `${ms / 1000}s`
}

const TCP_MSS: FlagSpec = {
  type: 'string', arg: 'pmtu|off|N', default: TCP_MSS_DEFAULT,
  help: `clamp the MSS of TCP SYNs to and from remote prefixes (mangle chain FABEDGE-MSS, docs/mtu.md): pmtu (to the path MTU of the route taken), a fixed N (${TCP_MSS_MIN}-${TCP_MSS_MAX} bytes; IPv6 at least 1220) or off`,
}

/** --tcp-mss, validated. */
export function tcpMssOf(p: Parsed): TcpMss {
  const r = parseTcpMss(String(p.values['tcp-mss']))
  if (!r.ok) throw new UsageError(r.message)
  return r.value
}

const ROLE_FLAGS: Record<string, FlagSpec> = {
  role: {
    type: 'string', arg: 'ROLE',
    help: "connector|edge|cloud (default: connector or edge from the config's local endpoint type; cloud only when given: a cloud node reads the connector's tunnels.yaml, runs no tunnels and no charon, and routes every remote prefix via --connector-address)",
  },
  'connector-address': {
    type: 'string', arg: 'ADDR[,ADDR]',
    help: "with --role cloud (required there): the connector's internal address, the next hop in table 220 (the connectors' keepalived VIP in HA, else the connector node's IP); dual-stack: one IPv4 and one IPv6 address, comma-separated. On a connector with --leader-election vip|lease: its standby routes every remote prefix via this address (the internal VIP), like a cloud node",
  },
}

/** --role and --connector-address, checked together. */
export function roleFlags(p: Parsed): { role?: Role; connectorAddresses?: { 4?: string; 6?: string } } {
  const raw = p.values.role
  const addr = p.values['connector-address']
  const role = raw === undefined || raw === '' ? undefined : String(raw)
  if (role !== undefined && role !== 'connector' && role !== 'edge' && role !== 'cloud') throw new UsageError(`--role must be connector, edge or cloud, got "${role}"`)
  if (role !== 'cloud') {
    if (addr === undefined) return role === undefined ? {} : { role }
    // A connector's standby routes like a cloud node, via the connectors' internal VIP (src/desired/standby.ts).
    const election = p.values['leader-election']
    if (role === 'edge' || election === undefined || election === 'none') {
      throw new UsageError('--connector-address is only used with --role cloud, or by a connector with --leader-election vip|lease (its standby routes via it)')
    }
    const parsed = parseConnectorAddresses(String(addr))
    if (!parsed.ok) throw new UsageError(parsed.message)
    return { ...(role ? { role } : {}), connectorAddresses: parsed.addresses }
  }
  if (addr === undefined || addr === '') throw new UsageError("--role cloud needs --connector-address (the connector's internal IP or the connectors' VIP)")
  const parsed = parseConnectorAddresses(String(addr))
  if (!parsed.ok) throw new UsageError(parsed.message)
  return { role, connectorAddresses: parsed.addresses }
}

/** Connector HA (docs/deploy.md "High availability"); names and defaults of the lease flags are FabEdge's. */
const ELECTION_FLAGS: Record<string, FlagSpec> = {
  'leader-election': { type: 'string', arg: 'MODE', default: 'none', help: 'connector HA: none (always the leader), vip (leads while --vip is on an interface of this node; keepalived moves it) or lease (a coordination.k8s.io Lease, in-cluster)' },
  vip: { type: 'string', arg: 'ADDR', help: 'the VIP keepalived moves (IPv4 or IPv6); required with vip, optional with lease (drained on SIGTERM)' },
  'leader-lock-name': { type: 'string', arg: 'NAME', default: 'connector', help: 'lease: name of the Lease (namespace from $NAMESPACE)' },
  'leader-lease-duration': { type: 'string', arg: 'DURATION', default: '15s', help: 'lease: how long a standby waits without seeing the lease renewed before taking it' },
  'leader-renew-deadline': { type: 'string', arg: 'DURATION', default: '10s', help: 'lease: the leader steps down when it could not renew for this long' },
  'leader-retry-period': { type: 'string', arg: 'DURATION', default: '2s', help: 'lease: interval of acquire (jittered x1.2) and renew attempts' },
  'node-name': { type: 'string', arg: 'NAME', help: 'lease: holder identity (default: $NODE_NAME, else $HOSTNAME, else the host name)' },
}

const SERVICE_ACCOUNT_NAMESPACE = '/var/run/secrets/kubernetes.io/serviceaccount/namespace'

/** `--leader-election` and its companions, validated. */
export function electionOf(p: Parsed, env: NodeJS.ProcessEnv, readNamespaceFile: () => string | null = defaultNamespaceFile): ElectionOptions {
  const mode = String(p.values['leader-election'])
  const vipText = p.values.vip === undefined || p.values.vip === '' ? undefined : String(p.values.vip)
  let vip: string | undefined
  if (vipText !== undefined) {
    try {
      vip = canonicalVip(vipText)
    } catch {
      throw new UsageError(`--vip must be an IPv4 or IPv6 address, got "${vipText}"`)
    }
  }
  switch (mode) {
    case 'none':
      if (vip) throw new UsageError('--vip needs --leader-election vip or lease')
      return { mode }
    case 'vip':
      if (!vip) throw new UsageError('--leader-election vip needs --vip ADDR')
      return { mode, vip }
    case 'lease': {
      const lease = {
        name: String(p.values['leader-lock-name']),
        leaseDurationMs: parseDuration(String(p.values['leader-lease-duration']), '--leader-lease-duration'),
        renewDeadlineMs: parseDuration(String(p.values['leader-renew-deadline']), '--leader-renew-deadline'),
        retryPeriodMs: parseDuration(String(p.values['leader-retry-period']), '--leader-retry-period'),
      }
      if (!DNS_SUBDOMAIN.test(lease.name)) throw new UsageError(`--leader-lock-name must be a DNS subdomain name, got "${lease.name}"`)
      const bad = checkLeaseTimings(lease)
      if (bad) throw new UsageError(bad)
      const namespace = env.NAMESPACE?.trim() || readNamespaceFile()
      if (!namespace) throw new UsageError('--leader-election lease needs the namespace in $NAMESPACE (or a service account namespace file)')
      const identity = (p.values['node-name'] ? String(p.values['node-name']) : '') || env.NODE_NAME?.trim() || env.HOSTNAME?.trim() || hostname()
      return { mode, lease: { ...lease, namespace, identity }, ...(vip ? { vip } : {}) }
    }
    default:
      throw new UsageError(`--leader-election must be none, vip or lease, got "${mode}"`)
  }
}

const DNS_SUBDOMAIN = /^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/

function defaultNamespaceFile(): string | null {
  try {
    return readFileSync(SERVICE_ACCOUNT_NAMESPACE, 'utf8').trim() || null
  } catch {
    return null
  }
}

function datapathOf(p: Parsed): Datapath {
  const d = String(p.values.datapath)
  if (d !== 'xfrm' && d !== 'libipsec') throw new UsageError(`--datapath must be xfrm or libipsec, got "${d}"`)
  return d
}

interface Command {
  summary: string
  usage: string
  flags: Record<string, FlagSpec>
  run: (p: Parsed, io: Io, log: Logger) => Promise<number>
}

const COMMANDS: Record<string, Command> = {
  validate: {
    summary: 'check a tunnels.yaml and report every problem with its line and field',
    usage: 'fabtunnel validate [--config FILE] [--json]',
    flags: {
      config: CONFIG,
      json: { type: 'boolean', help: 'print {valid, file, errors[], warnings[]} as JSON' },
    },
    run: validate,
  },
  plan: {
    summary: 'print the operations a pass would apply to this node now (--offline: the desired state from the config alone)',
    usage: 'fabtunnel plan [--offline] [--config FILE] [--json] [--datapath xfrm|libipsec] [--tcp-mss pmtu|off|N] [--cert FILE] [--vici URI] [--role cloud --connector-address ADDR]',
    flags: {
      config: CONFIG,
      ...ROLE_FLAGS,
      offline: { type: 'boolean', help: 'compute from the config alone, without reading the live node' },
      json: { type: 'boolean', help: 'print the desired state as JSON' },
      datapath: DATAPATH,
      'dpd-delay': DPD_DELAY,
      'tcp-mss': TCP_MSS,
      cert: { type: 'string', arg: 'FILE', default: DEFAULTS.cert, help: 'local certificate PEM sent in local.certs' },
      vici: LIVE.vici!,
    },
    run: plan,
  },
  run: {
    summary: 'run the agent: reconcile tunnels, routes, ipsets and iptables with the config, event-driven',
    usage: 'fabtunnel run [--config FILE] [--vici URI] [--cert F --key F --ca F] [--listen HOST:PORT] [--datapath xfrm|libipsec] [--tcp-mss pmtu|off|N] [--role cloud --connector-address ADDR] [--leader-election none|vip|lease [--vip ADDR]] [--ip-forward] [--cni-conf-path DIR ...] [--probe-interval 1s --probe-down-after 5 --probe-rate 500 --probe-repair on|off]',
    flags: {
      ...LIVE,
      ...ROLE_FLAGS,
      listen: { type: 'string', arg: 'HOST:PORT', default: DEFAULTS.listen, help: 'HTTP endpoints /healthz /readyz /is-leader /metrics /status' },
      'resync-interval': { type: 'string', arg: 'DURATION', default: '60s', help: 'periodic full resync (safety net; 0 disables)' },
      'dpd-delay': DPD_DELAY,
      ...MEDIATION_FLAGS,
      'tcp-mss': TCP_MSS,
      ...ELECTION_FLAGS,
      'ip-forward': { type: 'boolean', help: 'set net.ipv4.ip_forward=1 at start, in this network namespace (FabEdge edge duty; always on in FabEdge mode)' },
      'cni-conf-path': { type: 'string', arg: 'DIR', help: 'write <DIR>/<network name>.conflist (FabEdge\'s bridge + host-local config for the local subnets) after each pass whose tunnels applied; empty: off (FabEdge mode: /etc/cni/net.d)' },
      'cni-network-name': { type: 'string', arg: 'NAME', default: CNI_DEFAULTS.networkName, help: 'CNI network name, also the conflist file name' },
      'cni-bridge-name': { type: 'string', arg: 'IFNAME', default: CNI_DEFAULTS.bridgeName, help: 'bridge the CNI bridge plugin creates' },
      'cni-version': { type: 'string', arg: 'VERSION', default: CNI_DEFAULTS.cniVersion, help: 'cniVersion of the conflist' },
      'network-plugin-mtu': { type: 'string', arg: 'MTU', default: String(CNI_DEFAULTS.mtu), help: 'mtu of the CNI bridge (0 leaves it out)' },
      'enable-hairpinmode': { type: 'string', arg: 'BOOL', default: String(CNI_DEFAULTS.hairpinMode), help: 'hairpinMode of the CNI bridge (true|false)' },
      ...PROBE_FLAGS,
    },
    run: runCommand,
  },
  status: {
    summary: "print the running agent's per-peer tunnel state (from its /status)",
    usage: 'fabtunnel status [--listen HOST:PORT] [--json]',
    flags: {
      listen: { type: 'string', arg: 'HOST:PORT', default: DEFAULTS.listen, help: 'where the agent serves /status' },
      json: { type: 'boolean', help: 'print the raw /status JSON' },
    },
    run: statusCommand,
  },
  cleanup: {
    summary: 'remove everything the agent owns (connections, SAs, chains, ipsets, routes, rules) and nothing else',
    usage: 'fabtunnel cleanup [--vici URI] [--json] [--role cloud]',
    flags: {
      ...LIVE,
      role: { type: 'string', arg: 'ROLE', help: 'cloud: a cloud node has no charon, so only routes, rules, ipsets and chains are removed (connector|edge|cloud; default: everything, charon included)' },
      json: { type: 'boolean', help: 'print the report as JSON' },
    },
    run: cleanupCommand,
  },
}

function mainHelp(): string {
  const width = Math.max(...Object.keys(COMMANDS).map((c) => c.length)) + 2
  return [
    `fabtunnel ${VERSION}: FabEdge-compatible IPsec tunnel agent (strongSwan over VICI, routes/ipsets over netlink, iptables)`,
    '',
    'Usage: fabtunnel <command> [options]',
    '       fabtunnel --<FabEdge flag>=<value> ...   FabEdge mode: FabEdge agent/connector flags, no command (`fabtunnel fabedge --help`)',
    '',
    'Commands:',
    ...Object.entries(COMMANDS).map(([n, c]) => `  ${n.padEnd(width)}${c.summary}`),
    '',
    'Options:',
    '  -h, --help     show help (also `fabtunnel <command> --help`)',
    '  -V, --version  print the version (FabEdge mode: also --show-version)',
    '',
    'Every option also reads an environment variable: --foo-bar from FABTUNNEL_FOO_BAR.',
    'Exit codes: 0 ok, 1 invalid input or failure, 2 usage error.',
  ].join('\n')
}

function commandHelp(name: string, cmd: Command): string {
  return [`Usage: ${cmd.usage}`, '', `${name}: ${cmd.summary}`, '', 'Options:', formatFlags({ ...cmd.flags, ...COMMON })].join('\n')
}

function issueJson(i: ConfigIssue): Record<string, unknown> {
  return { line: i.line, column: i.column, path: i.path, message: i.message }
}

async function validate(p: Parsed, io: Io): Promise<number> {
  const file = String(p.values.config)
  try {
    const { config, warnings } = await loadConfig(file)
    if (p.values.json) {
      io.out(JSON.stringify({ valid: true, file, errors: [], warnings: warnings.map(issueJson) }, null, 2))
    } else {
      for (const w of warnings) io.err(formatIssue(file, w))
      const extra = config.mediator ? ', mediator' : ''
      io.out(`${file}: valid (${config.local.type} ${config.local.name}, ${config.peers.length} peer${config.peers.length === 1 ? '' : 's'}${extra})`)
    }
    return 0
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err
    if (p.values.json) {
      io.out(JSON.stringify({ valid: false, file, errors: err.errors.map(issueJson), warnings: err.warnings.map(issueJson) }, null, 2))
    } else {
      for (const i of err.issues) io.err(formatIssue(file, i))
      io.err(`${file}: invalid (${err.errors.length} error${err.errors.length === 1 ? '' : 's'})`)
    }
    return 1
  }
}

function renderPlanText(d: Desired): string {
  const lines: string[] = [`role: ${d.role}`, '', 'connections:']
  if (d.role === 'cloud') lines.push('  (none: a cloud node runs no tunnels; it routes through the connector)')
  for (const [name, section] of Object.entries(d.conns)) {
    const kids = section.children && typeof section.children === 'object' && !Array.isArray(section.children) ? Object.keys(section.children) : []
    const remote = Array.isArray(section.remote_addrs) ? ` remote_addrs=${section.remote_addrs.join(',')}` : ''
    lines.push(`  ${name}${remote}${kids.length ? ` children=${kids.join(',')}` : ''}${d.initiate.includes(name) ? ' (initiate)' : ' (respond)'}`)
  }
  lines.push('', `initiate order: ${d.initiate.join(', ') || '(none)'}`, '', 'routes:')
  for (const r of d.routes) lines.push(`  ${r.dst} via ${r.via ?? (r.viaFrom === 'connector-address' ? `<no IPv${r.family} --connector-address>` : '<default gateway>')} table ${r.table} proto ${r.protocol}`)
  if (!d.routes.length) lines.push('  (none: charon installs tunnel routes under libipsec)')
  lines.push('', 'rules:')
  for (const r of d.rules) lines.push(`  ipv${r.family}: from all lookup ${r.table} priority ${r.priority}`)
  lines.push('', 'ipsets:')
  for (const [name, s] of Object.entries(d.ipsets)) lines.push(`  ${name} (inet${s.family === 6 ? '6' : ''}): ${s.members.join(' ') || '(empty)'}`)
  lines.push('', 'iptables-restore (ipv4):', d.iptables.ipv4.trimEnd(), '', 'ip6tables-restore (ipv6):', d.iptables.ipv6.trimEnd())
  return lines.join('\n')
}

async function plan(p: Parsed, io: Io, log: Logger): Promise<number> {
  const datapath = datapathOf(p)
  const role = roleFlags(p)
  if (!p.values.offline) return planLive(p, io, log, datapath, role)
  const file = String(p.values.config)
  let loaded
  try {
    loaded = await loadConfig(file)
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err
    for (const i of err.issues) io.err(formatIssue(file, i))
    return 1
  }
  for (const w of loaded.warnings) log.warn({ file, line: w.line, path: w.path }, w.message)
  let certPem: string | undefined
  const certFile = String(p.values.cert)
  try {
    // A cloud node loads no connections, so it has no certificate to read.
    if (role.role !== 'cloud') certPem = await readCertPem(certFile)
  } catch (err) {
    if (!(err instanceof CertError)) throw err
    // A missing default certificate is normal on a workstation; an explicitly named one must exist.
    if (p.sources.cert !== 'default') {
      io.err(`fabtunnel plan: ${err.message}`)
      return 1
    }
    log.warn({ file: certFile, err: err.message }, 'certificate not readable; connections are shown without local.certs')
  }
  let desired: Desired
  try {
    desired = nodeDesired(loaded.config, role.role, { datapath, dpdDelay: dpdDelayOf(p), tcpMss: tcpMssOf(p), ...(certPem ? { certPem } : {}), ...(role.connectorAddresses ? { connectorAddresses: role.connectorAddresses } : {}) })
  } catch (err) {
    if (!(err instanceof DesiredError)) throw err
    io.err(`fabtunnel plan: ${err.message}`)
    return 1
  }
  io.out(p.values.json ? JSON.stringify(desired, null, 2) : renderPlanText(desired))
  return 0
}

async function planLive(p: Parsed, io: Io, log: Logger, datapath: Datapath, role: ReturnType<typeof roleFlags>): Promise<number> {
  const { buildNode } = await import('./daemon/node.js')
  const node = await buildNode({
    config: String(p.values.config), vici: String(p.values.vici), cert: String(p.values.cert), key: DEFAULTS.key, ca: DEFAULTS.ca,
    datapath, dpdDelay: dpdDelayOf(p), tcpMss: tcpMssOf(p), resyncMs: 0, log, credentials: false, viciTimeoutMs: 10_000, ...role,
  })
  try {
    const outcome = await node.agent.reloadConfig()
    if (outcome === 'rejected' || outcome === 'missing') {
      io.err(`fabtunnel plan: ${node.agent.configState.rejected?.message ?? 'no config'}`)
      return 1
    }
    let plans
    try {
      plans = await node.agent.planAll()
    } catch (err) {
      if (!(err instanceof DesiredError)) throw err
      io.err(`fabtunnel plan: ${err.message}`)
      return 1
    }
    if (p.values.json) {
      io.out(JSON.stringify(Object.fromEntries(plans.map((x) => [x.subsystem, x.error ? { error: x.error } : { writes: x.plan!.writes, ops: x.plan!.describe() }])), null, 2))
    } else {
      for (const x of plans) {
        io.out(`${x.subsystem}: ${x.error ? `ERROR ${x.error}` : x.plan!.writes === 0 ? 'converged (nothing to do)' : `${x.plan!.writes} write(s)`}`)
        for (const line of x.plan?.describe() ?? []) io.out(`  ${line}`)
      }
    }
    return plans.some((x) => x.error) ? 1 : 0
  } finally {
    await node.close()
  }
}

function boolOf(text: string, flag: string): boolean {
  const t = text.trim().toLowerCase()
  if (['1', 'true', 'yes', 'on', 't'].includes(t)) return true
  if (['0', 'false', 'no', 'off', 'f'].includes(t)) return false
  throw new UsageError(`${flag} must be true or false, got "${text}"`)
}

/** The CNI flags of `run`, validated (a bad name never reaches the filesystem); null when --cni-conf-path is empty. */
function cniOptionsOf(p: Parsed): CniOptions | null {
  const confDir = String(p.values['cni-conf-path'] ?? '')
  if (confDir === '') return null
  const mtuText = String(p.values['network-plugin-mtu'])
  const o: CniOptions = {
    confDir,
    networkName: String(p.values['cni-network-name']),
    bridgeName: String(p.values['cni-bridge-name']),
    cniVersion: String(p.values['cni-version']),
    mtu: /^\d+$/.test(mtuText) ? Number(mtuText) : Number.NaN,
    hairpinMode: boolOf(String(p.values['enable-hairpinmode']), '--enable-hairpinmode'),
  }
  try {
    validateCniOptions(o)
  } catch (err) {
    if (err instanceof CniError) throw new UsageError(err.message)
    throw err
  }
  return o
}

/** SIGTERM must end the process within this bound (pod grace period and systemd TimeoutStopSec are 10 s). */
const STOP_DEADLINE_MS = 5_000

async function runCommand(p: Parsed, io: Io, log: Logger): Promise<number> {
  // Signal handlers first, before anything that awaits: a SIGHUP from systemd's ExecReload right after start must
  // not kill the process (its default action), and a SIGTERM during start-up must stop it cleanly.
  let stopSignal: string | null = null
  let wakeStop: (() => void) | null = null
  let hup: (() => void) | null = null
  const onTerm = (sig: string): void => {
    if (stopSignal) {
      log.warn({ signal: sig }, 'second stop signal: exiting now')
      process.exit(1)
    }
    stopSignal = sig
    log.info({ signal: sig }, 'stopping')
    // The last resort: whatever is still open (a stuck child process, a socket) must not outlive the bound.
    setTimeout(() => {
      log.warn({ op: 'stop', deadlineMs: STOP_DEADLINE_MS }, 'shutdown did not finish in time; exiting')
      process.exit(0)
    }, STOP_DEADLINE_MS).unref()
    wakeStop?.()
  }
  const onTermSignal = (): void => onTerm('SIGTERM')
  const onIntSignal = (): void => onTerm('SIGINT')
  const onHupSignal = (): void => {
    if (hup) hup()
    else log.info({ op: 'sighup' }, 'SIGHUP during start-up: the first pass reads config and credentials anyway')
  }
  process.on('SIGTERM', onTermSignal)
  process.on('SIGINT', onIntSignal)
  process.on('SIGHUP', onHupSignal)
  // What arrived while the commands were loading (cli.ts's early handlers), handled as if it came now.
  for (const sig of takeEarlySignals()) (sig === 'SIGHUP' ? onHupSignal : sig === 'SIGTERM' ? onTermSignal : onIntSignal)()
  log.info({ op: 'start', pid: process.pid }, 'fabtunnel run: starting')
  try {
    const { startDaemon } = await import('./daemon/run.js')
    let listen
    try {
      listen = parseListen(String(p.values.listen))
    } catch (err) {
      throw new UsageError((err as Error).message)
    }
    const resyncMs = parseDuration(String(p.values['resync-interval']), '--resync-interval')
    const election = electionOf(p, io.env)
    const mediation = mediationOf(p)
    const cni = cniOptionsOf(p)
    const roles = roleFlags(p)
    // A cloud node runs no tunnels: nothing to probe.
    const probes = roles.role === 'cloud' ? null : probeOptionsOf(p)
    if (roles.role === 'cloud' && election.mode !== 'none') throw new UsageError('--leader-election is for connectors; a cloud node follows the connectors through --connector-address (their internal VIP)')
    // The conflist carries the local endpoint's pod subnets; a cloud node reads the connector's config.
    if (cni && roles.role === 'cloud') throw new UsageError('--cni-conf-path is for edge nodes; a cloud node (--role cloud) keeps its own CNI')
    let running
    try {
      running = await startDaemon({
        config: String(p.values.config), vici: String(p.values.vici), cert: String(p.values.cert), key: String(p.values.key),
        ca: String(p.values.ca), listen, datapath: datapathOf(p), dpdDelay: dpdDelayOf(p), tcpMss: tcpMssOf(p), resyncMs, log,
        ipForward: p.values['ip-forward'] === true, cni, ...roles, election, probes, mediation,
      })
    } catch (err) {
      if (!(err instanceof SysctlError)) throw err
      log.error({ op: 'sysctl', code: err.code, err: err.message }, 'cannot start')
      io.err(`fabtunnel run: ${err.message}`)
      return 1
    }
    hup = () => running.sighup()
    if (!stopSignal) await new Promise<void>((resolve) => { wakeStop = resolve })
    await running.stop()
    io.out('fabtunnel: stopped')
    return 0
  } finally {
    process.off('SIGTERM', onTermSignal)
    process.off('SIGINT', onIntSignal)
    process.off('SIGHUP', onHupSignal)
  }
}

async function statusCommand(p: Parsed, io: Io): Promise<number> {
  let addr
  try {
    addr = parseListen(String(p.values.listen))
  } catch (err) {
    throw new UsageError((err as Error).message)
  }
  const host = addr.host.includes(':') ? `[${addr.host}]` : addr.host === '0.0.0.0' ? '127.0.0.1' : addr.host
  let body: unknown
  try {
    const res = await fetch(`http://${host}:${addr.port}/status`, { signal: AbortSignal.timeout(5000) })
    if (!res.ok) throw new Error(`HTTP ${res.status}`)
    body = await res.json()
  } catch (err) {
    io.err(`fabtunnel status: cannot read http://${host}:${addr.port}/status: ${(err as Error).message} (is \`fabtunnel run\` running with this --listen?)`)
    return 1
  }
  io.out(p.values.json ? JSON.stringify(body, null, 2) : formatStatus(body as Parameters<typeof formatStatus>[0]))
  return 0
}

async function cleanupCommand(p: Parsed, io: Io, log: Logger): Promise<number> {
  const { buildNode } = await import('./daemon/node.js')
  const { cleanupNode } = await import('./daemon/cleanup.js')
  const role = p.values.role === undefined || p.values.role === '' ? undefined : String(p.values.role)
  if (role !== undefined && role !== 'connector' && role !== 'edge' && role !== 'cloud') throw new UsageError(`--role must be connector, edge or cloud, got "${role}"`)
  const node = await buildNode({
    config: String(p.values.config), vici: String(p.values.vici), cert: String(p.values.cert), key: String(p.values.key), ca: String(p.values.ca),
    datapath: datapathOf(p), resyncMs: 0, log, credentials: false, viciTimeoutMs: 10_000, ...(role === 'cloud' ? { role } : {}),
  })
  try {
    const r = await cleanupNode(node)
    if (p.values.json) io.out(JSON.stringify(r, null, 2))
    else {
      if (node.tunnels) {
        io.out(`connections unloaded: ${r.conns.join(', ') || '(none)'} (${r.sasTerminated} IKE SA(s) terminated)`)
        io.out(`credentials unloaded: ${r.keys.length} private key(s), authorities ${r.authorities.join(', ') || '(none)'}`)
      }
      for (const f of r.iptables) io.out(`iptables IPv${f.family}: removed ${f.chains.join(', ') || '(nothing)'}`)
      io.out(`ipsets destroyed: ${r.ipsets.join(', ') || '(none)'}`)
      io.out(`routes deleted (table 220, proto 220): ${r.routes.length}`)
      io.out(`rules deleted: ${r.rules}`)
      for (const e of r.errors) io.err(`error: ${e}`)
    }
    return r.errors.length ? 1 : 0
  } finally {
    await node.close()
  }
}

/** Runs one command with its argv; `preamble` logs first with the command's logger (the FabEdge mode's notes). */
async function runNamed(name: string, cmd: Command, rest: string[], io: Io, preamble?: (log: Logger) => void): Promise<number> {
  let parsed: Parsed
  try {
    parsed = parseFlags(rest, { ...cmd.flags, ...COMMON }, io.env)
    if (parsed.values.help) {
      io.out(commandHelp(name, cmd))
      return 0
    }
    if (parsed.positionals.length) throw new UsageError(`unexpected argument "${parsed.positionals[0]}"`)
    const level = String(parsed.values['log-level'])
    if (!isLogLevel(level)) throw new UsageError(`--log-level must be one of fatal|error|warn|info|debug|trace|silent, got "${level}"`)
    const log = createLogger(level)
    preamble?.(log)
    return await cmd.run(parsed, io, log)
  } catch (err) {
    if (err instanceof UsageError) {
      io.err(`fabtunnel ${name}: ${err.message}\n\n${commandHelp(name, cmd)}`)
      return 2
    }
    io.err(`fabtunnel ${name}: ${(err as Error).stack ?? String(err)}`)
    return 1
  }
}

/** Hands back signals held for a daemon that is not going to run (as cli.ts does for every other command). */
function releaseEarlySignals(): void {
  for (const sig of takeEarlySignals()) if (sig !== 'SIGHUP') process.kill(process.pid, sig)
}

/**
 * FabEdge mode: the image started with FabEdge's agent or connector flags and no command (see
 * src/compat/fabedge-argv.ts and docs/fabedge-flags.md). Translates them into `fabtunnel run`.
 */
async function fabedgeMode(argv: string[], io: Io): Promise<number> {
  let inv: FabedgeInvocation
  try {
    inv = translateFabedgeArgv(argv, { runFlags: new Set(Object.keys({ ...COMMANDS.run!.flags, ...COMMON })), env: io.env })
  } catch (err) {
    releaseEarlySignals()
    if (err instanceof UsageError) {
      io.err(`fabtunnel (FabEdge mode): ${err.message}\n\n${fabedgeHelp()}`)
      return 2
    }
    if (err instanceof FabedgeRefusal) {
      io.err(`fabtunnel (FabEdge mode): refusing to start: ${err.message}`)
      return 1
    }
    throw err
  }
  if (inv.kind !== 'run') releaseEarlySignals()
  if (inv.kind === 'help') {
    io.out(fabedgeHelp())
    return 0
  }
  if (inv.kind === 'version') {
    io.out(VERSION)
    return 0
  }
  const notes = inv.notes
  return runNamed('run', COMMANDS.run!, inv.runArgv, io, (log) => {
    for (const n of notes) log[n.level](n.fields ?? {}, n.msg)
  })
}

/**
 * Whether this command line may run the daemon (`run`, or the FabEdge mode that translates into it): the
 * executable keeps its early signal handlers for those, so a SIGHUP while the commands load cannot kill it.
 */
export function mayRunDaemon(argv: readonly string[]): boolean {
  const first = argv[0]
  if (first === 'run' || first === 'fabedge') return true
  return first !== undefined && first.startsWith('-') && !['-h', '--help', '-V', '--version'].includes(first)
}

export async function main(argv: string[], io: Io): Promise<number> {
  const [first, ...rest] = argv
  if (first === undefined || first === '-h' || first === '--help' || first === 'help') {
    io.out(mainHelp())
    return first === undefined ? 2 : 0
  }
  if (first === '-V' || first === '--version') {
    io.out(VERSION)
    return 0
  }
  if (first === 'fabedge') return fabedgeMode(rest, io)
  if (first.startsWith('-')) return fabedgeMode(argv, io)
  const cmd = COMMANDS[first]
  if (!cmd) {
    io.err(`fabtunnel: unknown command "${first}"\n\n${mainHelp()}`)
    return 2
  }
  return runNamed(first, cmd, rest, io)
}
