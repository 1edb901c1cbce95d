// Signals against a frozen charon (SIGSTOP: the socket accepts, nothing answers, VICI calls would wait 30 s):
// - a SIGHUP right after start (systemd's ExecReload) must not kill the agent: its handler is installed before
//   anything awaits;
// - SIGTERM must end the process within 5 s (pod grace period and TimeoutStopSec are 10 s) even with a pass stuck
//   on charon, and leave charon's state alone.
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { Charon } from '../../harness/charon.js'
import { Netns, needsRoot } from '../../harness/netns.js'

const ROOT = new URL('../../../', import.meta.url).pathname
// The package's bin, as the image's entrypoint and the systemd unit run it: its loader installs the early handlers and
// the commands' bundle takes them over (two copies of early-signals.ts sharing one state).
const PKG = JSON.parse(await readFile(join(ROOT, 'package.json'), 'utf8')) as { bin: { fabtunnel: string } }
const CLI = join(ROOT, PKG.bin.fabtunnel)
const FIX = join(ROOT, 'test', 'fixtures', 'config')
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

async function httpStatus(ns: Netns, path: string): Promise<number> {
  const r = await ns.capture([process.execPath, '-e', `fetch('http://127.0.0.1:30306${path}',{signal:AbortSignal.timeout(2000)}).then(r=>console.log(r.status),()=>console.log(0))`], { timeoutMs: 5000 })
  return Number(r.stdout.trim())
}

t.test('SIGHUP during start-up and SIGTERM with charon frozen', { skip: needsRoot, timeout: 60_000 }, async (t) => {
  const ns = await Netns.create('fsd')
  t.teardown(() => ns.destroy())
  const dir = await mkdtemp(join(tmpdir(), 'ft-shutdown-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const config = join(dir, 'tunnels.yaml')
  await writeFile(config, await readFile(join(FIX, 'edge.yaml')))
  const charon = await Charon.start(ns)
  process.kill(charon.pid!, 'SIGSTOP')
  t.teardown(() => { if (charon.pid) process.kill(charon.pid, 'SIGCONT') })

  // `env -u NODE_OPTIONS`: tap's process-info hook puts its preload (with signal-exit, whose handlers re-raise a
  // signal while they are the only ones) into every node process a test spawns, whatever env it is given.
  // NODE_DEBUG_NATIVE=CODE_CACHE: Node says, for each built-in module it loads, whether V8 took its code cache.
  const child = spawn('ip', ['netns', 'exec', ns.name, 'env', '-u', 'NODE_OPTIONS', 'NODE_DEBUG_NATIVE=CODE_CACHE', process.execPath, CLI, 'run', '--config', config, '--vici', charon.uri,
    '--cert', join(dir, 'none.crt'), '--key', join(dir, 'none.key'), '--ca', join(dir, 'none-ca.crt'), '--datapath', 'libipsec',
    '--listen', '127.0.0.1:30306', '--log-level', 'info'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  ns.onDestroy(() => { child.kill('SIGKILL') })
  let log = ''
  child.stdout.on('data', (b: Buffer) => { log += b.toString() })
  child.stderr.on('data', (b: Buffer) => { log += b.toString() })
  const exited = once(child, 'exit') as Promise<[number | null, NodeJS.Signals | null]>

  // From the moment the process catches SIGHUP (SigCgt in /proc; before that Node itself is still starting and
  // nothing can catch it), SIGHUPs must never kill it: the executable installs its handlers before it loads the
  // commands, so this is long before the first log line, the HTTP server or a reachable charon.
  const spawned = Date.now()
  const catches = async (): Promise<boolean> => {
    const status = await readFile(`/proc/${child.pid}/status`, 'utf8').catch(() => '')
    const m = /^SigCgt:\s*([0-9a-f]+)/m.exec(status)
    return m !== null && (BigInt(`0x${m[1]}`) & 1n) === 1n
  }
  const caughtBy = Date.now() + 20_000
  while (!(await catches()) && Date.now() < caughtBy && child.exitCode === null) await sleep(1)
  const caughtAfter = Date.now() - spawned
  t.ok(await catches(), `the process catches SIGHUP (${caughtAfter} ms after spawn)`)
  t.notMatch(log, /starting/, 'and it did so before its first log line')
  for (let i = 0; i < 20 && child.exitCode === null && child.signalCode === null; i++) {
    process.kill(child.pid!, 'SIGHUP')
    await sleep(15)
  }
  t.equal(child.exitCode, null, 'SIGHUPs during start-up did not kill the agent')
  t.equal(child.signalCode, null, 'no signal ended it')
  let health = 0
  const up = Date.now() + 15_000
  while (health !== 200 && Date.now() < up && child.exitCode === null) {
    health = await httpStatus(ns, '/healthz')
    if (health !== 200) await sleep(100)
  }
  t.equal(health, 200, 'serving /healthz with charon frozen')
  t.match(log, /"msg":"fabtunnel \S+ starting"/, 'logged its start')
  t.match(log, /"codeCache":"accepted"/, 'the commands were compiled from the code cache written at build time (scripts/bundle.mjs)')
  t.equal(await httpStatus(ns, '/readyz'), 503, 'and not ready: charon does not answer')
  // The daemon sets its V8 flags after loading the built-in modules it uses (src/heap-tuning.ts): none of them,
  // the first /metrics scrape's included, is compiled from source because V8 rejected Node's cache. Every flag is
  // set by now (the compiler's with the config), and perf_hooks is not loaded yet: only the first scrape loads it,
  // under V8's default flags (src/v8-flags.ts).
  t.match(log, /"turbofan":false,"peers":2,"msg":"optimizing compiler off: the config is small"/, 'an edge runs without the optimizing compiler (src/heap-tuning.ts)')
  t.notMatch(log, /Compiling perf_hooks /, 'perf_hooks is not loaded before the first scrape')
  t.equal(await httpStatus(ns, '/metrics'), 200, '/metrics scraped')
  const logged = Date.now() + 5000
  while (!/Code cache of perf_hooks \(/.test(log) && Date.now() < logged) await sleep(20)
  t.match(log, /Code cache of perf_hooks \(\S+\) is accepted/, 'the scrape loaded perf_hooks, with Node\'s code cache')
  const accepted = log.match(/Code cache of \S+ \(\S+\) is accepted/g) ?? []
  t.ok(accepted.length >= 20, `Node reported its code cache accepted for ${accepted.length} built-in modules`)
  t.same(log.match(/Code cache of \S+ \(\S+\) is rejected/g) ?? [], [], 'and rejected for none')

  // A pass is stuck on charon now (start, or the SIGHUP's deep pass): SIGTERM must still end the process.
  process.kill(child.pid!, 'SIGHUP')
  await sleep(200)
  const t0 = Date.now()
  process.kill(child.pid!, 'SIGTERM')
  const done = await Promise.race([exited, sleep(8_000).then(() => null)])
  const tookMs = Date.now() - t0
  t.not(done, null, `exited after SIGTERM (took ${tookMs} ms)`)
  t.ok(tookMs <= 5_500, `within the 5 s bound we promise, before a 10 s grace period kills it (${tookMs} ms)`)
  if (done) t.same(done, [0, null], 'exit code 0')
  t.match(log, /a pass is still in flight; closing the connections under it/, 'a pass was stuck on charon when SIGTERM came (this test exercises that case)')
  t.match(log, /stopped; the data plane stays up/, 'and it still stopped cleanly')
  t.notMatch(log, /private/i, 'no key material in the log')
  process.kill(charon.pid!, 'SIGCONT')
  t.ok(charon.running, 'charon untouched by the agent stopping')
})
