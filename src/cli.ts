#!/usr/bin/env node
// The `fabtunnel` command. Exit codes: 0 ok, 1 invalid input or failure, 2 usage error.
import { realpathSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { DEFAULTS } from './fabedge.js'
import { VERSION } from './version.js'
import { loadConfig } from './config/load.js'
import { ConfigError, formatIssue, type ConfigIssue } from './config/errors.js'
import { desiredState, type Datapath, type Desired } from './desired/index.js'
import { CertError, readCertPem } from './cert.js'
import { createLogger, isLogLevel, type Logger } from './log.js'
import { formatFlags, parseFlags, UsageError, type FlagSpec, type Parsed } from './options.js'

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
    summary: 'print the desired state (connections, routes, ipsets, iptables) for a config',
    usage: 'fabtunnel plan --offline [--config FILE] [--json] [--datapath xfrm|libipsec] [--cert FILE]',
    flags: {
      config: CONFIG,
      offline: { type: 'boolean', help: 'compute from the config alone, without reading the live node' },
      json: { type: 'boolean', help: 'print the desired state as JSON' },
      datapath: { type: 'string', arg: 'KIND', default: 'xfrm', help: 'xfrm (kernel ESP, agent owns table-220 routes) or libipsec (charon routes via ipsec0)' },
      cert: { type: 'string', arg: 'FILE', default: DEFAULTS.cert, help: 'local certificate PEM sent in local.certs' },
    },
    run: plan,
  },
}

function mainHelp(): string {
  const width = Math.max(...Object.keys(COMMANDS).map((c) => c.length)) + 2
  return [
    `fabtunnel ${VERSION}: FabEdge-compatible IPsec tunnel agent (strongSwan over VICI, routes/ipsets over netlink, iptables)`,
    '',
    'Usage: fabtunnel <command> [options]',
    '',
    'Commands:',
    ...Object.entries(COMMANDS).map(([n, c]) => `  ${n.padEnd(width)}${c.summary}`),
    '',
    'Options:',
    '  -h, --help     show help (also `fabtunnel <command> --help`)',
    '  -V, --version  print the version',
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
  for (const [name, section] of Object.entries(d.conns)) {
    const kids = section.children && typeof section.children === 'object' && !Array.isArray(section.children) ? Object.keys(section.children) : []
    const remote = Array.isArray(section.remote_addrs) ? ` remote_addrs=${section.remote_addrs.join(',')}` : ''
    lines.push(`  ${name}${remote}${kids.length ? ` children=${kids.join(',')}` : ''}${d.initiate.includes(name) ? ' (initiate)' : ' (respond)'}`)
  }
  lines.push('', `initiate order: ${d.initiate.join(', ') || '(none)'}`, '', 'routes:')
  for (const r of d.routes) lines.push(`  ${r.dst} via ${r.via ?? '<default gateway>'} table ${r.table} proto ${r.protocol}`)
  if (!d.routes.length) lines.push('  (none: charon installs tunnel routes under libipsec)')
  lines.push('', 'rules:')
  for (const r of d.rules) lines.push(`  ipv${r.family}: from all lookup ${r.table} priority ${r.priority}`)
  lines.push('', 'ipsets:')
  for (const [name, s] of Object.entries(d.ipsets)) lines.push(`  ${name} (inet${s.family === 6 ? '6' : ''}): ${s.members.join(' ') || '(empty)'}`)
  lines.push('', 'iptables-restore (ipv4):', d.iptables.ipv4.trimEnd(), '', 'ip6tables-restore (ipv6):', d.iptables.ipv6.trimEnd())
  return lines.join('\n')
}

async function plan(p: Parsed, io: Io, log: Logger): Promise<number> {
  if (!p.values.offline) {
    io.err('fabtunnel plan: diffing against the live node comes with `fabtunnel run` (the daemon); use --offline to print the desired state')
    return 2
  }
  const datapath = String(p.values.datapath)
  if (datapath !== 'xfrm' && datapath !== 'libipsec') throw new UsageError(`--datapath must be xfrm or libipsec, got "${datapath}"`)
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
    certPem = await readCertPem(certFile)
  } catch (err) {
    if (!(err instanceof CertError)) throw err
    // A missing default certificate is normal on a workstation; an explicitly named one must exist.
    if (p.sources.cert !== 'default') {
      io.err(`fabtunnel plan: ${err.message}`)
      return 1
    }
    log.warn({ file: certFile, err: err.message }, 'certificate not readable; connections are shown without local.certs')
  }
  const desired = desiredState(loaded.config, { datapath: datapath as Datapath, ...(certPem ? { certPem } : {}) })
  io.out(p.values.json ? JSON.stringify(desired, null, 2) : renderPlanText(desired))
  return 0
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
  const cmd = COMMANDS[first]
  if (!cmd) {
    io.err(`fabtunnel: unknown command "${first}"\n\n${mainHelp()}`)
    return 2
  }
  let parsed: Parsed
  try {
    parsed = parseFlags(rest, { ...cmd.flags, ...COMMON }, io.env)
    if (parsed.values.help) {
      io.out(commandHelp(first, cmd))
      return 0
    }
    if (parsed.positionals.length) throw new UsageError(`unexpected argument "${parsed.positionals[0]}"`)
    const level = String(parsed.values['log-level'])
    if (!isLogLevel(level)) throw new UsageError(`--log-level must be one of fatal|error|warn|info|debug|trace|silent, got "${level}"`)
    const log = createLogger(level)
    return await cmd.run(parsed, io, log)
  } catch (err) {
    if (err instanceof UsageError) {
      io.err(`fabtunnel ${first}: ${err.message}\n\n${commandHelp(first, cmd)}`)
      return 2
    }
    io.err(`fabtunnel ${first}: ${(err as Error).stack ?? String(err)}`)
    return 1
  }
}

function isEntry(): boolean {
  const argv1 = process.argv[1]
  if (!argv1) return false
  try {
    return realpathSync(argv1) === realpathSync(fileURLToPath(import.meta.url))
  } catch {
    return false
  }
}

if (isEntry()) {
  const io: Io = {
    out: (t) => process.stdout.write(`${t}\n`),
    err: (t) => process.stderr.write(`${t}\n`),
    env: process.env,
  }
  main(process.argv.slice(2), io).then(
    (code) => {
      process.exitCode = code
    },
    (err: unknown) => {
      process.stderr.write(`fabtunnel: ${(err as Error).stack ?? String(err)}\n`)
      process.exitCode = 1
    },
  )
}
