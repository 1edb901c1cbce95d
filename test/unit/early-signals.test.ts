import t from 'tap'
import { readFileSync } from 'node:fs'
import { installEarlySignals, takeEarlySignals } from '../../src/early-signals.js'

const staticImports = (file: string): string[] =>
  [...readFileSync(new URL(`../../src/${file}`, import.meta.url), 'utf8').matchAll(/^import\s[^'"]*['"]([^'"]+)['"]/gm)].map((m) => m[1]!)

t.test('the executable installs its signal handlers before loading any command module', async (t) => {
  // ESM evaluates every static import before a module's body: whatever cli.ts imports statically loads before
  // the handlers exist. Only the dependency-free early-signals module may.
  t.same(staticImports('cli.ts'), ['./early-signals.js'])
  t.same(staticImports('early-signals.ts'), [], 'early-signals.ts imports nothing')
  const body = readFileSync(new URL('../../src/cli.ts', import.meta.url), 'utf8')
  t.ok(body.indexOf('installEarlySignals()') < body.indexOf("await import('./commands.js')"), 'handlers first, then the commands')
})

t.test('signals that arrive early are kept in order and handed over once', async (t) => {
  const before = process.listenerCount('SIGHUP')
  installEarlySignals()
  installEarlySignals()
  t.equal(process.listenerCount('SIGHUP'), before + 1, 'installed once')
  process.emit('SIGHUP', 'SIGHUP')
  process.emit('SIGTERM', 'SIGTERM')
  process.emit('SIGHUP', 'SIGHUP')
  t.same(takeEarlySignals(), ['SIGHUP', 'SIGTERM', 'SIGHUP'])
  t.equal(process.listenerCount('SIGHUP'), before, 'removed when taken')
  t.same(takeEarlySignals(), [], 'nothing twice')
})

t.test('the loader and the commands\' bundle each carry a copy of the module: both see one state', async (t) => {
  // A second instance of the module, as the bundle has its own (dist/cli.cjs installs, dist/cli-main-*.cjs takes).
  const copy = (await import(`../../src/early-signals.js?copy=${Date.now()}`)) as typeof import('../../src/early-signals.js')
  t.not(copy.takeEarlySignals, takeEarlySignals, 'a separate module instance')
  installEarlySignals()
  process.emit('SIGHUP', 'SIGHUP')
  t.same(copy.takeEarlySignals(), ['SIGHUP'], 'what one installed, the other takes')
  t.same(takeEarlySignals(), [])
})
