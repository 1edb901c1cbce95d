// The --probe-* flags: defaults, env twins, off, and clear usage errors.
import t from 'tap'
import { parseFlags, UsageError } from '../../../src/options.js'
import { PROBE_FLAGS, probeOptionsOf } from '../../../src/probe/flags.js'

const of = (argv: string[], env: NodeJS.ProcessEnv = {}) => probeOptionsOf(parseFlags(argv, PROBE_FLAGS, env))

t.test('defaults: every second, down after 5, 500/s, repair on', async (t) => {
  t.same(of([]), { intervalMs: 1000, downAfter: 5, maxRate: 500, repair: true })
  t.same(of(['--probe-interval', '250ms', '--probe-down-after', '3', '--probe-rate', '2000', '--probe-repair', 'off']), { intervalMs: 250, downAfter: 3, maxRate: 2000, repair: false })
  t.same(of([], { FABTUNNEL_PROBE_INTERVAL: '2s', FABTUNNEL_PROBE_REPAIR: 'false' }), { intervalMs: 2000, downAfter: 5, maxRate: 500, repair: false })
})

t.test('0 or off disables probing', async (t) => {
  t.equal(of(['--probe-interval', '0']), null)
  t.equal(of(['--probe-interval', 'off']), null)
  t.equal(of([], { FABTUNNEL_PROBE_INTERVAL: '0s' }), null)
})

t.test('bad values are usage errors', async (t) => {
  for (const argv of [['--probe-interval', 'soon'], ['--probe-interval', '10ms'], ['--probe-down-after', '0'], ['--probe-down-after', '2.5'], ['--probe-rate', '-1'], ['--probe-repair', 'maybe']]) {
    t.throws(() => of(argv), UsageError, argv.join(' '))
  }
  t.ok(Object.values(PROBE_FLAGS).every((f) => f.help.length > 20), 'every flag has help text')
})
