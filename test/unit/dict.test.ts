// Records keyed by names (src/dict.ts): built the agent's way for thousands of peers, they leave V8's shared
// hidden-class transitions alone, so other objects still share their hidden classes. Measured in a child node
// with --allow-natives-syntax (%HaveSameMap); the control builds the same records as plain objects and must
// break the sharing, so the check cannot pass on nothing.
import t from 'tap'
import { spawnSync } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { dict } from '../../src/dict.js'

const src = (p: string): string => fileURLToPath(new URL(`../../src/${p}`, import.meta.url))

t.test('a dict enumerates like an object and holds any name as data', async (t) => {
  const d = dict<number>()
  d['b-p2p'] = 1
  d['a-n2p'] = 2
  // (Names as data: TypeScript types these two as Object's members, so through a string-typed key.)
  const [proto, ctor] = ['__proto__', 'constructor'] as string[]
  d[proto!] = 3
  d[ctor!] = 4
  t.same(Object.keys(d), ['b-p2p', 'a-n2p', '__proto__', 'constructor'], 'insertion order, names as keys')
  t.equal(JSON.stringify(d), '{"b-p2p":1,"a-n2p":2,"__proto__":3,"constructor":4}')
  t.same(d, { 'b-p2p': 1, 'a-n2p': 2, ['__proto__']: 3, constructor: 4 })
})

t.test('name-keyed records of 5,000 peers (desired children, decoded listings, compacted listings) leave hidden classes shared', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ft-dict-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const script = join(dir, 'probe.mts')
  writeFileSync(script, `
    import { encodeMessage, decodeMessage } from ${JSON.stringify(src('vici/codec.ts'))}
    import { compactListed } from ${JSON.stringify(src('reconcile/tunnels.ts'))}
    import { dict } from ${JSON.stringify(src('dict.ts'))}
    const same = new Function('a', 'b', 'return %HaveSameMap(a, b)')
    const plain = process.env.FT_PLAIN === '1'
    const record = () => (plain ? {} : dict())
    const keep = []
    for (let i = 0; i < 5000; i++) {
      const children = record()
      for (const k of ['p2p', 'n2p', 'p2n']) children['peer' + i + '-' + k] = { local_ts: ['10.0.0.0/16'], remote_ts: ['10.1.0.0/24'] }
      keep.push(children)
      if (!plain) {
        // A list-conn event as charon streams it: the connection's name is the message's key.
        // (The input is built with dicts too: an object literal with a computed name is a plain object.)
        const kids = dict()
        kids['peer' + i + '-p2p'] = { 'local-ts': ['10.0.0.0/16'], 'remote-ts': ['10.1.0.0/24'] }
        const msg = dict()
        msg['peer' + i] = { remote_addrs: ['%any'], children: kids }
        const ev = decodeMessage(encodeMessage(msg))
        keep.push(compactListed(ev['peer' + i]))
      }
    }
    const made = (n) => { const o = {}; o.dst = '10.1.' + n + '.0/24'; o.family = 4; return o }
    const literal = (n) => { const r = { dst: '10.2.' + n + '.0/24', family: 4, table: 220, protocol: 220 }; r.via = '10.0.0.1'; return r }
    console.log(JSON.stringify({ built: same(made(1), made(2)), literal: same(literal(1), literal(2)), kept: keep.length }))
  `)
  const run = (plain: boolean): { built: boolean; literal: boolean; kept: number } => {
    const r = spawnSync(process.execPath, ['--allow-natives-syntax', '--import', 'tsx', script], { encoding: 'utf8', env: { ...process.env, NODE_OPTIONS: '', FT_PLAIN: plain ? '1' : '' } })
    t.equal(r.status, 0, r.stderr)
    return JSON.parse(r.stdout.trim().split('\n').at(-1)!)
  }
  const control = run(true)
  t.same(control, { built: false, literal: false, kept: 5000 }, 'control: 5,000 plain objects keyed by names, and objects made afterwards get hidden classes of their own')
  const ours = run(false)
  t.same(ours, { built: true, literal: true, kept: 10000 }, 'dicts and decoded listings: objects made afterwards share their hidden class')
})
