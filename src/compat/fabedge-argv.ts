// FabEdge's command lines, translated into `fabtunnel run`. FabEdge's operator starts the edge agent image with
// flags only (`--enable-dns=false --enable-proxy=false --local-cert=tls.crt --masq-outgoing=true --v=3`, never a
// subcommand), and the helm chart starts the connector with `--cni-type=… --connector-node-addresses=…
// --sync-period=1m -v=3`; so an image that replaces FabEdge's must accept exactly FabEdge's flags.
//
// Pure: argv (+ the run command's flag names, + the environment) in, a `fabtunnel run` argv and log notes out.
// Flag tables read from FabEdge's source, tag v1.0.0 (534028fcfe79):
//   agent      pkg/agent/config.go `AddFlags`, klog `v` via pkg/util/log/flags.go, `version` (registered by the
//              imported kube-proxy packages, read in pkg/agent/cmd.go)
//   connector  pkg/connector/manager.go `AddFlags`, pkg/connector/cmd.go (klog `v`, about.AddFlags `version`)
//   cloud-agent cmd/cloud-agent/main.go (`connector-node-addresses`, `v`, `version`)
//   cmd/node   (HEAD 4d44cdf846ba) `--component` selects one of them and registers the union of all flags;
//              pkg/common/about/about.go renamed `version` to `show-version` there.
// Parser semantics are spf13/pflag v1.0.5's (FabEdge's go.mod): `--f=v` or `--f v`; bool flags only `--f` or
// `--f=<bool>` (strconv.ParseBool); `-v` is the shorthand pflag gives the one-letter Go flag `v` (`-v=3`, `-v 3`,
// `-v3`); string slices split on commas and accumulate; `--` ends the flags; an unknown flag is a usage error.
import { UsageError } from '../options.js'

export type Component = 'agent' | 'connector' | 'cloud-agent'
type Kind = 'bool' | 'string' | 'strings' | 'duration' | 'int' | 'uint' | 'level'

interface FlagDef {
  kind: Kind
  /** Components whose binary registers the flag (`component` itself belongs to cmd/node only). */
  of: readonly Component[]
}

const A: Component[] = ['agent']
const C: Component[] = ['connector']
const ALL: Component[] = ['agent', 'connector', 'cloud-agent']

/** Every flag of FabEdge v1.0's agent, connector and cloud-agent, plus cmd/node's `--component`. */
export const FABEDGE_FLAGS: Readonly<Record<string, FlagDef>> = {
  // agent: pkg/agent/config.go AddFlags
  'tunnels-conf': { kind: 'string', of: A },
  'local-cert': { kind: 'strings', of: A },
  debounce: { kind: 'duration', of: A },
  'sync-period': { kind: 'duration', of: ['agent', 'connector'] },
  'enable-hairpinmode': { kind: 'bool', of: A },
  'network-plugin-mtu': { kind: 'int', of: A },
  'cni-version': { kind: 'string', of: A },
  'cni-conf-path': { kind: 'string', of: A },
  'cni-network-name': { kind: 'string', of: A },
  'cni-bridge-name': { kind: 'string', of: A },
  'masq-outgoing': { kind: 'bool', of: A },
  'dummy-interface-name': { kind: 'string', of: A },
  'enable-dns': { kind: 'bool', of: A },
  'dns-debug': { kind: 'bool', of: A },
  'dns-probe': { kind: 'bool', of: A },
  'dns-bind-ip': { kind: 'string', of: A },
  'dns-cluster-domain': { kind: 'string', of: A },
  'enable-proxy': { kind: 'bool', of: A },
  'proxy-mode': { kind: 'string', of: A },
  'proxy-cluster-cidr': { kind: 'string', of: A },
  'auto-networking': { kind: 'bool', of: A },
  workdir: { kind: 'string', of: A },
  'multicast-address': { kind: 'string', of: A },
  'multicast-token': { kind: 'string', of: A },
  'multicast-interval': { kind: 'duration', of: A },
  'backup-interval': { kind: 'duration', of: A },
  'endpoint-ttl': { kind: 'duration', of: A },
  'tunnel-init-timeout': { kind: 'uint', of: ['agent', 'connector'] },
  // connector: pkg/connector/manager.go AddFlags
  'tunnel-config': { kind: 'string', of: C },
  'cert-file': { kind: 'string', of: C },
  'vici-socket': { kind: 'string', of: C },
  'cni-type': { kind: 'string', of: C },
  'debounce-duration': { kind: 'duration', of: C },
  'connector-node-addresses': { kind: 'strings', of: ['connector', 'cloud-agent'] },
  'leader-lock-name': { kind: 'string', of: C },
  'leader-lease-duration': { kind: 'duration', of: C },
  'leader-renew-deadline': { kind: 'duration', of: C },
  'leader-retry-period': { kind: 'duration', of: C },
  'listen-address': { kind: 'string', of: C },
  // every component: klog's -v, the version switch (v1.0 `version`, HEAD `show-version`), cmd/node's selector
  v: { kind: 'level', of: ALL },
  version: { kind: 'bool', of: ALL },
  'show-version': { kind: 'bool', of: ALL },
  component: { kind: 'string', of: [] },
  help: { kind: 'bool', of: ALL },
}

/** What pflag stored for one flag: the last value (slices: every item, in order). */
export interface FlagValue {
  kind: Kind
  value: string
  items: string[]
}

export interface ParsedFabedge {
  flags: Map<string, FlagValue>
  /** Flag names in the order first seen (for messages). */
  order: string[]
}

/** strconv.ParseBool. */
function parseGoBool(name: string, text: string): boolean {
  if (['1', 't', 'T', 'TRUE', 'true', 'True'].includes(text)) return true
  if (['0', 'f', 'F', 'FALSE', 'false', 'False'].includes(text)) return false
  throw new UsageError(`invalid argument "${text}" for "--${name}" flag: strconv.ParseBool: parsing "${text}": invalid syntax`)
}

const DURATION_UNITS: Record<string, number> = { ns: 1e-6, us: 1e-3, 'µs': 1e-3, 'μs': 1e-3, ms: 1, s: 1000, m: 60_000, h: 3_600_000 }

/** Go's time.ParseDuration, in milliseconds: "1m30s", "300ms", "1.5h", "-2s"; a bare number only for "0". */
export function parseGoDuration(text: string): number | null {
  const m = /^([-+]?)(.*)$/.exec(text)!
  const body = m[2]!
  if (body === '0') return 0
  if (body === '') return null
  // µs and μs as escapes: the executable's bundle must be ASCII (scripts/bundle.mjs), and esbuild keeps a regular
  // expression's characters as written.
  const re = /(\d+\.?\d*|\.\d+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)/y
  let total = 0
  let at = 0
  while (at < body.length) {
    re.lastIndex = at
    const part = re.exec(body)
    if (!part) return null
    total += Number(part[1]) * DURATION_UNITS[part[2]!]!
    at = re.lastIndex
  }
  return m[1] === '-' ? -total : total
}

/** Checks a value against the flag's Go type, as pflag's Set does; throws the usage error pflag would print. */
function checkValue(name: string, kind: Kind, text: string): void {
  const bad = (why: string) => new UsageError(`invalid argument "${text}" for "--${name}" flag: ${why}`)
  switch (kind) {
    case 'bool':
      parseGoBool(name, text)
      return
    case 'duration':
      if (parseGoDuration(text) === null) throw bad(`time: invalid duration "${text}"`)
      return
    case 'int':
    case 'level':
      if (!/^[-+]?\d+$/.test(text) || !Number.isSafeInteger(Number(text))) throw bad('strconv.ParseInt: invalid syntax')
      return
    case 'uint':
      if (!/^\+?\d+$/.test(text) || !Number.isSafeInteger(Number(text))) throw bad('strconv.ParseUint: invalid syntax')
      return
    default:
  }
}

/** pflag's parse loop over FABEDGE_FLAGS. Positional arguments are a usage error (FabEdge never passes any). */
export function parseFabedgeArgv(argv: readonly string[]): ParsedFabedge {
  const flags = new Map<string, FlagValue>()
  const order: string[] = []
  const set = (name: string, text: string) => {
    const def = FABEDGE_FLAGS[name]!
    checkValue(name, def.kind, text)
    const prev = flags.get(name)
    // pflag's stringSlice: the first Set replaces the default, later ones append; each value is a CSV record.
    const items = def.kind === 'strings' ? [...(prev?.items ?? []), ...(text === '' ? [] : text.split(',').map((s) => s.trim()))] : [text]
    if (!prev) order.push(name)
    flags.set(name, { kind: def.kind, value: def.kind === 'strings' ? items.join(',') : text, items })
  }
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!
    if (arg === '--') {
      if (i + 1 < argv.length) throw new UsageError(`unexpected argument "${argv[i + 1]}" (FabEdge's binaries take flags only)`)
      break
    }
    let name: string
    let value: string | undefined
    if (arg.startsWith('--')) {
      const eq = arg.indexOf('=')
      name = eq < 0 ? arg.slice(2) : arg.slice(2, eq)
      value = eq < 0 ? undefined : arg.slice(eq + 1)
      if (name === '' || name.startsWith('-') || name.startsWith('=')) throw new UsageError(`bad flag syntax: ${arg}`)
      if (!Object.hasOwn(FABEDGE_FLAGS, name)) throw new UsageError(`unknown flag: --${name}`)
    } else if (arg.startsWith('-') && arg.length > 1) {
      // Shorthands: only -v (klog's level; pflag derives it from the one-letter Go flag) and -h (help).
      const short = arg[1]!
      if (short === 'h') {
        if (arg.length > 2) throw new UsageError(`unknown shorthand flag: '${arg[2]}' in ${arg}`)
        name = 'help'
        value = undefined
      } else if (short === 'v') {
        name = 'v'
        value = arg.length > 2 ? (arg[2] === '=' ? arg.slice(3) : arg.slice(2)) : undefined
      } else {
        throw new UsageError(`unknown shorthand flag: '${short}' in ${arg}`)
      }
    } else {
      throw new UsageError(`unexpected argument "${arg}" (FabEdge's binaries take flags only)`)
    }
    const def = FABEDGE_FLAGS[name]!
    if (value === undefined) {
      if (def.kind === 'bool') value = 'true'
      else if (i + 1 < argv.length) value = argv[++i]!
      else throw new UsageError(`flag needs an argument: --${name}`)
    }
    set(name, value)
  }
  return { flags, order }
}

/** Thrown when a FabEdge feature fabtunnel does not implement is switched on: exit 1, never a silent loss. */
export class FabedgeRefusal extends Error {
  override readonly name = 'FabedgeRefusal'
  constructor(readonly feature: string, message: string) {
    super(message)
  }
}

export interface Note {
  level: 'info' | 'warn'
  msg: string
  fields?: Record<string, unknown>
}

export type FabedgeInvocation =
  | { kind: 'help' }
  | { kind: 'version' }
  | { kind: 'run'; component: Exclude<Component, 'cloud-agent'>; runArgv: string[]; notes: Note[] }

export interface TranslateOptions {
  /** The flag names `fabtunnel run` knows in this build: flags it lacks are not emitted (and a note says so). */
  runFlags: ReadonlySet<string>
  /** Environment: an explicit FABTUNNEL_KEY wins over the key path derived from the certificate. */
  env: NodeJS.ProcessEnv
}

const IPSEC_D = '/etc/ipsec.d'

/**
 * FabEdge resolves a relative `--local-cert` under /etc/ipsec.d/certs (pkg/agent/config.go flag help). The private
 * key follows the certificate's name: its last extension is replaced by `.key`, in /etc/ipsec.d/private when the
 * certificate is in /etc/ipsec.d/certs (FabEdge's Secret layout: certs/tls.crt + private/tls.key, and strongSwan's
 * `: RSA tls.key` looks there), otherwise next to the certificate.
 */
export function certPaths(cert: string): { cert: string; key: string } {
  const path = cert.startsWith('/') ? cert : `${IPSEC_D}/certs/${cert}`
  const slash = path.lastIndexOf('/')
  const dir = path.slice(0, slash)
  const base = path.slice(slash + 1)
  const dot = base.lastIndexOf('.')
  const stem = dot > 0 ? base.slice(0, dot) : base
  const keyDir = dir === `${IPSEC_D}/certs` ? `${IPSEC_D}/private` : dir
  return { cert: path, key: `${keyDir}/${stem}.key` }
}

/** klog verbosity to a pino level: FabEdge's default -v=3 is normal operation (info). */
export function logLevelOfKlog(v: number): 'info' | 'debug' | 'trace' {
  return v >= 6 ? 'trace' : v >= 4 ? 'debug' : 'info'
}

/** Flags only one binary registers: they select the mode when --component is absent. */
function onlyOf(c: Component): string[] {
  return Object.entries(FABEDGE_FLAGS).filter(([, d]) => d.of.length === 1 && d.of[0] === c).map(([n]) => n)
}

const REFUSALS: Array<{ flag: string; feature: string; message: string }> = [
  {
    flag: 'enable-dns',
    feature: 'DNS',
    message:
      "--enable-dns=true asks for FabEdge's node-local DNS (embedded CoreDNS on a dummy interface at 169.254.25.10, " +
      'answering from the KubeEdge MetaServer); fabtunnel does not provide it, and edge pods whose clusterDNS is ' +
      '169.254.25.10 would lose DNS. Run a node-local CoreDNS (e.g. a DaemonSet bound to 169.254.25.10) and set ' +
      'agent.args.ENABLE_DNS=false, or keep FabEdge\'s agent image on these nodes.',
  },
  {
    flag: 'enable-proxy',
    feature: 'kube-proxy',
    message:
      "--enable-proxy=true asks for FabEdge's embedded kube-proxy (the service proxy for ClusterIPs on edge nodes); " +
      'fabtunnel does not provide it, and edge pods would lose every Service. Run kube-proxy on the edge nodes ' +
      '(e.g. let the kube-proxy DaemonSet schedule there, against the MetaServer) and set ' +
      'agent.args.ENABLE_PROXY=false, or keep FabEdge\'s agent image on these nodes.',
  },
  {
    flag: 'auto-networking',
    feature: 'auto-networking',
    message:
      "--auto-networking=true asks for FabEdge's LAN auto-networking (UDP multicast endpoint discovery on " +
      '239.40.20.81:18080 and direct routes between edge nodes of one LAN); fabtunnel does not speak that protocol, ' +
      'so those nodes would stop reaching each other directly. Set agent.args.AUTO_NETWORKING=false (traffic then ' +
      'goes through the tunnels), or keep FabEdge\'s agent image on these nodes.',
  },
]

/** Flags fabtunnel accepts and has no use for, with why (logged in one line at start). */
const UNUSED_WHY: Record<string, string> = {
  'masq-outgoing': 'MASQUERADE of pod traffic leaving the cluster is unconditional (FabEdge parses this flag and never reads it)',
  'enable-dns': 'off', 'enable-proxy': 'off', 'auto-networking': 'off',
  'dns-debug': 'DNS not provided', 'dns-probe': 'DNS not provided', 'dns-bind-ip': 'DNS not provided',
  'dns-cluster-domain': 'DNS not provided', 'dummy-interface-name': 'only used by FabEdge\'s DNS',
  'proxy-mode': 'service proxy not provided', 'proxy-cluster-cidr': 'service proxy not provided',
  workdir: 'no state on disk', 'multicast-address': 'auto-networking not provided',
  'multicast-token': 'auto-networking not provided', 'multicast-interval': 'auto-networking not provided',
  'backup-interval': 'auto-networking not provided', 'endpoint-ttl': 'auto-networking not provided',
  debounce: 'not needed: fabtunnel is event-driven (millisecond coalescing)',
  'debounce-duration': 'not needed: fabtunnel is event-driven (millisecond coalescing)',
  'tunnel-init-timeout': 'not needed: initiates are asynchronous and followed through VICI events',
  'cni-type': "not needed: the connector's table-220 routes do not depend on the cloud CNI",
}

function unusedWhy(name: string, component: Component): string {
  const of = FABEDGE_FLAGS[name]!.of
  return of.includes(component) ? UNUSED_WHY[name] ?? 'unused' : `a FabEdge ${of.join('/')} flag, not the ${component}'s`
}

function isTrue(p: ParsedFabedge, name: string): boolean {
  const f = p.flags.get(name)
  return f !== undefined && parseGoBool(name, f.value)
}

export function selectComponent(p: ParsedFabedge): Component {
  const given = p.flags.get('component')?.value
  if (given !== undefined) {
    if (given === 'agent' || given === 'connector' || given === 'cloud-agent') return given
    if (given === 'operator') {
      throw new FabedgeRefusal('operator', "--component=operator: fabtunnel is a data-plane agent, not FabEdge's operator; keep running fabedge/operator for that component.")
    }
    throw new UsageError(`--component must be agent, connector or cloud-agent, got "${given}"`)
  }
  const agentOnly = p.order.filter((n) => onlyOf('agent').includes(n))
  const connectorOnly = p.order.filter((n) => onlyOf('connector').includes(n))
  if (agentOnly.length && connectorOnly.length) {
    throw new UsageError(
      `flags of both FabEdge's agent (${agentOnly.map((n) => `--${n}`).join(', ')}) and connector (${connectorOnly.map((n) => `--${n}`).join(', ')}); ` +
        'pass --component=agent|connector to choose',
    )
  }
  if (connectorOnly.length) return 'connector'
  // The cloud-agent DaemonSet's argv is `--connector-node-addresses=… -v=…` and nothing else.
  if (!agentOnly.length && p.flags.has('connector-node-addresses')) return 'cloud-agent'
  return 'agent'
}

/** Go duration flag → `<n>ms` for fabtunnel's duration parser. */
function ms(p: ParsedFabedge, name: string): string | undefined {
  const f = p.flags.get(name)
  if (!f) return undefined
  const n = parseGoDuration(f.value)!
  return `${Math.round(n)}ms`
}

/** The whole translation: FabEdge argv → `fabtunnel run` argv (or help / version), or a usage error / refusal. */
export function translateFabedgeArgv(argv: readonly string[], o: TranslateOptions): FabedgeInvocation {
  const p = parseFabedgeArgv(argv)
  if (isTrue(p, 'help')) return { kind: 'help' }
  if (isTrue(p, 'version') || isTrue(p, 'show-version')) return { kind: 'version' }
  const component = selectComponent(p)
  if (component === 'cloud-agent') {
    throw new FabedgeRefusal(
      'cloud-agent',
      "FabEdge's cloud-agent (routes on plain cloud nodes, learnt from the connector over memberlist) is not " +
        "provided: fabtunnel does not speak memberlist. Use fabtunnel's cloud DaemonSet (`fabtunnel run --role cloud`) " +
        "instead of FabEdge's fabedge-cloud-agent DaemonSet.",
    )
  }
  const notes: Note[] = []
  const out: Array<[string, string | true]> = []
  const emit = (flag: string, value: string | true) => out.push([flag, value])
  const used = new Set<string>(['component', 'help', 'version', 'show-version'])
  const use = (name: string) => {
    used.add(name)
    return p.flags.get(name)
  }

  const sync = ms(p, 'sync-period')
  used.add('sync-period')
  if (sync !== undefined) {
    if (parseGoDuration(p.flags.get('sync-period')!.value)! < 1000) throw new UsageError(`--sync-period must be at least 1s (FabEdge's minimum), got "${p.flags.get('sync-period')!.value}"`)
    emit('resync-interval', sync)
  }
  const v = use('v')
  if (v) emit('log-level', logLevelOfKlog(Number(v.value)))
  const keyFromEnv = o.env.FABTUNNEL_KEY !== undefined

  if (component === 'agent') {
    for (const r of REFUSALS) if (isTrue(p, r.flag)) throw new FabedgeRefusal(r.feature, r.message)
    const conf = use('tunnels-conf')
    if (conf) emit('config', conf.value)
    const certs = use('local-cert')
    if (certs) {
      if (certs.items.length !== 1) {
        throw new FabedgeRefusal('local-cert', `--local-cert names ${certs.items.length} certificates (${certs.value}); fabtunnel loads exactly one local certificate (FabEdge's operator passes --local-cert=tls.crt)`)
      }
      const paths = certPaths(certs.items[0]!)
      emit('cert', paths.cert)
      if (!keyFromEnv) emit('key', paths.key)
    }
    emit('ip-forward', true)
    const cniDir = use('cni-conf-path')
    emit('cni-conf-path', cniDir ? cniDir.value : '/etc/cni/net.d')
    for (const name of ['cni-network-name', 'cni-bridge-name', 'cni-version', 'network-plugin-mtu', 'enable-hairpinmode']) {
      const f = use(name)
      if (f) emit(name, f.kind === 'bool' ? String(parseGoBool(name, f.value)) : f.value)
    }
  } else {
    const conf = use('tunnel-config')
    if (conf) emit('config', conf.value)
    const cert = use('cert-file')
    if (cert) {
      const paths = certPaths(cert.value)
      emit('cert', paths.cert)
      if (!keyFromEnv) emit('key', paths.key)
    }
    const vici = use('vici-socket')
    if (vici) emit('vici', vici.value.startsWith('unix://') ? vici.value : `unix://${vici.value}`)
    const listen = use('listen-address')
    if (listen) emit('listen', listen.value)
    emit('ip-forward', true)
    // FabEdge's connector always runs a Lease election (pkg/connector/manager.go runLeaderElection), with these
    // defaults (AddFlags): lock "connector", 15s / 10s / 2s.
    emit('leader-election', 'lease')
    emit('leader-lock-name', use('leader-lock-name')?.value ?? 'connector')
    for (const [name, fabedgeDefault] of [['leader-lease-duration', '15000ms'], ['leader-renew-deadline', '10000ms'], ['leader-retry-period', '2000ms']] as const) {
      used.add(name)
      emit(name, ms(p, name) ?? fabedgeDefault)
    }
    const seeds = use('connector-node-addresses')
    if (seeds) {
      notes.push({
        level: 'warn',
        msg:
          "WARNING: --connector-node-addresses is accepted but fabtunnel does not speak memberlist: FabEdge's " +
          "fabedge-cloud-agent DaemonSet gets no routes from fabtunnel. Deploy fabtunnel's cloud DaemonSet " +
          '(`fabtunnel run --role cloud`) on the cloud nodes instead.',
        fields: { op: 'fabedge-argv', flag: 'connector-node-addresses', seeds: seeds.items },
      })
    }
  }

  const runArgv: string[] = []
  const dropped: string[] = []
  for (const [flag, value] of out) {
    if (!o.runFlags.has(flag)) {
      dropped.push(flag)
      continue
    }
    runArgv.push(value === true ? `--${flag}` : `--${flag}=${value}`)
  }
  if (dropped.length) {
    notes.push({
      level: 'warn',
      msg: `this build's \`fabtunnel run\` has no ${dropped.map((f) => `--${f}`).join(', ')}: the FabEdge behaviour behind ${dropped.length === 1 ? 'it' : 'them'} is not applied`,
      fields: { op: 'fabedge-argv', missing: dropped },
    })
  }
  const unused = p.order.filter((n) => !used.has(n))
  if (unused.length) {
    notes.unshift({
      level: 'info',
      msg: `FabEdge ${component} flags accepted and not used: ${unused.map((n) => `--${n}=${p.flags.get(n)!.value} (${unusedWhy(n, component)})`).join('; ')}`,
      fields: { op: 'fabedge-argv', unused },
    })
  }
  notes.unshift({ level: 'info', msg: `FabEdge ${component} command line translated to: fabtunnel run ${runArgv.join(' ')}`, fields: { op: 'fabedge-argv', component, argv: [...argv], runArgv } })
  return { kind: 'run', component, runArgv, notes }
}

/** `fabtunnel --help` text for the FabEdge mode. */
export function fabedgeHelp(): string {
  const byComponent = (c: Component) => Object.entries(FABEDGE_FLAGS).filter(([n, d]) => d.of.includes(c) && d.kind !== 'level' && n !== 'help').map(([n]) => `--${n}`).join(' ')
  return [
    'Usage: fabtunnel [FabEdge agent or connector flags]   (also: fabtunnel fabedge [flags])',
    '',
    "FabEdge mode: started with FabEdge's own flags and no command (as FabEdge's operator and helm chart start the",
    'agent and connector images), fabtunnel translates them and runs `fabtunnel run`. Mode: --component=agent|connector',
    'if given; else connector when a connector-only flag is present; else agent. The agent mode also sets',
    'net.ipv4.ip_forward=1 and writes the CNI conflist (<--cni-conf-path>/<--cni-network-name>.conflist).',
    'Refused (exit 1): --enable-dns=true, --enable-proxy=true, --auto-networking=true, --component=cloud-agent.',
    'Unknown flags are usage errors (exit 2). The full mapping: docs/fabedge-flags.md.',
    '',
    `agent flags:     ${byComponent('agent')} -v/--v LEVEL`,
    `connector flags: ${byComponent('connector')} -v/--v LEVEL`,
    `cloud-agent:     ${byComponent('cloud-agent')} (refused: use fabtunnel's cloud DaemonSet)`,
  ].join('\n')
}
