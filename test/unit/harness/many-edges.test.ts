import t from 'tap'
import { readFileSync } from 'node:fs'
import { edgeAddressing, MAX_MANY_EDGES, shippedScaleConf } from '../../harness/many-edges.js'
import { parseStrongswanConf, SCALE_KEYS } from '../../harness/strongswan-conf.js'

t.test('edge addressing: shared source address or one each; pod CIDRs and node IPs distinct for every edge', async (t) => {
  t.same(edgeAddressing(0, true), { address: '10.77.2.1', nodeIp: '10.78.2.1', podCidr: '10.100.0.0/24', podIp: '10.100.0.1' })
  t.same(edgeAddressing(255, false), { address: '10.77.3.6', nodeIp: '10.78.3.6', podCidr: '10.100.255.0/24', podIp: '10.100.255.1' })
  t.equal(edgeAddressing(256, false).podCidr, '10.101.0.0/24')
  const all = Array.from({ length: MAX_MANY_EDGES }, (_, i) => edgeAddressing(i, false))
  for (const key of ['address', 'nodeIp', 'podCidr'] as const) t.equal(new Set(all.map((a) => a[key])).size, MAX_MANY_EDGES, `${key} unique over ${MAX_MANY_EDGES}`)
  t.equal(new Set(all.map((_, i) => edgeAddressing(i, true).address)).size, 1, 'shared: one address')
  t.ok(all.every((a) => !a.address.startsWith('10.77.1.') && !a.nodeIp.startsWith('10.78.1.')), 'never the connector\'s addresses')
  t.throws(() => edgeAddressing(MAX_MANY_EDGES, true), /out of/)
  t.throws(() => edgeAddressing(-1, true), /out of/)
})

t.test('the harness runs the shipped libipsec scale settings', async (t) => {
  const file = new URL('../../../deploy/image/strongswan/strongswan-libipsec.conf', import.meta.url).pathname
  const shipped = parseStrongswanConf(readFileSync(file, 'utf8'))
  const rendered = parseStrongswanConf(`charon {\n${await shippedScaleConf()}\n}\n`)
  t.same(Object.fromEntries(rendered), Object.fromEntries(SCALE_KEYS.map((k) => [k, shipped.get(k)])))
  t.equal(rendered.get('charon.threads'), '32')
})
