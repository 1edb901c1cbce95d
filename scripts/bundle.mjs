// Bundles the `fabtunnel` executable into dist/, replacing tsc's dist/cli.js (the rest of tsc's dist/ stays: the
// package's library exports). Run by `npm run build` after tsc. Why (issue 13; figures in docs/footprint.md): as
// ~100 separate modules, resolving, reading, linking and compiling the module graph cost more CPU than everything
// else a one-peer edge does to become ready.
//
// - dist/cli-main-<hash>.cjs: src/main-bundle.ts (the commands) with every module and dependency it uses, one CommonJS file (the
//   hash is of its content). Its lazy imports stay lazy (esbuild initializes an inlined module on first import),
//   so `validate` never runs the daemon's modules. @kubernetes/client-node stays an ordinary package import, loaded
//   only by `--leader-election lease`; `yaml` is required from node_modules on first use (src/config/load.ts).
// - dist/cli.cjs (and dist/cli.js, the same as an ES module): src/cli.ts with the little it imports (early signals,
//   heap tuning, src/code-cache.ts): the executable. It loads the bundle through vm.Script with...
// - dist/cli-main-<hash>.v8cache: V8's code cache of the bundle, written by running the built executable once
//   (`plan --offline` of an edge config and src/warm-up.ts, FT_WRITE_CODE_CACHE=1), so start-up neither parses the
//   bundle nor compiles the functions they ran. Node 20 has no code cache for ES modules, hence CommonJS.
//
// The files are written to the top of dist/, so `../` from any of them is the package root (src/package-root.ts:
// the netlink addon and package.json are found from there).
import { build } from 'esbuild'
import { spawnSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import { chmodSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'

const ROOT = fileURLToPath(new URL('../', import.meta.url))
const DIST = join(ROOT, 'dist')

// Outputs of an earlier build (their names carry a content hash), and the chunks of the ES module bundle before.
for (const f of readdirSync(DIST)) if (/^cli-.*\.(js|cjs|v8cache)$/.test(f)) rmSync(join(DIST, f))

/**
 * Dependencies' start-up work that this executable never uses, replaced in the bundle (each saves milliseconds of
 * every start: loading a built-in module compiles it). Each replacement names the one importer it applies to.
 * - prom-client's index loads its Pushgateway (http, https, zlib, tls) and cluster aggregator: the bundle takes the
 *   classes the agent uses from their own files, and the default metrics only when called (src/daemon/metrics.ts
 *   collects them from the first scrape on).
 */
const SHIMS = [
  {
    name: 'prom-client', importer: /./, contents: `
exports.Registry = require('prom-client/lib/registry')
exports.Counter = require('prom-client/lib/counter')
exports.Gauge = require('prom-client/lib/gauge')
exports.Histogram = require('prom-client/lib/histogram')
Object.defineProperty(exports, 'collectDefaultMetrics', { enumerable: true, get: () => require('prom-client/lib/defaultMetrics') })
`,
  },
  {
    // prom-client's process CPU counter reads OpenTelemetry's active span only for exemplars, which the agent does
    // not enable (src/daemon/metrics.ts): 43 KB of @opentelemetry/api in the bundle's source, held in memory for
    // the life of the process, and its set-up at the first scrape. A stand-in with no span.
    name: '@opentelemetry/api', importer: /[\\/]node_modules[\\/]prom-client[\\/]lib[\\/]metrics[\\/]processCpuTotal\.js$/, contents: `
exports.context = { active: () => undefined }
exports.trace = { getSpan: () => undefined }
`,
  },
]
const shims = {
  name: 'fabtunnel-shims',
  setup(b) {
    for (const s of SHIMS) {
      const used = { n: 0 }
      s.used = used
      b.onResolve({ filter: new RegExp(`^${s.name}$`) }, (a) => (s.importer.test(a.importer) ? { path: s.name, namespace: 'fabtunnel-shim' } : undefined))
      b.onLoad({ filter: new RegExp(`^${s.name}$`), namespace: 'fabtunnel-shim' }, () => {
        used.n++
        return { contents: s.contents, loader: 'js', resolveDir: ROOT }
      })
    }
  },
}

const main = await build({
  entryPoints: [join(ROOT, 'src', 'main-bundle.ts')],
  bundle: true,
  format: 'cjs',
  platform: 'node',
  target: 'node20',
  external: ['@kubernetes/client-node'],
  // The bundle runs as CommonJS (src/code-cache.ts passes __filename): import.meta.url is its file URL.
  define: { 'import.meta.url': '__ftImportMetaUrl' },
  banner: { js: "var __ftImportMetaUrl = require('node:url').pathToFileURL(__filename).href;" },
  plugins: [shims],
  // Without whitespace and comments the file is ~40 % smaller, so faster to read and to check against its code
  // cache, and ASCII (checked below): Node reads an ASCII file into a one-byte string without decoding UTF-8, and
  // V8 keeps the source in memory as long as the process runs. Names stay as written (stack traces).
  minifyWhitespace: true,
  minifySyntax: true,
  write: false,
  logLevel: 'warning',
})
// A dependency that no longer imports what a shim replaces must not leave a stale shim unnoticed.
for (const s of SHIMS) if (s.used.n !== 1) throw new Error(`bundle shim ${s.name}: used ${s.used.n} times, expected once (did the dependency change?)`)
const code = main.outputFiles[0].contents
const nonAscii = code.findIndex((b) => b > 0x7f)
if (nonAscii >= 0) throw new Error(`the bundle must be ASCII: byte ${nonAscii} is not (${Buffer.from(code.subarray(Math.max(0, nonAscii - 60), nonAscii + 20)).toString()})`)
const mainName = `cli-main-${createHash('sha256').update(code).digest('hex').slice(0, 16)}.cjs`
writeFileSync(join(DIST, mainName), code)

// The executable, twice: dist/cli.cjs is the package's bin (the image's entrypoint and the systemd unit run it):
// Node starts a CommonJS entry ~25 ms of CPU faster than an ES module one, which initializes the ES module loader.
// dist/cli.js is the same as an ES module, for whoever runs `node dist/cli.js` (the test harness, older docs).
for (const format of ['cjs', 'esm']) {
  await build({
    entryPoints: [join(ROOT, 'src', 'cli.ts')],
    outfile: join(DIST, format === 'cjs' ? 'cli.cjs' : 'cli.js'),
    bundle: true,
    format,
    platform: 'node',
    target: 'node20',
    define: { FT_MAIN_BUNDLE: JSON.stringify(mainName), ...(format === 'cjs' ? { 'import.meta.url': '__ftImportMetaUrl' } : {}) },
    ...(format === 'cjs' ? { banner: { js: "var __ftImportMetaUrl = require('node:url').pathToFileURL(__filename).href;" } } : {}),
    logLevel: 'warning',
  })
  chmodSync(join(DIST, format === 'cjs' ? 'cli.cjs' : 'cli.js'), 0o755)
}
// tsc's map is not the bundle's map.
rmSync(join(DIST, 'cli.js.map'), { force: true })

// The code cache: one run of the built executable, as users start it (no node flags: V8 rejects a cache made
// under other flags), through the config parse, the desired state and the rendering of an edge, then the warm-up.
const tmp = mkdtempSync(join(tmpdir(), 'fabtunnel-build-'))
try {
  const cfg = join(tmp, 'tunnels.yaml')
  writeFileSync(cfg, [
    'id: C=CN, O=fabedge.io, CN=build.edge', 'name: build.edge', 'publicAddresses:', '    - 192.0.2.2', 'subnets:',
    '    - 10.234.1.0/24', 'nodeSubnets:', '    - 192.0.2.2', 'type: EdgeNode', 'peers:',
    '    - id: C=CN, O=fabedge.io, CN=build.connector', '      name: build.connector', '      publicAddresses:',
    '        - 192.0.2.1', '      subnets:', '        - 10.233.0.0/18', '      nodeSubnets:', '        - 192.0.2.1',
    '      type: Connector', '',
  ].join('\n'))
  const env = { ...process.env, FT_WRITE_CODE_CACHE: '1' }
  delete env.NODE_OPTIONS
  const r = spawnSync(process.execPath, [join(DIST, 'cli.cjs'), 'plan', '--offline', '--config', cfg, '--log-level', 'error'], { env, encoding: 'utf8' })
  if (r.status !== 0 || !/^code cache: \d+ bytes$/m.test(r.stderr)) throw new Error(`warm-up run for the code cache failed (${r.status}): ${r.stderr}${r.stdout}`)
} finally {
  rmSync(tmp, { recursive: true, force: true })
}
