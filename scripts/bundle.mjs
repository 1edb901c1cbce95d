// Bundles the `fabtunnel` executable (src/cli.ts) with its dependencies into dist/cli.js plus lazily loaded
// chunks, replacing tsc's dist/cli.js (the rest of tsc's dist/ stays: the package's library exports). Run by
// `npm run build` after tsc. Why: as ~100 separate ES and CommonJS modules, resolving, reading and linking the
// module graph cost more CPU than everything else a one-peer edge does to become ready (issue 13; figures in
// docs/footprint.md). A command loads only its chunks: `run` never loads `yaml` unless the config has something to
// report, and @kubernetes/client-node stays an ordinary package import, loaded only by `--leader-election lease`.
//
// The chunks are written to the top of dist/ beside cli.js, so `../` from any of them is the package root
// (src/package-root.ts: the netlink addon and package.json are found from there).
import { build } from 'esbuild'
import { chmodSync, readdirSync, rmSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'

const ROOT = fileURLToPath(new URL('../', import.meta.url))
const DIST = join(ROOT, 'dist')
const CHUNK_PREFIX = 'cli-'

// Chunks of an earlier build (their names carry a content hash).
for (const f of readdirSync(DIST)) if (f.startsWith(CHUNK_PREFIX) && f.endsWith('.js')) rmSync(join(DIST, f))

await build({
  entryPoints: { cli: join(ROOT, 'src', 'cli.ts') },
  outdir: DIST,
  chunkNames: `${CHUNK_PREFIX}[name]-[hash]`,
  bundle: true,
  splitting: true,
  format: 'esm',
  platform: 'node',
  target: 'node20',
  external: ['@kubernetes/client-node'],
  // CommonJS dependencies (pino, prom-client, js-yaml) call require() for Node's built-ins; an ES module has none.
  banner: { js: "import { createRequire as __ftCreateRequire } from 'node:module'; const require = __ftCreateRequire(import.meta.url);" },
  logLevel: 'warning',
})
// The bin, the image's entrypoint and the systemd unit execute it directly (its shebang); tsc's map is not its map.
chmodSync(join(DIST, 'cli.js'), 0o755)
rmSync(join(DIST, 'cli.js.map'), { force: true })
