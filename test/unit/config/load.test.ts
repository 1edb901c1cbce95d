import t from 'tap'
import { existsSync, readdirSync, readFileSync, writeFileSync, mkdtempSync, rmSync } from 'node:fs'
import { join } from 'node:path'
import { tmpdir } from 'node:os'
import { decodeConfig, loadConfig, MAX_CONFIG_BYTES, parseConfig } from '../../../src/config/load.js'
import { ConfigError, type ConfigIssue } from '../../../src/config/errors.js'

const FIX = new URL('../../fixtures/config/', import.meta.url).pathname
const SHARED = new URL('../../../../shared/fixtures/', import.meta.url).pathname

function errorsOf(text: string): ConfigIssue[] {
  try {
    parseConfig(text, 't.yaml')
  } catch (err) {
    if (err instanceof ConfigError) return err.errors
    throw err
  }
  throw new Error('expected the config to be rejected')
}

t.test('valid fixtures load into the canonical model', async (t) => {
  const { config, warnings } = await loadConfig(join(FIX, 'connector.yaml'))
  t.same(warnings, [])
  t.equal(config.local.name, 'beijing.connector')
  t.equal(config.local.type, 'Connector')
  t.equal(config.local.port, 45000)
  t.same(config.local.subnets, ['10.233.0.0/18', '10.233.64.0/24', '10.233.65.0/24'])
  t.same(config.local.nodeSubnets, ['192.168.1.5/32', '192.168.1.6/32'], 'bare node IPs become /32')
  t.same(config.peers.map((p) => p.name), ['beijing.edge1', 'beijing.edge2', 'shanghai.connector'])
  t.same(config.peers[1]!.subnets, ['10.234.2.0/24', 'fd00:234:2::/64'])
  t.same(config.mediator, {
    id: 'C=CN, O=fabedge.io, CN=beijing.connector', name: 'mediator', publicAddresses: ['10.40.10.180'],
    subnets: [], nodeSubnets: [], type: null, port: 45000,
  })
  const edge = await loadConfig(join(FIX, 'edge.yaml'))
  t.equal(edge.config.local.type, 'EdgeNode')
  t.equal(edge.config.peers[0]!.port, 45000)
})

t.test('every fixture in shared/fixtures: valid ones load, invalid-* are rejected with a line and field', { skip: existsSync(SHARED) ? false : 'shared/fixtures not beside the project' }, async (t) => {
  for (const f of readdirSync(SHARED).filter((n) => n.endsWith('.yaml'))) {
    if (f.startsWith('invalid-')) {
      const err = await loadConfig(join(SHARED, f)).then(() => null, (e: unknown) => e)
      t.type(err, ConfigError, `${f} rejected`)
      const e = err as ConfigError
      t.ok(e.errors.length > 0 && e.errors.every((i) => typeof i.line === 'number' && i.path !== ''), `${f}: every error has a line and a field path`)
    } else {
      await t.resolves(loadConfig(join(SHARED, f)), `${f} valid`)
    }
  }
})

t.test('the invalid fixtures name the exact line and field', async (t) => {
  const cidr = await loadConfig(join(FIX, 'invalid-cidr.yaml')).catch((e: ConfigError) => e)
  t.type(cidr, ConfigError)
  t.match((cidr as ConfigError).errors, [{ line: 4, path: 'subnets[0]', message: /"10\.233\.0\.0\/33".*prefix length/ }])
  const dup = await loadConfig(join(FIX, 'invalid-duplicate-peer.yaml')).catch((e: ConfigError) => e)
  t.match((dup as ConfigError).errors, [{ line: 13, path: 'peers[1].name', message: /duplicate peer name "beijing.edge1"/ }])
  t.match((dup as ConfigError).message, /invalid-duplicate-peer\.yaml:13:13: error: peers\[1\]\.name/)
})

const BASE = `id: C=CN, O=fabedge.io, CN=c.connector
name: c.connector
subnets:
    - 10.1.0.0/16
nodeSubnets:
    - 192.168.0.1
type: Connector
peers:
    - id: C=CN, O=fabedge.io, CN=c.edge1
      name: c.edge1
      publicAddresses:
        - 192.168.0.10
      subnets:
        - 10.2.1.0/24
      nodeSubnets:
        - 192.168.0.10
      type: EdgeNode
`

t.test('table of invalid documents', async (t) => {
  const cases: Array<{ name: string; text: string; want: Array<Omit<Partial<ConfigIssue>, 'message'> & { message: RegExp }> }> = [
    { name: 'empty file', text: '', want: [{ line: null, path: '', message: /config is empty/ }] },
    { name: 'only a comment', text: '# nothing\n', want: [{ message: /config is empty/ }] },
    { name: 'not a map', text: '- a\n- b\n', want: [{ line: 1, message: /top level must be a map.*got a list/ }] },
    { name: 'a scalar', text: 'hello\n', want: [{ line: 1, message: /top level must be a map/ }] },
    { name: 'YAML syntax error', text: 'id: x\nname: [unclosed\ntype: Connector\n', want: [{ line: 3, message: /YAML syntax/ }] },
    { name: 'duplicate key', text: 'id: x\nid: y\nname: a\ntype: Connector\n', want: [{ line: 2, message: /YAML syntax: duplicated mapping key/ }] },
    { name: 'bad tab indentation', text: 'id: x\n\tname: y\n', want: [{ message: /YAML syntax/ }] },
    { name: 'missing required fields', text: 'subnets:\n    - 10.0.0.0/8\n', want: [
      { path: 'id', message: /required field "id"/ }, { path: 'name', message: /required/ }, { path: 'type', message: /required/ },
    ] },
    { name: 'wrong types', text: 'id: 5\nname: [a]\ntype: Edge\nport: "500"\nsubnets: 10.0.0.0/8\nnodeSubnets: {a: 1}\npeers: {}\n', want: [
      { line: 1, path: 'id', message: /must be a string, got number 5/ },
      { line: 2, path: 'name', message: /must be a string, got a list/ },
      { line: 3, path: 'type', message: /"Connector" or "EdgeNode", got "Edge"/ },
      { line: 4, path: 'port', message: /integer port 1-65535, got string "500"/ },
      { line: 5, path: 'subnets', message: /must be a list/ },
      { line: 6, path: 'nodeSubnets', message: /must be a list, got a map/ },
      { line: 7, path: 'peers', message: /must be a list of endpoints/ },
    ] },
    { name: 'port out of range', text: BASE.replace('type: Connector\n', 'type: Connector\nport: 0\n'), want: [{ path: 'port', message: /1-65535/ }] },
    { name: 'bare IP in subnets', text: BASE.replace('- 10.1.0.0/16', '- 10.1.0.1'), want: [{ line: 4, path: 'subnets[0]', message: /without a prefix length/ }] },
    { name: 'garbage address', text: BASE.replace('- 192.168.0.10\n      subnets', '- not_an_address!\n      subnets'), want: [{ line: 12, path: 'peers[0].publicAddresses[0]', message: /neither an IP address nor a DNS name/ }] },
    { name: 'peer equal to self', text: BASE.replace('name: c.edge1', 'name: c.connector'), want: [{ line: 10, path: 'peers[0].name', message: /same name as this node/ }] },
    { name: 'reserved name', text: BASE.replace('name: c.edge1', 'name: mediator'), want: [{ path: 'peers[0].name', message: /reserved/ }] },
    { name: 'invalid name characters', text: BASE.replace('name: c.edge1', 'name: "c edge1;rm"'), want: [{ path: 'peers[0].name', message: /not a valid name/ }] },
    { name: 'control characters in id', text: BASE.replace('id: C=CN, O=fabedge.io, CN=c.edge1', 'id: "C=CN\\nCN=x"'), want: [{ path: 'peers[0].id', message: /control characters/ }] },
    { name: 'own vs peer subnet overlap', text: BASE.replace('- 10.2.1.0/24', '- 10.1.5.0/24'), want: [{ line: 14, path: 'peers[0].subnets[0]', message: /overlaps 10\.1\.0\.0\/16 of "c.connector"/ }] },
    { name: 'peer node subnet inside own pod CIDR', text: BASE.replace('        - 192.168.0.10\n      type', '        - 10.1.9.9\n      type'), want: [{ path: 'peers[0].nodeSubnets[0]', message: /overlaps/ }] },
    { name: 'type missing on a peer', text: BASE.replace('      type: EdgeNode\n', ''), want: [{ path: 'peers[0].type', message: /required/ }] },
    { name: 'remote connector without publicAddresses', text: BASE + '    - id: C=CN, O=fabedge.io, CN=s.connector\n      name: s.connector\n      subnets:\n        - 10.9.0.0/16\n      type: Connector\n', want: [{ line: 18, path: 'peers[1].publicAddresses', message: /must have publicAddresses/ }] },
    { name: 'peers is a list of scalars', text: BASE.replace(/peers:[\s\S]*$/, 'peers:\n    - c.edge1\n'), want: [{ line: 9, path: 'peers[0]', message: /must be a map of endpoint fields/ }] },
  ]
  for (const c of cases) {
    const errors = errorsOf(c.text)
    t.match(errors, c.want, c.name)
    t.equal(errors.length, c.want.length, `${c.name}: exactly the expected errors`)
  }
})

t.test('all errors at once, sorted by line', async (t) => {
  const errors = errorsOf(BASE.replace('- 10.1.0.0/16', '- 10.1.0.0/40').replace('type: EdgeNode', 'type: Edgy').replace('name: c.edge1', 'name: c.connector'))
  t.same(errors.map((e) => e.path), ['subnets[0]', 'peers[0].name', 'peers[0].type'])
  t.same(errors.map((e) => e.line), [4, 10, 17])
})

t.test('warnings: unknown keys, host bits, duplicates, edge node IP overlaps', async (t) => {
  const text = BASE.replace('type: Connector\n', 'type: Connector\nextra: 1\n')
    .replace('- 10.2.1.0/24', '- 10.2.1.9/24\n        - 10.2.1.0/24')
    .replace('      type: EdgeNode\n', '      type: EdgeNode\n      color: blue\n')
  const { config, warnings } = parseConfig(text, 't.yaml')
  t.same(config.peers[0]!.subnets, ['10.2.1.0/24'], 'canonical and de-duplicated')
  t.match(warnings, [
    { line: 8, path: 'extra', message: /unknown key "extra" is ignored/ },
    { line: 15, path: 'peers[0].subnets[0]', message: /host bits set; using 10\.2\.1\.0\/24/ },
    { line: 16, path: 'peers[0].subnets[1]', message: /listed twice/ },
    { line: 20, path: 'peers[0].color', message: /unknown key/ },
  ])
})

t.test('edge peers reached through a mediator need no publicAddresses; others do', async (t) => {
  const edge = readFileSync(join(FIX, 'edge.yaml'), 'utf8')
  const noAddr = edge.replace('      publicAddresses:\n        - 10.22.53.117\n', '')
  t.doesNotThrow(() => parseConfig(noAddr), 'mediated edge peer without address is fine')
  const noMediator = noAddr.replace(/mediator:[\s\S]*$/, '')
  t.match(errorsOf(noMediator), [{ path: 'peers[1].publicAddresses', message: /initiates the tunnel/ }])
})

t.test('file errors are typed: missing, a directory, too big', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ftcfg-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  await t.rejects(loadConfig(join(dir, 'nope.yaml')), { code: 'ENOENT', name: 'ConfigError' })
  await t.rejects(loadConfig(dir), { code: 'EREAD', message: /not a regular file/ })
  const big = join(dir, 'big.yaml')
  writeFileSync(big, `# ${'x'.repeat(MAX_CONFIG_BYTES)}\n`)
  await t.rejects(loadConfig(big), { code: 'ETOOBIG' })
})

t.test('a large valid config (2,000 peers) parses quickly enough to be routine', async (t) => {
  let text = BASE
  for (let i = 0; i < 2000; i++) {
    text += `    - id: C=CN, O=fabedge.io, CN=c.e${i}\n      name: c.e${i}\n      publicAddresses:\n        - 172.16.${i >> 8}.${i & 255}\n      subnets:\n        - 10.${100 + (i >> 8)}.${i & 255}.0/24\n      type: EdgeNode\n`
  }
  const { config } = parseConfig(text)
  t.equal(config.peers.length, 2001)
})

t.test('YAML alias bombs under unknown keys are never expanded', async (t) => {
  const bomb = 'a: &a ["x","x","x","x","x","x","x","x","x"]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: [*d,*d,*d,*d,*d,*d,*d,*d,*d]\nid: x\nname: n\ntype: Connector\n'
  const start = process.hrtime.bigint()
  const { warnings } = parseConfig(bomb)
  t.ok(process.hrtime.bigint() - start < 2_000_000_000n, 'parsed without expanding 9^5 aliases')
  t.same(warnings.map((w) => w.path), ['a', 'b', 'c', 'd', 'e'])
})

t.test('a name is at most 251 characters: its child names (`-p2p`) must fit charon\'s 255-byte keys', async (t) => {
  const ok = 'a'.repeat(251)
  const { config } = parseConfig(`name: ${ok}\nid: x\ntype: EdgeNode\nsubnets: [10.1.0.0/24]\npeers:\n- name: peer\n  id: y\n  type: Connector\n  publicAddresses: [192.0.2.1]\n  subnets: [10.2.0.0/24]\n`, 'n.yaml')
  t.equal(config.local.name, ok)
  t.throws(() => parseConfig(`name: ${ok}b\nid: x\ntype: EdgeNode\nsubnets: [10.1.0.0/24]\npeers: []\n`, 'n.yaml'), { errors: [{ path: 'name', message: /at most 251/ }] })
})

t.test('decodeConfig gives the text UTF-8 decoding gives, for ASCII files (copied) and for any other bytes', async (t) => {
  const samples = [
    'id: a\nname: b\n',
    '# café\nname: né\n',
    '\uFEFFname: bom\n',
    'name: \u{1F600}\n',
  ]
  for (const s of samples) {
    const bytes = Buffer.from(s, 'utf8')
    t.equal(decodeConfig(bytes), bytes.toString('utf8'), JSON.stringify(s))
  }
  // Invalid UTF-8 (a lone 0xff) decodes to U+FFFD exactly as readFile(…, 'utf8') would.
  const bad = Buffer.from([0x61, 0xff, 0x0a])
  t.equal(decodeConfig(bad), 'a\uFFFD\n')
})
