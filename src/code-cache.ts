// Loads the commands' bundle with V8's code cache (issue 13: CPU from start to ready; figures in docs/footprint.md).
// scripts/bundle.mjs writes the commands and their dependencies as one CommonJS file, dist/cli-main-<hash>.cjs (the
// hash is of its content), and, by running the executable once at build time, V8's code cache for it beside it
// (cli-main-<hash>.v8cache: the compiled top level and every function the warm-up ran). Node 20 has no code cache
// for ES modules; a CommonJS file compiled here through vm.Script can take one, so start-up neither parses the
// bundle nor compiles those functions again.
//
// V8 accepts a cache only for the same V8 version and the same V8 flags (the executable's own
// --semi-space-growth-factor included: it is set before this runs, at build time as at run time). Node flags from
// the user (NODE_OPTIONS=--max-old-space-size=...) change that hash: V8 then rejects the cache and compiles from
// the source, as without one. A cache that is missing, unreadable or rejected costs time, never correctness. V8
// checks only the source's length, so the cache is tied to the bundle by its file name (the content hash).
import { readFileSync, writeFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { dirname } from 'node:path'
import { fileURLToPath } from 'node:url'
import { Script, constants } from 'node:vm'

/** Whether V8 used the cache: `accepted`, `rejected` (another V8 or other flags) or `absent` (no readable file). */
export type CodeCacheState = 'accepted' | 'rejected' | 'absent'

export interface LoadedBundle<T> {
  exports: T
  codeCache: CodeCacheState
  /** Writes V8's code cache of the bundle as it is now (every function compiled so far); returns its size. */
  writeCodeCache(): number
}

/** The code cache that belongs to a bundle: the same name with `.v8cache` for `.cjs`. */
export function codeCachePath(bundlePath: string): string {
  return bundlePath.replace(/\.cjs$/, '') + '.v8cache'
}

/** The file system reads the loader does; unit tests replace them. */
export interface BundleFs {
  readSource(path: string): string
  /** The cache's bytes, or null when there is none (or it cannot be read). */
  readCache(path: string): Buffer | null
  writeCache(path: string, data: Buffer): void
}

const realFs: BundleFs = {
  readSource: (p) => readFileSync(p, 'utf8'),
  readCache: (p) => {
    try {
      return readFileSync(p)
    } catch {
      return null
    }
  },
  writeCache: (p, data) => writeFileSync(p, data),
}

/**
 * Compiles and runs a CommonJS bundle (absolute path or file URL) with its code cache when there is one, the way Node's own
 * loader would run it (exports, require, module, __filename, __dirname); returns its exports.
 */
export function loadBundle<T>(bundle: string | URL, fs: BundleFs = realFs): LoadedBundle<T> {
  const bundlePath = typeof bundle === 'string' ? bundle : fileURLToPath(bundle)
  const cachePath = codeCachePath(bundlePath)
  const cachedData = fs.readCache(cachePath) ?? undefined
  // One line of wrapper before the source's first line: line numbers in stack traces stay the file's.
  const script = new Script(`(function (exports, require, module, __filename, __dirname) {${fs.readSource(bundlePath)}\n})`, {
    filename: bundlePath,
    ...(cachedData ? { cachedData } : {}),
    // `import()` in the bundle (the Kubernetes client, lease mode only) goes to Node's ES module loader.
    importModuleDynamically: constants.USE_MAIN_CONTEXT_DEFAULT_LOADER,
  })
  const codeCache: CodeCacheState = cachedData === undefined ? 'absent' : script.cachedDataRejected === true ? 'rejected' : 'accepted'
  recordCodeCacheState(codeCache)
  const module = { exports: {} as T }
  const fn = script.runInThisContext() as (exports: T, require: NodeJS.Require, module: { exports: T }, filename: string, dirname: string) => void
  fn.call(module.exports, module.exports, createRequire(bundlePath), module, bundlePath, dirname(bundlePath))
  return {
    exports: module.exports,
    codeCache,
    writeCodeCache: () => {
      const data = script.createCachedData()
      fs.writeCache(cachePath, data)
      return data.length
    },
  }
}

const STATE = Symbol.for('fabtunnel.codeCache')

/** What the executable's loader reported for this process (`unbundled`: running from source or tsc's output). */
export function codeCacheState(): CodeCacheState | 'unbundled' {
  return (process as unknown as Record<symbol, CodeCacheState | undefined>)[STATE] ?? 'unbundled'
}

/** Records the loader's outcome for codeCacheState() (the loader and the bundle each have a copy of this module). */
export function recordCodeCacheState(s: CodeCacheState): void {
  ;(process as unknown as Record<symbol, CodeCacheState | undefined>)[STATE] = s
}
