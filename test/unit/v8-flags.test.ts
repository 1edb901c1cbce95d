import t from 'tap'
import { spawnSync } from 'node:child_process'
import { DaemonFlags, flagName, V8_DEFAULTS } from '../../src/v8-flags.js'
import { monotonicMs } from '../../src/clock.js'
import { offendingLines, scanSrc } from '../harness/source-scan.js'

t.test('flag names', async (t) => {
  t.equal(flagName('--turbofan'), 'turbofan')
  t.equal(flagName('--no-turbofan'), 'turbofan')
  t.equal(flagName('--no_turbofan'), 'turbofan')
  t.equal(flagName('--semi-space-growth-factor=1'), 'semi-space-growth-factor')
  t.equal(flagName('--heap_growing_percent=50'), 'heap-growing-percent')
  for (const bad of ['turbofan', '-x', '--', '--a b', '']) t.throws(() => flagName(bad), RangeError, JSON.stringify(bad))
})

t.test('the daemon\'s flags are put back to V8\'s defaults around a call, and set again after it', async (t) => {
  const applied: string[] = []
  const f = new DaemonFlags((x) => applied.push(x))
  f.set('--semi-space-growth-factor=1')
  f.set('--no-turbofan')
  f.set('--heap-growing-percent=50')
  t.same(f.flags, ['--semi-space-growth-factor=1', '--no-turbofan', '--heap-growing-percent=50'])
  applied.length = 0
  let inside: string[] = []
  t.equal(f.withV8Defaults(() => { inside = [...applied]; return 42 }), 42, 'returns what the call returns')
  t.same(inside, [V8_DEFAULTS['semi-space-growth-factor'], V8_DEFAULTS.turbofan, V8_DEFAULTS['heap-growing-percent']], 'defaults during the call')
  t.same(applied.slice(3), ['--semi-space-growth-factor=1', '--no-turbofan', '--heap-growing-percent=50'], 'and the daemon\'s after it')
  applied.length = 0
  t.throws(() => f.withV8Defaults(() => { throw new Error('boom') }), /boom/)
  t.same(applied.slice(3), ['--semi-space-growth-factor=1', '--no-turbofan', '--heap-growing-percent=50'], 'set again when the call throws')
  // A flag set back to its default is no longer the daemon's: nothing to undo for it.
  f.set('--turbofan')
  t.same(f.flags, ['--semi-space-growth-factor=1', '--heap-growing-percent=50'])
  applied.length = 0
  f.withV8Defaults(() => undefined)
  t.same(applied, [V8_DEFAULTS['semi-space-growth-factor'], V8_DEFAULTS['heap-growing-percent'], '--semi-space-growth-factor=1', '--heap-growing-percent=50'])
  t.throws(() => f.set('--max-lazy'), /default of max-lazy is not known/, 'a flag without a known default is refused')
  t.same(new DaemonFlags(() => undefined).flags, [], 'none set: nothing in force')
})

// The real thing: V8's defaults as this Node prints them, and Node's code cache of a built-in module loaded after
// the daemon's flags are set, rejected without withV8Defaults and accepted inside it.
t.test('V8_DEFAULTS are this V8\'s defaults', async (t) => {
  const r = spawnSync(process.execPath, ['--v8-options'], { encoding: 'utf8' })
  t.equal(r.status, 0)
  for (const [name, dflt] of Object.entries(V8_DEFAULTS)) t.match(r.stdout, new RegExp(`--${name} \\(.*\\)\\n\\s+type: \\w+\\s+default: ${dflt.replace(/[-=]/g, '\\$&')}\\n`), name)
})

t.test('a built-in module loaded after the flags are set keeps Node\'s code cache only inside withV8Defaults', async (t) => {
  const script = `const { daemonFlags } = await import(process.env.FT_MODULE)
    for (const f of ['--semi-space-growth-factor=1', '--heap-growing-percent=50', '--no-turbofan']) daemonFlags.set(f)
    process.getBuiltinModule('node:readline')
    daemonFlags.withV8Defaults(() => process.getBuiltinModule('node:perf_hooks'))
    process.getBuiltinModule('node:dgram')`
  // `env -u`: tap puts its preload (NODE_OPTIONS) into every node process a test spawns, whatever env it is given;
  // its modules would be loaded before the flags are set.
  const r = spawnSync('env', ['-u', 'NODE_OPTIONS', '-u', 'NODE_V8_COVERAGE', process.execPath, '--input-type=module', '-e', script], {
    encoding: 'utf8', env: { ...process.env, NODE_DEBUG_NATIVE: 'CODE_CACHE', FT_MODULE: new URL('../../dist/v8-flags.js', import.meta.url).pathname },
  })
  t.equal(r.status, 0, r.stderr.slice(-2000))
  t.match(r.stderr, /Code cache of readline \(\S+\) is rejected/, 'outside: rejected (the check sees a rejection)')
  t.match(r.stderr, /Code cache of perf_hooks \(\S+\) is accepted/, 'inside: accepted')
  t.match(r.stderr, /Code cache of dgram \(\S+\) is rejected/, 'after it: the daemon\'s flags are in force again')
})

// The `performance` global loads Node's perf_hooks modules on first use (src/clock.ts): the daemon does not use it.
const PERFORMANCE = /\bperformance\s*\.|\bperf_hooks\b/

const offending = (source: string): string[] => offendingLines(source, PERFORMANCE)

t.test('src/ uses monotonicMs, not the performance global', async (t) => {
  const a = monotonicMs()
  await new Promise((r) => setTimeout(r, 20))
  const b = monotonicMs()
  t.ok(b - a >= 15 && b - a < 5000, `monotonic ms: ${(b - a).toFixed(1)} ms over a 20 ms timer`)
  const { files, found } = scanSrc(PERFORMANCE)
  t.ok(files > 50, `scanned ${files} source files`)
  t.same(found, [], 'no performance.* or perf_hooks in src/')
  const sample = ['const t0 = performance.now()', "import { monitorEventLoopDelay } from 'node:perf_hooks'", '// performance.now() in a comment', 'const performanceNow = 1']
  t.same(offending(sample.join('\n')).map((l) => l.split(':')[0]), ['1', '2'], 'the check finds what it looks for')
})
