import t from 'tap'
import { spawnSync } from 'node:child_process'
import { DAEMON_LATE_BUILTINS, OptimizingCompiler, preloadBuiltins, SMALL_CONFIG_PEERS, tuneHeap, YOUNG_GENERATION_FLAG } from '../../src/heap-tuning.js'

t.test('the young-generation flag is set unless node flags already size the young generation', async (t) => {
  const set: string[] = []
  t.equal(tuneHeap('', [], (f) => set.push(f)), true)
  t.same(set, [YOUNG_GENERATION_FLAG])
  t.equal(tuneHeap('--max-semi-space-size=8', [], (f) => set.push(f)), false, 'NODE_OPTIONS')
  t.equal(tuneHeap('', ['--min-semi-space-size=4'], (f) => set.push(f)), false, 'node argv')
  t.equal(tuneHeap('--max_semi_space_size=8', [], (f) => set.push(f)), false, 'V8 underscore spelling')
  t.equal(tuneHeap('--max-old-space-size=192', ['--enable-source-maps'], (f) => set.push(f)), true, 'other flags do not count')
  t.same(set, [YOUNG_GENERATION_FLAG, YOUNG_GENERATION_FLAG])
})

t.test('the built-in modules a daemon loads late are loaded ahead, each once', async (t) => {
  const loaded: string[] = []
  t.equal(preloadBuiltins(['node:a', 'node:b'], (id) => (loaded.push(id), {})), 2)
  t.same(loaded, ['node:a', 'node:b'])
  t.equal(preloadBuiltins(['node:none'], () => undefined), 0, 'a module Node does not have is not counted')
  t.equal(preloadBuiltins(), DAEMON_LATE_BUILTINS.length, 'this Node has every one of them')
  // Node before 20.16 has no process.getBuiltinModule: require instead.
  const own = process.getBuiltinModule
  t.teardown(() => { process.getBuiltinModule = own })
  ;(process as { getBuiltinModule?: unknown }).getBuiltinModule = undefined
  t.equal(preloadBuiltins(['node:dgram', 'node:dns']), 2, 'without process.getBuiltinModule')
  process.getBuiltinModule = own
})

// The real thing: set at run time (as the executable does, after V8 set its heap up), the flag keeps the new space
// at its initial two 1 MiB semi-spaces under an allocation burst; without it the same burst grows the new space.
t.test('set at run time, the flag keeps the new space small (and the burst grows it without the flag)', async (t) => {
  const script = `const v8 = require('node:v8'); if (process.env.FT_FLAG) v8.setFlagsFromString(process.env.FT_FLAG);
    const keep = []; for (let i = 0; i < 2e6; i++) { const o = { a: i, b: String(i) }; if (i % 64 === 0) keep.push(o) }
    console.log(v8.getHeapSpaceStatistics().find((s) => s.space_name === 'new_space').space_size)`
  const newSpace = (flag: string): number => {
    const r = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', env: { ...process.env, NODE_OPTIONS: '', FT_FLAG: flag } })
    t.equal(r.status, 0, r.stderr)
    return Number(r.stdout.trim())
  }
  const MiB = 2 ** 20
  // Medians of three runs each: one CI run under load read 4.0 MiB with the flag (one growth step, 30 + 36 runs
  // under CPU and parallel load here never did), so the bound allows one step and the control must be at least
  // twice the tuned size, which it is (16 MiB) whenever the burst grows the new space.
  const median = (flag: string): number => [newSpace(flag), newSpace(flag), newSpace(flag)].sort((a, b) => a - b)[1]
  const tuned = median(YOUNG_GENERATION_FLAG)
  const untuned = median('')
  t.ok(tuned > 0 && tuned <= 4 * MiB, `with the flag: ${(tuned / MiB).toFixed(1)} MiB`)
  t.ok(untuned >= 2 * tuned && untuned > 4 * MiB, `without: ${(untuned / MiB).toFixed(1)} MiB`)
})

t.test('the optimizing compiler: off for a small config, on again for a larger one, left alone when node flags choose', async (t) => {
  const set: string[] = []
  const c = new OptimizingCompiler((f) => set.push(f), '')
  t.equal(c.forPeers(SMALL_CONFIG_PEERS + 1), null, 'on is V8\'s default: nothing to set')
  t.equal(c.forPeers(1), 'off')
  t.equal(c.forPeers(SMALL_CONFIG_PEERS), null, 'still small')
  t.equal(c.forPeers(SMALL_CONFIG_PEERS + 1), 'on')
  t.equal(c.forPeers(10_000), null)
  t.equal(c.forPeers(0), 'off', 'an empty config is small')
  t.same(set, ['--no-turbofan', '--no-sparkplug', '--turbofan', '--sparkplug', '--no-turbofan', '--no-sparkplug'])
  for (const flags of ['--no-opt', '--turbofan', '--no_turbofan', '--max-opt=2', '--jitless', '--lite-mode', '--sparkplug', '--no-sparkplug']) {
    const mine: string[] = []
    t.equal(new OptimizingCompiler((f) => mine.push(f), `--max-old-space-size=192 ${flags}`).forPeers(1), null, `node flags ${flags}: left alone`)
    t.same(mine, [])
  }
  t.equal(new OptimizingCompiler((f) => set.push(f), '--max-old-space-size=192 --optimize-for-size').forPeers(1), 'off', 'other node flags do not count')
})

// The real thing: set at run time, V8 stops optimizing a hot function, and optimizes it once the flag is back.
t.test('set at run time, V8 honours the optimizing compiler setting both ways', async (t) => {
  // The built module (npm run build; CI builds before it tests): the child is plain node, without tsx.
  const script = `import v8 from 'node:v8'; v8.setFlagsFromString('--allow-natives-syntax')
    const status = new Function('f', 'return %GetOptimizationStatus(f)')
    const { OptimizingCompiler } = await import(process.env.FT_MODULE)
    const c = new OptimizingCompiler(undefined, '')
    function hot(a) { let s = 0; for (let i = 0; i < a.length; i++) s += a[i] * 2; return s }
    const arr = Array.from({ length: 1000 }, (_, i) => i)
    const run = (ms) => { const t0 = Date.now(); let x = 0; while (Date.now() - t0 < ms) x += hot(arr); return x }
    const optimized = () => (status(hot) & 16) !== 0
    const baseline = () => (status(hot) & 32768) !== 0
    const out = [c.forPeers(1)]; run(400); out.push(optimized(), baseline())
    out.push(c.forPeers(1000)); run(400); out.push(optimized())
    console.log(JSON.stringify(out))`
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', env: { ...process.env, NODE_OPTIONS: '', FT_MODULE: new URL('../../dist/heap-tuning.js', import.meta.url).pathname } })
  t.equal(r.status, 0, r.stderr)
  t.same(JSON.parse(r.stdout), ['off', false, false, 'on', true], 'neither optimized nor baseline-compiled while off (after 400 ms hot), optimized once on')
})
