// The executable's bundle loader (src/code-cache.ts): a CommonJS file run with Node's module variables, with V8's
// code cache when one is there and V8 takes it, and the same result without one.
import t, { type Test } from 'tap'
import { execFileSync } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { pathToFileURL } from 'node:url'
import { codeCachePath, codeCacheState, loadBundle, recordCodeCacheState, type BundleFs } from '../../src/code-cache.js'

/**
 * Loads the bundle in a fresh process (V8's in-process compilation cache would answer a second load of the same
 * source without looking at the code cache at all): its code-cache state and answer.
 */
function loadFresh(file: string): { codeCache: string; answer: number } {
  const script = `const { loadBundle } = await import(${JSON.stringify(new URL('../../src/code-cache.ts', import.meta.url).href)})
const b = loadBundle(${JSON.stringify(file)}); console.log(JSON.stringify({ codeCache: b.codeCache, answer: b.exports.answer() }))`
  return JSON.parse(execFileSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { encoding: 'utf8', env: { ...process.env, NODE_OPTIONS: '' } }))
}

interface Probe { filename: string; dirname: string; sep: string; answer(): number; self: boolean }
const SOURCE = [
  "'use strict'",
  "const path = require('node:path')",
  'function answer() { return [1, 2, 3].map((x) => x * 7).reduce((a, b) => a + b) }',
  'module.exports = { filename: __filename, dirname: __dirname, sep: path.sep, answer, self: this === exports }',
].join('\n')

function tmp(t: Test): string {
  const dir = mkdtempSync(join(tmpdir(), 'ft-code-cache-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  return dir
}

t.test('a bundle runs with the module variables Node would give it; its code cache is written and taken', async (t) => {
  const dir = tmp(t)
  const file = join(dir, 'cli-main-0123456789abcdef.cjs')
  writeFileSync(file, SOURCE)
  t.equal(codeCachePath(file), join(dir, 'cli-main-0123456789abcdef.v8cache'))

  const first = loadBundle<Probe>(file)
  t.equal(first.codeCache, 'absent', 'no cache yet')
  t.equal(codeCacheState(), 'absent', 'recorded for the start log')
  t.same({ ...first.exports, answer: first.exports.answer() }, { filename: file, dirname: dir, sep: '/', answer: 42, self: true })
  const size = first.writeCodeCache()
  t.ok(size > 0 && readFileSync(codeCachePath(file)).length === size, `cache written beside the bundle (${size} bytes)`)

  t.same(loadFresh(file), { codeCache: 'accepted', answer: 42 }, 'another process: V8 takes the cache of the same source under the same flags')
  const again = loadBundle<Probe>(pathToFileURL(file))
  t.equal(again.exports.answer(), 42, 'a file URL names the bundle too')
})

t.test('a cache V8 refuses, or none that can be read, costs a compile, never the result', async (t) => {
  const dir = tmp(t)
  const file = join(dir, 'b.cjs')
  writeFileSync(file, SOURCE)
  writeFileSync(codeCachePath(file), Buffer.from('not a code cache at all, just bytes'))
  t.same(loadFresh(file), { codeCache: 'rejected', answer: 42 })

  // Another source's cache (another build's bundle): V8 sees another length and refuses it.
  const other = join(dir, 'other.cjs')
  writeFileSync(other, `${SOURCE}\nmodule.exports.more = 1`)
  loadBundle(other).writeCodeCache()
  writeFileSync(codeCachePath(file), readFileSync(codeCachePath(other)))
  t.same(loadFresh(file), { codeCache: 'rejected', answer: 42 })

  const writes: string[] = []
  const fs: BundleFs = { readSource: () => SOURCE, readCache: () => null, writeCache: (p) => { writes.push(p) } }
  const unreadable = loadBundle<Probe>('/nowhere/c.cjs', fs)
  t.equal(unreadable.codeCache, 'absent')
  t.equal(unreadable.exports.filename, '/nowhere/c.cjs')
  unreadable.writeCodeCache()
  t.same(writes, ['/nowhere/c.cjs'.replace(/\.cjs$/, '.v8cache')])
})

t.test('an error in the bundle keeps its own file and line', async (t) => {
  const dir = tmp(t)
  const file = join(dir, 'd.cjs')
  writeFileSync(file, "'use strict'\n\nthrow new Error('boom')\n")
  const err = (() => { try { loadBundle(file); return null } catch (e) { return e as Error } })()
  t.match(err?.stack, new RegExp(`${file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}:3`), 'line 3 of the file, as written')
})

t.test('the state outlives the module copy that recorded it', async (t) => {
  recordCodeCacheState('rejected')
  t.equal(codeCacheState(), 'rejected')
})
