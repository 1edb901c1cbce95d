import t from 'tap'
import { readFileSync } from 'node:fs'
import * as fabtunnel from '../../src/index.js'

t.test('the package entry parses a FabEdge config and derives its desired state', async (t) => {
  const text = readFileSync(new URL('../fixtures/config/edge.yaml', import.meta.url), 'utf8')
  const { config } = fabtunnel.parseConfig(text, 'edge.yaml')
  const desired = fabtunnel.desiredState(config, { datapath: 'libipsec' })
  t.ok(Object.keys(desired.conns).length > 0, 'connections derived')
  t.equal(typeof fabtunnel.VERSION, 'string')
  t.throws(() => fabtunnel.parseConfig('name: [', 'bad.yaml'), fabtunnel.ConfigError)
})
