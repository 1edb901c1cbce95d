// `fabtunnel run --leader-election none|vip|lease` and its companions: FabEdge's lease flag names and defaults, a
// VIP validated as an address, the identity and namespace sources, and clear usage errors (exit 2) for the rest.
import t from 'tap'
import { electionOf, main } from '../../src/commands.js'
import { parseFlags } from '../../src/options.js'

async function cli(argv: string[], env: NodeJS.ProcessEnv = {}) {
  const out: string[] = []
  const err: string[] = []
  const code = await main(argv, { out: (s) => out.push(s), err: (s) => err.push(s), env: { FABTUNNEL_LOG_LEVEL: 'silent', ...env } })
  return { code, out: out.join('\n'), err: err.join('\n') }
}

// The run command's election flags, as main() parses them.
const SPECS = {
  'leader-election': { type: 'string', default: 'none', help: '' },
  vip: { type: 'string', help: '' },
  'leader-lock-name': { type: 'string', default: 'connector', help: '' },
  'leader-lease-duration': { type: 'string', default: '15s', help: '' },
  'leader-renew-deadline': { type: 'string', default: '10s', help: '' },
  'leader-retry-period': { type: 'string', default: '2s', help: '' },
  'node-name': { type: 'string', help: '' },
} as const
const parse = (argv: string[], env: NodeJS.ProcessEnv = {}, nsFile: string | null = null) =>
  electionOf(parseFlags(argv, SPECS as never, env), env, () => nsFile)

t.test('--help lists every election flag with its env twin and FabEdge default', async (t) => {
  const h = await cli(['run', '--help'])
  t.equal(h.code, 0)
  for (const [flag, def] of [['leader-election', 'none'], ['leader-lock-name', 'connector'], ['leader-lease-duration', '15s'], ['leader-renew-deadline', '10s'], ['leader-retry-period', '2s']]) {
    t.match(h.out, new RegExp(`--${flag} \\S+ .*\\(default: ${def}\\) \\[FABTUNNEL_${flag.toUpperCase().replace(/-/g, '_')}\\]`), flag)
  }
  t.match(h.out, /--vip ADDR .*\[FABTUNNEL_VIP\]/)
  t.match(h.out, /--node-name NAME .*NODE_NAME.*HOSTNAME.*\[FABTUNNEL_NODE_NAME\]/)
})

t.test('none (default), vip with a canonical address', async (t) => {
  t.same(parse([]), { mode: 'none' })
  t.same(parse(['--leader-election', 'vip', '--vip', 'FD00::0064']), { mode: 'vip', vip: 'fd00::64' })
  t.same(parse([], { FABTUNNEL_LEADER_ELECTION: 'vip', FABTUNNEL_VIP: '10.0.0.100' }), { mode: 'vip', vip: '10.0.0.100' }, 'from the environment twins')
})

t.test('lease: FabEdge defaults, namespace from NAMESPACE (else the service account file), identity sources', async (t) => {
  const env = { NAMESPACE: 'fabedge', NODE_NAME: 'node-a', HOSTNAME: 'pod-xyz' }
  t.same(parse(['--leader-election', 'lease'], env), {
    mode: 'lease',
    lease: { name: 'connector', leaseDurationMs: 15_000, renewDeadlineMs: 10_000, retryPeriodMs: 2_000, namespace: 'fabedge', identity: 'node-a' },
  })
  t.equal((parse(['--leader-election', 'lease', '--node-name', 'explicit'], env) as any).lease.identity, 'explicit', '--node-name first')
  t.equal((parse(['--leader-election', 'lease'], { NAMESPACE: 'x', HOSTNAME: 'pod-xyz' }) as any).lease.identity, 'pod-xyz', 'then HOSTNAME')
  t.equal((parse(['--leader-election', 'lease'], { NODE_NAME: 'n' }, 'from-file') as any).lease.namespace, 'from-file')
  const custom = parse(['--leader-election', 'lease', '--leader-lock-name', 'conn-2', '--leader-lease-duration', '30s', '--leader-renew-deadline', '20s', '--leader-retry-period', '500ms', '--vip', '10.0.0.1'], env) as any
  t.same(custom.lease, { name: 'conn-2', leaseDurationMs: 30_000, renewDeadlineMs: 20_000, retryPeriodMs: 500, namespace: 'fabedge', identity: 'node-a' })
  t.equal(custom.vip, '10.0.0.1', 'a VIP to drain on SIGTERM is allowed with lease')
})

t.test('usage errors: exit 2 with a clear message', async (t) => {
  const cases: Array<[string[], NodeJS.ProcessEnv, RegExp]> = [
    [['--leader-election', 'raft'], {}, /--leader-election must be none, vip or lease, got "raft"/],
    [['--leader-election', 'vip'], {}, /--leader-election vip needs --vip ADDR/],
    [['--leader-election', 'vip', '--vip', '10.0.0.0/24'], {}, /--vip must be an IPv4 or IPv6 address, got "10.0.0.0\/24"/],
    [['--vip', '10.0.0.1'], {}, /--vip needs --leader-election vip or lease/],
    [['--leader-election', 'lease'], { NAMESPACE: '' }, /needs the namespace in \$NAMESPACE/],
    [['--leader-election', 'lease', '--leader-renew-deadline', '20s'], { NAMESPACE: 'x' }, /--leader-lease-duration must be greater than --leader-renew-deadline/],
    [['--leader-election', 'lease', '--leader-retry-period', '9s'], { NAMESPACE: 'x' }, /--leader-renew-deadline must be greater than 1.2 x --leader-retry-period/],
    [['--leader-election', 'lease', '--leader-lease-duration', 'soon'], { NAMESPACE: 'x' }, /--leader-lease-duration must be a duration/],
    [['--leader-election', 'lease', '--leader-lock-name', 'Bad_Name'], { NAMESPACE: 'x' }, /--leader-lock-name must be a DNS subdomain name/],
  ]
  for (const [argv, env, msg] of cases) {
    const r = await cli(['run', '--listen', '127.0.0.1:0', ...argv], env)
    t.equal(r.code, 2, argv.join(' '))
    t.match(r.err, msg)
  }
})
