// The container images cannot be built here (no container engine), so their Dockerfiles are linted instead.
// hadolint is on neither npm nor Debian; this is the documented equivalent: dockerfile-utils (the Dockerfile
// validator of the VS Code Docker tooling, devDependency, pinned) for syntax and instruction errors, plus the
// hadolint rules that matter here, checked directly (DL3000 absolute WORKDIR, DL3003 no cd,
// DL3004 no sudo, DL3006/DL3007 tagged bases, DL3009 apt lists removed, DL3015 no recommends, DL3020 COPY not ADD,
// DL3025 JSON-form ENTRYPOINT/CMD, DL4006-style no `curl | sh`). And the image-specific promises: the build
// stage runs exactly scripts/setup's npm/native/tsc commands, installs only Debian packages setup installs, copies
// only what exists and what its .dockerignore lets through, and labels the package version. DL3002 (non-root
// user) is deliberately not followed by the agent image: FabEdge's operator runs it privileged with no runAsUser,
// so it must default to root (the Dockerfile says why). test/deploy/image.test.ts builds and runs both images.
import t from 'tap'
import { existsSync, readFileSync, statSync } from 'node:fs'
import { join } from 'node:path'
import { validate } from 'dockerfile-utils'

const ROOT = new URL('../../', import.meta.url).pathname
const IMAGE = join(ROOT, 'deploy', 'image')
const PKG = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string; bin: Record<string, string> }
const SETUP = readFileSync(join(ROOT, 'scripts', 'setup'), 'utf8')

interface Instruction {
  keyword: string
  args: string
  /** Comment lines directly above the instruction. */
  comments: string[]
}

/**
 * Instructions with continuation lines joined, comments kept with the instruction they precede, grouped by build
 * stage; the first group holds the global ARGs before the first FROM.
 */
function parseInstructions(text: string): Instruction[][] {
  const stages: Instruction[][] = []
  let comments: string[] = []
  let pending = ''
  for (const raw of text.split('\n')) {
    const line = raw.trim()
    if (pending === '' && line.startsWith('#')) {
      comments.push(line)
      continue
    }
    if (line === '' && pending === '') {
      comments = []
      continue
    }
    pending += (pending ? ' ' : '') + line.replace(/\\$/, '').trim()
    if (line.endsWith('\\')) continue
    const m = /^(\S+)\s*(.*)$/.exec(pending)!
    const ins = { keyword: m[1]!.toUpperCase(), args: m[2]!, comments }
    pending = ''
    comments = []
    if (ins.keyword === 'FROM' || stages.length === 0) stages.push([])
    stages.at(-1)!.push(ins)
  }
  return stages
}

/** Build stages only (each starts with FROM). */
function parseDockerfile(text: string): Instruction[][] {
  return parseInstructions(text).filter((s) => s[0]!.keyword === 'FROM')
}

function args(text: string): Map<string, string> {
  return new Map(
    parseInstructions(text)
      .flat()
      .filter((i) => i.keyword === 'ARG' && i.args.includes('='))
      .map((i) => i.args.split('=', 2) as [string, string]),
  )
}

function setupAptPackages(): Set<string> {
  const m = /APT_PACKAGES=\(([^)]*)\)/s.exec(SETUP)
  if (!m) throw new Error('scripts/setup has no APT_PACKAGES=( ... )')
  return new Set(m[1]!.split(/\s+/).filter(Boolean))
}

function aptInstalls(stage: Instruction[]): string[] {
  return stage
    .filter((i) => i.keyword === 'RUN')
    .flatMap((i) => [...i.args.matchAll(/apt-get install ((?:-\S+\s+)*)([^&;|]+)/g)].flatMap((m) => m[2]!.trim().split(/\s+/)))
}

function npmCommands(lines: string[]): string[] {
  return lines.map((l) => l.trim()).filter((l) => /^npm (ci|run|install|prune)\b/.test(l))
}

const FILES = {
  agent: join(IMAGE, 'Dockerfile'),
  strongswan: join(IMAGE, 'strongswan', 'Dockerfile'),
}

for (const [name, file] of Object.entries(FILES)) {
  t.test(`${name} Dockerfile: dockerfile-utils finds nothing, hadolint's rules hold`, async (t) => {
    const text = readFileSync(file, 'utf8')
    t.same(validate(text), [], 'no diagnostics')
    const stages = parseDockerfile(text)
    const all = stages.flat()
    const argDefaults = args(text)
    for (const from of all.filter((i) => i.keyword === 'FROM')) {
      const image = from.args.split(/\s+/)[0]!.replace(/^\$\{(\w+)\}$/, (_, a: string) => argDefaults.get(a) ?? '')
      if (stages.some((s) => s[0]!.args.endsWith(` AS ${image}`))) continue
      t.match(image, /^[a-z0-9./-]+:[0-9][\w.-]*$/, `FROM ${image}: a versioned tag (DL3006, DL3007)`)
    }
    for (const run of all.filter((i) => i.keyword === 'RUN')) {
      t.notMatch(run.args, /\b(curl|wget)\b[^&;]*\|\s*(ba|da)?sh\b/, 'no piping downloads into a shell')
      t.notMatch(run.args, /(^|&&|;)\s*cd\s/, 'WORKDIR, not cd (DL3003)')
      t.notMatch(run.args, /\bsudo\b/, 'no sudo (DL3004)')
      if (/apt-get install/.test(run.args)) {
        t.match(run.args, /apt-get install -y --no-install-recommends /, 'no recommends, non-interactive (DL3015)')
        t.match(run.args, /apt-get update/, 'update in the same layer')
        t.match(run.args, /rm -rf \/var\/lib\/apt\/lists\/\*/, 'apt lists removed (DL3009)')
        t.ok(run.comments.some((c) => /^# hadolint ignore=DL3008$/.test(c)), 'unpinned apt versions are a stated exception')
      }
    }
    t.notOk(all.some((i) => i.keyword === 'ADD'), 'COPY, not ADD (DL3020)')
    t.notOk(all.some((i) => i.keyword === 'MAINTAINER'))
    for (const w of all.filter((i) => i.keyword === 'WORKDIR')) t.match(w.args, /^\//, 'absolute WORKDIR (DL3000)')
    for (const i of all.filter((i) => i.keyword === 'ENTRYPOINT' || i.keyword === 'CMD')) {
      t.doesNotThrow(() => JSON.parse(i.args), `${i.keyword} in JSON form (DL3025)`)
    }
    const final = stages.at(-1)!
    t.ok(final.some((i) => i.keyword === 'USER'), 'the final stage states its user')
    for (const key of ['title', 'description', 'licenses', 'source']) {
      t.match(final.filter((i) => i.keyword === 'LABEL').map((i) => i.args).join(' '), `org.opencontainers.image.${key}=`)
    }
    const allowed = setupAptPackages()
    for (const p of stages.flatMap(aptInstalls)) t.ok(allowed.has(p), `${p} is a package scripts/setup installs`)
  })
}

t.test("agent image: builds like scripts/setup, runs fabtunnel, root by default, FabEdge's init container contract", async (t) => {
  const text = readFileSync(FILES.agent, 'utf8')
  const stages = parseDockerfile(text)
  t.equal(stages.length, 2, 'multi-stage: build, run')
  const [build, final] = stages as [Instruction[], Instruction[]]
  const buildNpm = npmCommands(build.filter((i) => i.keyword === 'RUN').map((i) => i.args))
  const setupNpm = npmCommands(SETUP.split('\n'))
  t.same(setupNpm, ['npm ci --no-audit --no-fund --loglevel=error', 'npm run --silent build:native', 'npm run --silent build'])
  t.same(buildNpm.slice(0, setupNpm.length), setupNpm, "the build stage runs setup's npm, native and tsc steps in order")
  t.same(buildNpm.slice(setupNpm.length), ['npm prune --omit=dev --no-audit --no-fund --loglevel=error'])
  t.ok(build.some((i) => i.keyword === 'ENV' && /^npm_config_nodedir=\//.test(i.args)), 'node-gyp gets a node dir, as in setup')
  t.match(SETUP, /export npm_config_nodedir=/)
  t.same(aptInstalls(build).sort(), ['g++', 'make', 'python3'])
  t.same(aptInstalls(final), ['iptables', 'iproute2', 'containernetworking-plugins'], 'iptables-restore/-save, ip, the CNI plugins')

  const users = final.filter((i) => i.keyword === 'USER').map((i) => i.args)
  t.equal(users.at(-1), 'root', "final USER is root: FabEdge's operator sets no runAsUser")
  t.ok(final.find((i) => i.keyword === 'USER')!.comments.some((c) => /runAsUser/.test(c)), 'the root user is explained')
  // FabEdge's init container: /plugins/env_prepare.sh (operator HEAD) and env_prepare.sh on PATH (v1.0.0), and the
  // five plugins it copies in /plugins/bin/.
  const runs = final.filter((i) => i.keyword === 'RUN').map((i) => i.args).join(' && ')
  t.ok(final.some((i) => i.keyword === 'COPY' && i.args === 'deploy/image/env_prepare.sh /plugins/env_prepare.sh'), '/plugins/env_prepare.sh')
  t.match(runs, 'ln -s /plugins/env_prepare.sh /usr/local/bin/env_prepare.sh', 'env_prepare.sh on PATH')
  const script = readFileSync(join(IMAGE, 'env_prepare.sh'), 'utf8')
  for (const p of ['bridge', 'host-local', 'loopback', 'portmap', 'bandwidth']) {
    t.match(runs, new RegExp(`/usr/lib/cni/${p} .*/plugins/bin/`), `${p} from Debian's package in /plugins/bin`)
    t.match(script, new RegExp(`PLUGINS=".*\\b${p}\\b`), `env_prepare.sh copies ${p}`)
  }
  const code = script.split('\n').filter((l) => !/^\s*#/.test(l)).join('\n')
  t.match(code, /iptables-\$backend-restore" --noflush/, 'env_prepare.sh edits nat with --noflush')
  t.notMatch(code, /-F POSTROUTING|-t nat -F\b/, 'env_prepare.sh never flushes nat POSTROUTING (only FLANNEL-POSTRTG)')
  const envPrepareMode = statSync(join(IMAGE, 'env_prepare.sh')).mode
  t.ok(envPrepareMode & 0o111, 'env_prepare.sh is executable in the tree (COPY keeps the mode)')
  // Files the final stage copies from the build context pass the .dockerignore too.
  for (const c of final.filter((i) => i.keyword === 'COPY' && !i.args.startsWith('--from='))) {
    const [src] = c.args.split(/\s+/)
    t.ok(existsSync(join(ROOT, src!)), `COPY ${src} exists`)
    t.match(readFileSync(join(IMAGE, 'Dockerfile.dockerignore'), 'utf8'), new RegExp(`^!${src!.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`, 'm'), `${src} is let through the .dockerignore`)
  }
  t.equal(final.find((i) => i.keyword === 'ENTRYPOINT')?.args, '["fabtunnel"]')
  t.equal(final.find((i) => i.keyword === 'CMD')?.args, '["run"]')
  t.match(text, new RegExp(`ln -s /opt/fabtunnel/${PKG.bin.fabtunnel} /usr/local/bin/fabtunnel`), 'fabtunnel is the package bin')
  t.equal(args(text).get('VERSION'), PKG.version, 'version label defaults to the package version')
  t.match(final.filter((i) => i.keyword === 'LABEL').map((i) => i.args).join(' '), 'org.opencontainers.image.version="${VERSION}"')

  // Build-context inputs: each exists (native/ once the addon is in the tree) and .dockerignore lets it through.
  const ignore = readFileSync(join(IMAGE, 'Dockerfile.dockerignore'), 'utf8')
  const hasNative = existsSync(join(ROOT, 'native', 'binding.gyp'))
  for (const c of build.filter((i) => i.keyword === 'COPY')) {
    const sources = c.args.split(/\s+/).slice(0, -1)
    for (const s of sources) {
      if (s === 'native/' && !hasNative) continue
      t.ok(existsSync(join(ROOT, s)), `COPY ${s} exists`)
      t.match(ignore, new RegExp(`^!${s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`, 'm'), `${s} is let through the .dockerignore`)
    }
  }
  t.match(ignore, /^native\/build\/$/m, 'a local native build never enters the image')
  if (hasNative) {
    const gyp = readFileSync(join(ROOT, 'native', 'binding.gyp'), 'utf8')
    const target = /"target_name":\s*"([^"]+)"/.exec(gyp)?.[1]
    t.match(text, `/src/native/build/Release/${target}.node`, 'the runtime stage copies the addon binding.gyp builds')
  }
})

t.test('strongSwan sidecar image: its files exist, charon via the entrypoint', async (t) => {
  const text = readFileSync(FILES.strongswan, 'utf8')
  const all = parseDockerfile(text).flat()
  for (const c of all.filter((i) => i.keyword === 'COPY')) {
    const [from] = c.args.split(/\s+/)
    t.ok(existsSync(join(IMAGE, 'strongswan', from!)), `COPY ${from} exists`)
  }
  t.equal(all.find((i) => i.keyword === 'ENTRYPOINT')?.args, '["/usr/local/bin/charon-entrypoint"]')
  t.match(args(text).get('DEBIAN_IMAGE'), /^debian:12\.\d+-slim$/, 'Debian 12: the strongSwan 5.9.8 tests run against')
  for (const p of ['strongswan-charon', 'strongswan-swanctl']) t.ok(aptInstalls(all).includes(p), p)
})
