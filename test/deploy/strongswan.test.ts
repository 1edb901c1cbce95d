// The strongSwan configurations the deploy shapes ship, run by the real charon (Debian's 5.9.8, the version the
// sidecar image installs) in throwaway namespaces with a private /run: the sidecar's strongswan.conf (both
// datapaths) through its entrypoint, and the bare-metal drop-ins under Debian's own strongswan.conf layout. Each
// must load its plugins and serve VICI at /var/run/charon.vici, the path fabtunnel dials by default.
import t from 'tap'
import { spawn } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { DEFAULTS } from '../../src/fabedge.js'
import { execCapture } from '../harness/exec.js'
import { Netns, needsRoot } from '../harness/netns.js'

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
  })
}
