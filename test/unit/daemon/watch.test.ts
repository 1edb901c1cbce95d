import t, { type Test } from 'tap'
import { mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { tmpdir } from 'node:os'
import { setTimeout as sleep } from 'node:timers/promises'
import { watchFiles, type DirWatch } from '../../../src/daemon/watch.js'
import { ConfigMapDir } from '../../harness/configmap.js'

// Every wait is bounded by a deadline and only polls for an event that must come; the absence of an event is
// asserted only after a control watcher on the same directory has seen the change that would have caused it.

async function until(what: string, ok: () => boolean, deadlineMs = 15_000): Promise<void> {
  const end = Date.now() + deadlineMs
  while (!ok()) {
    if (Date.now() > end) throw new Error(`no ${what} within ${deadlineMs} ms`)
    await sleep(20)
  }
}

function tmp(t: Test): string {
  const dir = mkdtempSync(join(tmpdir(), 'ftwatch-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  return dir
}

/** Starts a watch that records each callback with what the agent would read at that moment. */
async function record(t: Test, files: Array<{ path: string; kind: string }>, read = files[0]!.path) {
  const seen: Array<{ kind: string; content: string }> = []
  const errors: unknown[] = []
  const w: DirWatch = watchFiles(files, (kind) => {
    let content = ''
    try {
      content = readFileSync(read, 'utf8')
    } catch (err) {
      content = (err as NodeJS.ErrnoException).code ?? 'unreadable'
    }
    seen.push({ kind, content })
  }, (err) => errors.push(err))
  t.teardown(() => w.close())
  await w.ready
  // chokidar reports symlinks found by the initial scan despite ignoreInitial: a harmless extra pass at start.
  seen.length = 0
  return { w, seen, errors, kinds: () => seen.map((s) => s.kind) }
}

t.test('a kubelet ConfigMap `..data` swap reaches the callback as `config`, and the agent then reads the new text', async (t) => {
  const dir = tmp(t)
  const cm = await ConfigMapDir.create(join(dir, 'fabedge'), { 'tunnels.yaml': 'generation: 1\n' })
  const secret = await ConfigMapDir.create(join(dir, 'ipsec'), { 'tls.crt': 'cert 1', 'tls.key': 'key 1', 'ca.crt': 'ca 1' })
  const files = [
    { path: cm.path('tunnels.yaml'), kind: 'config' },
    { path: secret.path('tls.crt'), kind: 'credentials' },
    { path: secret.path('tls.key'), kind: 'credentials' },
    { path: secret.path('ca.crt'), kind: 'credentials' },
  ]
  const r = await record(t, files)
  await cm.update({ 'tunnels.yaml': 'generation: 2\n' })
  await until('callback that sees generation 2', () => r.seen.some((s) => s.kind === 'config' && s.content === 'generation: 2\n'))
  await cm.update({ 'tunnels.yaml': 'generation: 3\n' })
  await until('callback that sees generation 3', () => r.seen.some((s) => s.content === 'generation: 3\n'))
  t.pass('the second swap is seen too: the watch survived the first one (the bug of watching the inode)')
  t.notOk(r.kinds().includes('credentials'), 'a config swap is not a credentials change')
  t.same(r.errors, [])
  // A fresh watch for the Secret, so late events of the ConfigMap swaps cannot land in it.
  await r.w.close()
  const s = await record(t, files, secret.path('tls.crt'))
  await secret.update({ 'tls.crt': 'cert 2', 'tls.key': 'key 2', 'ca.crt': 'ca 1' })
  await until('credentials callback that sees the new certificate', () => s.seen.some((x) => x.kind === 'credentials' && x.content === 'cert 2'))
  t.notOk(s.kinds().includes('config'), 'a Secret swap is not a config change')
  t.same(s.errors, [])
})

t.test('only the `..data` rename of a kubelet swap wakes: every callback reads the new content, none the old', async (t) => {
  const dir = tmp(t)
  const cm = await ConfigMapDir.create(join(dir, 'fabedge'), { 'tunnels.yaml': 'generation: 1\n' })
  const r = await record(t, [{ path: cm.path('tunnels.yaml'), kind: 'config' }])
  for (let g = 2; g <= 4; g++) {
    await cm.update({ 'tunnels.yaml': `generation: ${g}\n` })
    await until(`callback that sees generation ${g}`, () => r.seen.some((s) => s.content === `generation: ${g}\n`))
  }
  // A wake on the timestamp directory's creation or the `..data_tmp` link would have read the content before it.
  t.same(r.seen.filter((s) => s.content === 'generation: 1\n'), [], 'no callback read generation 1 after the watch started')
  t.ok(r.seen.length >= 3 && r.seen.length <= 6, `one wake per swap, or two with a queue overflow (saw ${r.seen.length})`)
  for (let g = 2; g < 4; g++) {
    const reads = r.seen.filter((s) => s.content === `generation: ${g}\n`).length
    t.ok(reads >= 1 && reads <= 2, `generation ${g} read once per swap (${reads})`)
  }
})

t.test('a credentials file written in place or replaced by rename triggers `credentials` only', async (t) => {
  const dir = tmp(t)
  for (const d of ['fabedge', 'certs', 'private']) mkdirSync(join(dir, d))
  const config = join(dir, 'fabedge', 'tunnels.yaml')
  const cert = join(dir, 'certs', 'tls.crt')
  const key = join(dir, 'private', 'tls.key')
  writeFileSync(config, 'generation: 1\n')
  writeFileSync(cert, 'cert 1')
  writeFileSync(key, 'key 1')
  const r = await record(t, [{ path: config, kind: 'config' }, { path: cert, kind: 'credentials' }, { path: key, kind: 'credentials' }], cert)
  writeFileSync(cert, 'cert 2')
  await until('callback after an in-place write', () => r.seen.some((s) => s.kind === 'credentials' && s.content === 'cert 2'))
  r.seen.length = 0
  writeFileSync(join(dir, 'private', '.tls.key.swp'), 'key 2')
  renameSync(join(dir, 'private', '.tls.key.swp'), key)
  await until('callback after a rename over the key', () => r.kinds().includes('credentials'))
  // The config directory was not touched: writing the config now must bring the first `config`.
  const before = r.kinds()
  writeFileSync(config, 'generation: 2\n')
  await until('config callback', () => r.kinds().includes('config'))
  t.same([...new Set(before)], ['credentials'], 'only credentials before the config was written')
  t.same(r.errors, [])
})

t.test('another file in a watched directory does not trigger; the watched file still does', async (t) => {
  const dir = tmp(t)
  const config = join(dir, 'tunnels.yaml')
  const resolv = join(dir, 'resolv.conf')
  const hosts = join(dir, 'hosts')
  writeFileSync(config, 'generation: 1\n')
  writeFileSync(resolv, 'nameserver 10.0.0.1\n')
  const r = await record(t, [{ path: config, kind: 'config' }])
  const control = await record(t, [{ path: resolv, kind: 'resolv' }, { path: hosts, kind: 'hosts' }])
  writeFileSync(resolv, 'nameserver 10.0.0.2\n')
  writeFileSync(join(dir, 'new-file'), 'x')
  await until('the control watcher to see resolv.conf', () => control.kinds().includes('resolv'))
  // One more round trip through the same directory, so a late event for the first writes would have arrived.
  // (Another file: chokidar drops a second `change` of one path within 50 ms.)
  writeFileSync(hosts, '10.0.0.9 peer\n')
  await until('the control watcher to see hosts', () => control.kinds().includes('hosts'))
  t.same(r.seen, [], 'no wake for files that are not ours')
  writeFileSync(config, 'generation: 2\n')
  await until('config callback', () => r.seen.some((s) => s.content === 'generation: 2\n'))
  t.same([...new Set(r.kinds())], ['config'])
})

t.test('close() stops the callbacks; ready settles even when closed before the scan ends', async (t) => {
  const dir = tmp(t)
  const cm = await ConfigMapDir.create(join(dir, 'fabedge'), { 'tunnels.yaml': 'generation: 1\n' })
  const r = await record(t, [{ path: cm.path('tunnels.yaml'), kind: 'config' }])
  const control = await record(t, [{ path: cm.path('tunnels.yaml'), kind: 'control' }])
  await r.w.close()
  await cm.update({ 'tunnels.yaml': 'generation: 2\n' })
  await until('the control watcher to see generation 2', () => control.seen.some((s) => s.content === 'generation: 2\n'))
  await cm.update({ 'tunnels.yaml': 'generation: 3\n' })
  await until('the control watcher to see generation 3', () => control.seen.some((s) => s.content === 'generation: 3\n'))
  t.same(r.seen, [], 'nothing after close()')

  const early = watchFiles([{ path: cm.path('tunnels.yaml'), kind: 'config' }], () => {}, () => {})
  await early.close()
  await early.ready
  t.pass('ready settled after close()')
})

t.test('a directory that cannot be watched reaches the error callback; no change callback', async (t) => {
  const dir = tmp(t)
  // A path component longer than NAME_MAX: lstat and inotify refuse it with ENAMETOOLONG.
  const r = await record(t, [{ path: join(dir, 'x'.repeat(300), 'tunnels.yaml'), kind: 'config' }])
  await until('error callback', () => r.errors.length > 0)
  t.match(r.errors[0], { code: 'ENAMETOOLONG' })
  t.same(r.seen, [])
})
