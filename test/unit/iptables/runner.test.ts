import t from 'tap'
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { execSpawn, IptablesRunner, restoreFailure, type ExecFn, type ExecResult } from '../../../src/iptables/runner.js'
import { IptablesError } from '../../../src/iptables/errors.js'

/** A directory holding empty executables with the given names: discovery only checks they are executable. */
function binDir(t: { teardown: (fn: () => void) => void }, names: string[]): string {
  const dir = mkdtempSync(join(tmpdir(), 'ipt-bin-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  for (const n of names) {
    writeFileSync(join(dir, n), '')
    chmodSync(join(dir, n), 0o755)
  }
  return dir
}
const ALL = ['nft', 'legacy'].flatMap((b) => ['iptables', 'ip6tables'].flatMap((f) => [`${f}-${b}-save`, `${f}-${b}-restore`]))

interface Call {
  argv: readonly string[]
  input?: string
}
/** A scripted exec: answers by the basename of argv[0], records every call. */
function fakeExec(answers: Record<string, Partial<ExecResult>>): { exec: ExecFn; calls: Call[] } {
  const calls: Call[] = []
  const exec: ExecFn = async (argv, opts) => {
    calls.push({ argv, ...(opts.input === undefined ? {} : { input: opts.input }) })
    const a = answers[argv[0]!.split('/').pop()!] ?? {}
    return { code: 0, signal: null, stdout: '', stderr: '', ...a }
  }
  return { exec, calls }
}
const rules = (n: number): string => ['*filter', ':INPUT ACCEPT [0:0]', ...Array.from({ length: n }, () => '-A INPUT -j ACCEPT'), 'COMMIT'].join('\n')

t.test('no iptables at all: one clear ENOENT error', async (t) => {
  const dir = binDir(t, [])
  await t.rejects(IptablesRunner.create({ searchPath: [dir] }), { code: 'ENOENT', message: /iptables-restore not found.*install the iptables package/ })
})

t.test('a family whose tools are missing fails with ENOENT when used, not at start', async (t) => {
  const dir = binDir(t, ['iptables-nft-save', 'iptables-nft-restore'])
  const runner = await IptablesRunner.create({ searchPath: [dir], exec: fakeExec({}).exec })
  t.equal(runner.backend, 'nft')
  t.equal(runner.info.reason, 'only iptables-nft is installed')
  await t.rejects(runner.save(6, 'nat'), { code: 'ENOENT', message: /ip6tables-nft-save not found/ })
})

t.test('backend detection like iptables-wrapper', async (t) => {
  const dir = binDir(t, ALL)
  const detect = async (answers: Record<string, Partial<ExecResult>>): Promise<string> =>
    (await IptablesRunner.create({ searchPath: [dir], exec: fakeExec(answers).exec, legacyTables: async () => ['filter'] })).backend
  t.equal(await detect({}), 'nft', 'empty host: nft')
  const spawned: string[] = []
  const quick = await IptablesRunner.create({ searchPath: [dir], exec: async (argv) => { spawned.push(argv[0]!); return { code: 0, signal: null, stdout: '', stderr: '' } }, legacyTables: async () => [] })
  t.same(quick.info, { backend: 'nft', reason: 'no legacy xtables table in this network namespace; nft is the default' })
  t.same(spawned, [], 'no legacy table: nothing spawned to decide')
  t.equal(await detect({ 'iptables-legacy-save': { stdout: rules(3) }, 'iptables-nft-save': { stdout: rules(2) } }), 'legacy', 'more legacy rules')
  t.equal(await detect({ 'ip6tables-legacy-save': { stdout: rules(1) } }), 'legacy', 'ip6tables rules count too')
  t.equal(await detect({ 'iptables-legacy-save': { stdout: rules(2) }, 'iptables-nft-save': { stdout: rules(2) } }), 'nft', 'tie: nft')
  t.equal(
    await detect({ 'iptables-legacy-save': { stdout: rules(50) }, 'iptables-nft-save': { stdout: '*mangle\n:KUBE-IPTABLES-HINT - [0:0]\nCOMMIT\n' } }),
    'nft',
    "kubelet's hint chain wins over counts",
  )
  t.equal(await detect({ 'iptables-legacy-save': { code: 1, stderr: 'no kernel support' }, 'iptables-nft-save': { stdout: rules(1) } }), 'nft', 'a failing save counts as empty')
  const fixed = await IptablesRunner.create({ searchPath: [dir], backend: 'legacy', exec: fakeExec({}).exec })
  t.same(fixed.info, { backend: 'legacy', reason: 'legacy chosen by configuration' })
})

t.test('plain pre-1.8 tools: backend read from --version', async (t) => {
  const dir = binDir(t, ['iptables-save', 'iptables-restore'])
  const r = await IptablesRunner.create({ searchPath: [dir], exec: fakeExec({ 'iptables-restore': { stdout: 'iptables-restore v1.6.1\n' } }).exec })
  t.equal(r.backend, 'legacy')
  t.equal(r.binary(4, 'restore'), join(dir, 'iptables-restore'))
})

t.test('save and restore argv: no shell, -w, --noflush, payload on stdin, per family; counted', async (t) => {
  const dir = binDir(t, ALL)
  const fake = fakeExec({ 'ip6tables-nft-save': { stdout: '*nat\nCOMMIT\n' } })
  const runner = await IptablesRunner.create({ searchPath: [dir], backend: 'nft', exec: fake.exec })
  t.equal(await runner.save(6, 'nat'), '*nat\nCOMMIT\n')
  await runner.restore(4, '*filter\nCOMMIT\n', { test: true })
  await runner.restore(4, '*filter\nCOMMIT\n')
  t.same(fake.calls, [
    { argv: [join(dir, 'ip6tables-nft-save'), '-t', 'nat'] },
    { argv: [join(dir, 'iptables-nft-restore'), '-w', '5', '--noflush', '--test'], input: '*filter\nCOMMIT\n' },
    { argv: [join(dir, 'iptables-nft-restore'), '-w', '5', '--noflush'], input: '*filter\nCOMMIT\n' },
  ])
  t.match(runner.counters, { saves: 1, tests: 1, restores: 1, failures: 0 })
  await t.rejects(runner.save(4, 'nat; reboot'), { code: 'bad-input' })
  await t.rejects(runner.save(5 as 4, 'nat'), { code: 'bad-input' })
})

t.test('a rejected restore: typed error with the failing line and two lines of context', async (t) => {
  const dir = binDir(t, ALL)
  const stderr =
    "iptables-restore v1.8.9 (nf_tables): Set FABEDGE-REMOTE-CIDR doesn't exist.\n\nError occurred at line: 5\nTry `iptables-restore -h' or 'iptables-restore --help' for more information.\n"
  const runner = await IptablesRunner.create({ searchPath: [dir], backend: 'nft', exec: fakeExec({ 'iptables-nft-restore': { code: 2, stderr } }).exec })
  const payload = 'l1\nl2\nl3\nl4\nl5\nl6\nl7\nl8\n'
  const err = await runner.restore(4, payload).catch((e: unknown) => e)
  t.type(err, IptablesError)
  t.match(err, {
    code: 'restore-failed',
    restore: { line: 5, context: '  3: l3\n  4: l4\n> 5: l5\n  6: l6\n  7: l7', stderr: /Set FABEDGE-REMOTE-CIDR doesn't exist/ },
    message: /at line 5:\n  3: l3/,
  })
  t.equal(runner.counters.failures, 1)
})

t.test('restoreFailure: legacy wording, edges of the payload, no line at all', async (t) => {
  t.same(restoreFailure('a\nb\nc\n', 'iptables-restore: line 1 failed\n'), { line: 1, context: '> 1: a\n  2: b\n  3: c', stderr: 'iptables-restore: line 1 failed' })
  t.same(restoreFailure('a\nb\nc\n', 'Error occurred at line: 3\n').context, '  1: a\n  2: b\n> 3: c')
  t.same(restoreFailure('a\n', 'Killed\n'), { stderr: 'Killed' })
})

t.test('the real exec: a missing binary is ENOENT, a hung one times out, stdin reaches the child', async (t) => {
  await t.rejects(execSpawn(['/nonexistent/iptables-restore'], { timeoutMs: 5000 }), { code: 'ENOENT' })
  await t.rejects(execSpawn(['sleep', '5'], { timeoutMs: 100 }), { code: 'timeout' })
  const r = await execSpawn(['cat'], { input: 'payload\n', timeoutMs: 5000 })
  t.same(r, { code: 0, signal: null, stdout: 'payload\n', stderr: '' })
  t.same(await execSpawn(['cat'], { timeoutMs: 5000 }), { code: 0, signal: null, stdout: '', stderr: '' }, 'without input the child reads end of file at once')
  t.same((await execSpawn(['sh', '-c', 'printf %s "$PATH"'], { timeoutMs: 5000 })).stdout, process.env.PATH, 'the tools get this process\'s environment')
})
