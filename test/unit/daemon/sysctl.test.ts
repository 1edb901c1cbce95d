import t from 'tap'
import { IP_FORWARD, SysctlError, sysctlEnsure, type SysctlFs } from '../../../src/daemon/sysctl.js'

function fake(value: string, faults: { read?: NodeJS.ErrnoException; write?: NodeJS.ErrnoException; sticky?: boolean } = {}) {
  const state = { value, writes: [] as string[] }
  const fs: SysctlFs = {
    async read() {
      if (faults.read) throw faults.read
      return `${state.value}\n`
    },
    async write(_path, v) {
      if (faults.write) throw faults.write
      state.writes.push(v)
      if (!faults.sticky) state.value = v.trim()
    },
  }
  return { fs, state }
}

t.test('ip_forward: written only when not 1, verified by reading back', async (t) => {
  t.equal(IP_FORWARD, '/proc/sys/net/ipv4/ip_forward')
  const off = fake('0')
  t.equal(await sysctlEnsure(IP_FORWARD, '1', off.fs), '0', 'resolves with the previous value')
  t.same(off.state.writes, ['1\n'])
  const on = fake('1')
  t.equal(await sysctlEnsure(IP_FORWARD, '1', on.fs), null, 'already 1: nothing written')
  t.same(on.state.writes, [])
})

t.test('ip_forward faults are typed errors that say what to do', async (t) => {
  const rofs = fake('0', { write: Object.assign(new Error('EROFS: read-only file system, open'), { code: 'EROFS' }) })
  const e1 = await sysctlEnsure(IP_FORWARD, '1', rofs.fs).catch((e: unknown) => e)
  t.ok(e1 instanceof SysctlError)
  t.equal((e1 as SysctlError).code, 'EWRITE')
  t.match((e1 as SysctlError).message, /cannot set \/proc\/sys\/net\/ipv4\/ip_forward to 1: EROFS.*read-only\? the container must be privileged/)
  const other = fake('0', { write: Object.assign(new Error('EIO'), { code: 'EIO' }) })
  t.notMatch(((await sysctlEnsure(IP_FORWARD, '1', other.fs).catch((e: unknown) => e)) as Error).message, /privileged/)
  const unreadable = fake('0', { read: Object.assign(new Error('ENOENT'), { code: 'ENOENT' }) })
  t.equal(((await sysctlEnsure(IP_FORWARD, '1', unreadable.fs).catch((e: unknown) => e)) as SysctlError).code, 'EREAD')
  const ignored = fake('0', { sticky: true })
  const e3 = (await sysctlEnsure(IP_FORWARD, '1', ignored.fs).catch((e: unknown) => e)) as SysctlError
  t.equal(e3.code, 'EVERIFY', 'a write the kernel did not take is caught by the read-back')
  t.match(e3.message, /is 0 after writing 1/)
})
