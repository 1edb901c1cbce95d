// The strongSwan configurations the deploy shapes ship, run by the real charon (Debian's 5.9.8, the version the
// sidecar image installs) in throwaway namespaces with a private /run: the sidecar's strongswan.conf (both
// datapaths) through its entrypoint, and the bare-metal drop-ins under Debian's own strongswan.conf layout. Each
// must load its plugins and serve VICI at /var/run/charon.vici, the path fabtunnel dials by default.
import t, { type Test } from 'tap'
import { spawn } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { DEFAULTS } from '../../src/fabedge.js'
import { execCapture } from '../harness/exec.js'
import { Netns, needsRoot } from '../harness/netns.js'
import { Charon } from '../harness/charon.js'
import { CHARON_RETRANSMIT } from '../harness/topology.js'
import { Vici } from '../../src/vici/index.js'
import { parseStrongswanConf, SCALE_KEYS } from '../harness/strongswan-conf.js'

const ROOT = new URL('../../', import.meta.url).pathname
const SIDECAR = join(ROOT, 'deploy', 'image', 'strongswan')
const CHARON = '/usr/lib/ipsec/charon'

interface Run {
  code: number | null
  stderr: string
  /** `swanctl --stats` over the VICI socket while charon ran, or null if the socket never appeared. */
  stats: string | null
}

/**
 * Runs `exe` (charon or the sidecar entrypoint) in a fresh namespace whose /run is `dir`/run, with
 * STRONGSWAN_CONF=conf; waits (bounded) for the VICI socket, asks swanctl for stats, then SIGTERM (SIGKILL after 2 s).
 */
async function runCharon(exe: string, conf: string, dir: string): Promise<Run> {
  const ns = await Netns.create('ftss')
  const run = join(dir, 'run')
  mkdirSync(run, { recursive: true })
  try {
    const child = spawn('ip', ['netns', 'exec', ns.name, 'sh', '-c', 'mount --bind "$0" /run && exec "$1"', run, exe], {
      env: { ...process.env, STRONGSWAN_CONF: conf },
      stdio: ['ignore', 'ignore', 'pipe'],
    })
    let stderr = ''
    child.stderr.on('data', (b: Buffer) => (stderr += b.toString('utf8')))
    let code: number | null = null
    const exited = new Promise<void>((resolve) =>
      child.once('exit', (c) => {
        code = c
        resolve()
      }),
    )
    const socket = join(run, 'charon.vici')
    const deadline = Date.now() + 5_000
    while (!existsSync(socket) && code === null && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20))
    let stats: string | null = null
    if (existsSync(socket) && code === null) {
      const r = await execCapture(['swanctl', '--stats', '--uri', `unix://${socket}`], { timeoutMs: 5_000 })
      stats = r.code === 0 ? r.stdout : null
    }
    if (code === null) {
      child.kill('SIGTERM')
      const timer = setTimeout(() => child.kill('SIGKILL'), 2_000)
      await exited
      clearTimeout(timer)
    }
    return { code, stderr, stats }
  } finally {
    await ns.destroy()
  }
}

/**
 * charon runs the shipped thread pool: `threads` workers, and more MEDIUM threads reserved than it keeps busy for
 * good at idle, so the reservation leaves MEDIUM_FREE threads for VICI and IKE_SA_INIT (strongswan.conf(5), JOB
 * PRIORITY MANAGEMENT: a reservation counts busy threads too). `swanctl --stats` is itself one MEDIUM job.
 */
function checkWorkers(t: Test, stats: string | null, libipsec: boolean): void {
  const expected = libipsec ? SCALE.libipsec : SCALE.xfrm
  const m = /worker threads: (\d+) total, \d+ idle, working: (\d+)\/(\d+)\/(\d+)\/(\d+)/.exec(stats ?? '')
  if (!t.ok(m, 'swanctl --stats shows the worker threads')) return
  t.equal(m![1], expected['charon.threads'], `charon runs ${expected['charon.threads']} worker threads (default 16)`)
  const busyMedium = Number(m![4]) - 1
  t.equal(Number(expected['charon.processor.priority_threads.medium']) - busyMedium, MEDIUM_FREE, `${busyMedium} MEDIUM threads busy at idle: ${MEDIUM_FREE} stay reserved for VICI and IKE_SA_INIT`)
}

function loadedPlugins(stats: string | null): string[] {
  return /loaded plugins: (.*)/.exec(stats ?? '')?.[1]?.trim().split(/\s+/) ?? []
}

function loadList(conf: string): string[] {
  const m = /^\s*load = (.+)$/m.exec(conf)
  if (!m) throw new Error('no load = line')
  return m[1]!.trim().split(/\s+/)
}

const tmp = mkdtempSync(join(tmpdir(), 'ft-strongswan-'))
t.teardown(() => rmSync(tmp, { recursive: true, force: true }))

t.test('fabtunnel dials the path the shipped configs serve', async (t) => {
  t.equal(DEFAULTS.vici, 'unix:///var/run/charon.vici')
})

for (const [file, libipsec] of [
  ['strongswan.conf', false],
  ['strongswan-libipsec.conf', true],
] as const) {
  t.test(`sidecar ${file}: charon loads exactly its plugin list and serves VICI`, { skip: needsRoot }, async (t) => {
    const conf = join(SIDECAR, file)
    const text = readFileSync(conf, 'utf8')
    t.match(text, libipsec ? /^\s*install_routes = yes$/m : /^\s*install_routes = no$/m)
    const r = await runCharon(join(SIDECAR, 'charon-entrypoint'), conf, mkdtempSync(join(tmp, 'sidecar-')))
    if (!r.stats) t.comment(r.stderr.slice(-1000))
    t.ok(r.stats, 'VICI answered')
    t.same(loadedPlugins(r.stats), ['charon', ...loadList(text)], 'every listed plugin loaded, in order')
    t.match(r.stderr, /loaded plugins:/, 'charon logs to stderr (kubectl logs)')
    checkWorkers(t, r.stats, libipsec)
  })
}

t.test('sidecar entrypoint starts over a stale pid file; bare charon does not', { skip: needsRoot }, async (t) => {
  const conf = join(SIDECAR, 'strongswan.conf')
  const stale = (dir: string) => {
    mkdirSync(join(dir, 'run'), { recursive: true })
    // A live pid, as after a container restart in the same pod (often the new charon's own pid).
    writeFileSync(join(dir, 'run', 'charon.pid'), `${process.pid}\n`)
    return dir
  }
  const bare = await runCharon(CHARON, conf, stale(mkdtempSync(join(tmp, 'bare-'))))
  t.equal(bare.stats, null, 'without the entrypoint charon refuses to start')
  t.match(bare.stderr, /already running/)
  const viaEntrypoint = await runCharon(join(SIDECAR, 'charon-entrypoint'), conf, stale(mkdtempSync(join(tmp, 'ep-'))))
  if (!viaEntrypoint.stats) t.comment(viaEntrypoint.stderr.slice(-1000))
  t.ok(viaEntrypoint.stats, 'the entrypoint clears the stale pid file and charon serves VICI')
})

for (const [file, libipsec] of [
  ['strongswan-fabtunnel.conf', false],
  ['strongswan-fabtunnel-libipsec.conf', true],
] as const) {
  t.test(`bare-metal drop-in ${file} under Debian's strongswan.conf layout`, { skip: needsRoot }, async (t) => {
    const dir = mkdtempSync(join(tmp, 'dropin-'))
    const conf = join(dir, 'strongswan.conf')
    // /etc/strongswan.conf as Debian ships it, with absolute includes, then the drop-in where install-systemd puts
    // it (strongswan.d/fabtunnel.conf sorts after charon.conf).
    writeFileSync(
      conf,
      [
        'charon {',
        '    load_modular = yes',
        '    plugins {',
        '        include /etc/strongswan.d/charon/*.conf',
        '    }',
        '}',
        'include /etc/strongswan.d/*.conf',
        `include ${join(ROOT, 'systemd', file)}`,
        '',
      ].join('\n'),
    )
    const r = await runCharon(CHARON, conf, dir)
    if (!r.stats) t.comment(r.stderr.slice(-1000))
    t.ok(r.stats, 'VICI answered at /var/run/charon.vici')
    const plugins = loadedPlugins(r.stats)
    t.ok(plugins.includes('vici') && plugins.includes('kernel-netlink'), 'vici and kernel-netlink loaded')
    if (libipsec) {
      t.ok(plugins.includes('kernel-libipsec'), 'kernel-libipsec loaded')
      t.ok(plugins.indexOf('kernel-libipsec') < plugins.indexOf('kernel-netlink'), 'kernel-libipsec before kernel-netlink')
    } else {
      t.notOk(plugins.includes('kernel-libipsec'), 'kernel ESP: no userspace ESP')
    }
    checkWorkers(t, r.stats, libipsec)
  })
}

/** Reserved MEDIUM threads left free at idle by the shipped configs (docs/scale.md). */
const MEDIUM_FREE = 4

/** The shipped scale settings (docs/scale.md); kernel-libipsec keeps 4 MEDIUM threads busy, hence its medium. */
const SCALE_XFRM = {
  'charon.ikesa_table_size': '1024',
  'charon.ikesa_table_segments': '16',
  'charon.threads': '32',
  'charon.processor.priority_threads.high': '2',
  'charon.processor.priority_threads.medium': '4',
  'charon.init_limit_half_open': '1000',
  'charon.cookie_threshold': '100',
  'charon.cookie_threshold_ip': '30',
  'charon.block_threshold': '500',
}
const SCALE = { xfrm: SCALE_XFRM, libipsec: { ...SCALE_XFRM, 'charon.processor.priority_threads.medium': '8' } }

/** strongSwan 5.9.8's defaults (conf/options/charon.opt, strongswan.conf(5), receiver.c), each comment states them. */
const STRONGSWAN_DEFAULTS: Record<(typeof SCALE_KEYS)[number], string> = {
  'charon.ikesa_table_size': '1',
  'charon.ikesa_table_segments': '1',
  'charon.threads': '16',
  'charon.processor.priority_threads.high': '0',
  'charon.processor.priority_threads.medium': '0',
  'charon.init_limit_half_open': '0',
  'charon.cookie_threshold': '30',
  'charon.cookie_threshold_ip': '3',
  'charon.block_threshold': '5',
}

const SHIPPED = [
  [join(SIDECAR, 'strongswan.conf'), false],
  [join(SIDECAR, 'strongswan-libipsec.conf'), true],
  [join(ROOT, 'systemd', 'strongswan-fabtunnel.conf'), false],
  [join(ROOT, 'systemd', 'strongswan-fabtunnel-libipsec.conf'), true],
] as const

t.test('every shipped strongswan.conf carries the scale settings, with a reason and the default for each', async (t) => {
  t.same(Object.keys(STRONGSWAN_DEFAULTS), [...SCALE_KEYS], 'the test covers exactly the harness\'s scale keys')
  for (const [file, libipsec] of SHIPPED) {
    const text = readFileSync(file, 'utf8')
    const settings = parseStrongswanConf(text, file)
    const expected = libipsec ? SCALE.libipsec : SCALE.xfrm
    t.same(Object.fromEntries(SCALE_KEYS.map((k) => [k, settings.get(k)])), expected, `${file}: values`)
    const lines = text.split('\n')
    for (const key of SCALE_KEYS) {
      const leaf = key.split('.').at(-1)!
      const at = lines.findIndex((l) => l.trim() === `${leaf} = ${expected[key]}`)
      // The comment block right above the setting gives the reason and ends with strongSwan's default.
      let i = at - 1
      const comment: string[] = []
      while (i >= 0 && lines[i]!.trim().startsWith('#')) comment.unshift(lines[i--]!.trim())
      t.ok(at > 0 && comment.length > 0, `${file}: ${key} has a comment`)
      t.match(comment.at(-1), new RegExp(`\\[${STRONGSWAN_DEFAULTS[key]}[:\\]]`), `${file}: ${key} states the default ${STRONGSWAN_DEFAULTS[key]}`)
    }
    // charon raises block_threshold to cookie_threshold_ip + 1 on its own (receiver.c): keep them apart.
    t.ok(Number(settings.get('charon.cookie_threshold_ip')) < Number(settings.get('charon.block_threshold')), `${file}: per-IP cookies before blocking`)
    t.ok(Number(settings.get('charon.cookie_threshold')) < Number(settings.get('charon.init_limit_half_open')), `${file}: cookies before dropping`)
    const size = Number(settings.get('charon.ikesa_table_size'))
    t.equal(size & (size - 1), 0, `${file}: ikesa_table_size is a power of 2`)
    t.ok(Number(settings.get('charon.ikesa_table_segments')) <= 512, `${file}: at most 512 segments`)
  }
})

/** The retransmit_* settings of a strongswan.conf, by name. */
function retransmitOf(text: string): Record<string, number> {
  return Object.fromEntries([...text.matchAll(/^\s*(retransmit_[a-z_]+) = ([0-9.]+)$/gm)].map((m) => [m[1]!, Number(m[2])]))
}

t.test('every shipped strongswan.conf and the harness retransmit alike; a dead peer is given up on within ~5.4 s', async (t) => {
  const files = [
    join(SIDECAR, 'strongswan.conf'),
    join(SIDECAR, 'strongswan-libipsec.conf'),
    join(ROOT, 'systemd', 'strongswan-fabtunnel.conf'),
    join(ROOT, 'systemd', 'strongswan-fabtunnel-libipsec.conf'),
  ]
  const expected = { retransmit_timeout: 1, retransmit_base: 1.2, retransmit_tries: 3, retransmit_jitter: 20 }
  for (const f of files) t.same(retransmitOf(readFileSync(f, 'utf8')), expected, f)
  t.same(retransmitOf(CHARON_RETRANSMIT), expected, 'the namespace harness runs the shipped values')
  // charon sends at 0 and retransmits `tries` times, each after timeout * base^n; it gives up when the last expires.
  const { retransmit_timeout: to, retransmit_base: base, retransmit_tries: tries } = expected
  let giveUp = 0
  for (let n = 0; n <= tries; n++) giveUp += to * base ** n
  t.equal(Math.round(giveUp * 100) / 100, 5.37, 'the give-up time the comments state')
  for (const f of files) t.match(readFileSync(f, 'utf8'), /give-up = 1\.0 \* \(1 \+ 1\.2 \+ 1\.2\^2 \+ 1\.2\^3\) = 5\.37 s/, `${f} states it`)
})

t.test('charon applies the shipped schedule: an unanswered IKE_SA_INIT is given up on after 3 retransmits (default: 5)', { skip: needsRoot }, async (t) => {
  const ns = await Netns.create('ftrt')
  t.teardown(() => ns.destroy())
  // A bridge without ports: IKE packets to 10.77.0.2 go nowhere.
  await ns.run(['ip', 'link', 'add', 'rtbr', 'type', 'bridge'])
  await ns.run(['ip', 'addr', 'add', '10.77.0.1/24', 'dev', 'rtbr'])
  await ns.run(['ip', 'link', 'set', 'rtbr', 'up'])
  const charon = await Charon.start(ns, { extraConf: CHARON_RETRANSMIT, logLevel: 1 })
  const v = new Vici({ uri: charon.uri, reconnect: false, timeoutMs: 5_000 })
  t.teardown(() => v.close())
  await v.connect()
  await v.loadConn('dead', { version: '2', remote_addrs: ['10.77.0.2'], local: { auth: 'psk', id: 'a' }, remote: { auth: 'psk', id: 'b' }, children: { c: { local_ts: ['10.1.0.0/24'], remote_ts: ['10.2.0.0/24'] } } })
  const t0 = performance.now()
  await v.initiate({ ike: 'dead', child: 'c' })
  let log = ''
  while (performance.now() - t0 < 30_000 && !/giving up after/.test(log)) {
    await new Promise((r) => setTimeout(r, 100))
    log = await charon.log()
  }
  const ms = performance.now() - t0
  t.match(log, /retransmit 3 of request with message ID 0/, 'three retransmissions')
  t.match(log, /giving up after 3 retransmits/)
  t.notMatch(log, /retransmit 4 of/)
  t.comment(`gave up after ${(ms / 1000).toFixed(2)} s (schedule: 4.3-5.37 s; measured, not asserted)`)
})
