// The bare-metal shape: systemd/fabtunnel.service checked by systemd's own tools (`systemd-analyze verify` and
// `security --offline`), the hardening the issue asks for, the example environment file against the CLI's
// defaults, the tmpfiles.d entry, and scripts/install-systemd run for real into a temporary root.
import t from 'tap'
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { DEFAULTS } from '../../src/fabedge.js'
import { execCapture } from '../harness/exec.js'

const ROOT = new URL('../../', import.meta.url).pathname
const UNIT = join(ROOT, 'systemd', 'fabtunnel.service')
const INSTALL = join(ROOT, 'scripts', 'install-systemd')

/** `[Section] Key=Value` lines of a unit file; repeated keys keep every value in order. */
function parseUnit(text: string): Map<string, string[]> {
  const keys = new Map<string, string[]>()
  let section = ''
  for (const raw of text.split('\n')) {
    const line = raw.trim()
    if (line === '' || line.startsWith('#')) continue
    const s = /^\[(.+)\]$/.exec(line)
    if (s) {
      section = s[1]!
      continue
    }
    const eq = line.indexOf('=')
    const key = `${section}.${line.slice(0, eq)}`
    keys.set(key, [...(keys.get(key) ?? []), line.slice(eq + 1)])
  }
  return keys
}

const tmp = mkdtempSync(join(tmpdir(), 'ft-systemd-'))
t.teardown(() => rmSync(tmp, { recursive: true, force: true }))

// verify insists that ExecStart= names an existing executable; the agent is not installed on this machine.
const fakeBin = join(tmp, 'fabtunnel')
writeFileSync(fakeBin, '#!/bin/sh\nexit 0\n')
chmodSync(fakeBin, 0o755)

function unitWithBin(text: string): string {
  const out = text.replace(/^ExecStart=\/usr\/bin\/fabtunnel /m, `ExecStart=${fakeBin} `)
  if (out === text) throw new Error('unit has no ExecStart=/usr/bin/fabtunnel line')
  return out
}

async function verify(text: string, name = 'fabtunnel.service') {
  const dir = mkdtempSync(join(tmp, 'verify-'))
  const file = join(dir, name)
  writeFileSync(file, text)
  return execCapture(['systemd-analyze', 'verify', '--man=no', file], { timeoutMs: 30_000 })
}

t.test('systemd-analyze verify accepts the unit without a single warning', async (t) => {
  const r = await verify(unitWithBin(readFileSync(UNIT, 'utf8')))
  t.equal(r.code, 0, r.stderr)
  t.equal(r.stderr.trim(), '', 'no warnings (an unknown or misspelled key is only a warning)')
})

t.test('verify catches what it should (the check can fail)', async (t) => {
  const text = unitWithBin(readFileSync(UNIT, 'utf8'))
  const typo = await verify(text.replace('ProtectHome=yes', 'ProtectHomes=yes'))
  t.match(typo.stderr, /Unknown key 'ProtectHomes'/)
  const missing = await verify(readFileSync(UNIT, 'utf8').replace(/^ExecStart=\/usr\/bin\/fabtunnel/m, `ExecStart=${join(tmp, 'nope')}`))
  t.not(missing.code, 0)
  t.match(missing.stderr, /is not executable/)
})

t.test('hardening and ordering the issue asks for', async (t) => {
  const u = parseUnit(readFileSync(UNIT, 'utf8'))
  const one = (k: string) => {
    const v = u.get(k)
    t.equal(v?.length, 1, `${k} set once`)
    return v?.[0]
  }
  t.match(one('Unit.Wants'), /\bstrongswan\.service\b/)
  t.match(one('Unit.After'), /\bstrongswan\.service\b/)
  t.equal(one('Service.Restart'), 'on-failure')
  t.equal(one('Service.ExecStart'), '/usr/bin/fabtunnel run')
  t.equal(one('Service.ExecReload'), '/bin/kill -HUP $MAINPID')
  t.equal(one('Service.CapabilityBoundingSet'), 'CAP_NET_ADMIN CAP_NET_RAW')
  t.equal(one('Service.AmbientCapabilities'), 'CAP_NET_ADMIN CAP_NET_RAW')
  t.equal(one('Service.ProtectSystem'), 'strict')
  t.equal(one('Service.ProtectHome'), 'yes')
  t.equal(one('Service.PrivateTmp'), 'yes')
  t.equal(one('Service.NoNewPrivileges'), 'yes')
  t.equal(one('Service.RestrictAddressFamilies'), 'AF_UNIX AF_NETLINK AF_INET AF_INET6')
  t.equal(one('Service.ReadWritePaths'), '-/run/xtables.lock')
  t.equal(one('Service.StandardOutput'), 'journal')
  t.equal(one('Service.EnvironmentFile'), '-/etc/fabtunnel/fabtunnel.env')
  t.equal(one('Service.SystemCallFilter'), '@system-service @pkey')
  t.notOk(u.has('Service.MemoryDenyWriteExecute'), 'V8 needs writable+executable pages')
  // SIGTERM shutdown is well under 5 s; the stop timeout must leave room for it and still catch a hang.
  const stop = Number(/^(\d+)s$/.exec(one('Service.TimeoutStopSec') ?? '')?.[1])
  t.ok(stop >= 5 && stop <= 30, `TimeoutStopSec=${stop}s`)
})

t.test('systemd-analyze security rates the sandbox OK (exposure <= 3.0)', async (t) => {
  const dir = mkdtempSync(join(tmp, 'security-'))
  const file = join(dir, 'fabtunnel.service')
  writeFileSync(file, unitWithBin(readFileSync(UNIT, 'utf8')))
  const r = await execCapture(['systemd-analyze', 'security', '--offline=true', '--threshold=30', '--no-pager', file], {
    timeoutMs: 30_000,
  })
  t.equal(r.code, 0, r.stdout.split('\n').slice(-3).join('\n') + r.stderr)
  t.match(r.stdout, /Overall exposure level for fabtunnel\.service: [0-2]\.\d|Overall exposure level for fabtunnel\.service: 3\.0/)
})

t.test('example environment file: flag twins with the CLI defaults', async (t) => {
  const text = readFileSync(join(ROOT, 'systemd', 'fabtunnel.env'), 'utf8')
  const entries = new Map<string, string>()
  for (const line of text.split('\n')) {
    const m = /^#?(FABTUNNEL_[A-Z_]+)=(.*)$/.exec(line)
    if (m) entries.set(m[1]!, m[2]!)
  }
  const runFlags = ['config', 'vici', 'cert', 'key', 'ca', 'listen', 'datapath', 'resync-interval', 'log-level']
  t.same([...entries.keys()].sort(), runFlags.map((f) => `FABTUNNEL_${f.replace(/-/g, '_').toUpperCase()}`).sort())
  for (const [flag, value] of Object.entries(DEFAULTS)) {
    t.equal(entries.get(`FABTUNNEL_${flag.toUpperCase()}`), value, `${flag} default`)
  }
})

t.test('tmpfiles.d entry creates the iptables lock as root 0600', async (t) => {
  const root = mkdtempSync(join(tmp, 'tmpfiles-'))
  const r = await execCapture(
    ['systemd-tmpfiles', `--root=${root}`, '--create', join(ROOT, 'systemd', 'fabtunnel.tmpfiles')],
    { timeoutMs: 30_000 },
  )
  t.equal(r.code, 0, r.stderr)
  const st = statSync(join(root, 'run', 'xtables.lock'))
  t.ok(st.isFile())
  t.equal(st.mode & 0o777, 0o600)
})

t.test('install-systemd into a temporary root: files, verify, idempotence, admin edits kept', async (t) => {
  const root = mkdtempSync(join(tmp, 'root-'))
  const run = (...args: string[]) => execCapture([INSTALL, '--prefix', root, '--bin', fakeBin, ...args], { timeoutMs: 30_000 })
  const files = [
    'etc/systemd/system/fabtunnel.service',
    'etc/fabtunnel/fabtunnel.env',
    'etc/strongswan.d/fabtunnel.conf',
    'etc/tmpfiles.d/fabtunnel.conf',
  ]

  const dry = await run('--dry-run')
  t.equal(dry.code, 0, dry.stderr)
  t.equal(dry.stdout.match(/would be installed/g)?.length, files.length)
  t.notOk(existsSync(join(root, 'etc')), 'a dry run writes nothing')

  const first = await run('--config', '/etc/fabedge/edge.yaml')
  t.equal(first.code, 0, first.stderr)
  for (const f of files) t.ok(existsSync(join(root, f)), f)
  const unit = readFileSync(join(root, files[0]!), 'utf8')
  t.match(unit, new RegExp(`^ExecStart=${fakeBin} run$`, 'm'))
  const v = await execCapture(['systemd-analyze', 'verify', '--man=no', join(root, files[0]!)], { timeoutMs: 30_000 })
  t.equal(v.code, 0, v.stderr)
  t.equal(v.stderr.trim(), '')
  const env = readFileSync(join(root, files[1]!), 'utf8')
  t.match(env, /^FABTUNNEL_CONFIG=\/etc\/fabedge\/edge\.yaml$/m)
  t.match(env, /^FABTUNNEL_DATAPATH=xfrm$/m)
  t.equal(readFileSync(join(root, files[2]!), 'utf8'), readFileSync(join(ROOT, 'systemd', 'strongswan-fabtunnel.conf'), 'utf8'))

  const before = files.map((f) => readFileSync(join(root, f), 'utf8'))
  const again = await run()
  t.equal(again.code, 0, again.stderr)
  t.equal(again.stdout.match(/^unchanged /gm)?.length, files.length, again.stdout)
  t.same(files.map((f) => readFileSync(join(root, f), 'utf8')), before, 'second run changes nothing')

  writeFileSync(join(root, files[1]!), env + 'FABTUNNEL_LOG_LEVEL=debug\n')
  const lib = await run('--datapath', 'libipsec')
  t.equal(lib.code, 0, lib.stderr)
  const env2 = readFileSync(join(root, files[1]!), 'utf8')
  t.match(env2, /^FABTUNNEL_LOG_LEVEL=debug$/m, "the admin's edit survives")
  t.match(env2, /^FABTUNNEL_DATAPATH=libipsec$/m)
  t.match(env2, /^FABTUNNEL_CONFIG=\/etc\/fabedge\/edge\.yaml$/m, 'keys not given stay as they were')
  t.match(readFileSync(join(root, files[2]!), 'utf8'), /install_routes = yes/)
})

t.test('install-systemd refuses bad input', async (t) => {
  const root = mkdtempSync(join(tmp, 'bad-'))
  for (const args of [
    ['--config', 'relative/tunnels.yaml'],
    ['--config', '/etc/fabedge/a b.yaml'],
    ['--datapath', 'gre'],
    ['--bin', '/usr/bin/fab#tunnel'],
  ]) {
    const r = await execCapture([INSTALL, '--prefix', root, '--bin', fakeBin, ...args], { timeoutMs: 30_000 })
    t.equal(r.code, 1, args.join(' '))
    t.match(r.stderr, /^install-systemd: /)
  }
  const usage = await execCapture([INSTALL, '--frobnicate'], { timeoutMs: 30_000 })
  t.equal(usage.code, 2)
  t.notOk(existsSync(join(root, 'etc')))
})
