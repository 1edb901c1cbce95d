import t from 'tap'
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { close, fchmod, fsync, mkdir, openFd, readFile, rename, stat, unlink, writeFd, writeFile } from '../../src/fs-async.js'

t.test('the operations work and fail as node:fs does (code, syscall, path)', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ft-fsasync-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const missing = join(dir, 'missing')
  await t.rejects(readFile(missing, 'utf8'), { code: 'ENOENT', syscall: 'open', path: missing })
  await t.rejects(stat(missing), { code: 'ENOENT', syscall: 'stat' })
  const sub = join(dir, 'a', 'b')
  await mkdir(sub, { recursive: true, mode: 0o755 })
  const f = join(sub, 'f')
  await writeFile(f, 'one')
  t.equal(await readFile(f, 'utf8'), 'one')
  t.same(await readFile(f), Buffer.from('one'))
  t.equal((await stat(f)).size, 3)
  // A large write through a descriptor is written whole.
  const big = 'x'.repeat(3 << 20)
  const g = join(sub, 'g')
  const fd = await openFd(g, 'wx', 0o600)
  await writeFd(fd, big)
  await fchmod(fd, 0o644)
  await fsync(fd)
  await close(fd)
  t.equal(readFileSync(g, 'utf8').length, big.length)
  t.equal(statSync(g).mode & 0o777, 0o644)
  await t.rejects(openFd(g, 'wx'), { code: 'EEXIST' }, "'wx' refuses an existing file")
  await rename(g, join(sub, 'h'))
  await unlink(join(sub, 'h'))
  t.same(readdirSync(sub), ['f'])
  await t.rejects(close(fd), { code: 'EBADF' })
})

t.test('no module in src/ imports node:fs/promises (it loads readline and more for good; src/fs-async.ts)', async (t) => {
  const root = new URL('../../src/', import.meta.url).pathname
  const files = (readdirSync(root, { recursive: true }) as string[]).filter((f) => f.endsWith('.ts'))
  t.ok(files.length > 50, `scanned ${files.length} files`)
  const importsIt = (src: string): boolean => /from '(node:)?fs\/promises'|require\('(node:)?fs\/promises'\)|\bfs\.promises\b/.test(src.replace(/^\s*\/\/.*$/gm, ''))
  t.same(files.filter((f) => importsIt(readFileSync(join(root, f), 'utf8'))), [])
  t.ok(importsIt("import { readFile } from 'node:fs/promises'") && importsIt('x = fs.promises.readFile'), 'the check finds what it looks for')
})
