// The npm shape (and the bare-metal install path): `npm pack` produces a tarball that installs globally into a
// fresh prefix, builds its native addon on install when it has one, and whose `fabtunnel` binary works. The pack
// runs in a temporary copy of the package sources, so the repository's own dist/ is never rewritten under tests
// running in parallel.
import t from 'tap'
import { cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { execCapture } from '../harness/exec.js'

const ROOT = new URL('../../', import.meta.url).pathname
const FIX = join(ROOT, 'test', 'fixtures', 'config')
const PKG = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { name: string; version: string; files: string[]; bin: { fabtunnel: string } }

// node-gyp must use the local headers, never download them (scripts/setup does the same).
const env = { ...process.env, npm_config_nodedir: '/usr', npm_config_update_notifier: 'false' }

const tmp = mkdtempSync(join(tmpdir(), 'ft-pack-'))
t.teardown(() => rmSync(tmp, { recursive: true, force: true }))

t.test('npm pack, global install into a temp prefix, run the binary', async (t) => {
  // The package's inputs: what `files` ships, plus what prepack's build needs.
  const stage = join(tmp, 'src')
  mkdirSync(stage)
  const inputs = new Set(['package.json', 'package-lock.json', 'tsconfig.json', 'scripts/bundle.mjs', 'src', ...PKG.files.filter((f) => !f.startsWith('!'))])
  for (const entry of inputs) {
    const from = join(ROOT, entry)
    if (!existsSync(from) || entry.startsWith('dist')) continue
    cpSync(from, join(stage, entry), { recursive: true })
  }
  // A developer's tree has a locally built addon; `files` must keep it out of the tarball.
  if (existsSync(join(stage, 'native', 'binding.gyp'))) {
    mkdirSync(join(stage, 'native', 'build', 'Release'), { recursive: true })
    writeFileSync(join(stage, 'native', 'build', 'Release', 'planted.node'), 'not an addon')
  }
  symlinkSync(join(ROOT, 'node_modules'), join(stage, 'node_modules'))

  const pack = await execCapture(['npm', 'pack', '--json', '--pack-destination', tmp], { cwd: stage, env, timeoutMs: 180_000 })
  t.equal(pack.code, 0, 'npm pack (prepack builds dist/)')
  if (pack.code !== 0) return t.comment(pack.stderr.slice(-2000))
  const [info] = JSON.parse(pack.stdout.slice(pack.stdout.indexOf('['))) as Array<{ filename: string; files: Array<{ path: string }> }>
  const packed = info!.files.map((f) => f.path)
  for (const p of ['package.json', 'README.md', PKG.bin.fabtunnel, 'dist/cli.js', 'systemd/fabtunnel.service', 'systemd/fabtunnel.env', 'scripts/install-systemd']) {
    t.ok(packed.includes(p), `ships ${p}`)
  }
  // The executable loads the commands' bundle and its V8 code cache (scripts/bundle.mjs).
  t.ok(packed.some((p) => /^dist\/cli-main-[0-9a-f]{16}\.cjs$/.test(p)), 'ships the commands\' bundle')
  t.ok(packed.some((p) => /^dist\/cli-main-[0-9a-f]{16}\.v8cache$/.test(p)), 'ships its code cache')
  t.notOk(packed.some((p) => /^(src|test|deploy)\//.test(p)), 'no sources, tests or manifests')
  t.notOk(packed.some((p) => p.startsWith('native/build/')), 'no locally built addon')
  const hasNative = packed.includes('native/binding.gyp')

  const prefix = join(tmp, 'prefix')
  const install = await execCapture(
    ['npm', 'install', '-g', '--prefix', prefix, '--no-audit', '--no-fund', '--prefer-offline', '--loglevel=error', join(tmp, info!.filename)],
    { env, timeoutMs: 300_000 },
  )
  t.equal(install.code, 0, 'npm install -g of the tarball (runs the install script)')
  if (install.code !== 0) return t.comment(install.stderr.slice(-2000))
  const bin = join(prefix, 'bin', 'fabtunnel')
  const installed = join(prefix, 'lib', 'node_modules', PKG.name)

  if (hasNative) {
    const release = join(installed, 'native', 'build', 'Release')
    const addons = existsSync(release) ? readdirSync(release).filter((f) => f.endsWith('.node')) : []
    t.equal(addons.length, 1, 'the install script built the native addon')
    t.notOk(addons.includes('planted.node'))
  }

  const version = await execCapture([bin, '--version'], { env, timeoutMs: 30_000 })
  t.equal(version.code, 0, version.stderr)
  t.equal(version.stdout.trim(), PKG.version)
  const valid = await execCapture([bin, 'validate', '--config', join(FIX, 'connector.yaml')], { env, timeoutMs: 30_000 })
  t.equal(valid.code, 0, valid.stderr)
  t.match(valid.stdout, /valid \(Connector beijing\.connector/)
  const invalid = await execCapture([bin, 'validate', '--config', join(FIX, 'invalid-cidr.yaml')], { env, timeoutMs: 30_000 })
  t.equal(invalid.code, 1, 'the installed binary really validates')
  t.match(invalid.stderr, /invalid-cidr\.yaml:4:7: error/)

  // Bare-metal path from the tarball alone: the installed package carries the systemd installer and its files.
  const dry = await execCapture(
    [join(installed, 'scripts', 'install-systemd'), '--prefix', join(tmp, 'root'), '--bin', bin, '--dry-run'],
    { env, timeoutMs: 30_000 },
  )
  t.equal(dry.code, 0, dry.stderr)
  t.match(dry.stdout, /would be installed: .*\/etc\/systemd\/system\/fabtunnel\.service/)
})
