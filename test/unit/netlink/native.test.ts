// The native addon's contract: syscall errors carry errno/code/syscall, close is idempotent, nothing leaks.
// Needs the addon built (npm ci does it) but not root: NETLINK_ROUTE reads are unprivileged.
import t from 'tap'
import { readdirSync } from 'node:fs'
import { loadAddon, type NativeHandle } from '../../../src/netlink/native.js'
import { linkList, openRoute } from '../../../src/netlink/index.js'

const addon = loadAddon()

t.test('a missing build says what to run', async (t) => {
  t.throws(() => loadAddon('/nonexistent/fabtunnel_netlink.node'), {
    name: 'NetlinkError', kind: 'addon', code: 'ENOADDON', message: /scripts\/setup.*build:native/s,
  })
})

t.test('syscall failures are Errors with errno, code and syscall', async (t) => {
  t.throws(() => addon.open(31337), { errno: 93, code: 'EPROTONOSUPPORT', syscall: 'socket' })
  t.throws(() => addon.open(0, '/nonexistent/netns'), { code: 'ENOENT', syscall: 'open' })
  t.throws(() => addon.open(0, '/etc/hostname'), { code: 'EINVAL', syscall: 'setns' }, 'not a namespace file')
  t.throws(() => addon.send({} as NativeHandle, Buffer.alloc(0)), TypeError)
})

t.test('close is idempotent and a closed handle refuses work', async (t) => {
  const h = addon.open(0)
  t.type(addon.portid(h), 'number')
  addon.close(h)
  addon.close(h)
  t.throws(() => addon.send(h, Buffer.alloc(16)), { code: 'EBADF' })
})

t.test('opening and closing many sockets leaks no descriptors', async (t) => {
  const fds = (): number => readdirSync('/proc/self/fd').length
  const before = fds()
  for (let i = 0; i < 2000; i++) {
    const h = addon.open(0)
    addon.start(h, () => undefined)
    addon.close(h)
  }
  await new Promise((r) => setImmediate(r))
  t.ok(fds() <= before + 2, `fds before ${before}, after ${fds()}`)
})

t.test('a real request/reply round trip without root: the links of this namespace', async (t) => {
  const s = openRoute()
  t.teardown(() => s.close())
  const links = await linkList(s)
  t.ok(links.some((l) => l.name === 'lo' && l.index === 1))
})
