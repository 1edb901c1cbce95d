// Address parsing: the IPv4 fast path accepts exactly what ipaddr.js's strict dotted-quad check accepts.
import t from 'tap'
import ipaddr from 'ipaddr.js'
import { parseCidr, parseIp } from '../../../src/netlink/ip.js'

const accepts = (s: string): boolean => {
  try {
    return parseIp(s).family === 4
  } catch {
    return false
  }
}

t.test('strict dotted quads only', async (t) => {
  for (const s of ['10.0.0.1', '0.0.0.0', '255.255.255.255', '192.0.2.254']) t.ok(accepts(s), s)
  for (const s of ['256.0.0.1', '01.2.3.4', '1.2.3.04', '1.2.3', '1.2.3.4.5', ' 1.2.3.4', '1.2.3.4 ', '1.2.3.4/32', '0x1.2.3.4', '1.2.3.1000', '']) {
    t.notOk(accepts(s), JSON.stringify(s))
  }
  t.same([...parseIp('192.0.2.254').bytes], [192, 0, 2, 254])
  t.equal(parseCidr('10.1.2.3/16').text, '10.1.0.0/16')
})

t.test('agrees with ipaddr.js on random digit-and-dot strings', async (t) => {
  let seed = 12345
  const rnd = (n: number): number => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff
    return (seed >>> 16) % n
  }
  let disagreements = 0
  let accepted = 0
  for (let i = 0; i < 20_000; i++) {
    const parts = Array.from({ length: 3 + rnd(3) }, () => String(rnd(4) === 0 ? rnd(1000) : rnd(256)).padStart(rnd(5) === 0 ? 3 : 0, '0'))
    const s = parts.join('.')
    const ours = accepts(s)
    if (ours) accepted++
    if (ours !== ipaddr.IPv4.isValidFourPartDecimal(s)) disagreements++
  }
  t.equal(disagreements, 0)
  t.ok(accepted > 1000, `the sample holds valid addresses too (${accepted})`)
})
