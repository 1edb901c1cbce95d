import t from 'tap'
import { cidrOverlaps, compareCidr, isHostname, parseCidr, sortCidrs } from '../../../src/config/cidr.js'

t.test('parseCidr canonicalizes and rejects bad input', async (t) => {
  const cases: Array<[string, boolean, string | null]> = [
    ['10.233.0.0/18', false, '10.233.0.0/18'],
    ['10.233.1.7/18', false, '10.233.0.0/18'],
    [' 10.1.0.0/16 ', false, '10.1.0.0/16'],
    ['192.168.1.5', true, '192.168.1.5/32'],
    ['192.168.1.5', false, null],
    ['fd00:234:2:0:0:0:0:0/64', false, 'fd00:234:2::/64'],
    ['FD00:234:2::1/64', false, 'fd00:234:2::/64'],
    ['fd00::1', true, 'fd00::1/128'],
    ['10.233.0.0/33', false, null],
    ['fd00::/129', false, null],
    ['10.0.0.0/-1', false, null],
    ['10.0.0.0/', false, null],
    ['10.0.0/8', false, null],
    ['010.0.0.0/8', false, null],
    ['256.0.0.0/8', false, null],
    ['10.0.0.0/8/8', false, null],
    ['fe80::1%eth0', true, null],
    ['', true, null],
    ['example.com', true, null],
    ['0.0.0.0/0', false, '0.0.0.0/0'],
    ['::/0', false, '::/0'],
  ]
  for (const [input, bare, want] of cases) {
    const r = parseCidr(input, bare)
    if (want === null) t.notOk(r.ok, `${JSON.stringify(input)} rejected`)
    else t.same(r.ok && r.cidr.text, want, `${JSON.stringify(input)} -> ${want}`)
  }
  const r = parseCidr('10.233.0.0/33')
  t.match(!r.ok && r.message, /invalid prefix length "\/33"/)
})

t.test('overlap, ordering, hostnames', async (t) => {
  const c = (s: string) => {
    const r = parseCidr(s, true)
    if (!r.ok) throw new Error(r.message)
    return r.cidr
  }
  t.ok(cidrOverlaps(c('10.233.0.0/18'), c('10.233.1.0/24')))
  t.notOk(cidrOverlaps(c('10.233.0.0/18'), c('10.233.64.0/24')))
  t.notOk(cidrOverlaps(c('10.0.0.0/8'), c('fd00::/8')), 'families never overlap')
  t.same(sortCidrs(['fd00::/64', '10.2.0.0/16', '10.10.0.0/16', '10.2.0.0/16', '9.0.0.0/8']), ['9.0.0.0/8', '10.2.0.0/16', '10.10.0.0/16', 'fd00::/64'])
  t.ok(compareCidr('10.0.0.0/8', '10.0.0.0/16') < 0)
  t.ok(isHostname('connector.example.com'))
  t.notOk(isHostname('10.0.0.256'))
  t.notOk(isHostname('bad_name.com'))
  t.notOk(isHostname('a'.repeat(64) + '.com'))
})
